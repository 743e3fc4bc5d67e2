"""Rival: aiohttp web server. ``/echo`` echoes, ``/room`` broadcasts to all.

Run: ``python rival_aiohttp.py PORT`` (from loadtests/.venv-rivals).
"""

from __future__ import annotations

import sys

from aiohttp import WSMsgType, web

members: set[web.WebSocketResponse] = set()


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def room(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    members.add(ws)
    try:
        async for msg in ws:
            for member in list(members):
                if member.closed:
                    continue
                if msg.type is WSMsgType.TEXT:
                    await member.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await member.send_bytes(msg.data)
    finally:
        members.discard(ws)
    return ws


if __name__ == "__main__":
    app = web.Application()
    app.add_routes([web.get("/echo", echo), web.get("/room", room)])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
