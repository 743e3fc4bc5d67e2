"""``app.call(event, data, to=room)``: one reply per local member, keyed by connection id.

Real clients on 127.0.0.1 answer with an ack, with an error, not at all, or disconnect
mid-call; the result sorts them into replies, failed and timed out, and a disconnect fails
its member at once (the call returns long before its deadline).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from helpers import wait_until

from wsflask import App
from wsflask.client import connect


@pytest.fixture
def readers() -> Iterator[list[gevent.Greenlet]]:
    """The client-side reading greenlets of a test (killed if it failed before joining)."""
    made: list[gevent.Greenlet] = []
    yield made
    gevent.killall(made, timeout=5)


def setup(app_factory: Callable[..., App]) -> tuple[App, Any, dict[str, str]]:
    app = app_factory()

    @app.route("/r")
    def handler(ws: Any) -> None:
        app.rooms.join("room", ws)
        ws.send(json.dumps({"id": ws.id}))
        for _ in ws:
            pass

    client = app.test_client(timeout=10)
    return app, client, {}


def member(client: Any, readers: list[gevent.Greenlet], answer: Any = None) -> tuple[Any, str]:
    """A client in "room" that reads in a greenlet; ``answer(data)`` answers "poll" calls.

    A plain ``connect`` (the test client's connections share one call-handler table)."""
    ws = connect(client.url("/r"))
    ws_id = json.loads(str(ws.receive(timeout=5)))["id"]
    if answer is not None:
        ws.on_call("poll", answer)

    def read() -> None:
        for _ in ws:
            pass

    readers.append(gevent.spawn(read))
    return ws, ws_id


def refuse(data: Any) -> Any:
    raise ValueError("no vote")


def test_replies_errors_and_timeouts(
    app_factory: Callable[..., App], readers: list[gevent.Greenlet]
) -> None:
    app, client, _ = setup(app_factory)
    yes, yes_id = member(client, readers, lambda data: {"vote": data["q"] + "!"})
    no, no_id = member(client, readers, refuse)
    mute, mute_id = member(client, readers)  # no handler: the call is a plain message to it
    wait_until(lambda: app.rooms.count("room") == 3)
    result = app.call("poll", {"q": "lunch"}, to="room", timeout=1.0)
    assert result.replies == {yes_id: {"vote": "lunch!"}}
    assert result.failed == {no_id: "CallError: ValueError: no vote"}
    assert result.timed_out == [mute_id]
    assert not result.complete
    for ws in (yes, no, mute):
        ws.close()
    gevent.joinall(readers, timeout=10)


def test_a_disconnect_fails_at_once(
    app_factory: Callable[..., App], readers: list[gevent.Greenlet]
) -> None:
    app, client, _ = setup(app_factory)
    yes, yes_id = member(client, readers, lambda data: "ok")
    leaving = connect(client.url("/r"))  # reads only when the test says
    leaving_id = json.loads(str(leaving.receive(timeout=5)))["id"]
    wait_until(lambda: app.rooms.count("room") == 2)
    started = time.monotonic()
    caller = gevent.spawn(app.call, "poll", None, to="room", timeout=30.0)
    call = json.loads(str(leaving.receive(timeout=10)))  # the call reached it
    assert (call["event"], call["id"][0]) == ("poll", "s")
    leaving.close()  # it never answers: it leaves
    result = caller.get(timeout=20)
    assert time.monotonic() - started < 20  # settled by the disconnect, not the deadline
    assert result.replies == {yes_id: "ok"}
    assert result.failed == {leaving_id: "disconnected"}
    assert result.timed_out == []
    yes.close()
    gevent.joinall(readers, timeout=10)


def test_an_empty_room_answers_at_once(app_factory: Callable[..., App]) -> None:
    app, _, _ = setup(app_factory)
    result = app.call("poll", None, to="nobody", timeout=5.0)
    assert (result.replies, result.failed, result.timed_out, result.complete) == (
        {},
        {},
        [],
        True,
    )
