"""Backplane measurements (issue 8): fan-out rate over 2 workers vs 1 process; Redis hop latency.

Usage (needs ``redis-server`` on the PATH; everything on 127.0.0.1, every process stopped)::

    .venv/bin/python loadtests/backplane_bench.py [--members 1000] [--messages 100]

1. Fan-out: ``--members`` raw WebSocket members in one room, one sender sends ``--messages``
   16-byte messages back to back; the rate is members x messages / time until every member
   has every byte. Run against ``wsflask run`` with one process (no backplane), then with
   ``--workers 2`` and the Redis backplane (members spread by the kernel).
2. Redis hop: two single-process nodes on Redis; a member of node A sends timestamped
   messages every 2 ms; the latency to a member on A (local path) and on B (through Redis)
   gives p50/p99, and the difference is the hop.

The clients run in this process (gevent, raw sockets that only count bytes), so on a 2-core
machine they compete with the server for CPU: compare the two runs, not absolute numbers.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import signal
import socket as pysocket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import gevent
import gevent.socket

from wsflask import App
from wsflask.client import connect

app = App()


@app.route("/b/<room>")
def room_echo(ws: Any, room: str) -> None:
    """Join ``room``; broadcast every message to it (the sender included)."""
    app.rooms.join(room, ws)
    for message in ws:
        app.send(message, to=room)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD = 16


def free_port() -> int:
    with pysocket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(extra: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    log = tempfile.NamedTemporaryFile(delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsflask",
            "run",
            "loadtests.backplane_bench:app",
            "--port",
            "0",
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(log.name, errors="replace") as f:
            found = re.search(r"serving on http://[^:]+:(\d+)/", f.read())
        if found:
            return proc, int(found[1])
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def raw_member(port: int, room: str) -> Any:
    sock = gevent.socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /b/{room} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
        f"Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock, head.partition(b"\r\n\r\n")[2]


def fanout(port: int, members: int, messages: int) -> float:
    """Messages delivered per second to ``members`` members of one room."""
    socks = [raw_member(port, "fan") for _ in range(members)]
    gevent.sleep(1.5)  # subscriptions and presence settle (a bench, not a test)
    expected = messages * (2 + PAYLOAD)
    sender = connect(f"ws://127.0.0.1:{port}/b/fan")
    gevent.sleep(0.5)

    def drain(item: tuple[Any, bytes]) -> None:
        sock, got = item
        total = len(got)
        while total < expected:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"a member was closed after {total}/{expected} bytes")
            total += len(chunk)

    started = time.perf_counter()
    readers = [gevent.spawn(drain, item) for item in socks]
    for i in range(messages):
        sender.send(f"{i:0{PAYLOAD}d}")
    gevent.joinall(readers, timeout=120, raise_error=True)
    elapsed = time.perf_counter() - started
    sender.close()
    for sock, _ in socks:
        sock.close()
    return members * messages / elapsed


def hop(port_a: int, port_b: int, count: int = 1000) -> tuple[list[float], list[float]]:
    sender = connect(f"ws://127.0.0.1:{port_a}/b/lat")
    local = connect(f"ws://127.0.0.1:{port_a}/b/lat")
    remote = connect(f"ws://127.0.0.1:{port_b}/b/lat")
    gevent.sleep(1.5)
    results: dict[str, list[float]] = {"local": [], "remote": []}

    def read(name: str, ws: Any) -> None:
        for _ in range(count):
            message = ws.receive(timeout=30)
            results[name].append((time.perf_counter() - float(message)) * 1000)

    readers = [gevent.spawn(read, "local", local), gevent.spawn(read, "remote", remote)]
    for _ in range(count):
        sender.send(repr(time.perf_counter()))
        gevent.sleep(0.002)
    gevent.joinall(readers, timeout=60, raise_error=True)
    for ws in (sender, local, remote):
        ws.close()
    return results["local"], results["remote"]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed")
    tmp = tempfile.mkdtemp()
    rport = free_port()
    redis = subprocess.Popen(
        [
            exe,
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{rport}/0"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        time.sleep(0.5)
        proc, port = start_server([], {})
        procs.append(proc)
        single = fanout(port, args.members, args.messages)
        proc.terminate()
        proc.wait(timeout=30)
        proc, port = start_server(["--workers", "2"], {"WSFLASK_BACKPLANE": url})
        procs.append(proc)
        workers = fanout(port, args.members, args.messages)
        proc.terminate()
        proc.wait(timeout=30)
        print(f"fan-out, {args.members} members x {args.messages} messages:")
        print(f"  1 process, no backplane : {single:10,.0f} msg/s")
        print(f"  2 workers + Redis       : {workers:10,.0f} msg/s ({workers / single:.2f}x)")
        a, port_a = start_server([], {"WSFLASK_BACKPLANE": url})
        b, port_b = start_server([], {"WSFLASK_BACKPLANE": url})
        procs += [a, b]
        local, remote = hop(port_a, port_b)
        print("latency sender -> member, ms (1000 messages, 2 ms apart):")
        for name, values in (("same node", local), ("via Redis", remote)):
            print(f"  {name:10}: p50 {pct(values, 50):.3f}  p99 {pct(values, 99):.3f}")
        print(
            f"  Redis hop : p50 +{pct(remote, 50) - pct(local, 50):.3f}  "
            f"p99 +{pct(remote, 99) - pct(local, 99):.3f}"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanup on SIGTERM too
    main()
