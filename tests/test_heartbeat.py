"""Heartbeat: spread pings, pong deadlines, liveness from any frame, RTT; HB-01..HB-03.

The unit tests drive ``run_due()`` with a fake clock and stand-in connections; the HB tests
use real sockets, a raw client that controls exactly what it answers, and small intervals.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import gevent
import gevent.event
import pytest
from gevent import socket as gsocket
from helpers import wait_until

from wsflask import App
from wsflask.backplane import Bridge
from wsflask.config import Config
from wsflask.heartbeat import Heartbeat, Pingable
from wsflask.metrics import Metrics
from wsflask.protocol import Opcode, encode_frame
from wsflask.rooms import Rooms
from wsflask.server import Service
from wsflask.websocket import Watcher

_ids = itertools.count(1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class StubWS:
    """A ``Pingable`` (the slice of ``WebSocket`` the heartbeat uses), on the fake clock."""

    def __init__(self, clock: Clock) -> None:
        self.id = f"hb{next(_ids)}"
        self.clock = clock
        self.is_open = True
        self.last_received = clock.now
        self.ping_sent_at: float | None = None
        self.latency: float | None = None
        self.pings: list[float] = []
        self.aborted: tuple[int, str] | None = None
        self.messages_received = 0  # read only with idle_timeout, which these tests leave off

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.abort(code, reason)

    def send_heartbeat_ping(self) -> None:
        self.ping_sent_at = self.clock.now
        self.pings.append(self.clock.now)

    def pong(self) -> None:
        assert self.ping_sent_at is not None
        self.latency = self.clock.now - self.ping_sent_at
        self.last_received = self.clock.now
        self.ping_sent_at = None

    def abort(self, code: int = 1011, reason: str = "") -> None:
        self.aborted = (code, reason)
        self.is_open = False


def test_heartbeat_is_a_service_and_a_watcher_and_the_bridge_a_service() -> None:
    clock = Clock()
    hb = Heartbeat(1.0, 1.0, clock=clock)
    services: list[Service] = [hb, Bridge(Rooms(), Config(backplane="memory://svc"))]
    watcher: Watcher = hb
    stub: Pingable = StubWS(clock)
    hb.add(stub)
    assert stub in hb and watcher is hb
    for service in services:
        service.start()
    try:
        assert hb._greenlet is not None and not hb._greenlet.dead
    finally:
        for service in reversed(services):
            service.stop()
    assert hb._greenlet is None
    hb.remove(stub)
    assert stub not in hb


def advance(hb: Heartbeat, clock: Clock, seconds: float, step: float = 0.25) -> None:
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + step)
        hb.run_due()


def test_first_pings_are_spread_over_the_interval() -> None:
    clock = Clock()
    hb = Heartbeat(10.0, 5.0, clock=clock)
    conns = [StubWS(clock) for _ in range(100)]
    for ws in conns:
        hb.add(ws)
    first: list[int] = []
    for _ in range(10):  # ten one-second steps through one interval
        clock.now += 1.0
        hb.run_due()
        first.append(sum(1 for ws in conns if ws.pings) - sum(first))
    assert all(ws.pings for ws in conns)  # everyone pinged within one interval
    assert max(first) <= 20  # and never more than a fifth of them on one tick


def test_answered_pings_repeat_every_interval_and_record_rtt() -> None:
    clock = Clock()
    metrics = Metrics()
    hb = Heartbeat(2.0, 1.0, metrics=metrics, clock=clock)
    ws = StubWS(clock)
    hb.add(ws)
    for _ in range(40):
        clock.now += 0.25
        hb.run_due()
        if ws.ping_sent_at is not None and clock.now - ws.ping_sent_at >= 0.25:
            ws.pong()
    assert ws.aborted is None
    gaps = [b - a for a, b in itertools.pairwise(ws.pings)]
    assert len(ws.pings) >= 4 and all(1.99 <= gap <= 2.26 for gap in gaps)
    assert ws.latency == pytest.approx(0.25)
    assert metrics.rtt_seconds.count >= 3


def test_silence_after_a_ping_aborts_with_1011() -> None:
    clock = Clock()
    hb = Heartbeat(2.0, 1.0, clock=clock)
    ws = StubWS(clock)
    hb.add(ws)
    advance(hb, clock, 2.0)
    assert len(ws.pings) == 1 and ws.aborted is None
    sent = ws.pings[0]
    advance(hb, clock, sent + 0.9 - clock.now)
    assert ws.aborted is None
    advance(hb, clock, 0.5)
    assert ws.aborted == (1011, "ping timeout")
    assert ws not in hb and len(hb) == 0


def test_any_frame_after_the_ping_counts_as_liveness() -> None:
    clock = Clock()
    hb = Heartbeat(2.0, 1.0, clock=clock)
    ws = StubWS(clock)
    hb.add(ws)
    advance(hb, clock, 2.0)
    clock.now += 0.1
    ws.last_received = clock.now  # a data frame, not the pong
    advance(hb, clock, ws.pings[0] + 1.5 - clock.now)  # past the first ping's deadline
    assert ws.aborted is None
    advance(hb, clock, 1.0)
    assert len(ws.pings) == 2  # pinging goes on at the interval
    assert ws.pings[1] - ws.pings[0] == pytest.approx(2.0, abs=0.3)


def test_timeout_longer_than_interval_does_not_reset_the_deadline() -> None:
    clock = Clock()
    hb = Heartbeat(1.0, 3.0, clock=clock)
    ws = StubWS(clock)
    hb.add(ws)
    advance(hb, clock, 1.0)
    first = ws.pings[0]
    advance(hb, clock, 4.0)
    assert ws.pings == [first]  # no new ping while one is outstanding
    assert ws.aborted == (1011, "ping timeout")


def test_remove_and_closed_connections() -> None:
    clock = Clock()
    hb = Heartbeat(1.0, 1.0, clock=clock)
    a, b = StubWS(clock), StubWS(clock)
    hb.add(a)
    hb.add(b)
    hb.add(a)  # no-op
    assert len(hb) == 2
    hb.remove(a)
    hb.remove(a)  # idempotent
    b.is_open = False
    advance(hb, clock, 3.0)
    assert a.pings == [] and b.pings == []
    assert len(hb) == 0 and hb.run_due() == 0


def test_a_connection_gone_before_the_next_tick_never_takes_a_heap_slot() -> None:
    clock = Clock()
    hb = Heartbeat(10.0, 5.0, clock=clock)
    brief, kept = StubWS(clock), StubWS(clock)
    hb.add(brief)
    hb.add(kept)
    assert brief in hb and len(hb) == 2  # watched from add() on, before any tick
    hb.remove(brief)  # a short-lived connection: closed before the heartbeat's next tick
    assert brief not in hb and len(hb) == 1
    hb.run_due()
    assert len(hb._heap) == 1  # only the connection still open got an entry
    advance(hb, clock, 10.0)
    assert brief.pings == [] and len(kept.pings) == 1


def test_closed_connections_do_not_keep_heap_slots_until_a_long_interval_ends() -> None:
    clock = Clock()
    hb = Heartbeat(86400.0, 10.0, clock=clock)  # a ping a day: slots would wait a day
    for _ in range(3):  # three waves: 1,000 open, all close
        wave = [StubWS(clock) for _ in range(1000)]
        for ws in wave:
            hb.add(ws)
        hb.run_due()
        assert len(hb._heap) == 1000
        for ws in wave:
            hb.remove(ws)
        assert len(hb) == 0
        assert hb._heap == []  # the last one gone: no slot is kept for a closed connection
    survivor = StubWS(clock)
    wave = [StubWS(clock) for _ in range(1000)]
    for ws in [survivor, *wave]:
        hb.add(ws)
    hb.run_due()
    for ws in wave:
        hb.remove(ws)
    # one open: the slots removed since the last compaction stay, at most _COMPACT_MIN
    assert 1 <= len(hb._heap) <= 65, len(hb._heap)


def test_compaction_keeps_the_open_connections_due_in_order() -> None:
    clock = Clock()
    hb = Heartbeat(10.0, 5.0, clock=clock)
    conns = [StubWS(clock) for _ in range(300)]
    for ws in conns:
        hb.add(ws)
    hb.run_due()
    kept = conns[::3]
    for ws in conns:
        if ws not in kept:
            hb.remove(ws)  # 200 of 300: compacted once past half
    assert len(hb._heap) < 200
    advance(hb, clock, 10.0)
    assert all(len(ws.pings) == 1 for ws in kept)
    assert not any(ws.pings for ws in conns if ws not in kept)


def test_a_connection_removed_during_its_own_visit_is_not_rescheduled() -> None:
    clock = Clock()
    hb = Heartbeat(1.0, 1.0, clock=clock)
    ws = StubWS(clock)

    def ping_and_go() -> None:  # the driver's cleanup runs inside the visit
        StubWS.send_heartbeat_ping(ws)
        hb.remove(ws)

    ws.send_heartbeat_ping = ping_and_go  # type: ignore[method-assign]
    hb.add(ws)
    advance(hb, clock, 1.5)
    assert ws.pings and ws not in hb and hb._heap == []


def test_deadlines_count_from_the_opening_even_when_the_next_tick_is_late() -> None:
    clock = Clock()
    hb = Heartbeat(1.0, 1.0, idle_timeout=0.5, clock=clock)
    ws = StubWS(clock)  # opened now: last_received stamped, as the driver does
    hb.add(ws)
    clock.now += 0.6  # the first tick comes after the idle timeout already passed
    hb.run_due()
    assert ws.aborted == (1001, "idle timeout")  # not 0.5 s after the tick: from the opening


def test_disabled_heartbeat_watches_nothing() -> None:
    hb = Heartbeat(0, 10.0)
    hb.add(StubWS(Clock()))
    hb.start()
    assert len(hb) == 0 and not hb.enabled
    hb.stop()


def test_a_failing_connection_does_not_stop_the_others() -> None:
    clock = Clock()
    hb = Heartbeat(1.0, 1.0, clock=clock)
    bad, good = StubWS(clock), StubWS(clock)

    def boom() -> None:
        raise OSError("broken")

    bad.send_heartbeat_ping = boom  # type: ignore[method-assign]
    hb.add(bad)
    hb.add(good)
    advance(hb, clock, 1.5)
    assert good.pings and bad not in hb


def test_greenlet_starts_and_stops_promptly() -> None:
    hb = Heartbeat(30.0, 10.0)
    hb.start()
    hb.start()  # idempotent
    started = time.monotonic()
    hb.stop()
    hb.stop()
    assert time.monotonic() - started < 0.5  # woken by the event, not after a tick


# -- real sockets ------------------------------------------------------------------------------


def raw_connect(port: int, path: str = "/") -> gsocket.socket:
    """Handshake by hand; the returned socket answers nothing unless the test does."""
    sock = gsocket.create_connection(("127.0.0.1", port))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    with gevent.Timeout(5):
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, "closed during handshake"
            head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_frames(sock: gsocket.socket, buf: bytearray) -> list[tuple[int, bytes]]:
    """Read once and return the complete unmasked server frames (small payloads only)."""
    chunk = sock.recv(65536)
    if not chunk:
        raise EOFError
    buf += chunk
    frames = []
    while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
        length = buf[1] & 0x7F
        assert length < 126
        frames.append((buf[0] & 0x0F, bytes(buf[2 : 2 + length])))
        del buf[: 2 + length]
    return frames


def hb_app(app_factory: Any, **settings: Any) -> tuple[Any, list[Any]]:
    app: App = app_factory(ping_interval=0.3, pong_timeout=0.3, **settings)
    seen: list[Any] = []

    @app.route("/")
    def idle(ws: Any) -> None:
        seen.append(ws)
        app.rooms.join("hb", ws)
        for _ in ws:
            pass

    return app, seen


def close_deadline(sock: gsocket.socket, answer: Any, limit: float) -> float:
    """Run the raw client until the server closes; return how long that took."""
    started = time.monotonic()
    buf = bytearray()
    with gevent.Timeout(limit, AssertionError(f"not closed within {limit} s")):
        try:
            while True:
                for opcode, payload in read_frames(sock, buf):
                    if opcode == Opcode.CLOSE:
                        assert int.from_bytes(payload[:2], "big") == 1011
                    elif opcode == Opcode.PING:
                        answer(sock, payload)
        except (EOFError, ConnectionResetError):
            pass
    return time.monotonic() - started


def test_hb01_silent_client_is_closed_within_interval_plus_timeout(app_factory: Any) -> None:
    app, _ = hb_app(app_factory)
    with app.test_client() as client:
        sock = raw_connect(client.port)
        wait_until(lambda: app.rooms.count("hb") == 1, 5)
        took = close_deadline(sock, lambda s, p: None, 0.3 + 0.3 + 1.0)
        assert took < 1.6
        sock.close()
        assert app.server is not None and app.server.wait_drained(5)
        assert app.metrics.close_codes.get(1011) == 1
        assert app.rooms.count("hb") == 0  # its subscriptions went with it


def test_hb03_pongs_with_wrong_payloads_do_not_count(app_factory: Any) -> None:
    app, _ = hb_app(app_factory)

    def wrong_pong(sock: gsocket.socket, payload: bytes) -> None:
        sock.sendall(encode_frame(Opcode.PONG, b"not-" + payload, mask=os.urandom(4)))

    with app.test_client() as client:
        sock = raw_connect(client.port)
        close_deadline(sock, wrong_pong, 0.3 + 0.3 + 1.0)
        sock.close()


def test_hb02_client_answering_pings_stays_open_and_rtt_is_measured(app_factory: Any) -> None:
    app, seen = hb_app(app_factory)
    with app.test_client() as client:
        ws = client.connect("/")  # the client's core answers every ping
        with pytest.raises(TimeoutError):
            ws.receive(timeout=1.5)  # five intervals of idleness
        assert ws.is_open and seen and seen[0].is_open
        assert seen[0].latency is not None and 0 <= seen[0].latency < 0.3
        assert app.metrics.rtt_seconds.count >= 1
        ws.close()
