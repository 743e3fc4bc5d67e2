"""Emitter publications to recoverable rooms are numbered like a node's, so they replay.

A node on a real ``redis-server`` makes ``chat:*`` recoverable; an ``Emitter`` (another
publisher on the bus, no server) declares the same rule. Its publications carry ``offset``
and ``epoch`` live, and a client that was disconnected while the Emitter published gets every
missed one back on reconnect (``recovered: true``, contiguous offsets, no gap or duplicate).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_until

from wsflask import App
from wsflask.backplane import Emitter
from wsflask.errors import ConfigError
from wsflask.reconnect import RecoveringClient

FAST: dict[str, Any] = {
    "backplane_interval": 1.0,
    "backplane_backoff_max": 0.5,
    "shutdown_grace": 2.0,
    "close_timeout": 1.0,
}


@pytest.fixture
def node(redis_server: Any) -> Iterator[tuple[App, Any]]:
    """A node with recoverable ``chat:*`` rooms on the test's redis-server."""
    app = App(backplane=redis_server.url, **FAST)
    app.rooms.recoverable("chat:*", history_size=100, history_ttl=60)

    @app.route("/c/<room>")
    def handler(ws: Any, room: str) -> None:
        app.rooms.join(room, ws)
        for _ in ws:
            pass

    client = app.test_client(timeout=10)
    wait_until(lambda: client.get("/readyz").status == 200)
    yield app, client
    client.close()


def test_missed_emitter_publications_are_recovered(redis_server: Any, node: Any) -> None:
    app, client = node
    rc = RecoveringClient(client.url("/c/chat:x"), attempts=100)
    emitter = Emitter(redis_server.url)
    try:
        emitter.recoverable("chat:*", history_size=100, history_ttl=60)
        assert rc.receive(timeout=10)["event"] == "_recovery"
        wait_until(lambda: app.cluster is not None and app.cluster.subscribed("chat:x"))
        assert emitter.emit("msg", 0, to="chat:x") == 1  # one node subscribed
        live = rc.receive(timeout=10)
        assert (live["data"], live["room"], live["offset"]) == (0, "chat:x", 1)
        epoch = live["epoch"]
        rc.drop()
        wait_until(lambda: app.rooms.count("chat:x") == 0)
        for i in range(1, 6):  # published while the client is away
            emitter.emit("msg", i, to="chat:x")
        marker = rc.receive(timeout=10)  # reconnects, presenting offset 1
        assert marker["data"] == {"room": "chat:x", "recovered": True, "offset": 6,
                                  "epoch": epoch, "replayed": 5}  # fmt: skip
        replayed = [rc.receive(timeout=10) for _ in range(5)]
        assert [e["offset"] for e in replayed] == [2, 3, 4, 5, 6]
        assert [e["data"] for e in replayed] == [1, 2, 3, 4, 5]
        assert {e["epoch"] for e in replayed} == {epoch}
        app.emit("msg", "node", to="chat:x")  # the node numbers after the emitter
        after = rc.receive(timeout=10)
        assert (after["data"], after["offset"], after["epoch"]) == ("node", 7, epoch)
        assert (rc.duplicates, rc.gaps, rc.reconnects) == (0, 0, 2)
        assert redis_server.client().xlen("wsflask:hist:chat:x") == 7
    finally:
        emitter.close()
        rc.close()


def test_recoverable_rooms_take_event_envelopes_and_need_redis(redis_server: Any) -> None:
    with Emitter(redis_server.url) as emitter:
        emitter.recoverable("chat:*")
        with pytest.raises(ValueError, match="event envelopes"):
            emitter.send(b"raw", to="chat:x")
        assert emitter.send("plain", to="other") == 0  # not recoverable: a plain envelope
    with Emitter("memory://emitter-recovery") as memory, pytest.raises(ConfigError):
        memory.recoverable("chat:*")
