"""Benchmark (battery CF-02): a canary's echo latency while N clients flood 125-byte pings.

Starts a wsflask echo server in a child process, measures a canary connection's round trips
(p50, p99, max) without a flood, then again while ``--flooders`` clients (threads in a second
child process) send masked 125-byte pings as fast as TCP takes them and never read (their
receive window stays shut, so the pongs pile up on the server's side). Reports the p99 ratio
(the battery's pass line is < 2x baseline), the server's RSS before and at its peak (from
/proc), the server's CPU seconds per phase (/proc/PID/stat), and how many flooders the server
closed. Benchmarks are not tests: nothing here asserts a speed or a bound.

Run: ``python loadtests/cf02_ping_flood_bench.py --flooders 100 --seconds 10`` (the canary runs
in this process; no monkey-patching). It does not pin CPUs: on a shared machine, run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)

SERVER = """
from wsflask import App

app = App(ping_interval=86400.0, close_timeout=0.5, compression=False, max_connections=20000)

@app.route("/")
def echo(ws):
    for message in ws:
        ws.send(message)

server = app.make_server("127.0.0.1", 0)
server.install_signal_handlers()
server.start()
print(server.server_port, flush=True)
server.serve_forever()
"""

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
PINGS = (b"\x89\xfd\x00\x00\x00\x00" + b"p" * 125) * 64  # 64 masked 125-byte pings


def flood(port: int, count: int) -> None:
    """Flooder mode: ``count`` threads ping and never read; on stdin EOF print the closes."""
    closed = [0]
    lock = threading.Lock()
    started = threading.Barrier(count + 1)

    def one() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(UPGRADE + PINGS)
        started.wait()
        try:
            while True:
                sock.sendall(PINGS)
        except OSError:  # the server closed or reset us
            with lock:
                closed[0] += 1

    for _ in range(count):
        threading.Thread(target=one, daemon=True).start()
    started.wait()
    print("flooding", flush=True)
    sys.stdin.read()
    print(closed[0], flush=True)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Canary:
    """A blocking ws:// client with hand-made frames: one masked text frame out, one in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(4096)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(head.decode(errors="replace"))

    def trip(self, n: int) -> float:
        payload = f"c{n:08d}".encode()
        started = time.perf_counter()
        self.sock.sendall(b"\x81\x89\x00\x00\x00\x00" + payload)
        answer = b""
        while len(answer) < 2 + len(payload):
            chunk = self.sock.recv(64)
            if not chunk:
                raise RuntimeError("the server closed the canary")
            answer += chunk
        elapsed = time.perf_counter() - started
        if answer != b"\x81\x09" + payload:
            raise RuntimeError(f"the canary's echo came back wrong: {answer!r}")
        return elapsed


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def phase(canary: Canary, pid: int, seconds: float) -> dict[str, float]:
    trips, peak, cpu0, ends = [], rss(pid), cpu(pid), time.monotonic() + seconds
    while time.monotonic() < ends:
        for _ in range(50):
            trips.append(canary.trip(len(trips)))
        peak = max(peak, rss(pid))
    return {
        "trips": len(trips),
        "p50_ms": percentile(trips, 0.5) * 1e3,
        "p99_ms": percentile(trips, 0.99) * 1e3,
        "max_ms": max(trips) * 1e3,
        "peak_rss_mib": peak / 2**20,
        "server_cpu_s": cpu(pid) - cpu0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flooders", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--flood-mode", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_mode:
        flood(*args.flood_mode)
        return
    env = dict(os.environ, PYTHONPATH=ROOT)
    server = subprocess.Popen([sys.executable, "-c", SERVER], env=env, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        canary = Canary(port)
        phase(canary, server.pid, 1.0)  # warm-up
        before = rss(server.pid)
        baseline = phase(canary, server.pid, args.seconds)
        flooders = subprocess.Popen(
            [sys.executable, __file__, "--flood-mode", str(port), str(args.flooders)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert flooders.stdout is not None and flooders.stdin is not None
        assert flooders.stdout.readline() == b"flooding\n"
        flooded = phase(canary, server.pid, args.seconds)
        flooders.stdin.close()
        closed = int(flooders.stdout.readline())
        flooders.wait(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=10)
    result = {
        "flooders": args.flooders,
        "seconds": args.seconds,
        "rss_before_mib": before / 2**20,
        "baseline": baseline,
        "flood": flooded,
        "p99_ratio": flooded["p99_ms"] / baseline["p99_ms"],
        "flooders_closed_by_server": closed,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
