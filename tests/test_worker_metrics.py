"""One ``/metrics`` for ``wsflask run --workers N`` (issue 15): sums and per-worker series.

In-process: ``WorkerMetrics`` instances over real Unix sockets in a temporary directory (one
sibling missing, one that never answers). Subprocess: ``wsflask run tests.backplane_node:app
--workers 2`` with a real ``redis-server``; clients are connected until both workers hold
one (the greeting carries the worker's pid), then any worker's ``/metrics`` counts both.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest

from wsflask.client import connect
from wsflask.metrics import Metrics
from wsflask.worker_metrics import SCRAPE_TIMEOUT, WorkerMetrics, merge

WAIT = 10.0


def sample(text: str, series: str) -> str:
    """The value of ``series`` (exact name and labels) in a Prometheus text."""
    found = re.findall(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert len(found) == 1, f"{series!r} appears {len(found)} times in:\n{text}"
    return str(found[0])


# -- the merge, over Unix sockets in one process ------------------------------------------------


@pytest.fixture
def workers(tmp_path: Path) -> Any:
    started: list[WorkerMetrics] = []

    def start(index: int, count: int, metrics: Metrics) -> WorkerMetrics:
        worker = WorkerMetrics(str(tmp_path), count, index=index, render=metrics.render)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_one_worker_sums_its_siblings_and_marks_the_missing_one(
    workers: Any, tmp_path: Path
) -> None:
    first, second = Metrics(), Metrics()
    for _ in range(2):
        first.connection_opened()
    second.connection_opened()
    first.handshake(101)
    second.handshake(101)
    second.handshake(429)
    second.rtt(0.002)
    me = workers(0, 3, first)
    workers(1, 3, second)  # worker 2 never started: no socket
    text = me.render_all()
    assert sample(text, "websocket_connections_current") == "3"
    assert sample(text, 'websocket_connections_current{worker="0"}') == "2"
    assert sample(text, 'websocket_connections_current{worker="1"}') == "1"
    assert sample(text, 'websocket_handshakes_total{status="101"}') == "2"
    assert sample(text, 'websocket_handshakes_total{status="429"}') == "1"
    assert sample(text, 'websocket_handshakes_total{worker="1",status="429"}') == "1"
    assert sample(text, 'websocket_rtt_seconds_bucket{le="0.005"}') == "1"
    assert sample(text, 'websocket_rtt_seconds_count{worker="0"}') == "0"
    assert sample(text, 'wsflask_worker_up{worker="0"}') == "1"
    assert sample(text, 'wsflask_worker_up{worker="1"}') == "1"
    assert sample(text, 'wsflask_worker_up{worker="2"}') == "0"
    assert text.count("# TYPE websocket_connections_current gauge\n") == 1
    assert "websocket_deflate_ratio 0\n" not in text  # a ratio is not summed
    assert sample(text, 'websocket_deflate_ratio{worker="1"}') == "0"
    assert not (tmp_path / "2.sock").exists()


def test_a_sibling_that_never_answers_is_marked_down_in_bounded_time(
    workers: Any, tmp_path: Path
) -> None:
    mine = Metrics()
    mine.connection_opened()
    me = workers(0, 2, mine)
    mute = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(tmp_path / "1.sock"))  # accepts into the backlog, never writes
    mute.listen(1)
    try:
        started = time.monotonic()
        text = me.render_all()
        assert time.monotonic() - started < SCRAPE_TIMEOUT + 1.0
    finally:
        mute.close()
    assert sample(text, "websocket_connections_current") == "1"
    assert sample(text, 'wsflask_worker_up{worker="1"}') == "0"


def test_merge_keeps_label_values_and_sums_floats() -> None:
    a = '# HELP x_total X.\n# TYPE x_total counter\nx_total{reason="a}b"} 1.5\ny 2\n'
    b = '# HELP x_total X.\n# TYPE x_total counter\nx_total{reason="a}b"} 2\n'
    text = merge([a, b])
    assert sample(text, 'x_total{reason="a}b"}') == "3.5"
    assert sample(text, 'x_total{worker="0",reason="a}b"}') == "1.5"
    assert sample(text, 'y{worker="0"}') == "2"


# -- a real `wsflask run --workers 2` ------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


def test_any_worker_serves_the_metrics_of_both(
    redis_server: Any, wsflask_run: Any, tmp_path: Path
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = wsflask_run(
        "tests.backplane_node:app",
        "--port",
        "0",
        "--workers",
        "2",
        env={
            "WSFLASK_BACKPLANE": redis_server.url,
            "WSFLASK_SHUTDOWN_GRACE": "3",
            "WSFLASK_CLOSE_TIMEOUT": "1",
            "TMPDIR": str(tmp),
        },
    )
    port = proc.wait_serving()
    by_pid: dict[int, list[Any]] = {}
    for _ in range(200):  # the kernel spreads clients by address: connect until both hold one
        ws = connect(f"ws://127.0.0.1:{port}/r/t", timeout=WAIT)
        by_pid.setdefault(int(json.loads(str(ws.receive(timeout=WAIT)))["pid"]), []).append(ws)
        if len(by_pid) == 2:
            break
    assert len(by_pid) == 2, f"the clients all landed on one worker: {by_pid.keys()}"
    total = sum(len(group) for group in by_pid.values())
    (directory,) = tmp.glob("wsflask-metrics-*")
    assert sorted(p.name for p in directory.iterdir()) == ["0.sock", "1.sock"]
    for _ in range(6):  # new connections: either worker may answer, each sums both
        status, text = http_get(port, "/metrics")
        assert status == 200
        assert sample(text, "websocket_connections_current") == str(total)
        per_worker = sorted(
            int(sample(text, f'websocket_connections_current{{worker="{i}"}}')) for i in (0, 1)
        )
        assert per_worker == sorted(len(group) for group in by_pid.values())
        assert sample(text, 'wsflask_worker_up{worker="0"}') == "1"
        assert sample(text, 'wsflask_worker_up{worker="1"}') == "1"
    proc.proc.send_signal(signal.SIGTERM)
    for group in by_pid.values():
        for ws in group:
            assert ws.receive(timeout=15) is None and ws.close_code == 1001
    assert proc.wait_exit(timeout=30) == 0, proc.log
    assert not directory.exists()  # the supervisor removed the sockets' directory
