"""Rival: python-websockets (asyncio server). ``/echo`` echoes, ``/room`` broadcasts to all.

Run: ``python rival_websockets.py PORT`` (from loadtests/.venv-rivals).
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

members: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else ""
    if path == "/echo":
        async for message in ws:
            await ws.send(message)
    elif path == "/room":
        members.add(ws)
        try:
            async for message in ws:
                broadcast(members, message)  # the library's own fan-out: never waits on a peer
        finally:
            members.discard(ws)
    else:
        await ws.close(1008, "unknown path")


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=1 << 20) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
