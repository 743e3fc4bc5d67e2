"""An opt-in ``/debug`` page listing live connections, for ``wsflask inspect URL``.

``enable_debug_page(app, token=...)`` registers a plain-HTTP page (``app.add_page``) that
answers JSON: the server's ``stats()``, one row per open connection (state, rooms, buffered
bytes, RTT, message counts) and a process snapshot. Off unless called; every request must
carry the token (``Authorization: Bearer <token>``), compared in constant time. No HTML.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

from .diagnostics import performance_snapshot
from .errors import Reject
from .upgrade import HTTPResponse

if TYPE_CHECKING:
    from .app import App
    from .protocol import Request
    from .websocket import WebSocket

__all__ = ["connection_row", "enable_debug_page"]


def enable_debug_page(app: App, *, token: str, path: str = "/debug") -> None:
    """Serve the debug JSON at ``path`` to requests bearing ``token``; call before serving.

    Raises:
        ValueError: ``token`` is shorter than 16 characters (it guards peer addresses).
    """
    if len(token) < 16:
        raise ValueError("the debug page token must be at least 16 characters")
    expected = f"Bearer {token}".encode()

    def page(request: Request) -> HTTPResponse:
        offered = (request.header("authorization") or "").encode()
        if not hmac.compare_digest(offered, expected):
            raise Reject(404, "not found")  # the page does not admit that it exists
        server = app.server
        connections = list(server.connections) if server is not None else []
        body = {
            "stats": server.stats() if server is not None else None,
            "connections": [connection_row(ws) for ws in connections],
            "process": performance_snapshot(),
        }
        return HTTPResponse(200, json.dumps(body).encode(), content_type="application/json")

    app.add_page(path, page)


def connection_row(ws: WebSocket) -> dict[str, Any]:
    """What ``/debug`` shows of one connection."""
    peer = ws.remote_address
    return {
        "id": ws.id,
        "peer": f"{peer[0]}:{peer[1]}" if peer else "-",
        "path": ws.request.path if ws.request else "-",
        "state": ws.state.name,
        "rooms": sorted(r for r in ws.rooms if r != ws.id),
        "buffered": ws.buffered_amount,
        "rtt": ws.rtt,
        "messages_in": ws.messages_received,
        "messages_out": ws.messages_sent,
    }
