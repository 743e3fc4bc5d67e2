"""Heartbeat settings over real sockets: disabled, idle timeout, missed pongs, RTT, timeouts.

Seed-audit-2 theme E and items 14, 22: ``ping_interval=0`` sends no pings, ``idle_timeout``
closes a silent peer with 1001 (pongs do not count), ``max_missed_pongs`` is honoured, a dead
peer is failed with 1011 (logged and counted), and ``ws.rtt`` averages the last ten RTTs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent.event
import pytest
from helpers import wait_until

from wsflask import App
from wsflask.config import Config
from wsflask.heartbeat import Heartbeat
from wsflask.metrics import Metrics
from wsflask.protocol import CloseCode
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

FAST = Config(port=0, close_timeout=1.0, handshake_timeout=2.0, shutdown_grace=1.0)


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


def close_code(peer: Any) -> tuple[int, bytes]:
    """Skip pings; return the code and reason of the server's Close."""
    while True:
        opcode, payload = peer.read_frame()
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big"), payload[2:]


def open_peer(server: Any, raw_peer: Any) -> Any:
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101 ")
    return peer


def test_heartbeat_can_be_disabled(app_factory: Callable[..., App], raw_peer: Any) -> None:
    app = app_factory(ping_interval=0)
    assert app.config.ping_interval == 0 and not app.heartbeat.enabled

    @app.route("/")
    def route(ws: WebSocket) -> None:
        echo(ws)

    server = app.make_server(port=0)
    server.start()
    peer = open_peer(server, raw_peer)
    peer.send_frame(0x1, b"hi")
    assert peer.read_frame() == (0x1, b"hi")  # the first frame is the echo, not a ping
    assert len(app.heartbeat) == 0  # not watched: nothing will ping it


def test_idle_timeout_closes_a_silent_peer_with_1001_pongs_excluded(
    serve: Any, raw_peer: Any
) -> None:
    heartbeat = Heartbeat(0.1, 5.0, idle_timeout=0.5)
    server = serve(echo, config=FAST, heartbeat=heartbeat, services=[heartbeat])
    peer = open_peer(server, raw_peer)
    opened = time.monotonic()
    while True:  # answer every ping: pongs are not messages
        opcode, payload = peer.read_frame()
        if opcode == 0x9:
            peer.send_frame(0xA, payload)
            continue
        assert opcode == 0x8
        break
    elapsed = time.monotonic() - opened
    assert int.from_bytes(payload[:2], "big") == CloseCode.GOING_AWAY
    assert payload[2:] == b"idle timeout"
    assert 0.45 <= elapsed < 1.5


def test_idle_timeout_shorter_than_the_ping_interval_is_kept(serve: Any, raw_peer: Any) -> None:
    heartbeat = Heartbeat(30.0, 10.0, idle_timeout=0.3)
    server = serve(echo, config=FAST, heartbeat=heartbeat, services=[heartbeat])
    peer = open_peer(server, raw_peer)
    opened = time.monotonic()
    assert close_code(peer) == (CloseCode.GOING_AWAY, b"idle timeout")
    assert time.monotonic() - opened < 1.5  # not at the first ping, 30 s away


def test_messages_keep_an_idle_timeout_away(serve: Any, raw_peer: Any) -> None:
    heartbeat = Heartbeat(0, 5.0, idle_timeout=0.3)
    server = serve(echo, config=FAST, heartbeat=heartbeat, services=[heartbeat])
    peer = open_peer(server, raw_peer)
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 0.9:  # three idle periods, a message every echo
        peer.send_frame(0x1, b"x")
        assert peer.read_frame() == (0x1, b"x")
        sent += 1
        gevent.sleep(0.1)  # pacing the client, not synchronising with the server
    assert sent >= 3
    code, reason = close_code(peer)  # then silence: closed
    assert (code, reason) == (CloseCode.GOING_AWAY, b"idle timeout")


def test_two_missed_pongs_needed_when_max_missed_pongs_is_2(serve: Any, raw_peer: Any) -> None:
    heartbeat = Heartbeat(0.2, 0.2, max_missed=2)
    server = serve(echo, config=FAST, heartbeat=heartbeat, services=[heartbeat])
    peer = open_peer(server, raw_peer)
    assert peer.read_frame()[0] == 0x9  # skipped
    opcode, payload = peer.read_frame()  # one missed: a second ping, not a Close
    assert opcode == 0x9
    peer.send_frame(0xA, payload)
    assert peer.read_frame()[0] == 0x9  # still open: the next ping; skipped
    assert peer.read_frame()[0] == 0x9  # skipped again: the second in a row
    assert close_code(peer) == (CloseCode.INTERNAL_ERROR, b"ping timeout")


