"""The echo example: every message comes back to its sender, text as text, binary as binary.

Run it with ``python examples/echo.py`` (serves ws://127.0.0.1:8080/echo) or
``wsflask run examples.echo:app``, then ``wsflask client ws://127.0.0.1:8080/echo``.
It shows the straight-line handler style: one greenlet per connection, so a plain ``for``
loop over the socket is all an echo needs.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: patch first. `wsflask run` patches for us, and
    from gevent import monkey  # the tests import this module without patching pytest.

    monkey.patch_all()

from wsflask import App, Config, WebSocket

app = App()


@app.route("/echo")
def echo(ws: WebSocket) -> None:
    """Send every message back until the client closes."""
    for message in ws:
        ws.send(message)


if __name__ == "__main__":
    from wsflask.logs import setup

    setup("text", "INFO")  # readable logs, one line per connection (as `wsflask run` does)
    app.configure(app.config.replace(**Config.env_overrides()))  # WSFLASK_PORT=9000 and co.
    app.run()  # 127.0.0.1:8080 unless WSFLASK_HOST/WSFLASK_PORT say otherwise
