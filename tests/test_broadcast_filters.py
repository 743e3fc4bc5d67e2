"""Broadcast narrowing and large fan-outs (seed-audit-2 items 27, 28: CM-15, CM-16, CM-19).

``filter=`` and ``include_only=`` reach exactly the chosen members over real sockets (the rest
count as skipped); a 10,000-member broadcast yields to the hub between batches, so a greenlet
scheduled before it runs before it finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
from helpers import wait_until

from wsflask import App
from wsflask.client import connect
from wsflask.rooms import BROADCAST_BATCH, Rooms
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")


def test_broadcast_filter_and_include_only(app_factory: Callable[..., App]) -> None:
    app = app_factory(port=0, close_timeout=1.0, shutdown_grace=1.0)
    members: list[WebSocket] = []

    @app.route("/")
    def chat(ws: WebSocket) -> None:
        ws.session["role"] = ws.request.query if ws.request else ""
        members.append(ws)
        for _ in ws:
            pass

    server = app.make_server()
    server.start()
    base = f"ws://127.0.0.1:{server.server_port}/"
    clients = {role: connect(base + "?" + role, timeout=5) for role in ("admin", "a", "b")}
    wait_until(lambda: len(members) == 3)
    result = app.rooms.broadcast(None, "admins", filter=lambda ws: ws.session["role"] == "admin")
    assert (result.sent, result.skipped) == (1, 2)
    assert clients["admin"].receive(timeout=5) == "admins"
    by_role = {ws.session["role"]: ws for ws in members}
    result = app.rooms.broadcast(None, "two", include_only=[by_role["a"], by_role["b"].id])
    assert (result.sent, result.skipped) == (2, 1)
    assert clients["a"].receive(timeout=5) == "two" and clients["b"].receive(timeout=5) == "two"
    assert app.rooms.broadcast(None, "all").sent == 3
    assert clients["admin"].receive(timeout=5) == "all"  # "two" never reached the admin
    assert clients["a"].receive(timeout=5) == "all"  # nor "admins" the others
    for client in clients.values():
        client.close()


class Stub:
    """A ``Member`` that records when it was sent to."""

    deflate = None
    is_open = True

    def __init__(self, n: int, log: list[str]) -> None:
        self.id = f"m{n}"
        self.rooms: set[str] = set()
        self.log = log

    def add_close_callback(self, callback: Any) -> None:
        pass

    def send_prepared(self, frame: bytes, *, policy: str | None = None) -> bool:
        self.log.append(self.id)
        return True

    def send_nowait(self, data: str | bytes, *, policy: str | None = None) -> bool:
        return self.send_prepared(b"")


def test_broadcast_to_10k_members_yields_between_batches() -> None:
    log: list[str] = []
    rooms: Rooms[Any] = Rooms()
    for n in range(10_000):
        rooms.join("big", Stub(n, log))
    ticker = gevent.spawn(log.append, "heartbeat")  # scheduled before the broadcast
    result = rooms.broadcast("big", "x")
    ticker.join()
    assert result.sent == 10_000
    position = log.index("heartbeat")
    assert 0 < position < 10_000  # ran while the broadcast was still going
    assert position % BROADCAST_BATCH == BROADCAST_BATCH - 1
