"""The connection driver over real sockets: echo, closing, limits, backpressure, heartbeat hooks.

Battery rows (design/reliability-battery.md §4.2): CL-02, CL-04, BP-01, BP-03, CF-02, HB-03,
plus close races and the cleanup order of ARCHITECTURE.md §4. Servers bind 127.0.0.1:0; every
wait has a gevent timeout (the ``test_deadline`` fixture guards the whole test as well).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import gevent
import pytest
from gevent.event import Event
from gevent.queue import Queue
from helpers import wait_until

from wsflask.client import connect
from wsflask.config import Config
from wsflask.errors import ConnectionClosed
from wsflask.protocol import encode_frame
from wsflask.server import Upgrade
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

FAST: dict[str, Any] = {
    "port": 0,
    "close_timeout": 0.5,
    "handshake_timeout": 2.0,
    "shutdown_grace": 1.0,
}


class Recorder:
    """A Metrics stand-in that records every hook call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.dropped_reasons: Counter[str] = Counter()
        self.closed_codes: list[int] = []
        self.statuses: list[int] = []

    def connection_opened(self) -> None:
        self.calls["opened"] += 1

    def connection_closed(self, code: int, duration: float) -> None:
        self.closed_codes.append(code)

    def handshake(self, status: int) -> None:
        self.statuses.append(status)

    def message_in(self, nbytes: int) -> None:
        self.calls["in"] += 1
        self.calls["in_bytes"] += nbytes

    def message_out(self, nbytes: int) -> None:
        self.calls["out"] += 1
        self.calls["out_bytes"] += nbytes

    def dropped(self, reason: str) -> None:
        self.dropped_reasons[reason] += 1

    def slow_consumer_closed(self) -> None:
        self.calls["slow"] += 1

    def frame_parse(self, seconds: float) -> None:
        self.calls["parse"] += 1

    def rtt(self, seconds: float) -> None:
        self.calls["rtt"] += 1


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


def url(server: Any, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.server_port}{path}"


def assert_canary(server: Any) -> None:
    """A fresh client still gets an echo: the hostile test did not hurt the server."""
    ws = connect(url(server), timeout=5)
    ws.send("canary")
    assert ws.receive(timeout=5) == "canary"
    ws.close()


def holding(holder: Queue, release: Event | None = None) -> Any:
    """A handler that publishes its ws on ``holder``, then echoes until closed.

    With ``release`` it waits for that event before reading (a handler that does not read).
    """

    def handler(ws: WebSocket) -> None:
        holder.put(ws)
        if release is not None:
            release.wait()
        echo(ws)

    return handler


# -- echo ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    ["hello", "", b"\x00\xffbinary", b"", "é€😀", b"x" * (1 << 20)],
    ids=["text", "empty-text", "binary", "empty-binary", "utf8", "1MiB"],
)
def test_echo_round_trip(serve: Any, message: str | bytes) -> None:
    server = serve(echo)
    ws = connect(url(server))
    ws.send(message)
    assert ws.receive(timeout=5) == message
    ws.close()
    assert ws.close_code == 1000
    assert not ws.is_open


def test_many_messages_in_one_write_are_all_delivered(serve: Any, raw_peer: Any) -> None:
    server = serve(echo)
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    peer.sock.sendall(b"".join(encode_frame(1, b"m%d" % i, mask=b"abcd") for i in range(200)))
    assert [peer.read_frame()[1] for _ in range(200)] == [b"m%d" % i for i in range(200)]


def test_metrics_hooks_count_messages_and_parse_time(serve: Any) -> None:
    metrics = Recorder()
    server = serve(echo, metrics=metrics)
    ws = connect(url(server))
    ws.send("héllo")
    assert ws.receive(timeout=5) == "héllo"
    ws.close()
    server.stop(timeout=1)
    assert metrics.calls["in"] == metrics.calls["out"] == 1
    assert metrics.calls["in_bytes"] == metrics.calls["out_bytes"] == len("héllo".encode())
    assert metrics.calls["parse"] >= 1 and metrics.calls["opened"] == 1
    assert metrics.closed_codes == [1000] and 101 in metrics.statuses


