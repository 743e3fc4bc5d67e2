"""The Autobahn conformance echo server: wsflask's ``App`` with an echo route at ``/echo``.

What it does: serves ``/echo`` (every message sent back as it came: text as text, binary as
binary; closed with 1001 after ``IDLE_TIMEOUT`` seconds without one) with the *conformance
profile* (``conformance_config()``): the message budget raised
so that the Autobahn TestSuite's largest messages fit, the heartbeat out of the way, every
other setting at its default. It binds 127.0.0.1 (port 0 by default: a free one), prints
``wsflask-autobahn listening on 127.0.0.1:PORT`` once it accepts connections, and drains on
SIGTERM/SIGINT (``Server.stop()``). ``tests/autobahn/run.py`` starts it, reads the port from
that line and stops it.

What it does not do: no monkey-patching (the server only uses gevent sockets), no TLS, no
conformance logic of its own: it is the route a user would write; the framework answers the
protocol. Run it by hand with ``python tests/autobahn/server.py --port 9001`` to point
``kosoku -i 'CASE' ws://127.0.0.1:9001/echo`` at it while debugging one case.
"""

from __future__ import annotations

import argparse
import logging

from wsflask import App, WebSocket
from wsflask.config import Config

__all__ = ["conformance_config", "main", "make_app"]

_MIB = 1024 * 1024
#: Autobahn's largest single message (cases 9.1.6 and 9.2.6: 16 MiB in one frame).
LARGEST_MESSAGE = 16 * _MIB
#: Autobahn's most fragmented message (case 9.3.1/9.4.1: 4 MiB in 64-byte fragments).
FRAGMENTED_MESSAGE = 4 * _MIB
SMALLEST_FRAGMENT = 64
#: Seconds without a complete message before the echo route closes (1001). No Autobahn case
#: leaves the server waiting that long; kosoku 0.1.0 was seen (on a loaded machine) to stall
#: on a case after the handshake with both sides idle: this turns such a stall into a failed
#: case (retried by run.py) instead of a hang of the whole run.
IDLE_TIMEOUT = 30.0


def conformance_config(**overrides: object) -> Config:
    """The conformance profile: defaults, except what the Autobahn cases need.

    * ``max_message_size``: the largest Autobahn message, or the 4 MiB message sent in
      64-byte fragments plus ``fragment_overhead`` (256 bytes, the default) for each of its
      65,535 continuation frames (about 20 MiB), whichever is larger. The fragment charge
      itself stays at its default, so the budget logic is exercised as shipped.
    * ``ping_interval``: one hour, so that no heartbeat ping lands inside a case's expected
      event sequence (cases run for seconds; the heartbeat has its own tests).

    Args:
        **overrides: further ``Config`` fields (e.g. ``port``).

    Returns:
        A validated ``Config``; pass it to ``make_app()``.
    """
    overhead = Config().fragment_overhead
    continuations = FRAGMENTED_MESSAGE // SMALLEST_FRAGMENT - 1
    budget = max(LARGEST_MESSAGE, FRAGMENTED_MESSAGE + continuations * overhead)
    return Config(max_message_size=budget, ping_interval=3600.0, pong_timeout=3600.0).replace(
        **overrides
    )


def make_app(config: Config | None = None) -> App:
    """An ``App`` with the echo route at ``/echo``; call ``make_server()`` on it next."""
    app = App(config if config is not None else conformance_config())

    @app.route("/echo")
    def echo(ws: WebSocket) -> None:
        while True:
            try:
                message = ws.receive(timeout=IDLE_TIMEOUT)
            except TimeoutError:
                ws.close(1001, "idle")  # see IDLE_TIMEOUT: a stuck case fails instead of hanging
                return
            if message is None:
                return
            ws.send(message)

    return app


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host``/``--port``, serve until SIGTERM/SIGINT, then drain and return."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="server: %(levelname)s %(message)s")
    app = make_app(conformance_config(host=args.host, port=args.port))
    server = app.make_server()
    server.start()  # binds synchronously: the port is known now
    server.install_signal_handlers()
    print(f"wsflask-autobahn listening on {server.server_host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
