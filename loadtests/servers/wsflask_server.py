"""wsflask, as its README writes it: ``/echo`` straight-line, ``/room`` joins and broadcasts.

Run: ``python wsflask_server.py PORT`` from /work/main/.venv (the project's own venv).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # the application's first line (README); wsflask never patches

import sys  # noqa: E402

from wsflask import App, WebSocket  # noqa: E402

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
