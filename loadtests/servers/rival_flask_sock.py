"""Rival: Flask-Sock (simple-websocket) served by gevent's WSGIServer, one process.

Flask-Sock's documentation lists Gunicorn, Eventlet or Gevent for production; one gevent
process (monkey-patched, so simple-websocket's thread is a greenlet) is the like-for-like
setup next to wsflask. ``/echo`` echoes, ``/room`` broadcasts to all.

Run: ``python rival_flask_sock.py PORT`` (from loadtests/.venv-rivals).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
from typing import Any  # noqa: E402

from flask import Flask  # noqa: E402
from flask_sock import Sock  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

app = Flask(__name__)
sock = Sock(app)
members: set[Any] = set()


@sock.route("/echo")
def echo(ws: Any) -> None:
    while True:
        ws.send(ws.receive())


@sock.route("/room")
def room(ws: Any) -> None:
    members.add(ws)
    try:
        while True:
            message = ws.receive()
            for member in list(members):
                try:
                    member.send(message)
                except Exception:
                    members.discard(member)
    finally:
        members.discard(ws)


if __name__ == "__main__":
    WSGIServer(("127.0.0.1", int(sys.argv[1])), app, log=None).serve_forever()
