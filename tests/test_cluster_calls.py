"""``app.call(event, data, to=room)`` across two nodes on a real ``redis-server``.

Members on both nodes are real clients on 127.0.0.1: they answer, answer with an error, never
answer, or disconnect mid-call. The caller gets one entry per member keyed by connection id;
the remote disconnect is reported failed while the call still waits for the silent member
(an ordering, not a timing); the silent one times out. Answers travel in batches (``MAX_BATCH``
made 2 here, so the called list and the replies span several envelopes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from helpers import wait_until
from test_group_calls import member, refuse
from test_group_calls import readers as readers  # the fixture

from wsflask import App
from wsflask.backplane import group
from wsflask.client import connect

FAST: dict[str, Any] = {
    "backplane_interval": 1.0,
    "backplane_backoff_max": 0.5,
    "shutdown_grace": 2.0,
    "close_timeout": 1.0,
}
#: the call's deadline: generous, the outcomes must come from events long before it
DEADLINE = 3.0


@pytest.fixture
def nodes(redis_server: Any) -> Iterator[Callable[[], tuple[App, Any]]]:
    """``nodes()`` -> ``(app, test_client)``: ``/r`` joins "room" and greets ``{"id"}``."""
    made: list[Any] = []

    def node() -> tuple[App, Any]:
        app = App(backplane=redis_server.url, **FAST)

        @app.route("/r")
        def handler(ws: Any) -> None:
            app.rooms.join("room", ws)
            ws.send(json.dumps({"id": ws.id}))
            for _ in ws:
                pass

        client = app.test_client(timeout=10)
        made.append(client)
        wait_until(lambda: client.get("/readyz").status == 200)
        return app, client

    yield node
    for client in made:
        client.close()


def test_members_on_both_nodes_answer_fail_and_time_out(
    nodes: Any, readers: list[gevent.Greenlet], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group, "MAX_BATCH", 2)
    (a, ca), (_, cb) = nodes(), nodes()
    here, here_id = member(ca, readers, lambda data: f"a:{data['q']}")
    there, there_id = member(cb, readers, lambda data: f"b:{data['q']}")
    no, no_id = member(cb, readers, refuse)
    silent, silent_id = member(cb, readers)  # no handler: the call is a plain message to it
    leaving = connect(cb.url("/r"))  # reads only when the test says
    leaving_id = json.loads(str(leaving.receive(timeout=5)))["id"]
    wait_until(lambda: a.rooms.presence_stats("room", cluster=True) == {
        "connections": 5, "nodes": 2})  # fmt: skip
    started = time.monotonic()
    caller = gevent.spawn(a.call, "poll", {"q": "lunch"}, to="room", timeout=DEADLINE)
    try:
        call = json.loads(str(leaving.receive(timeout=10)))  # the call reached B's member
        assert (call["event"], call["data"], call["id"][0]) == ("poll", {"q": "lunch"}, "s")
        leaving.close()  # it never answers: it leaves
        assert a.cluster is not None
        calls = a.cluster.group
        wait_until(lambda: any(leaving_id in r.failed for r in calls.in_progress()))
        assert not caller.ready()  # failed while the call still waits for the silent one
        result = caller.get(timeout=DEADLINE + 10)
    finally:
        gevent.kill(caller)
    assert time.monotonic() - started < DEADLINE + 5  # the deadline ended it, not later
    assert result.replies == {here_id: "a:lunch", there_id: "b:lunch"}
    assert result.failed == {
        no_id: "CallError: ValueError: no vote",
        leaving_id: "disconnected",
    }
    assert result.timed_out == [silent_id]
    for ws in (here, there, no, silent):
        ws.close()
    gevent.joinall(readers, timeout=10)


def test_a_cluster_call_completes_before_its_deadline(
    nodes: Any, readers: list[gevent.Greenlet]
) -> None:
    (a, ca), (b, cb) = nodes(), nodes()
    members = [member(c, readers, lambda data: data * 2) for c in (ca, cb, cb)]
    wait_until(lambda: a.rooms.presence_stats("room", cluster=True)["connections"] == 3)
    started = time.monotonic()
    result = a.call("poll", 21, to="room", timeout=30.0)  # returns as the last reply lands
    assert time.monotonic() - started < 15  # generous: settled by the replies, not at 30 s
    assert result.replies == {ws_id: 42 for _, ws_id in members}
    assert (result.failed, result.timed_out, result.complete) == ({}, [], True)
    assert b.call("poll", 1, to="nobody", timeout=30.0).complete  # an empty room: at once
    too_big = "x" * (a.config.max_message_size + 1)
    with pytest.raises(ValueError, match="max_message_size"):  # refused before any call
        a.call("poll", too_big, to="room", timeout=30.0)
    assert a.metrics.drops.get("too_big") == 1
    for ws, _ in members:
        ws.close()
    gevent.joinall(readers, timeout=10)
