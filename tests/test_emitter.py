"""The Emitter: publishing to the rooms of every node from a process that runs no server.

In-process nodes on the ``memory://`` hub for routing (rooms, personal ids, everyone, skip);
a real ``redis-server`` for an Emitter shared by threads (defect 3).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import wait_until

from wsflask import App
from wsflask.backplane import Emitter

_names = itertools.count(1)
FAST: dict[str, Any] = {
    "backplane_interval": 0.2,
    "backplane_backoff_max": 0.3,
    "shutdown_grace": 1.0,
    "close_timeout": 1.0,
}


@pytest.fixture
def node() -> Iterator[Callable[[str], tuple[App, Any]]]:
    """``node(url)`` -> ``(app, test_client)``: members of ``/r/<room>`` get ``{"hello": id}``."""
    clients: list[Any] = []

    def make(url: str) -> tuple[App, Any]:
        app = App(backplane=url, **FAST)

        @app.route("/r/<room>")
        def chat(ws: Any, room: str) -> None:
            app.rooms.join(room, ws)
            ws.send(json.dumps({"hello": ws.id}))
            for _ in ws:
                pass

        client = app.test_client(timeout=10)
        clients.append(client)
        return app, client

    yield make
    for client in clients:
        client.close()


def join(client: Any, room: str) -> tuple[Any, str]:
    ws = client.connect(f"/r/{room}")
    return ws, client.receive_json(ws)["hello"]


def ready(*apps: App) -> None:
    wait_until(lambda: all(app.cluster is not None and app.cluster.ready for app in apps))


def test_emitter_reaches_members_on_every_node(node: Any) -> None:
    bus = f"memory://e{next(_names)}"
    (a, ca), (b, cb) = node(bus), node(bus)
    (wa, _), (wb, idb) = join(ca, "t"), join(cb, "t")
    ready(a, b)
    with Emitter(bus) as emitter:
        assert emitter.emit("news", {"n": 1}, to="t") == 2
        assert ca.receive_json(wa) == cb.receive_json(wb) == {"event": "news", "data": {"n": 1}}
        emitter.send(b"\x01bin", to=None)
        assert ca.receive(wa) == cb.receive(wb) == b"\x01bin"
        emitter.send("only b", to=idb)
        assert cb.receive(wb) == "only b"
        emitter.send("skip b", to="t", skip=idb)
        assert ca.receive(wa) == "skip b"
        emitter.send("last", to=None)
    assert cb.receive(wb) == "last"  # "skip b" never reached B's member
    assert ca.receive(wa) == "last"


# -- defect 3: one Emitter shared by threads ----------------------------------------------------


def test_defect3_an_emitter_shared_by_threads_loses_no_message(
    redis_server: Any, node: Any
) -> None:
    app, client = node(redis_server.url)
    ws, _ = join(client, "r")
    ready(app)
    redis = redis_server.client()
    wait_until(lambda: dict(redis.pubsub_numsub("wsflask:room:r"))[b"wsflask:room:r"] == 1)
    threads, sends = 8, 200
    with Emitter(redis_server.url) as emitter:

        def sender(n: int) -> None:
            for i in range(sends):
                emitter.send(f"{n}:{i}", to="r")

        workers = [threading.Thread(target=sender, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        try:
            got = [str(ws.receive(timeout=5)) for _ in range(threads * sends)]
        finally:
            for worker in workers:
                worker.join(30)
    for n in range(threads):  # every message, each thread's in the order it sent them
        assert [m for m in got if m.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(sends)]
    assert not app.metrics.drops


def test_an_emitter_given_the_secret_signs_and_one_without_is_dropped_and_counted() -> None:
    """With ``backplane_secret`` set, nodes drop unsigned envelopes: an Emitter must sign."""
    bus = f"memory://e{next(_names)}"
    app = App(backplane=bus, backplane_secret="s3cret", **FAST)

    @app.route("/r/<room>")
    def chat(ws: Any, room: str) -> None:
        app.rooms.join(room, ws)
        ws.send("joined")
        for _ in ws:
            pass

    with app.test_client(timeout=10) as client:
        ws = client.connect("/r/t")
        assert client.receive(ws) == "joined"
        ready(app)
        with Emitter(bus) as unsigned:
            unsigned.send("dropped", to="t")
        with Emitter(bus, secret="s3cret") as signed:
            signed.send("delivered", to="t")
        assert client.receive(ws) == "delivered"  # the unsigned one never arrived
        wait_until(lambda: app.metrics.drops.get("backplane_unsigned") == 1)
