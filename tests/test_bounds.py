"""Hard bounds over real sockets: fragment timeout, session expiry, write timeout, outbound size,
TCP keep-alive and the per-connection message rate.

Where time matters the deadline checker's clocks are injected (``server.deadlines.clock`` /
``.wall``) and ``run_due()`` is called directly: no long sleeps. Servers bind 127.0.0.1:0.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import gevent
import gevent.event
import pytest
from gevent.queue import Queue
from helpers import SERVER_FAST, wait_until

from wsflask import App
from wsflask.client import connect
from wsflask.config import Config
from wsflask.errors import ConnectionClosed
from wsflask.limits import MessageRate, TokenBucket
from wsflask.metrics import Metrics
from wsflask.protocol import CloseCode, encode_frame
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

MASK = b"\x01\x02\x03\x04"


class Clock:
    """A hand-moved clock for ``Deadlines``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def holding(holder: Queue) -> Any:
    def handler(ws: WebSocket) -> None:
        holder.put(ws)
        for message in ws:
            ws.send(message)

    return handler


def close_code_of(peer: Any) -> int:
    """Read frames until the Close; return its code."""
    while True:
        opcode, payload = peer.read_frame(timeout=5)
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0])


# -- fragment_timeout (FR-20 / ER-06 / ER-18) ------------------------------------------------------


def test_fragment_timeout_closes_1008_and_frees_the_budget(serve: Any, raw_peer: Any) -> None:
    holder: Queue = Queue()
    server = serve(holding(holder), config=Config(**SERVER_FAST, fragment_timeout=0.4))
    assert server.deadlines.tick == pytest.approx(0.1)
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    ws = holder.get(timeout=5)
    started = time.monotonic()
    peer.send_frame(0x1, b"x" * 1000, fin=False)
    wait_until(lambda: ws.receiving_message, timeout=5)
    peer.send_frame(0x9, b"still here")  # control frames do not finish the message
    assert peer.read_frame() == (0xA, b"still here")
    assert close_code_of(peer) == CloseCode.POLICY
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.0, elapsed
    wait_until(lambda: ws not in server.connections, timeout=5)
    assert server.deadlines.closed["fragment_timeout"] == 1


def test_fragment_deadline_with_an_injected_clock(serve: Any, raw_peer: Any) -> None:
    holder: Queue = Queue()
    server = serve(holding(holder), config=Config(**SERVER_FAST))  # the default: 30 s
    deadlines = server.deadlines
    clock = deadlines.clock = Clock()
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    ws = holder.get(timeout=5)
    # a message finished in time resets the timer
    peer.send_frame(0x1, b"a", fin=False)
    wait_until(lambda: ws.receiving_message, timeout=5)
    deadlines.run_due()
    clock.now += 29.0
    peer.send_frame(0x0, b"b", fin=True)
    assert peer.read_frame() == (0x1, b"ab")
    assert deadlines.run_due() == 0
    # the next one starts its own 30 s
    peer.send_frame(0x2, b"c", fin=False)
    wait_until(lambda: ws.receiving_message, timeout=5)
    assert deadlines.run_due() == 0
    clock.now += 29.9
    assert deadlines.run_due() == 0 and ws.is_open
    clock.now += 0.2
    assert deadlines.run_due() == 1
    assert close_code_of(peer) == CloseCode.POLICY
    assert ws.close_code == CloseCode.POLICY


def test_fragment_timeout_zero_disables_it(serve: Any, raw_peer: Any) -> None:
    holder: Queue = Queue()
    server = serve(holding(holder), config=Config(**SERVER_FAST, fragment_timeout=0))
    clock = server.deadlines.clock = Clock()
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    ws = holder.get(timeout=5)
    peer.send_frame(0x1, b"a", fin=False)
    wait_until(lambda: ws.receiving_message, timeout=5)
    server.deadlines.run_due()
    clock.now += 1e6
    assert server.deadlines.run_due() == 0 and ws.is_open


# -- session expiry and refresh (FX-06 / FX-04) ----------------------------------------------------


def test_expired_session_is_closed_1008_and_refresh_extends_it(
    app_factory: Callable[..., App], raw_peer: Any
) -> None:
    app = app_factory()
    route = app.route("/live", json=True)
    wall = Clock(1_000_000.0)

    @app.before_upgrade
    def login(request: Any) -> dict[str, Any]:
        return {"expires": wall() + 60}  # e.g. a token's ``exp`` claim

    @route.on("refresh")
    def refresh(ws: WebSocket, data: Any) -> str:
        # a real app validates the new token here, then takes its ``exp``
        ws.session["expires"] = wall() + 60
        return "ok"

    with app.test_client() as client:
        assert client.port  # starts the server
        assert app.server is not None
        deadlines = app.server.deadlines
        deadlines.wall = wall  # before any session exists: the ticking greenlet uses it too
        ws = client.connect("/live")
        wall.now += 59
        assert deadlines.run_due() == 0
        ws.send(json.dumps({"event": "refresh", "id": 1}))
        assert json.loads(cast(str, ws.receive(timeout=5)))["data"] == "ok"
        wall.now += 59  # 118 s after login: expired without the refresh
        assert deadlines.run_due() == 0 and ws.is_open
        wall.now += 2
        assert deadlines.run_due() == 1
        assert ws.receive(timeout=5) is None
        assert ws.close_code == CloseCode.POLICY and ws.close_reason == "session expired"
        assert deadlines.closed["expired"] == 1


# -- write_timeout (ER-06) -------------------------------------------------------------------------


