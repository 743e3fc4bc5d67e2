"""Rival: tornado WebSocketHandler. ``/echo`` echoes, ``/room`` broadcasts to all.

Run: ``python rival_tornado.py PORT`` (from loadtests/.venv-rivals).
"""

from __future__ import annotations

import asyncio
import sys

import tornado.web
import tornado.websocket
from tornado.websocket import WebSocketClosedError


class Echo(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class Room(tornado.websocket.WebSocketHandler):
    members: set[Room] = set()

    def check_origin(self, origin: str) -> bool:
        return True

    def open(self, *args: str, **kwargs: str) -> None:
        Room.members.add(self)

    def on_close(self) -> None:
        Room.members.discard(self)

    def on_message(self, message: str | bytes) -> None:
        binary = isinstance(message, bytes)
        for member in list(Room.members):
            try:
                member.write_message(message, binary=binary)
            except WebSocketClosedError:
                Room.members.discard(member)


async def main(port: int) -> None:
    app = tornado.web.Application([(r"/echo", Echo), (r"/room", Room)])
    app.listen(port, address="127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
