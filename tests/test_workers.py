"""``wsflask run --workers N``: pre-forked workers on one port, supervised, drained on SIGTERM.

Runs ``python -m wsflask run tests.backplane_node:app --workers 2`` against a real
``redis-server`` (the workers share rooms through it); the refusal without a backplane needs
no Redis. Members are spread over the workers by the kernel: the test connects until it has
members on both (each greeting carries the worker's pid).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
from helpers import wait_until

from wsflask.client import connect

ENV = {
    "WSFLASK_BACKPLANE_INTERVAL": "1.0",
    "WSFLASK_BACKPLANE_BACKOFF_MAX": "0.5",
    "WSFLASK_SHUTDOWN_GRACE": "3",
    "WSFLASK_CLOSE_TIMEOUT": "1",
}


def member(port: int) -> tuple[Any, int]:
    ws = connect(f"ws://127.0.0.1:{port}/r/t", timeout=10)
    return ws, int(json.loads(str(ws.receive(timeout=10)))["pid"])


def spread(port: int, attempts: int = 200) -> dict[int, list[Any]]:
    """Connect members until two workers have at least two each (bounded)."""
    by_pid: dict[int, list[Any]] = {}
    for _ in range(attempts):
        ws, pid = member(port)
        by_pid.setdefault(pid, []).append(ws)
        if len(by_pid) >= 2 and sorted(len(v) for v in by_pid.values())[-2] >= 2:
            return by_pid
    raise AssertionError(f"the kernel never spread members over the workers: {by_pid.keys()}")


def test_more_than_one_worker_without_a_backplane_is_refused(wsflask_run: Any) -> None:
    proc = wsflask_run("tests.backplane_node:app", "--port", "0", "--workers", "2")
    assert proc.wait_exit(timeout=30) == 1
    assert "rooms would split" in proc.log


def test_two_workers_one_port_share_rooms_restart_and_drain(
    redis_server: Any, wsflask_run: Any
) -> None:
    proc = wsflask_run(
        "tests.backplane_node:app",
        "--port",
        "0",
        "--workers",
        "2",
        env={**ENV, "WSFLASK_BACKPLANE": redis_server.url},
    )
    port = proc.wait_serving()
    by_pid = spread(port)
    members = [ws for group in by_pid.values() for ws in group]
    numsub = redis_server.client().pubsub_numsub

    wait_until(lambda: dict(numsub("wsflask:room:t"))[b"wsflask:room:t"] == len(by_pid), 30)
    senders = [group[0] for group in by_pid.values()][:2]
    for i in range(30):
        for n, ws in enumerate(senders):
            ws.send(f"{n}:{i}")
    for ws in members:  # every member, on either worker: every message once, in order
        got = [str(ws.receive(timeout=10)) for _ in range(60)]
        for n in range(2):
            assert [m for m in got if m.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(30)]
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0.3)

    victim = next(iter(by_pid))  # kill -9 one worker: the supervisor restarts it
    os.kill(victim, signal.SIGKILL)
    proc.wait_for_log(rf"worker \d \(pid {victim}\) exited with signal 9")
    wait_until(lambda: proc.log.count("started (pid") >= 3, 30)
    for ws in by_pid[victim]:
        assert ws.receive(timeout=10) is None and ws.close_code == 1006, proc.log
    survivors = [ws for pid, group in by_pid.items() if pid != victim for ws in group]

    proc.proc.send_signal(signal.SIGTERM)  # drain: 1001 to every client, exit 0
    for ws in survivors:
        assert ws.receive(timeout=15) is None and ws.close_code == 1001
    assert proc.wait_exit(timeout=30) == 0, proc.log
    assert dict(numsub("wsflask:room:t"))[b"wsflask:room:t"] == 0
