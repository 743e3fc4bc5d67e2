"""wsflask, as its README writes it: ``/echo`` straight-line, ``/room`` joins and broadcasts.

Run: ``python wsflask_server.py PORT`` from /work/main/.venv (the project's own venv).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # the application's first line (README); wsflask never patches

import logging  # noqa: E402
import sys  # noqa: E402

from wsflask import App, WebSocket  # noqa: E402

# The rivals write no access log by default (aiohttp's needs configuring): neither does this
# column. wsflask's own INFO lines (where it serves) still show. A deployment that keeps the
# access log pays two queued records per connection, formatted off the hub (logs.py).
logging.getLogger("wsflask.access").setLevel(logging.WARNING)
app = App()
room = app.route("/room")


@app.route("/echo")
def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


@room.on("connect")
def joined(ws: WebSocket) -> None:
    app.rooms.join("room", ws)


@room.on("message")
def said(ws: WebSocket, data: str | bytes) -> None:
    app.rooms.broadcast("room", data)  # excluding nobody: the sender gets its copy too


if __name__ == "__main__":
    app.run("127.0.0.1", int(sys.argv[1]))
