"""``app.emit``/``app.send`` from other OS threads: handed to the hub thread, delivered once.

A ``threading.Thread`` and a ``ThreadPoolExecutor`` emit while the hub serves; every member
of the room receives every message exactly once, over real sockets. The hub's own thread
calls ``broadcast`` directly (no handoff). Thread ids are the OS ones (``os_thread_id``): the
suite may run after a test that monkey-patched ``threading``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gevent
import pytest
from gevent.threadpool import ThreadPool
from helpers import wait_until

from wsflask import App
from wsflask.handoff import os_thread_id

MEMBERS = 3


@pytest.fixture
def app_factory(app_factory: Callable[..., App]) -> Iterator[Callable[..., App]]:
    """The shared factory, plus: every test client an app made is closed after the test
    (its connections too, also when an assertion failed first)."""
    apps: list[App] = []

    def make(**settings: Any) -> App:
        app = app_factory(**settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        for client in getattr(app, "clients", ()):
            client.close()


def room_app(app_factory: Callable[..., App]) -> tuple[App, Any, list[Any]]:
    """An app with ``MEMBERS`` members in "room"; ``app.delivered_in`` records the OS thread
    of each delivery (the hub thread's only, if the handoff works)."""
    app = app_factory()
    threads: list[int] = []
    deliver = app.rooms.deliver

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(os_thread_id())
        return deliver(*args, **kwargs)

    app.rooms.deliver = spy  # type: ignore[method-assign]
    app.delivered_in = threads  # type: ignore[attr-defined]

    @app.route("/r")
    def handler(ws: Any) -> None:
        app.rooms.join("room", ws)
        for _ in ws:
            pass

    client = app.test_client(timeout=10)
    app.clients = [client]  # type: ignore[attr-defined]
    members = [client.connect("/r") for _ in range(MEMBERS)]
    wait_until(lambda: app.rooms.count("room") == MEMBERS)
    return app, client, members


def collect(client: Any, members: list[Any], count: int) -> list[list[Any]]:
    got: list[list[Any]] = []
    for ws in members:
        got.append([json.loads(str(client.receive(ws))) for _ in range(count)])
    return got


def run_in_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a real OS thread; the hub keeps serving while we wait for it."""
    pool = ThreadPool(1)
    try:
        pool.spawn(fn).get(timeout=30)  # cooperative wait: the hub serves meanwhile
    finally:
        pool.kill()


def test_emit_from_a_thread(app_factory: Callable[..., App]) -> None:
    app, client, members = room_app(app_factory)
    results: list[int] = []
    idents: list[int] = []

    def work() -> None:
        thread = threading.Thread(target=lambda: emit_all(app, 50, results, idents))
        thread.start()
        thread.join(timeout=30)

    run_in_thread(work)
    assert idents and idents[0] != os_thread_id()
    assert app.delivered_in == [os_thread_id()] * 50  # type: ignore[attr-defined]
    assert results == [MEMBERS] * 50  # each broadcast reached every member
    for got in collect(client, members, 50):
        assert [e["data"] for e in got] == list(range(50))


def emit_all(app: App, count: int, results: list[int], idents: list[int]) -> None:
    idents.append(os_thread_id())
    for i in range(count):
        results.append(app.emit("msg", i, to="room").sent)


def test_emit_and_send_from_a_thread_pool(app_factory: Callable[..., App]) -> None:
    app, client, members = room_app(app_factory)
    sent: list[int] = []

    def work() -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(app.emit, "msg", i, to="room") for i in range(40)]
            futures += [pool.submit(app.send, json.dumps({"raw": i}), to="room") for i in range(40)]
            sent.extend(f.result(timeout=30).sent for f in futures)

    run_in_thread(work)
    assert sent == [MEMBERS] * 80
    assert app.delivered_in == [os_thread_id()] * 80  # type: ignore[attr-defined]
    for got in collect(client, members, 80):
        events = sorted(e["data"] for e in got if "event" in e)
        raws = sorted(e["raw"] for e in got if "raw" in e)
        assert events == list(range(40)) and raws == list(range(40))  # once each


def test_the_hub_thread_is_not_handed_off(app_factory: Callable[..., App]) -> None:
    app, client, members = room_app(app_factory)
    assert not app.handoff.foreign()
    assert app.emit("msg", 1, to="room").sent == MEMBERS
    gevent.idle()
    for got in collect(client, members, 1):
        assert got == [{"event": "msg", "data": 1}]
