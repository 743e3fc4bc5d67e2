"""Rival: picows (Cython WebSocket on asyncio). ``/echo`` echoes, ``/room`` broadcasts to all.

Run: ``python rival_picows.py PORT`` (from loadtests/.venv-rivals). picows works frame by
frame: the generator sends unfragmented messages, so a frame is a message here.
"""

from __future__ import annotations

import asyncio
import sys

from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

members: set[WSTransport] = set()


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            transport.send(frame.msg_type, frame.get_payload_as_memoryview())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class Room(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        members.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        members.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            payload = frame.get_payload_as_bytes()
            for member in members:
                member.send(frame.msg_type, payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


def route(request: WSUpgradeRequest) -> WSListener | None:
    if request.path == b"/echo" or request.path == "/echo":
        return Echo()
    if request.path == b"/room" or request.path == "/room":
        return Room()
    return None


async def main(port: int) -> None:
    server = await ws_create_server(route, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
