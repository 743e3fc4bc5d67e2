"""Debugging aids and the logging pipeline: tracer, hub lag, snapshots, health, log queue.

Seed-audit-2 themes C (item 20) and H (items 41-44): the state tracer flags an illegal
transition; a handler that blocks the hub for 200 ms shows at least 200 ms of lag; memory and
health tables attribute a slow reader's buffer; the log queue never blocks its caller, keeps
at most its size and counts what it dropped.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import Any

import gevent.monkey
import pytest
from helpers import wait_until

from wsflask import App, logs
from wsflask.client import connect
from wsflask.config import Config
from wsflask.diagnostics import (
    HealthThresholds,
    LoopLagMonitor,
    health_table,
    memory_report,
    performance_snapshot,
)
from wsflask.metrics import Metrics
from wsflask.protocol import State
from wsflask.tracing import StateTracer
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

FAST = Config(port=0, close_timeout=1.0, handshake_timeout=2.0, shutdown_grace=1.0)


def url(server: Any) -> str:
    return f"ws://127.0.0.1:{server.server_port}/"


# -- item 41: tracer ------------------------------------------------------------------------


def test_tracer_records_every_transition_and_flags_an_illegal_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsflask.diagnostics")
    tracer = StateTracer(history=10, enabled=True)
    tracer.record("a", State.OPEN, "handshake")
    tracer.record("a", State.CLOSING, "close sent")
    tracer.record("a", State.OPEN, "bug")  # CLOSING -> OPEN: illegal
    tracer.record("a", State.CLOSED, "done")
    assert [(t[1], t[2]) for t in tracer.transitions] == [
        (State.CONNECTING, State.OPEN),
        (State.OPEN, State.CLOSING),
        (State.CLOSING, State.OPEN),
        (State.OPEN, State.CLOSED),
    ]
    assert list(tracer.illegal) == [("a", State.CLOSING, State.OPEN, "bug")]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "illegal state transition CLOSING -> OPEN" in errors[0].getMessage()


def test_disabled_tracer_keeps_nothing() -> None:
    tracer = StateTracer()
    tracer.record("a", State.OPEN, "handshake")
    assert not tracer.transitions and not tracer.illegal


# -- item 42: hub lag and the performance snapshot -----------------------------------------


def test_performance_snapshot_has_cpu_rss_fds_loop_lag(serve: Any) -> None:
    # the real sleep even after an earlier test imported locust (which monkey-patches time)
    blocking_sleep = gevent.monkey.get_original("time", "sleep")

    def blocking_echo(ws: WebSocket) -> None:
        for message in ws:
            blocking_sleep(0.2)  # deliberately blocks the whole hub
            ws.send(message)

    monitor = LoopLagMonitor(0.01)
    monitor.start()
    try:
        server = serve(blocking_echo, config=FAST)
        client = connect(url(server), timeout=5)
        wait_until(lambda: monitor.ticks >= 2)
        monitor.reset()
        client.send("x")
        assert client.receive(timeout=5) == "x"
        ticks = monitor.ticks
        wait_until(lambda: monitor.ticks > ticks)
        snapshot = performance_snapshot(monitor)
        client.close()
    finally:
        monitor.stop()
    assert snapshot["loop_lag_max_seconds"] >= 0.2
    assert snapshot["cpu_user_seconds"] > 0 and snapshot["rss_bytes"] > 1_000_000
    assert snapshot["open_fds"] >= 3 and snapshot["greenlets"] >= 2


# -- items 43, 44: memory report and health table ------------------------------------------


def test_memory_report_and_health_table_attribute_a_slow_readers_buffer(
    serve: Any, raw_peer: Any
) -> None:
    seen: list[WebSocket] = []

    def handler(ws: WebSocket) -> None:
        seen.append(ws)
        for _ in ws:
            pass

    server = serve(handler, config=FAST.replace(max_backpressure=64 * 1024 * 1024))
    fast = connect(url(server), timeout=5)
    slow = raw_peer(server.server_port, rcvbuf=4096)
    assert slow.request().startswith(b"HTTP/1.1 101 ")
    wait_until(lambda: len(seen) == 2)
    port = slow.sock.getsockname()[1]
    slow_ws = next(ws for ws in seen if ws.remote_address and ws.remote_address[1] == port)
    while slow_ws.buffered_amount == 0:  # the peer never reads: the outbox fills
        assert slow_ws.send_nowait("z" * 65536)
    report = memory_report(seen)
    assert report[0]["id"] == slow_ws.id and report[0]["buffered"] > 0
    assert report[0]["total"] >= report[0]["buffered"] and report[1]["buffered"] == 0
    rows = health_table(seen, HealthThresholds(rtt=1.0, buffered=1, silence=60.0))
    assert rows[0]["id"] == slow_ws.id and rows[0]["status"] == "critical"
    assert rows[1]["status"] == "ok" and rows[1]["state"] == "OPEN"
    fast.close()


# -- item 20: the log queue -----------------------------------------------------------------


class Blocking(logging.Handler):
    """A handler stuck on a slow pipe until ``unblock`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.unblock = threading.Event()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.unblock.wait(30)
        self.count += 1


def test_log_queue_is_bounded_and_drops_are_counted() -> None:
    blocking = Blocking()
    handler = logs.BoundedQueueHandler([blocking], size=100)
    logger = logging.getLogger("wsflask.test.flood")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    before = logs.dropped_records()
    try:
        for n in range(10_000):  # returns although the writer is stuck
            logger.info("access %d", n)
        dropped = logs.dropped_records() - before
        assert 10_000 - 101 <= dropped <= 10_000 - 100  # the writer may hold one
        assert f"websocket_log_records_dropped_total {logs.dropped_records()}" in (
            Metrics().render()
        )
        assert [r.getMessage() for r in logs.recent(2)] == ["access 9998", "access 9999"]
    finally:
        blocking.unblock.set()
        logger.removeHandler(handler)
        handler.close()
        logger.propagate = True
    assert blocking.count == 10_000 - dropped


def test_setup_writes_through_the_queue_and_keeps_tracebacks() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.setup("json", "INFO", stream=stream, queue_size=10)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("wsflask.test").exception("it failed")
        logs.shutdown()  # drains the queue
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    assert '"msg":"it failed"' in line and "ValueError: boom" in line


# -- item 33: reconcile; item 45: the debug page and `wsflask inspect` -----------------------


def test_reconcile_removes_orphans(
    app_factory: Callable[..., App], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsflask.diagnostics")
    app = app_factory(port=0, close_timeout=1.0, shutdown_grace=1.0)
    seen: list[WebSocket] = []

    @app.route("/")
    def chat(ws: WebSocket) -> None:
        seen.append(ws)
        app.rooms.join("lobby", ws)

    server = app.make_server()
    server.start()
    client = connect(url(server), timeout=5)
    assert client.receive(timeout=5) is None  # the handler returned: closed
    wait_until(lambda: not app.rooms.connections())
    (ws,) = seen
    assert ws.state is State.CLOSED
    app.rooms._connections[ws.id] = ws  # an orphan, as a lost close callback would leave
    assert app.reconcile() == [ws.id]
    assert app.rooms.connections() == [] and app.reconcile() == []
    repairs = [r for r in caplog.records if "reconcile" in r.getMessage()]
    assert len(repairs) == 1 and ws.id in repairs[0].getMessage()


def http_get(port: int, path: str, headers: str = "") -> bytes:
    import gevent.socket

    sock = gevent.socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data
    finally:
        sock.close()


def test_dump_lists_open_connections(app_factory: Callable[..., App]) -> None:
    import json
    import sys

    import gevent.subprocess

    from wsflask.debug_page import enable_debug_page

    token = "t" * 24
    app = app_factory(port=0, close_timeout=1.0, shutdown_grace=1.0)
    enable_debug_page(app, token=token)

    @app.route("/")
    def chat(ws: WebSocket) -> None:
        app.rooms.join("lobby", ws)
        for message in ws:
            ws.send(message)

    server = app.make_server()
    server.start()
    port = server.server_port
    clients = [connect(url(server), timeout=5) for _ in range(2)]
    for client in clients:
        client.send("hi")
        assert client.receive(timeout=5) == "hi"
    assert http_get(port, "/debug").startswith(b"HTTP/1.1 404 ")
    assert http_get(port, "/debug", "Authorization: Bearer wrong\r\n").startswith(b"HTTP/1.1 404")
    answer = http_get(port, "/debug", f"Authorization: Bearer {token}\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["stats"]["connections"]["open"] == 2
    rows = body["connections"]
    assert len(rows) == 2 and all(r["rooms"] == ["lobby"] and r["state"] == "OPEN" for r in rows)
    assert all(r["messages_in"] == 1 and r["messages_out"] == 1 for r in rows)
    printed = gevent.subprocess.run(
        [sys.executable, "-m", "wsflask", "inspect", f"http://127.0.0.1:{port}/debug",
         "--token", token],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "open 2" in printed
    assert all(row["id"] in printed for row in rows) and "lobby" in printed
    refused = gevent.subprocess.run(
        [sys.executable, "-m", "wsflask", "inspect", f"http://127.0.0.1:{port}/debug"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "404" in refused.stderr
    with pytest.raises(ValueError):
        enable_debug_page(app_factory(), token="short")
    for client in clients:
        client.close()
