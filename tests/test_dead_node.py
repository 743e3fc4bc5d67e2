"""A dead node's members leave their rooms within one interval (plus grace), with ``_left``.

Node A is a real process (``wsflask run tests.backplane_node:app``) on a real
``redis-server``; the survivor B runs in this process with ``_joined``/``_left`` notices on
for room ``t``. SIGKILL (no graceful shutdown) of A: B's member gets ``_left`` for each of
A's members once, within ``interval + grace(interval)`` of the kill plus ``SLACK`` (delivery
and a loaded test machine; the old behaviour was no notice at all and presence gone only
after three intervals), and ``presence("t", cluster=True)`` no longer lists them. A SIGTERM
(clean leave) sends no such notice.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from helpers import wait_until

from wsflask import App
from wsflask.backplane.liveness import grace
from wsflask.client import connect

INTERVAL = 1.0
#: delivery of the notices and a loaded machine, on top of ``INTERVAL + grace(INTERVAL)``
SLACK = 0.5


def _env(url: str) -> dict[str, str]:
    return {
        "WSFLASK_BACKPLANE": url,
        "WSFLASK_BACKPLANE_INTERVAL": str(INTERVAL),
        "WSFLASK_BACKPLANE_BACKOFF_MAX": "0.5",
        "WSFLASK_SHUTDOWN_GRACE": "3",
        "WSFLASK_CLOSE_TIMEOUT": "1",
    }


@pytest.fixture
def survivor(redis_server: Any) -> Iterator[tuple[App, Any]]:
    """Node B in this process: ``/r/<room>`` joins and greets ``{"id": ws.id}``."""
    app = App(backplane=redis_server.url, backplane_interval=INTERVAL, shutdown_grace=2.0,
              close_timeout=1.0)  # fmt: skip
    app.rooms.presence_events("t")

    @app.route("/r/<room>")
    def handler(ws: Any, room: str) -> None:
        app.rooms.join(room, ws)
        ws.send(json.dumps({"id": ws.id}))
        for _ in ws:
            pass

    client = app.test_client(timeout=10)
    wait_until(lambda: client.get("/readyz").status == 200)
    yield app, client
    client.close()


def _cluster_of_two(
    redis_server: Any, wsflask_run: Any, survivor: tuple[App, Any]
) -> tuple[Any, Any, Any, list[Any], list[str]]:
    """A started, B's member in ``t``, two of A's members in ``t``, all seen by B."""
    node_a = wsflask_run("tests.backplane_node:app", "--port", "0", env=_env(redis_server.url))
    port_a = node_a.wait_serving()
    app, client = survivor
    mine = client.connect("/r/t")
    my_id = json.loads(str(client.receive(mine)))["id"]
    theirs = [connect(f"ws://127.0.0.1:{port_a}/r/t", timeout=10) for _ in range(2)]
    their_ids = [json.loads(str(ws.receive(timeout=10)))["hello"] for ws in theirs]
    wait_until(lambda: app.rooms.presence("t", cluster=True).ids == [my_id, *their_ids])
    watch = app.cluster.watch if app.cluster is not None else None
    assert watch is not None
    node = their_ids[0].split(".")[0]
    wait_until(lambda: node in watch.alive)
    return node_a, mine, my_id, theirs, their_ids


def test_sigkilled_node_members_leave_within_one_interval(
    redis_server: Any, wsflask_run: Any, survivor: tuple[App, Any]
) -> None:
    app, client = survivor
    node_a, mine, my_id, theirs, their_ids = _cluster_of_two(redis_server, wsflask_run, survivor)
    try:
        os.kill(node_a.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        notices = [json.loads(str(client.receive(mine, timeout=10))) for _ in their_ids]
        elapsed = time.monotonic() - killed
        assert sorted(n["data"]["id"] for n in notices) == sorted(their_ids)
        assert {(n["event"], n["data"]["room"]) for n in notices} == {("_left", "t")}
        assert elapsed <= INTERVAL + grace(INTERVAL) + SLACK, elapsed
        page = app.rooms.presence("t", cluster=True)
        assert (page.ids, page.total) == ([my_id], 1)
        assert app.rooms.presence_stats("t", cluster=True) == {"connections": 1, "nodes": 1}
        app.emit("after", 1, to="t")  # the next message: no second round of notices
        assert json.loads(str(client.receive(mine, timeout=10))) == {"event": "after", "data": 1}
    finally:
        node_a.proc.wait(timeout=10)
        for ws in (mine, *theirs):
            ws.close()


def test_a_group_call_fails_a_lost_nodes_members_at_once(
    redis_server: Any, wsflask_run: Any, survivor: tuple[App, Any]
) -> None:
    """Group calls (``backplane/group.py``): members of a node that dies mid-call fail with
    ``"node_lost"`` once liveness declares it lost, before the call's deadline."""
    app, _ = survivor
    node_a, mine, my_id, theirs, their_ids = _cluster_of_two(redis_server, wsflask_run, survivor)
    caller = gevent.spawn(app.call, "poll", None, to="t", timeout=30.0)
    try:
        for ws in theirs:  # the request reached A's members (they never answer)
            assert json.loads(str(ws.receive(timeout=10)))["event"] == "poll"
        os.kill(node_a.proc.pid, signal.SIGKILL)
        assert app.cluster is not None
        calls = app.cluster.group
        wait_until(lambda: any(len(r.failed) == 2 for r in calls.in_progress()))
        assert not caller.ready()  # still waiting for our own silent member
        partial = calls.in_progress()[0]
        assert partial.failed == dict.fromkeys(their_ids, "node_lost")
        assert my_id not in partial.replies and my_id not in partial.failed
    finally:
        gevent.kill(caller)
        node_a.proc.wait(timeout=10)
        for ws in (mine, *theirs):
            ws.close()