def test_send_blocked_on_a_stalled_reader_fails_after_write_timeout(
    serve: Any, raw_peer: Any
) -> None:
    outcome: Queue = Queue()

    def flood(ws: WebSocket) -> None:
        ws.transport.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        chunk = b"z" * 16384
        started = time.monotonic()
        try:
            while True:
                ws.send(chunk)
        except ConnectionClosed as exc:
            outcome.put((exc.code, time.monotonic() - started))

    metrics = Metrics()
    config = Config(
        **SERVER_FAST, write_timeout=0.3, max_backpressure=64 * 1024, ping_interval=3600
    )
    server = serve(flood, config=config, metrics=metrics)
    peer = raw_peer(server.server_port, rcvbuf=4096)
    assert peer.request().startswith(b"HTTP/1.1 101")
    code, elapsed = outcome.get(timeout=5)  # the peer never reads
    assert code == CloseCode.TRY_AGAIN_LATER
    assert 0.3 <= elapsed < 0.3 + 0.5
    assert metrics.slow_consumers_closed == 1
    assert "websocket_slow_consumers_closed_total 1" in metrics.render()


def test_write_timeout_does_not_touch_a_reader_that_keeps_up(serve: Any) -> None:
    def burst(ws: WebSocket) -> None:
        for _ in range(200):
            ws.send(b"q" * 65536)
        ws.receive()

    server = serve(
        burst, config=Config(**SERVER_FAST, write_timeout=0.2, max_backpressure=64 * 1024)
    )
    client = connect(f"ws://127.0.0.1:{server.server_port}/", timeout=5)
    for _ in range(200):
        gevent.sleep(0.002)  # a slow but steady reader: each wait is short
        assert client.receive(timeout=5) == b"q" * 65536
    client.close()


# -- outbound size (CM-17) -------------------------------------------------------------------------


def test_outbound_message_over_max_message_size_is_refused(app_factory: Callable[..., App]) -> None:
    app = app_factory(max_message_size=1000)
    route = app.route("/")
    held: Queue = Queue()
    results: Queue = Queue()

    @route.on("connect")
    def joined(ws: WebSocket) -> None:
        held.put(ws)

    @route.on("message")
    def on_message(ws: WebSocket, message: Any) -> None:
        for data in (b"x" * 1001, "é" * 501, "x" * 1000):  # 1001 B, 1002 B (UTF-8), 1000 B
            try:
                ws.send(data)
                results.put("sent")
            except ValueError:
                results.put("refused")

    with app.test_client() as client:
        ws = client.connect("/")
        held.get(timeout=5)
        with pytest.raises(ValueError):
            app.send(b"y" * 1001, to=None)
        with pytest.raises(ValueError):
            app.emit("big", "y" * 1001, to=None)
        assert app.send(b"y" * 1000, to=None).sent == 1
        ws.send("go")
        assert [results.get(timeout=5) for _ in range(3)] == ["refused", "refused", "sent"]
        assert ws.receive(timeout=5) == b"y" * 1000  # nothing oversized arrived before it
        assert ws.receive(timeout=5) == "x" * 1000
        assert app.metrics.drops["too_big"] == 4
        assert ws.is_open


# -- TCP keep-alive (X-04) -------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_accepted_sockets_have_keepalive(serve: Any, enabled: bool) -> None:
    holder: Queue = Queue()
    server = serve(holding(holder), config=Config(**SERVER_FAST, tcp_keepalive=enabled))
    client = connect(f"ws://127.0.0.1:{server.server_port}/", timeout=5)
    ws = holder.get(timeout=5)
    assert ws.transport.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == int(enabled)
    if enabled and hasattr(socket, "TCP_KEEPIDLE"):
        assert ws.transport.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
    client.close()


# -- message rate (FX-07) --------------------------------------------------------------------------


def test_token_bucket_refills_with_the_injected_clock() -> None:
    clock = Clock(0.0)
    bucket = TokenBucket(10, 20, clock=clock)
    assert sum(bucket.take() for _ in range(25)) == 20
    assert bucket.wait_time() == pytest.approx(0.1)
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(25)) == 5
    clock.now += 100
    assert bucket.full() and sum(bucket.take() for _ in range(25)) == 20
    rate = MessageRate.of(Config(max_messages_per_second=10), clock=clock)
    assert (rate.rate, rate.burst) == (10, 20)


def test_token_bucket_closes_flooder_1008_polite_client_untouched(
    serve: Any, raw_peer: Any
) -> None:
    holder: Queue = Queue()
    config = Config(**SERVER_FAST, max_messages_per_second=10, message_burst=20)
    server = serve(holding(holder), config=config)
    polite = connect(f"ws://127.0.0.1:{server.server_port}/", timeout=5)
    for index in range(20):  # the whole burst, answered one by one
        polite.send(f"m{index}")
        assert polite.receive(timeout=5) == f"m{index}"
    flooder = raw_peer(server.server_port)
    assert flooder.request().startswith(b"HTTP/1.1 101")
    flooder.sock.sendall(b"".join(encode_frame(1, b"f", mask=MASK) for _ in range(100)))
    echoes = Counter[int]()
    while True:
        opcode, payload = flooder.read_frame(timeout=5)
        if opcode == 0x8:
            break
        echoes[opcode] += 1
    assert struct.unpack("!H", payload[:2])[0] == CloseCode.POLICY
    assert echoes[0x1] <= 20  # at most the burst was served
    assert polite.is_open
    polite.close()


def test_message_rate_off_by_default(serve: Any, raw_peer: Any) -> None:
    holder: Queue = Queue()
    server = serve(holding(holder), config=Config(**SERVER_FAST))
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    ws = holder.get(timeout=5)
    assert ws._rate is None  # no bucket, no per-message work
    peer.sock.sendall(b"".join(encode_frame(1, b"f", mask=MASK) for _ in range(500)))
    assert all(peer.read_frame() == (0x1, b"f") for _ in range(500))
