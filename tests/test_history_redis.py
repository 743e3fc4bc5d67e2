"""Recoverable rooms on the Redis history, two nodes on a real ``redis-server`` per test.

Concurrent publishers on both nodes still give every member contiguous offsets in order
(one Lua script numbers and PUBLISHes); a client recovers on the other node; after a Redis
restart the lost history is reported (new epoch), never replayed in part; a forged numbered
publication is dropped when envelopes are signed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from helpers import wait_until

from wsflask import App
from wsflask.reconnect import RecoveringClient

FAST: dict[str, Any] = {
    "backplane_interval": 1.0,
    "backplane_backoff_max": 0.5,
    "shutdown_grace": 2.0,
    "close_timeout": 1.0,
}


@pytest.fixture
def nodes() -> Iterator[Callable[..., tuple[App, Any]]]:
    """``nodes(url, **settings)`` -> ``(app, test_client)``: a node with recoverable chat:*."""
    made: list[Any] = []

    def node(url: str, **settings: Any) -> tuple[App, Any]:
        app = App(backplane=url, **FAST, **settings)
        app.rooms.recoverable("chat:*", history_size=1000, history_ttl=60)

        @app.route("/c/<room>")
        def handler(ws: Any, room: str) -> None:
            app.rooms.join(room, ws)
            for _ in ws:
                pass

        client = app.test_client(timeout=10)
        made.append(client)
        wait_until(lambda: client.get("/readyz").status == 200)
        return app, client

    yield node
    for client in made:
        client.close()


@pytest.fixture
def clients() -> Iterator[list[RecoveringClient]]:
    made: list[RecoveringClient] = []
    yield made
    for rc in made:
        rc.close()


def join(client: Any, made: list[RecoveringClient], room: str = "chat:x") -> RecoveringClient:
    rc = RecoveringClient(client.url(f"/c/{room}"), attempts=100)
    made.append(rc)
    first = rc.receive(timeout=10)
    assert first["event"] == "_recovery", first
    return rc


def test_concurrent_publishers_give_contiguous_offsets(
    redis_server: Any, nodes: Any, clients: Any
) -> None:
    (a, ca), (b, cb) = nodes(redis_server.url), nodes(redis_server.url)
    on_a, on_b = join(ca, clients), join(cb, clients)
    per_node = 150

    def publish(app: App, name: str) -> None:
        for i in range(per_node):
            app.emit("msg", {"node": name, "i": i}, to="chat:x")

    publishers = [gevent.spawn(publish, a, "a"), gevent.spawn(publish, b, "b")]
    try:
        for rc in (on_a, on_b):
            got = [rc.receive(timeout=10) for _ in range(2 * per_node)]
            assert [e["offset"] for e in got] == list(range(1, 2 * per_node + 1))
            assert len({e["epoch"] for e in got}) == 1
            for name in "ab":  # each publisher's own order is kept too
                mine = [e["data"]["i"] for e in got if e["data"]["node"] == name]
                assert mine == list(range(per_node))
            assert (rc.duplicates, rc.gaps) == (0, 0)
    finally:
        gevent.joinall(publishers, timeout=10)
        gevent.killall(publishers)


def test_recovers_on_the_other_node(redis_server: Any, nodes: Any, clients: Any) -> None:
    (a, ca), (b, cb) = nodes(redis_server.url), nodes(redis_server.url)
    rc = join(ca, clients)
    for i in range(1, 4):
        a.emit("msg", i, to="chat:x")
    assert [rc.receive(timeout=10)["offset"] for _ in range(3)] == [1, 2, 3]
    epoch = rc.positions["chat:x"][1]
    rc.drop()
    wait_until(lambda: a.rooms.count("chat:x") == 0)
    for i in range(4, 10):
        b.emit("msg", i, to="chat:x")
    rc.url = cb.url("/c/chat:x")  # the client comes back through the other node
    answer = rc.receive(timeout=10)
    assert answer["data"] == {"room": "chat:x", "recovered": True, "offset": 9,
                              "epoch": epoch, "replayed": 6}  # fmt: skip
    assert [rc.receive(timeout=10)["data"] for _ in range(6)] == list(range(4, 10))
    a.emit("msg", 10, to="chat:x")  # live, from the node it left
    assert rc.receive(timeout=10)["offset"] == 10
    assert (rc.duplicates, rc.gaps) == (0, 0)
    assert redis_server.client().xlen("wsflask:hist:chat:x") == 10


def test_redis_restart_is_reported_as_a_new_epoch(
    redis_server: Any, nodes: Any, clients: Any
) -> None:
    (a, ca) = nodes(redis_server.url)
    rc = join(ca, clients)
    a.emit("msg", 1, to="chat:x")
    assert rc.receive(timeout=10)["offset"] == 1
    epoch = rc.positions["chat:x"][1]
    rc.drop()
    wait_until(lambda: a.rooms.count("chat:x") == 0)
    redis_server.stop()
    lost = a.emit("msg", "lost", to="chat:x")  # Redis is down: not numbered, counted
    assert (lost.sent, lost.dropped, a.metrics.drops.get("history")) == (0, 1, 1)
    redis_server.start()  # same port, empty: the history is gone
    wait_until(lambda: ca.get("/readyz").status == 200)
    answer = rc.receive(timeout=10)["data"]
    assert (answer["recovered"], answer["reason"], answer["offset"]) == (
        False,
        "epoch_changed",
        0,
    )
    assert answer["epoch"] != epoch
    a.emit("msg", 2, to="chat:x")
    live = rc.receive(timeout=10)
    assert (live["offset"], live["epoch"], live["data"]) == (1, answer["epoch"], 2)


def test_forged_numbered_publication_is_dropped(
    redis_server: Any, nodes: Any, clients: Any
) -> None:
    a, ca = nodes(redis_server.url, backplane_secret="s3cret")
    rc = join(ca, clients)
    wait_until(lambda: a.cluster is not None and a.cluster.subscribed("chat:x"))
    before = a.metrics.drops.get("backplane_invalid", 0)
    forged = b'WSH199:beef:WSF1\x00\x00\x00\x02{}{"event":"evil"}'
    assert redis_server.client().publish("wsflask:room:chat:x", forged) == 1
    wait_until(lambda: a.metrics.drops.get("backplane_invalid", 0) == before + 1)
    a.emit("msg", "real", to="chat:x")
    got = rc.receive(timeout=10)
    assert (got["data"], got["offset"]) == ("real", 1)  # the forgery was never delivered