def test_dead_peer_is_failed_with_1011_logged_and_counted(
    serve: Any, raw_peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsflask.heartbeat")
    metrics = Metrics()
    heartbeat = Heartbeat(0.1, 0.1, metrics=metrics)
    server = serve(echo, config=FAST, metrics=metrics, heartbeat=heartbeat, services=[heartbeat])
    peer = open_peer(server, raw_peer)
    assert close_code(peer) == (CloseCode.INTERNAL_ERROR, b"ping timeout")
    wait_until(lambda: metrics.heartbeat_timeouts == 1)
    assert "websocket_heartbeat_timeouts_total 1" in metrics.render()
    records = [r for r in caplog.records if "ping timeout" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.WARNING


def test_rtt_average_of_last_ten_pongs(serve: Any, raw_peer: Any) -> None:
    seen: list[WebSocket] = []

    def handler(ws: WebSocket) -> None:
        seen.append(ws)
        echo(ws)  # reading: pongs are handled as they come

    heartbeat = Heartbeat(0.05, 5.0)
    server = serve(handler, config=FAST, heartbeat=heartbeat, services=[heartbeat])
    peer = open_peer(server, raw_peer)
    wait_until(lambda: bool(seen))
    ws = seen[0]
    assert ws.rtt is None
    latencies: list[Any] = []
    for _ in range(12):
        opcode, payload = peer.read_frame()
        assert opcode == 0x9
        previous = ws.latency
        peer.send_frame(0xA, payload)
        wait_until(lambda p=previous: ws.latency is not p)  # type: ignore[misc]  # a new float for each pong
        latencies.append(ws.latency)
    assert all(isinstance(x, float) for x in latencies)
    assert ws.rtt == pytest.approx(sum(latencies[-10:]) / 10, rel=1e-9)


def test_start_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wsflask.heartbeat")
    heartbeat = Heartbeat(30.0, 10.0, max_missed=3)
    try:
        heartbeat.start()
        heartbeat.start()
    finally:
        heartbeat.stop()
    (record,) = [r for r in caplog.records if "heartbeat started" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert "every 30.0 s" in record.getMessage() and "3 missed" in record.getMessage()


def test_reconfigure_disables_pings_without_spinning() -> None:
    heartbeat = Heartbeat(30.0, 10.0)
    heartbeat.reconfigure(0, 10.0, 1, 0)
    assert not heartbeat.enabled and heartbeat.tick == 0
    heartbeat.reconfigure(5.0, 2.0, 2, 60.0)
    assert heartbeat.enabled and heartbeat.max_missed == 2 and heartbeat.tick == 0.5


def test_partitioned_peer_is_detected_and_counted(serve: Any, raw_peer: Any) -> None:
    """Seed audit item 39 (ER-27): a peer that stops reading and writing without closing
    shows as late (a gauge) from its first unanswered ping, each miss is counted, and it is
    failed with 1011 at ``max_missed``; the gauge is back to 0 once it is gone."""
    metrics = Metrics()
    heartbeat = Heartbeat(0.1, 0.5, max_missed=3, metrics=metrics)
    server = serve(echo, config=FAST, metrics=metrics, heartbeat=heartbeat, services=[heartbeat])
    open_peer(server, raw_peer)  # never reads, never answers a ping: partitioned
    wait_until(lambda: metrics.late_pongs == 1)
    late = metrics.render()
    assert "websocket_heartbeat_late_connections 1" in late
    assert "websocket_heartbeat_timeouts_total 0" in late  # seen before it fails (>= 1 s left)
    wait_until(lambda: metrics.heartbeat_timeouts == 1)
    assert (metrics.missed_pongs, metrics.late_pongs, heartbeat.late) == (3, 0, 0)
    rendered = metrics.render()
    assert "websocket_heartbeat_missed_pongs_total 3" in rendered
    assert "websocket_heartbeat_late_connections 0" in rendered


def test_a_late_pong_clears_the_gauge(serve: Any, raw_peer: Any) -> None:
    metrics = Metrics()
    heartbeat = Heartbeat(0.1, 0.3, max_missed=5, metrics=metrics)
    server = serve(echo, config=FAST, metrics=metrics, heartbeat=heartbeat, services=[heartbeat])
    peer = open_peer(server, raw_peer)
    wait_until(lambda: metrics.late_pongs == 1)
    while metrics.late_pongs:  # answer, late, every ping queued so far and the next one
        opcode, payload = peer.read_frame()
        if opcode == 0x9:
            peer.send_frame(0xA, payload)
    assert metrics.heartbeat_timeouts == 0 and metrics.missed_pongs >= 1
    assert "websocket_heartbeat_late_connections 0" in metrics.render()
