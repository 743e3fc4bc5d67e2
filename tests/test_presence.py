"""Room presence: paged member lists and stats, locally and across two nodes on one bus,
and ``_joined``/``_left`` notices (closing included) for rooms that ask for them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from helpers import wait_until

from wsflask import App
from wsflask.presence import MAX_PAGE


def presence_app(app_factory: Callable[..., App], **settings: Any) -> tuple[App, Any]:
    app = app_factory(**settings)
    app.rooms.presence_events("live:*")

    @app.route("/r/<room>")
    def handler(ws: Any, room: str) -> None:
        app.rooms.join(room, ws)
        ws.send(json.dumps({"id": ws.id}))
        for _ in ws:
            pass

    return app, app.test_client(timeout=10)


def enter(client: Any, room: str) -> tuple[Any, str]:
    ws = client.connect(f"/r/{room}")
    return ws, json.loads(str(client.receive(ws)))["id"]


def test_pages_are_bounded_and_complete(app_factory: Callable[..., App]) -> None:
    app, client = presence_app(app_factory)
    members = [enter(client, "quiet") for _ in range(5)]
    ids = [member_id for _, member_id in members]
    first = app.rooms.presence("quiet", limit=2)
    assert (first.ids, first.total, first.next) == (ids[:2], 5, 2)
    second = app.rooms.presence("quiet", cursor=2, limit=2)
    last = app.rooms.presence("quiet", cursor=4, limit=2)
    assert (second.ids, second.next, last.ids, last.next) == (ids[2:4], 4, ids[4:], None)
    assert len(app.rooms.presence("quiet", limit=10 * MAX_PAGE).ids) == 5
    assert app.rooms.presence_stats("quiet") == {"connections": 5, "nodes": 1}
    with pytest.raises(ValueError):
        app.rooms.presence("quiet", limit=0)
    for ws, _ in members:
        ws.close()


def test_joined_and_left_notices(app_factory: Callable[..., App]) -> None:
    app, client = presence_app(app_factory)
    first, first_id = enter(client, "live:a")
    second, second_id = enter(client, "live:a")
    assert json.loads(str(client.receive(first))) == {
        "event": "_joined",
        "data": {"room": "live:a", "id": second_id},
    }
    second.close()
    assert json.loads(str(client.receive(first))) == {
        "event": "_left",
        "data": {"room": "live:a", "id": second_id},
    }
    quiet, _ = enter(client, "quiet")  # a room without presence events: no notice
    app.emit("ping", 1, to="live:a")
    assert json.loads(str(client.receive(first))) == {"event": "ping", "data": 1}
    assert first_id in app.rooms.presence("live:a").ids
    first.close()
    quiet.close()


def test_cluster_presence_and_notices(app_factory: Callable[..., App]) -> None:
    bus = f"memory://presence-{uuid.uuid4().hex[:8]}"
    a, ca = presence_app(app_factory, backplane=bus, backplane_interval=0.2)
    b, cb = presence_app(app_factory, backplane=bus, backplane_interval=0.2)
    wait_until(lambda: ca.get("/readyz").status == 200 and cb.get("/readyz").status == 200)
    on_a, a_id = enter(ca, "live:x")
    wait_until(lambda: b.rooms.presence_stats("live:x", cluster=True)["connections"] == 1)
    on_b, b_id = enter(cb, "live:x")
    assert json.loads(str(ca.receive(on_a))) == {
        "event": "_joined",
        "data": {"room": "live:x", "id": b_id},
    }  # across nodes
    wait_until(lambda: a.rooms.presence_stats("live:x", cluster=True) == {
        "connections": 2, "nodes": 2})  # fmt: skip
    page = a.rooms.presence("live:x", cluster=True)
    assert (page.ids, page.total) == ([a_id, b_id], 2)
    on_b.close()
    assert json.loads(str(ca.receive(on_a))) == {
        "event": "_left",
        "data": {"room": "live:x", "id": b_id},
    }
    on_a.close()
    ca.close()
    cb.close()
