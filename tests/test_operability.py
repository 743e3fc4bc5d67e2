"""Operability over real sockets: refusals and violations logged and counted, figures, extras.

Seed-audit-2 themes C and I (items 12, 13, 15-19, 48, 49) and the public ``ws.ping()``
(item 30): every refused handshake and protocol violation leaves one record with its fields,
violations are counted by a fixed type, repeat offenders escalate once, per-connection and
server figures match a known scenario.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gevent.event
import pytest
from helpers import wait_until

from wsflask.client import connect
from wsflask.config import Config
from wsflask.errors import Reject
from wsflask.heartbeat import Heartbeat
from wsflask.metrics import Metrics
from wsflask.protocol import CloseCode, State
from wsflask.protocol.errors import Forbidden, InvalidPayloadData, MessageTooBig, ProtocolError
from wsflask.server import Upgrade
from wsflask.tracing import tracer
from wsflask.violations import VIOLATION_TYPES, Reporter, classify, reporter
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

FAST = Config(port=0, close_timeout=1.0, handshake_timeout=2.0, shutdown_grace=1.0)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture(autouse=True)
def fresh_reporter() -> Iterator[None]:
    """Every test starts with no address counted (the escalation window is process-wide)."""
    reporter.reset()
    yield
    reporter.reset()


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


def url(server: Any, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.server_port}{path}"


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "wsflask.violations" and hasattr(r, "status")]


def send_raw(peer: Any, data: bytes) -> bytes:
    peer.sock.sendall(data)
    return bytes(peer.read_until_eof(timeout=5))


def refusing(request: Any, address: Any) -> Upgrade:
    if request.path == "/forbidden":
        raise Forbidden("origin not allowed")
    if request.path == "/full":
        raise Reject(503, "no capacity")
    return Upgrade(echo)


# -- item 12: refusals ----------------------------------------------------------------------


def test_refusals_are_logged_at_the_documented_levels(
    serve: Any, raw_peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsflask.violations")
    server = serve(resolve=refusing, config=FAST)
    port = server.server_port
    version8 = (
        f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
    ).encode()
    assert send_raw(raw_peer(port), version8).startswith(b"HTTP/1.1 426 ")
    assert send_raw(raw_peer(port), b"BREW / HTCPCP/1.0\r\n\r\n").startswith(b"HTTP/1.1 4")
    assert raw_peer(port).request("/forbidden").startswith(b"HTTP/1.1 403 ")
    assert send_raw(raw_peer(port), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 426 "
    )  # a plain GET on a WebSocket resource
    assert raw_peer(port).request("/full").startswith(b"HTTP/1.1 503 ")
    wait_until(lambda: len(refusals(caplog)) == 5)
    seen = {(r.status, r.levelno) for r in refusals(caplog)}  # type: ignore[attr-defined]
    assert (426, logging.WARNING) in seen and (403, logging.WARNING) in seen
    assert (503, logging.INFO) in seen
    assert any(s in (400, 405) and lvl == logging.WARNING for s, lvl in seen)
    for record in refusals(caplog):
        assert record.peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]
        assert record.reason  # type: ignore[attr-defined]
    forbidden = next(r for r in refusals(caplog) if r.status == 403)  # type: ignore[attr-defined]
    assert forbidden.reason == "origin not allowed"  # type: ignore[attr-defined]


def test_ten_refusals_from_one_address_escalate_once(
    serve: Any, raw_peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsflask.violations")
    server = serve(resolve=refusing, config=FAST)
    for _ in range(12):
        assert raw_peer(server.server_port).request("/forbidden").startswith(b"HTTP/1.1 403 ")
    wait_until(lambda: len(refusals(caplog)) == 12)
    escalations = [r for r in caplog.records if "within" in r.getMessage()]
    assert len(escalations) == 1 and escalations[0].levelno == logging.WARNING
    levels = [r.levelno for r in refusals(caplog)]
    assert levels[:9] == [logging.WARNING] * 9 and levels[9:] == [logging.DEBUG] * 3


def test_escalation_memory_is_bounded_and_windows_expire() -> None:
    now = [0.0]
    rep = Reporter(threshold=3, window=10.0, max_addresses=2, clock=lambda: now[0])
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        rep.refusal((ip, 1), 400, "bad")
    assert rep.tracked() == 2  # the least recently seen address was forgotten
    for _ in range(3):
        rep.refusal(("10.0.0.3", 1), 400, "bad")
    assert rep.level(("10.0.0.3", 1), logging.WARNING) == logging.DEBUG
    now[0] = 10.0  # a new window
    assert rep.level(("10.0.0.3", 1), logging.WARNING) == logging.WARNING


# -- items 13 and 19: violations ------------------------------------------------------------


def test_protocol_violations_are_logged_and_counted_by_type(
    serve: Any, raw_peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsflask.violations")
    metrics = Metrics()
    server = serve(echo, config=FAST, metrics=metrics)
    first = raw_peer(server.server_port)
    assert first.request().startswith(b"HTTP/1.1 101 ")
    first.sock.sendall(b"\x81\x05hello")  # unmasked client frame (RFC 6455 §5.1)
    opcode, payload = first.read_frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == CloseCode.PROTOCOL_ERROR
    second = raw_peer(server.server_port)
    assert second.request().startswith(b"HTTP/1.1 101 ")
    second.send_frame(0x1, b"\xff\xfe")  # invalid UTF-8 (RFC 6455 §8.1)
    opcode, payload = second.read_frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == CloseCode.INVALID_DATA
    wait_until(lambda: sum(metrics.violations.values()) == 2)
    assert metrics.violations == {"unmasked": 1, "invalid_utf8": 1}
    text = metrics.render()
    assert 'websocket_protocol_violations_total{type="unmasked"} 1' in text
    assert 'websocket_protocol_violations_total{type="invalid_utf8"} 1' in text
    records = [
        r for r in caplog.records if getattr(r, "type", None) in ("unmasked", "invalid_utf8")
    ]
    assert {(r.type, r.close_code, r.levelno) for r in records} == {  # type: ignore[attr-defined]
        ("unmasked", CloseCode.PROTOCOL_ERROR, logging.WARNING),
        ("invalid_utf8", CloseCode.INVALID_DATA, logging.WARNING),
    }
    assert all("violation" in r.getMessage() and r.peer.startswith("127.0.0.1:") for r in records)  # type: ignore[attr-defined]


def test_unmasked_frame_closes_with_1002(serve: Any, raw_peer: Any) -> None:
    server = serve(echo, config=FAST)
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101 ")
    peer.sock.sendall(b"\x81\x05hello")
    opcode, payload = peer.read_frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # classify() reads the core's code (tests/test_violation_codes.py feeds real bytes)
        (ProtocolError("unmasked client frame", code="unmasked"), "unmasked"),
        (ProtocolError("invalid close code 999", code="invalid_close"), "invalid_close"),
        (MessageTooBig("message over the limit of 10 bytes"), "too_big"),
        (InvalidPayloadData("invalid UTF-8 at byte 0"), "invalid_utf8"),
        (ProtocolError("something new"), "other"),
        (ValueError("not a protocol error"), "other"),
    ],
)
def test_classify_maps_core_errors_to_a_fixed_vocabulary(error: Exception, kind: str) -> None:
    assert classify(error) == kind and kind in VIOLATION_TYPES


# -- items 16-18: figures -------------------------------------------------------------------


def test_per_connection_counters(serve: Any) -> None:
    seen: list[WebSocket] = []

    def handler(ws: WebSocket) -> None:
        seen.append(ws)
        echo(ws)

    server = serve(handler, config=FAST, metrics=Metrics())
    client = connect(url(server), timeout=5)
    payloads = ["a", "bb", "é" * 3]  # 1 + 2 + 6 UTF-8 bytes
    for payload in payloads:
        client.send(payload)
        assert client.receive(timeout=5) == payload
    (ws,) = seen
    assert ws.messages_received == ws.messages_sent == 3
    assert ws.bytes_received == ws.bytes_sent == 9
    assert client.messages_sent == client.messages_received == 3
    client.close()


def test_server_stats_snapshot(serve: Any, raw_peer: Any) -> None:
    release = gevent.event.Event()

    def handler(ws: WebSocket) -> None:
        release.wait(10)

    heartbeat = Heartbeat(30.0, 10.0)
    server = serve(handler, config=FAST, heartbeat=heartbeat, services=[heartbeat])
    clients = [connect(url(server), timeout=5) for _ in range(2)]
    slow = raw_peer(server.server_port)
    slow.sock.sendall(b"GET / HTTP/1.1\r\n")  # still handshaking
    wait_until(lambda: server.stats()["connections"]["handshaking"] == 1)
    stats = server.stats()
    assert stats["connections"] == {"handshaking": 1, "open": 2, "closing": 0}
    assert stats["buffered_bytes"] == 0
    assert stats["heartbeat_watched"] == 2 and stats["mean_rtt"] is None
    release.set()
    for client in clients:
        assert client.receive(timeout=5) is None


def test_error_and_size_families(serve: Any) -> None:
    metrics = Metrics()
    server = serve(echo, config=FAST, metrics=metrics)
    client = connect(url(server), timeout=5)
    for payload in (b"", b"x" * 100, b"y" * 5000):
        client.send(payload)
        assert client.receive(timeout=5) == payload
    client.close()
    text = metrics.render()
    name = "websocket_message_size_bytes"
    assert f"# TYPE {name} histogram" in text
    assert f'{name}_bucket{{direction="in",le="0"}} 1' in text
    assert f'{name}_bucket{{direction="in",le="127"}} 2' in text
    assert f'{name}_bucket{{direction="in",le="4095"}} 2' in text
    assert f'{name}_bucket{{direction="in",le="8191"}} 3' in text
    assert f'{name}_count{{direction="in"}} 3' in text
    assert f'{name}_sum{{direction="out"}} 5100' in text
    assert "websocket_heartbeat_timeouts_total 0" in text
    assert "websocket_log_records_dropped_total" in text


# -- items 48, 49, 15: handshake extras ----------------------------------------------------


def test_refusal_carries_x_websocket_error_when_enabled(serve: Any, raw_peer: Any) -> None:
    plain = serve(resolve=refusing, config=FAST)
    assert b"X-WebSocket-Error" not in raw_peer(plain.server_port).request("/forbidden")
    told = serve(resolve=refusing, config=FAST.replace(handshake_error_header=True))
    head = raw_peer(told.server_port).request("/forbidden")
    assert head.startswith(b"HTTP/1.1 403 ")
    assert b"\r\nX-WebSocket-Error: origin-not-allowed" in head


def test_replayed_key_within_ttl_is_400_generic(serve: Any, raw_peer: Any) -> None:
    off = serve(echo, config=FAST)
    assert raw_peer(off.server_port).request().startswith(b"HTTP/1.1 101 ")
    assert raw_peer(off.server_port).request().startswith(b"HTTP/1.1 101 ")
    on = serve(echo, config=FAST.replace(key_replay_ttl=60.0))
    assert raw_peer(on.server_port).request().startswith(b"HTTP/1.1 101 ")
    replayed = raw_peer(on.server_port)
    head = replayed.request()  # RawPeer always sends the same key
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"replay" not in replayed.read_until_eof().lower()  # a generic body


def test_debug_log_shows_key_accept_and_phase_timings(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsflask")
    server = serve(echo, config=FAST)
    client = connect(url(server), timeout=5)
    client.close()
    wait_until(lambda: any(hasattr(r, "accept") for r in caplog.records))
    record: Any = next(r for r in caplog.records if hasattr(r, "accept"))
    assert len(record.key) == 24 and len(record.sha1) == 40 and len(record.accept) == 28
    assert record.read_ms >= 0 and record.answer_ms >= 0


# -- items 30, 31: ping and transitions ----------------------------------------------------


def test_ws_ping_returns_rtt(serve: Any, raw_peer: Any) -> None:
    results: list[Any] = []
    done = gevent.event.Event()

    def handler(ws: WebSocket) -> None:
        try:
            results.append(ws.ping(timeout=5))
            results.append(ws.receive(timeout=5))  # a message that came meanwhile is kept
            try:
                ws.ping(timeout=0.2)
            except TimeoutError as exc:
                results.append(exc)
        finally:
            done.set()

    server = serve(handler, config=FAST)
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101 ")
    opcode, payload = peer.read_frame()
    assert opcode == 0x9
    peer.send_frame(0x1, b"meanwhile")
    peer.send_frame(0xA, payload)
    assert peer.read_frame()[0] == 0x9  # the second ping: not answered
    assert done.wait(5)
    rtt, message, timeout = results
    assert isinstance(rtt, float) and 0 < rtt < 5
    assert message == "meanwhile" and isinstance(timeout, TimeoutError)


def test_state_transitions_are_logged(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="wsflask.diagnostics")
    tracer.enabled = True
    try:
        seen: list[str] = []

        def handler(ws: WebSocket) -> None:
            seen.append(ws.id)
            ws.close(CloseCode.NORMAL)

        server = serve(handler, config=FAST)
        client = connect(url(server), timeout=5)
        assert client.receive(timeout=5) is None
        wait_until(
            lambda: any(t[0] == seen[0] and t[2] is State.CLOSED for t in tracer.transitions)
        )
    finally:
        tracer.enabled = False
    mine = [(t[1], t[2]) for t in tracer.transitions if t[0] == seen[0]]
    assert mine == [
        (State.CONNECTING, State.OPEN),
        (State.OPEN, State.CLOSING),
        (State.CLOSING, State.CLOSED),
    ]
    lines = [r for r in caplog.records if getattr(r, "id", None) == seen[0] and hasattr(r, "to")]
    assert [r.to for r in lines] == ["OPEN", "CLOSING", "CLOSED"]
    assert all(r.trigger for r in lines)  # type: ignore[attr-defined]