def test_clean_stop_sends_no_notice(
    redis_server: Any, wsflask_run: Any, survivor: tuple[App, Any]
) -> None:
    app, client = survivor
    node_a, mine, my_id, theirs, _ = _cluster_of_two(redis_server, wsflask_run, survivor)
    try:
        node_a.proc.send_signal(signal.SIGTERM)
        for ws in theirs:
            assert ws.receive(timeout=10) is None and ws.close_code == 1001
        assert node_a.wait_exit(timeout=20) == 0
        wait_until(lambda: app.rooms.presence("t", cluster=True).ids == [my_id])
        watch = app.cluster.watch if app.cluster is not None else None
        assert watch is not None
        wait_until(lambda: not watch.alive)  # B saw A leave
        app.emit("after", 1, to="t")
        assert json.loads(str(client.receive(mine, timeout=10))) == {"event": "after", "data": 1}
        assert not watch.lost
    finally:
        for ws in (mine, *theirs):
            ws.close()


def test_a_stalled_node_leaves_then_comes_back(
    app_factory: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the memory bus: node A stops renewing its beat (a stall, a partition) -> B's
    member gets ``_left`` for A's; A beats again -> ``_joined``, and presence lists it."""
    bus = f"memory://dead-{uuid.uuid4().hex[:8]}"
    apps = []
    for _ in range(2):
        app = app_factory(backplane=bus, backplane_interval=0.2)
        app.rooms.presence_events("t")

        @app.route("/r/<room>")
        def handler(ws: Any, room: str, app: App = app) -> None:
            app.rooms.join(room, ws)
            ws.send(json.dumps({"id": ws.id}))
            for _ in ws:
                pass

        apps.append(app)
    (a, b), (ca, cb) = apps, [app.test_client(timeout=10) for app in apps]
    try:
        wait_until(lambda: ca.get("/readyz").status == 200 and cb.get("/readyz").status == 200)
        theirs, mine = ca.connect("/r/t"), cb.connect("/r/t")
        their_id = json.loads(str(ca.receive(theirs)))["id"]
        my_id = json.loads(str(cb.receive(mine)))["id"]
        wait_until(lambda: b.rooms.presence("t", cluster=True).ids == [my_id, their_id])
        assert a.cluster is not None and b.cluster is not None and b.cluster.watch is not None
        watch = b.cluster.watch
        wait_until(lambda: a.cluster is not None and a.cluster.node in watch.alive)
        bus_a = a.cluster._bus
        assert bus_a is not None
        monkeypatch.setattr(bus_a, "beat", lambda node, ttl: None)  # A stops renewing
        left = json.loads(str(cb.receive(mine, timeout=10)))
        assert left == {"event": "_left", "data": {"room": "t", "id": their_id}}
        assert b.rooms.presence("t", cluster=True).ids == [my_id]
        monkeypatch.undo()
        back = json.loads(str(cb.receive(mine, timeout=10)))
        assert back == {"event": "_joined", "data": {"room": "t", "id": their_id}}
        wait_until(lambda: b.rooms.presence("t", cluster=True).ids == [my_id, their_id])
        theirs.close()
        mine.close()
    finally:
        ca.close()
        cb.close()