def test_receive_timeout_raises_and_connection_stays_usable(serve: Any) -> None:
    server = serve(echo)
    ws = connect(url(server))
    with pytest.raises(TimeoutError):
        ws.receive(timeout=0.1)
    ws.send("still here")
    assert ws.receive(timeout=5) == "still here"
    ws.close()


# -- closing ------------------------------------------------------------------------------------


def test_handler_return_closes_1000(serve: Any) -> None:
    server = serve(lambda ws: ws.send("bye"))
    ws = connect(url(server))
    assert ws.receive(timeout=5) == "bye"
    assert ws.receive(timeout=5) is None
    assert ws.close_code == 1000


def test_handler_exception_closes_1011_without_detail(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(ws: WebSocket) -> None:
        ws.receive()
        raise RuntimeError("secret database password")

    server = serve(broken)
    ws = connect(url(server))
    with caplog.at_level(logging.ERROR, logger="wsflask"):
        ws.send("boom")
        assert ws.receive(timeout=5) is None
    assert (ws.close_code, ws.close_reason) == (1011, "")
    assert "secret database password" in caplog.text  # logged, never sent


def test_message_over_max_size_closes_1009(serve: Any) -> None:
    server = serve(echo, config=Config(**FAST, max_message_size=1024))
    ws = connect(url(server))
    ws.send(b"x" * 1024)
    assert ws.receive(timeout=5) == b"x" * 1024
    ws.send(b"x" * 1025)
    assert ws.receive(timeout=5) is None
    assert ws.close_code == 1009
    assert_canary(server)


def test_send_after_close_raises_connection_closed(serve: Any) -> None:
    server = serve(echo)
    ws = connect(url(server))
    ws.close(1000, "done")
    with pytest.raises(ConnectionClosed) as info:
        ws.send("late")
    assert info.value.code == 1000
    assert ws.receive(timeout=1) is None


def test_cl02_client_close_is_echoed_and_server_closes_tcp_first(serve: Any, raw_peer: Any) -> None:
    server = serve(echo)
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    started = time.monotonic()
    peer.send_frame(8, (1000).to_bytes(2, "big") + b"bye")
    assert peer.read_frame() == (8, (1000).to_bytes(2, "big"))
    assert peer.read_until_eof(timeout=2) == b""  # the server's FIN; we have not closed
    assert time.monotonic() - started < 0.050  # the battery's bound for the closing handshake


def test_cl04_peer_never_answers_close_tcp_dropped_after_close_timeout(
    serve: Any, raw_peer: Any
) -> None:
    codes: list[int | None] = []

    def closer(ws: WebSocket) -> None:
        ws.add_close_callback(lambda w: codes.append(w.close_code))
        ws.close(1000, "bye")

    server = serve(closer, config=Config(**FAST))
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    assert peer.read_frame() == (8, (1000).to_bytes(2, "big") + b"bye")
    started = time.monotonic()
    peer.read_until_eof(timeout=3)  # never answer the Close
    assert 0.3 <= time.monotonic() - started <= 1.5
    server.stop(timeout=1)
    assert codes == [1006]


@pytest.mark.parametrize("racers", ["app+peer", "app+peer+abort", "app+peer+stop"])
def test_close_races_call_the_close_callback_exactly_once(
    serve: Any, raw_peer: Any, racers: str
) -> None:
    holder: Queue = Queue()
    called = Event()
    calls: list[int | None] = []
    server = serve(holding(holder))
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    ws = holder.get(timeout=5)

    def on_close(w: WebSocket) -> None:
        calls.append(w.close_code)
        called.set()

    ws.add_close_callback(on_close)
    peer.send_frame(8, (1001).to_bytes(2, "big"))
    jobs = [gevent.spawn(ws.close, 1000, "app")]
    if "abort" in racers:
        jobs.append(gevent.spawn(ws.abort, 1011, "ping timeout"))
    if "stop" in racers:
        jobs.append(gevent.spawn(server.stop, 1))
    gevent.joinall(jobs, timeout=5, raise_error=True)
    assert called.wait(5)
    peer.read_until_eof(timeout=3)
    server.stop(timeout=1)
    assert len(calls) == 1


def test_cleanup_order_heartbeat_then_socket_then_callbacks(serve: Any) -> None:
    log: list[str] = []

    class Beat:
        def add(self, ws: WebSocket) -> None:
            log.append("hb.add")

        def remove(self, ws: WebSocket) -> None:
            log.append("hb.remove")

        def start(self) -> None:
            pass

        def stop(self) -> None:
            pass

    def handler(ws: WebSocket) -> None:
        ws.add_close_callback(lambda w: log.append(f"cb1 fd={w.transport.fileno()}"))
        ws.add_close_callback(lambda w: log.append("cb2"))
        echo(ws)

    server = serve(handler, heartbeat=Beat())
    ws = connect(url(server))
    ws.close()
    server.stop(timeout=1)
    assert log == ["hb.add", "hb.remove", "cb1 fd=-1", "cb2"]


# -- backpressure -------------------------------------------------------------------------------


def _broadcast_until(members: list[WebSocket], frame: bytes, stop: Any, limit: int) -> int:
    sent = 0
    while sent < limit and not stop():
        for member in members:
            member.send_prepared(frame)
        sent += 1
        gevent.sleep(0)
    return sent


def _count_until_end(ws: WebSocket) -> int:
    got = 0
    while (message := ws.receive(timeout=10)) != "end":
        assert message is not None, "the healthy connection was closed"
        got += 1
    return got


@pytest.mark.parametrize("policy", ["close", "drop"])
def test_bp01_stalled_reader_is_bounded_and_others_keep_receiving(
    serve: Any, raw_peer: Any, policy: str
) -> None:
    budget = 64 * 1024
    holder: Queue = Queue()
    metrics = Recorder()
    config = Config(**FAST, max_backpressure=budget, backpressure_policy=policy)
    server = serve(holding(holder), config=config, metrics=metrics)
    stalled_peer = raw_peer(server.server_port, rcvbuf=4096)
    assert stalled_peer.request().startswith(b"HTTP/1.1 101")
    stalled = holder.get(timeout=5)
    canary = connect(url(server))
    other = holder.get(timeout=5)
    frame = encode_frame(2, b"x" * 1024)
    peak = 0

    def stop() -> bool:
        nonlocal peak
        peak = max(peak, stalled.buffered_amount)
        return not stalled.is_open or metrics.dropped_reasons["backpressure"] > 100

    reader = gevent.spawn(_count_until_end, canary)
    sent = _broadcast_until([stalled, other], frame, stop, 20_000)
    other.send("end")
    assert reader.get(timeout=30) == sent  # zero loss for the healthy connection
    assert peak <= budget + len(frame)
    if policy == "close":
        assert stalled.close_code == 1013 and metrics.calls["slow"] == 1
        # the Close jumped the queue; the rest was freed at once, the frame begun and the
        # Close itself once close_timeout passed (this peer never reads)
        assert stalled.buffered_amount <= len(frame) + 128
        wait_until(lambda: stalled.buffered_amount == 0, timeout=5)
    else:
        assert stalled.is_open and metrics.dropped_reasons["backpressure"] > 100
    assert other.is_open
    assert_canary(server)
    canary.close()


def test_bp03_flood_at_slow_handler_server_stops_reading(serve: Any, raw_peer: Any) -> None:
    release, first = Event(), Event()
    counted: list[int] = []

    def slow(ws: WebSocket) -> None:
        ws.receive()
        first.set()
        release.wait()
        counted.append(1 + sum(1 for _ in ws))

    def resolve(request: Any, address: Any) -> Upgrade:
        return Upgrade(slow if request.path == "/slow" else echo)

    server = serve(resolve=resolve)
    peer = raw_peer(server.server_port)
    assert peer.request("/slow").startswith(b"HTTP/1.1 101")
    frame = encode_frame(2, b"y" * 1024, mask=b"\x01\x02\x03\x04")
    peer.sock.sendall(frame)
    first.wait(5)
    peer.sock.settimeout(0.5)
    stream, total = frame * 64, 0
    try:
        while total < 256 * 1024 * 1024:
            total += peer.sock.send(stream[total % len(stream) :])
    except TimeoutError:
        pass  # the server stopped reading: TCP pushed back on us
    assert total < 48 * 1024 * 1024, "the server kept reading a handler that does not"
    assert_canary(server)
    release.set()
    peer.sock.settimeout(5)
    offset = total % len(stream)
    peer.sock.sendall(stream[offset : offset + (-total) % len(frame)])  # finish the last frame
    peer.send_frame(8, (1000).to_bytes(2, "big"))
    peer.read_until_eof(timeout=10)
    server.stop(timeout=2)
    assert counted == [1 + (total + len(frame) - 1) // len(frame)]


def test_cf02_ping_flood_while_never_reading_is_bounded(serve: Any, raw_peer: Any) -> None:
    holder: Queue = Queue()
    server = serve(holding(holder))
    peer = raw_peer(server.server_port, rcvbuf=4096)
    assert peer.request().startswith(b"HTTP/1.1 101")
    ws = holder.get(timeout=5)
    ping = encode_frame(9, b"p" * 125, mask=b"\x01\x02\x03\x04")
    burst, total = ping * 100, 0
    peer.sock.settimeout(0.5)
    try:
        while total < 256 * 1024 * 1024:
            total += peer.sock.send(burst)
    except TimeoutError:
        pass
    assert total < 48 * 1024 * 1024
    assert ws.buffered_amount == 0  # pongs wait in the kernel, never in our memory
    assert_canary(server)


# -- heartbeat hooks ----------------------------------------------------------------------------


def test_heartbeat_ping_matched_pong_sets_latency_wrong_pong_ignored(
    serve: Any, raw_peer: Any
) -> None:
    holder: Queue = Queue()
    done = Event()
    server = serve(holding(holder, release=done))
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    ws = holder.get(timeout=5)
    before = ws.last_received
    ws.send_heartbeat_ping()
    sent_at = ws.ping_sent_at
    opcode, payload = peer.read_frame()
    assert opcode == 9 and len(payload) == 8 and sent_at is not None
    peer.send_frame(10, b"wrong!!!")  # HB-03: not our payload
    # The pong is already in the kernel buffer (loopback sendall): the first read takes it,
    # and no frame may stamp last_received, so the receive must time out.
    with pytest.raises(TimeoutError):
        ws.receive(timeout=0.3)
    assert ws.latency is None and ws.ping_sent_at == sent_at and ws.last_received == before
    peer.send_frame(10, payload)
    peer.send_frame(1, b"after the right pong")
    assert ws.receive(timeout=5) == "after the right pong"
    assert ws.latency is not None and ws.latency >= 0 and ws.ping_sent_at is None
    assert ws.last_received > before
    done.set()


def test_abort_from_another_greenlet_wakes_the_reader(serve: Any) -> None:
    holder: Queue = Queue()
    codes: list[int | None] = []
    server = serve(holding(holder))
    client = connect(url(server))
    ws = holder.get(timeout=5)
    ws.add_close_callback(lambda w: codes.append(w.close_code))
    ws.abort(1011, "ping timeout")
    assert client.receive(timeout=5) is None
    assert (client.close_code, client.close_reason) == (1011, "ping timeout")
    server.stop(timeout=1)
    assert codes == [1011]


def test_emit_sends_one_json_event_envelope(serve: Any) -> None:
    server = serve(lambda ws: ws.emit("hello", {"n": 1}), config=Config(**FAST))
    ws = connect(f"ws://127.0.0.1:{server.server_port}/")
    assert ws.receive(timeout=5) == '{"event":"hello","data":{"n":1}}'
    assert ws.receive(timeout=5) is None and ws.close_code == 1000


def test_defect2_two_sending_greenlets_both_wait_for_the_outbox(serve: Any, raw_peer: Any) -> None:
    """send() blocks while the outbox is full, whichever greenlet holds the socket."""
    limit, chunk = 1 << 20, b"x" * 65536
    peak: list[int] = [0]
    finished = Event()

    def blast(ws: WebSocket) -> None:
        try:
            for _ in range(400):
                ws.send(chunk)
                peak[0] = max(peak[0], ws.buffered_amount)
        except ConnectionClosed:
            return
        finished.set()

    def handler(ws: WebSocket) -> None:
        other = gevent.spawn(blast, ws)
        try:
            blast(ws)
        finally:
            other.kill()

    server = serve(handler, config=Config(**FAST, max_backpressure=limit))
    peer = raw_peer(server.server_port, rcvbuf=4096)
    assert peer.request().startswith(b"HTTP/1.1 101")  # then never reads
    assert not finished.wait(1.0), "400 x 64 KiB reached a peer that reads nothing"
    assert peak[0] <= limit + 2 * len(chunk)


def test_defect10_close_from_another_greenlet_is_answered_while_the_handler_sleeps(
    serve: Any,
) -> None:
    """RFC 6455 §7.1.4: the peer's echo completes the close, not the close_timeout."""
    release, done = Event(), Event()
    codes: list[int | None] = []

    def handler(ws: WebSocket) -> None:
        def on_close(w: WebSocket) -> None:
            codes.append(w.close_code)
            done.set()

        ws.add_close_callback(on_close)
        gevent.spawn(ws.close, 4001, "bye")
        release.wait(10)  # a push-only handler: it never reads

    server = serve(handler, config=Config(**{**FAST, "close_timeout": 5.0}))
    client = connect(url(server))
    started = time.monotonic()
    assert client.receive(timeout=5) is None and client.close_code == 4001  # echoes the Close
    assert done.wait(3), "the server did not read the peer's Close"
    assert codes == [4001] and time.monotonic() - started < 3
    release.set()
    assert server.wait_drained(5)


def test_defect10_handler_reading_after_a_background_close_sees_the_end(serve: Any) -> None:
    holder: Queue = Queue()
    release = Event()
    server = serve(holding(holder, release=release), config=Config(**FAST))
    client = connect(url(server))
    ws = holder.get(timeout=5)
    gevent.spawn(ws.close, 4002)
    assert client.receive(timeout=5) is None and client.close_code == 4002
    release.set()  # the handler now reads: it waits for the closing greenlet, no RuntimeError
    assert server.wait_drained(5)
    assert ws.close_code == 4002


def test_defect16_receive_timeout_zero_reads_what_is_in_the_socket(serve: Any) -> None:
    sent = Event()
    results: list[object] = []

    def handler(ws: WebSocket) -> None:
        ws.send("ready")
        sent.wait(5)  # the client's message is in our kernel buffer now (loopback)
        try:
            results.append(ws.receive(timeout=0))
        except TimeoutError as exc:
            results.append(exc)
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0)  # nothing more: still a timeout, at once
        ws.send("done")

    server = serve(handler, config=Config(**FAST))
    client = connect(url(server))
    assert client.receive(timeout=5) == "ready"
    client.send("queued")
    sent.set()
    assert client.receive(timeout=5) == "done"
    assert results == ["queued"]
    client.close()
