"""Rival: gevent-websocket on gevent.pywsgi. ``/echo`` echoes, ``/room`` broadcasts to all.

Run: ``python rival_gevent_websocket.py PORT`` (from loadtests/.venv-rivals).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

members: set[Any] = set()


def echo(ws: Any) -> None:
    while True:
        message = ws.receive()
        if message is None:
            return
        ws.send(message, binary=isinstance(message, bytes | bytearray))


def room(ws: Any) -> None:
    members.add(ws)
    try:
        while True:
            message = ws.receive()
            if message is None:
                return
            binary = isinstance(message, bytes | bytearray)
            for member in list(members):
                try:
                    member.send(message, binary=binary)
                except Exception:
                    members.discard(member)
    finally:
        members.discard(ws)


ROUTES = {"/echo": echo, "/room": room}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    ws = environ.get("wsgi.websocket")
    handler = ROUTES.get(environ.get("PATH_INFO", ""))
    if ws is None or handler is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    handler(ws)
    return []


if __name__ == "__main__":
    port = int(sys.argv[1])
    WSGIServer(("127.0.0.1", port), app, handler_class=WebSocketHandler, log=None).serve_forever()
