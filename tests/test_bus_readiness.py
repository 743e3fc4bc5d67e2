"""Readiness before the bus: a late FIRST backplane session counts as a reconnection.

WebSocket clients accepted while the bus is not up yet (``/readyz`` answers 503 meanwhile;
connections are not refused) may have missed cluster traffic, so when the first session
comes up after a failed attempt or later than one ``backplane_interval`` after start, each
room with local members gets the gap notice, as after a reconnection.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from gevent.event import Event
from helpers import wait_until

from wsflask import App
from wsflask.backplane.bridge import Bridge
from wsflask.backplane.memory import MemoryBackplane, hub


class GatedBus(MemoryBackplane):
    """A memory bus whose sessions only begin once ``gate`` is set (a slow first connect,
    no failure in between)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = Event()

    def listen(self) -> Iterator[tuple[str, bytes]]:
        self.gate.wait()
        yield from super().listen()


def serve_rooms(app: App) -> Any:
    """``/r/<room>`` joins ``room`` and says ``{"joined": room}``; returns a test client."""

    @app.route("/r/<room>")
    def handler(ws: Any, room: str) -> None:
        app.rooms.join(room, ws)
        ws.send(json.dumps({"joined": room}))
        for _ in ws:
            pass

    return app.test_client(timeout=10)


def test_slow_first_session_sends_gap_notices(app_factory: Callable[..., App]) -> None:
    name = f"readiness-{uuid.uuid4().hex[:8]}"
    app = app_factory(backplane=f"memory://{name}", backplane_interval=0.2)
    bus = GatedBus(name)
    app.cluster = Bridge(app.rooms, app.config, app.metrics, backplane=bus)

    client = serve_rooms(app)
    assert client.get("/readyz").status == 503
    ws = client.connect("/r/lobby")  # accepted before the first session
    try:
        assert json.loads(str(client.receive(ws))) == {"joined": "lobby"}
        assert app.cluster.failures_total == 0  # nothing failed: the bus is just not up yet
        since = time.monotonic()
        wait_until(lambda: time.monotonic() - since > 0.25)  # later than one interval
        bus.gate.set()
        notice = json.loads(str(client.receive(ws, timeout=10)))
        assert notice == {"event": "_gap", "data": {"room": "lobby"}}
        wait_until(lambda: client.get("/readyz").status == 200)
    finally:
        ws.close()
        client.close()


def test_first_session_after_a_failure_sends_gap_notices(
    app_factory: Callable[..., App],
) -> None:
    name = f"readiness-{uuid.uuid4().hex[:8]}"
    bus = hub(name)
    bus.cut()  # the bus is down when the node starts
    app = app_factory(backplane=f"memory://{name}", backplane_interval=0.5,
                      backplane_backoff_max=0.2)  # fmt: skip

    client = serve_rooms(app)
    assert client.get("/readyz").status == 503
    ws = client.connect("/r/lobby")  # accepted before the bus is up
    try:
        assert json.loads(str(client.receive(ws))) == {"joined": "lobby"}
        assert app.cluster is not None and app.cluster.failures_total >= 1
        bus.restore()
        notice = json.loads(str(client.receive(ws, timeout=10)))
        assert notice == {"event": "_gap", "data": {"room": "lobby"}}
        wait_until(lambda: client.get("/readyz").status == 200)
    finally:
        ws.close()
        client.close()


def test_first_session_without_members_sends_nothing(app_factory: Callable[..., App]) -> None:
    name = f"readiness-{uuid.uuid4().hex[:8]}"
    app = app_factory(backplane=f"memory://{name}", backplane_interval=0.5)

    client = serve_rooms(app)
    wait_until(lambda: client.get("/readyz").status == 200)
    ws = client.connect("/r/lobby")  # after the first session: no notice owed
    try:
        assert json.loads(str(client.receive(ws))) == {"joined": "lobby"}
        app.emit("after", 1, to="lobby")
        assert json.loads(str(client.receive(ws))) == {"event": "after", "data": 1}
    finally:
        ws.close()
        client.close()
