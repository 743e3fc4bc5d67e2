"""Recoverable rooms with the in-process history, over real sockets on 127.0.0.1.

Positions on every event, the ``_recovery`` marker of each join, replay then live traffic
without gap or duplicate (also while publications race the replay), and each explicit
unrecoverable answer: too many missed, trimmed, epoch changed (bogus, or the stream expired),
malformed position. The Redis history and the stress run are in test_history_redis.py and
the last test here (``loadtests/recovery_stress.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from helpers import require_tool, wait_until

from wsflask import App
from wsflask.client import connect
from wsflask.history import MemoryHistory, replay_from
from wsflask.reconnect import RecoveringClient
from wsflask.recovery import parse_positions

ROOT = Path(__file__).resolve().parent.parent


def chat(app_factory: Callable[..., App], **rule: Any) -> tuple[App, Any]:
    """An app whose ``/c/<room>`` joins ``room`` and reads until the close."""
    app = app_factory()
    app.rooms.recoverable("chat:*", **rule)

    @app.route("/c/<room>")
    def handler(ws: Any, room: str) -> None:
        app.rooms.join(room, ws)
        for _ in ws:
            pass

    return app, app.test_client(timeout=10)


@pytest.fixture
def clients() -> Iterator[list[RecoveringClient]]:
    made: list[RecoveringClient] = []
    yield made
    for rc in made:
        rc.close()


def recovering(client: Any, made: list[RecoveringClient], room: str = "chat:a") -> Any:
    rc = RecoveringClient(client.url(f"/c/{room}"), attempts=50)
    made.append(rc)
    return rc


def marker(rc: RecoveringClient) -> dict[str, Any]:
    envelope = rc.receive(timeout=5)
    assert envelope["event"] == "_recovery", envelope
    data: dict[str, Any] = envelope["data"]
    return data


def take(rc: RecoveringClient, n: int) -> list[dict[str, Any]]:
    return [rc.receive(timeout=5) for _ in range(n)]


def offline(app: App, rc: RecoveringClient, room: str = "chat:a") -> None:
    """Drop ``rc``'s connection and wait until the server saw it leave."""
    rc.drop()
    wait_until(lambda: app.rooms.count(room) == 0)


def test_events_carry_positions(app_factory: Callable[..., App], clients: Any) -> None:
    app, client = chat(app_factory)
    rc = recovering(client, clients)
    first = marker(rc)
    assert first["room"] == "chat:a" and first["recovered"] is False and first["offset"] == 0
    assert "reason" not in first  # a first join: nothing was asked
    for i in range(1, 6):
        app.emit("msg", i, to="chat:a")
    got = take(rc, 5)
    assert [e["offset"] for e in got] == [1, 2, 3, 4, 5]
    assert {e["epoch"] for e in got} == {first["epoch"]}
    assert got[0] == {"event": "msg", "data": 1, "room": "chat:a", "offset": 1,
                      "epoch": first["epoch"]}  # fmt: skip


def test_other_rooms_are_untouched(app_factory: Callable[..., App]) -> None:
    app, client = chat(app_factory)
    ws = client.connect("/c/plain")
    wait_until(lambda: app.rooms.count("plain") == 1)
    try:
        app.emit("msg", 1, to="plain")
        assert json.loads(str(client.receive(ws))) == {"event": "msg", "data": 1}
    finally:
        ws.close()


def test_recoverable_rooms_refuse_raw_data(app_factory: Callable[..., App]) -> None:
    app, _ = chat(app_factory)
    with pytest.raises(ValueError, match="event envelopes"):
        app.send(b"\x00raw", to="chat:a")
    with pytest.raises(ValueError, match="event envelopes"):
        app.send("not json", to="chat:a")


def test_rejoin_replays_then_goes_live(app_factory: Callable[..., App], clients: Any) -> None:
    app, client = chat(app_factory)
    rc = recovering(client, clients)
    epoch = marker(rc)["epoch"]
    for i in range(1, 4):
        app.emit("msg", i, to="chat:a")
    assert [e["data"] for e in take(rc, 3)] == [1, 2, 3]
    offline(app, rc)
    for i in range(4, 9):
        app.emit("msg", i, to="chat:a")
    again = marker(rc)
    assert again == {"room": "chat:a", "recovered": True, "offset": 8, "epoch": epoch,
                     "replayed": 5}  # fmt: skip
    assert [(e["data"], e["offset"]) for e in take(rc, 5)] == [(i, i) for i in range(4, 9)]
    app.emit("msg", 9, to="chat:a")
    assert rc.receive(timeout=5)["offset"] == 9
    assert (rc.duplicates, rc.gaps, rc.reconnects) == (0, 0, 2)


