"""The broadcast example: every message goes to every open connection, its sender included.

Run it with ``python examples/broadcast.py`` (serves ws://127.0.0.1:8080/) or
``wsflask run examples.broadcast:app``; open two ``wsflask client ws://127.0.0.1:8080/``
terminals and type in one. It shows the event style (``@app.on("message")`` is the route
``/``) and ``app.send``: the frame is encoded once and handed to every connection without
blocking, so one slow reader cannot stall the others (its bounded outbox fills instead).
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: patch first. `wsflask run` patches for us, and
    from gevent import monkey  # the tests import this module without patching pytest.

    monkey.patch_all()

from wsflask import App, Config, WebSocket

app = App()


@app.on("message")
def relay(ws: WebSocket, message: str | bytes) -> None:
    """Send ``message`` (text or binary, as received) to every connection."""
    app.send(message)


if __name__ == "__main__":
    from wsflask.logs import setup

    setup("text", "INFO")  # readable logs, one line per connection (as `wsflask run` does)
    app.configure(app.config.replace(**Config.env_overrides()))  # WSFLASK_PORT=9000 and co.
    app.run()  # 127.0.0.1:8080 unless WSFLASK_HOST/WSFLASK_PORT say otherwise
