"""``wsflask run --workers N``: pre-forked workers on one port, supervised, drained on SIGTERM.

Runs ``python -m wsflask run tests.backplane_node:app --workers 2`` against a real
``redis-server`` (the workers share rooms through it); the refusal without a backplane needs
no Redis. Members are spread over the workers by the kernel: the test connects until it has
members on both (each greeting carries the worker's pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import require_tool, wait_until

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


# -- Defect 5: a worker that cannot start is not restarted forever, and never exits 0 ----------

FAILING_APP = """
import os

from wsflask import App


class StartupFails(App):
    def make_server(self, *args, **kwargs):
        if os.environ["WSFLASK_WORKER"] in os.environ["FAIL_WORKERS"].split(","):
            raise RuntimeError("cannot start (test)")
        return super().make_server(*args, **kwargs)


app = StartupFails()


@app.route("/echo")
def echo(ws):
    for message in ws:
        ws.send(message)
"""

DEAD_BACKPLANE = "redis://127.0.0.1:1/0"  # never contacted: the failure comes first


def failing_app(tmp_path: Path, fail: str, backplane: str) -> dict[str, str]:
    (tmp_path / "failing_app.py").write_text(FAILING_APP)
    return {
        **ENV,
        "PYTHONPATH": str(tmp_path),
        "FAIL_WORKERS": fail,
        "WSFLASK_BACKPLANE": backplane,
    }


def test_mismatched_certificate_and_key_fail_before_any_fork(
    wsflask_run: Any, tmp_path: Path
) -> None:
    require_tool("openssl", "apt-get install -y openssl")
    cert, key, other = (str(tmp_path / name) for name in ("c.pem", "k.pem", "other.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(
        ["openssl", "req", "-x509", *ec, "-keyout", key, "-out", cert, "-subj", "/CN=x"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    genpkey = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(  # a second key: it does not match the certificate
        [*genpkey, "-out", other],
        check=True,
        capture_output=True,
        timeout=60,
    )
    proc = wsflask_run(
        "examples.echo:app",
        "--port",
        "0",
        "--workers",
        "2",
        env={
            **ENV,
            "WSFLASK_BACKPLANE": DEAD_BACKPLANE,
            "WSFLASK_CERTFILE": cert,
            "WSFLASK_KEYFILE": other,
        },
    )
    assert proc.wait_exit(timeout=15) == 1, proc.log
    assert "cannot be loaded" in proc.log
    assert "started (pid" not in proc.log and "serving on" not in proc.log


@pytest.mark.parametrize(
    ("fail", "reason"),
    [
        ("0,1", "every worker failed at startup: giving up"),
        ("1", "worker 1 failed at startup 5 times in a row: giving up"),
    ],
)
def test_workers_that_always_fail_at_startup_make_the_supervisor_give_up(
    wsflask_run: Any, tmp_path: Path, fail: str, reason: str
) -> None:
    env = failing_app(tmp_path, fail, DEAD_BACKPLANE)
    proc = wsflask_run("failing_app:app", "--port", "0", "--workers", "2", env=env)
    port = proc.wait_serving()
    assert proc.wait_exit(timeout=30) == 1, proc.log
    assert reason in proc.log
    assert "(clean)" not in proc.log
    assert proc.log.count("started (pid") <= 2 * 5
    with pytest.raises(ConnectionRefusedError):  # nothing left holding the port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_sigterm_after_a_worker_failed_at_startup_exits_non_zero(
    redis_server: Any, wsflask_run: Any, tmp_path: Path
) -> None:
    env = failing_app(tmp_path, "1", redis_server.url)
    proc = wsflask_run("failing_app:app", "--port", "0", "--workers", "2", env=env)
    proc.wait_for_log(r"worker 1 \(pid \d+\) exited with code 1")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait_exit(timeout=30) == 1, proc.log
    assert "(clean)" not in proc.log
    assert "with errors" in proc.log or "giving up" in proc.log


# -- Defect 6: a worker holds only its own listener, so a drain refuses new connections -------


def listening_inodes(port: int) -> set[str]:
    """Socket inodes of the LISTEN sockets on ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed while we looked
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                found.add(link[len("socket:[") : -1])
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_each_worker_holds_only_its_listener_and_a_drain_refuses_new_connections(
    redis_server: Any, wsflask_run: Any
) -> None:
    slow_drain = {"WSFLASK_SHUTDOWN_GRACE": "20", "WSFLASK_CLOSE_TIMEOUT": "20"}
    env = {**ENV, **slow_drain, "WSFLASK_BACKPLANE": redis_server.url}
    proc = wsflask_run("tests.backplane_node:app", "--port", "0", "--workers", "2", env=env)
    port = proc.wait_serving()
    by_pid = spread(port)
    listeners = listening_inodes(port)
    assert len(listeners) == 2
    held = {pid: socket_inodes(pid) & listeners for pid in by_pid}
    assert all(len(inodes) == 1 for inodes in held.values()), held
    assert set.union(*held.values()) == listeners  # each its own one

    proc.proc.send_signal(signal.SIGTERM)  # the clients stay silent: the workers keep draining
    wait_until(lambda: proc.log.count("signal SIGTERM: draining") == 2, timeout=15)
    wait_until(lambda: not listening_inodes(port), timeout=5)
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert time.monotonic() - started < 1.0
    for pid in by_pid:  # still draining: the refusal came during the drain
        os.kill(pid, 0)
    for ws in (ws for group in by_pid.values() for ws in group):
        assert ws.receive(timeout=15) is None and ws.close_code == 1001
    assert proc.wait_exit(timeout=30) == 0, proc.log


def test_sighup_to_the_supervisor_reaches_the_workers_and_kills_nobody(
    redis_server: Any, wsflask_run: Any
) -> None:
    """SIGHUP means "reload the certificate": the supervisor forwards it, and a worker
    without TLS ignores it. Before, the supervisor died of it (the default action)."""
    env = {**ENV, "WSFLASK_BACKPLANE": redis_server.url}
    proc = wsflask_run("tests.backplane_node:app", "--port", "0", "--workers", "2", env=env)
    port = proc.wait_serving()
    by_pid = spread(port)
    proc.proc.send_signal(signal.SIGHUP)
    ws, pid = member(port)  # the port still answers, from a worker that was already there
    assert pid in by_pid and proc.proc.poll() is None
    for worker in by_pid:
        os.kill(worker, 0)  # alive (raises ProcessLookupError otherwise)
    for client in [ws, *(w for group in by_pid.values() for w in group)]:
        client.close()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait_exit(timeout=30) == 0, proc.log
    assert "exited with signal" not in proc.log