def test_publications_racing_the_replay_are_held(
    app_factory: Callable[..., App], clients: Any
) -> None:
    """A publisher never pauses while the client is kicked again and again: the client sees
    every publication once, in order (replay first, then what was held, then live)."""
    app, client = chat(app_factory)
    rc = recovering(client, clients)
    marker(rc)
    total, sent = 400, [0]

    seen: list[int] = []

    def publish() -> None:  # never more than 40 ahead of the reader: always interleaved
        while sent[0] < total:
            if sent[0] - len(seen) < 40:
                sent[0] += 1
                app.emit("msg", sent[0], to="chat:a")
            gevent.sleep(0.001)

    publisher = gevent.spawn(publish)
    drops, last = 0, 0
    try:
        while len(seen) < total:
            envelope = rc.receive(timeout=10)
            if envelope["event"] == "_recovery":
                assert envelope["data"]["recovered"] is True, envelope
                continue
            seen.append(envelope["data"])
            assert envelope["offset"] == envelope["data"]
            if len(seen) - last >= 30 and rc.ws is not None and rc.ws.is_open:
                drops, last = drops + 1, len(seen)
                rc.drop()  # reconnects on the next receive, mid-stream
    finally:
        publisher.kill()
    assert seen == list(range(1, total + 1))
    assert (rc.duplicates, rc.gaps) == (0, 0)
    assert drops > 5 and rc.reconnects >= drops


def test_too_many_missed_is_unrecoverable(app_factory: Callable[..., App], clients: Any) -> None:
    app, client = chat(app_factory, history_size=3)
    rc = recovering(client, clients)
    epoch = marker(rc)["epoch"]
    offline(app, rc)
    for i in range(1, 6):
        app.emit("msg", i, to="chat:a")
    answer = marker(rc)
    assert answer == {"room": "chat:a", "recovered": False, "reason": "too_many", "offset": 5,
                      "epoch": epoch}  # fmt: skip
    app.emit("msg", 6, to="chat:a")  # no partial replay came first: the next is live
    assert rc.receive(timeout=5)["offset"] == 6
    assert rc.gaps == 0


def test_trimmed_history_is_unrecoverable(app_factory: Callable[..., App], clients: Any) -> None:
    app, client = chat(app_factory, history_size=3, max_replay=10)
    rc = recovering(client, clients)
    marker(rc)
    offline(app, rc)
    for i in range(1, 6):
        app.emit("msg", i, to="chat:a")
    answer = marker(rc)
    assert (answer["recovered"], answer["reason"], answer["offset"]) == (False, "trimmed", 5)


def test_changed_epoch_is_unrecoverable(app_factory: Callable[..., App], clients: Any) -> None:
    app, client = chat(app_factory)
    rc = recovering(client, clients)
    epoch = marker(rc)["epoch"]
    app.emit("msg", 1, to="chat:a")
    rc.receive(timeout=5)
    offline(app, rc)
    rc.positions["chat:a"] = (1, "deadbeef")
    answer = marker(rc)
    assert answer == {"room": "chat:a", "recovered": False, "reason": "epoch_changed",
                      "offset": 1, "epoch": epoch}  # fmt: skip


def test_expired_stream_gets_a_new_epoch(app_factory: Callable[..., App], clients: Any) -> None:
    app, client = chat(app_factory, history_ttl=0.2)
    rc = recovering(client, clients)
    epoch = marker(rc)["epoch"]
    app.emit("msg", 1, to="chat:a")
    rc.receive(timeout=5)
    offline(app, rc)
    idle_since = time.monotonic()
    wait_until(lambda: time.monotonic() - idle_since > 0.25)  # the TTL runs out, idle
    answer = marker(rc)
    assert (answer["recovered"], answer["reason"]) == (False, "epoch_changed")
    assert answer["epoch"] != epoch and answer["offset"] == 0


def test_malformed_position_is_answered(app_factory: Callable[..., App]) -> None:
    _, client = chat(app_factory)
    ws = connect(client.url("/c/chat:a") + "?recover=%7Bnot-json")
    try:
        envelope = json.loads(str(ws.receive(timeout=5)))
        assert envelope["event"] == "_recovery"
        assert (envelope["data"]["recovered"], envelope["data"]["reason"]) == (
            False,
            "bad_position",
        )
    finally:
        ws.close()


def test_parse_positions_bounds() -> None:
    assert parse_positions(None) == {}
    assert parse_positions('{"r":{"offset":3,"epoch":"ab"}}') == {"r": (3, "ab")}
    assert parse_positions('{"r":{"offset":-1,"epoch":"ab"}}') is None
    assert parse_positions('{"r":{"offset":true,"epoch":"ab"}}') is None
    assert parse_positions('{"r":{"offset":1,"epoch":""}}') is None
    assert parse_positions("[1]") is None
    many = {f"r{i}": {"offset": 1, "epoch": "e"} for i in range(129)}
    assert parse_positions(json.dumps(many)) is None


def test_replay_is_whole_or_nothing() -> None:
    seen: list[int] = []
    history = MemoryHistory(lambda room, offset, epoch, body, exclude: seen.append(offset))
    for i in range(10):
        history.publish("r", f'{{"event":"m","data":{i}}}', 5, 60.0, [])
    assert seen == list(range(1, 11))
    epoch = history.read("r", None, None, 5, 5, 60.0).epoch
    whole = history.read("r", 7, epoch, 5, 5, 60.0)
    assert whole.recovered and [p.offset for p in whole.publications] == [8, 9, 10]
    assert history.read("r", 10, epoch, 5, 5, 60.0).publications == []
    assert history.read("r", 4, epoch, 10, 5, 60.0).reason == "trimmed"
    assert history.read("r", 11, epoch, 5, 5, 60.0).reason == "unknown_offset"
    assert replay_from(1, "e", 3, "e", [], 5).reason == "trimmed"


def test_stress_script_thirty_seconds(tmp_path: Path) -> None:
    """``loadtests/recovery_stress.py`` for 30 s: two nodes on one real redis-server."""
    require_tool("redis-server", "apt-get install -y redis-server")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "recovery_stress.py"), "--duration", "30",
         "--dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "OK" in done.stdout


def test_client_repairs_a_gap_by_recovering(app_factory: Callable[..., App], clients: Any) -> None:
    """A publication the member did not get live (here its live copy is cut; in production
    a ``drop`` backpressure policy) is noticed from the next offset and fetched by
    recovering."""
    app, client = chat(app_factory)
    rc = recovering(client, clients)
    marker(rc)
    app.emit("msg", 1, to="chat:a")
    assert rc.receive(timeout=5)["data"] == 1
    recovery = app.rooms.recovery
    assert recovery is not None
    history = recovery.history
    assert isinstance(history, MemoryHistory)
    live = history.on_live
    history.on_live = lambda *args: None  # numbered and kept, its live copy lost
    try:
        app.emit("msg", 2, to="chat:a")
    finally:
        history.on_live = live
    app.emit("msg", 3, to="chat:a")
    answer = marker(rc)  # the client saw 3 after 1: it reconnected from offset 1
    assert (answer["recovered"], answer["replayed"]) == (True, 2)
    assert [rc.receive(timeout=5)["data"] for _ in range(2)] == [2, 3]
    assert (rc.gaps, rc.duplicates, rc.reconnects) == (1, 0, 2)


def test_a_skipped_member_moves_on_without_a_gap(
    app_factory: Callable[..., App], clients: Any
) -> None:
    """``skip=`` in a recoverable room: the member left out gets the position alone
    (``_skipped``), so its client neither shows it nor takes the hole for a loss."""
    app, client = chat(app_factory)
    rc = recovering(client, clients)
    marker(rc)
    (skipped,) = app.rooms.members("chat:a")
    plain = client.connect("/c/chat:a")
    assert json.loads(plain.receive(timeout=5))["event"] == "_recovery"
    app.emit("msg", 1, to="chat:a")
    app.emit("msg", 2, to="chat:a", skip=skipped)
    app.emit("msg", 3, to="chat:a")
    first, third = take(rc, 2)
    assert (first["data"], third["data"]) == (1, 3)
    assert third["offset"] == first["offset"] + 2
    assert (rc.gaps, rc.duplicates, rc.reconnects) == (0, 0, 1)
    assert rc.positions["chat:a"] == (third["offset"], third["epoch"])
    got = [json.loads(plain.receive(timeout=5)) for _ in range(3)]  # the other member: all
    assert [g["data"] for g in got] == [1, 2, 3]
    plain.close()
    assert [g["offset"] for g in got] == [first["offset"] + i for i in range(3)]


def test_the_skipped_notice_carries_the_position_alone(
    app_factory: Callable[..., App], clients: Any
) -> None:
    app, client = chat(app_factory)
    plain = client.connect("/c/chat:a")
    assert json.loads(plain.receive(timeout=5))["event"] == "_recovery"
    (member,) = app.rooms.members("chat:a")
    app.emit("msg", 1, to="chat:a", skip=member)
    notice = json.loads(plain.receive(timeout=5))
    plain.close()
    assert notice == {
        "event": "_skipped", "data": None, "room": "chat:a", "offset": 1, "epoch": notice["epoch"],
    }  # fmt: skip
