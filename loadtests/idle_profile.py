"""What an idle connection costs the server: RSS and (``--trace``) tracemalloc, by line.

A server (wsflask's ``/echo`` as in ``servers/wsflask_server.py``, or ``--calibration``, the
bare gevent greenlet per connection) runs in a child process; this process opens ``--warm``
connections, takes a first sample, opens N more idle ones, takes a second, and prints the
growth per connection: RSS from ``/proc`` (the whole picture: the greenlet's Python data
stack page, the allocator) and, with ``--trace``, the Python allocations by traceback (the
greenlet's saved C stack shows up at the line that switched out). Tracing slows the server
and adds its own memory to RSS: compare traced runs with traced runs.

    python loadtests/idle_profile.py 2000            # RSS per idle connection
    python loadtests/idle_profile.py 2000 --trace    # + the biggest allocations by traceback

Not a benchmark: ``rivals.py``'s idle row (15,000 connections, next to the rivals) is.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import gc, os, signal, sys
out, kind, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if os.environ.get("IDLE_TRACE") == "1":
    import tracemalloc
    tracemalloc.start(int(os.environ.get("IDLE_DEPTH", "8")))
else:
    tracemalloc = None
from gevent import monkey
monkey.patch_all()
import gevent
taken = [0]

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

def sample():
    gc.collect()
    n = taken[0]
    taken[0] += 1
    if tracemalloc is not None:
        tracemalloc.take_snapshot().dump(f"{out}{n}.trace")
    with open(f"{out}{n}.tmp", "w") as f:
        f.write(str(rss()))
    os.rename(f"{out}{n}.tmp", f"{out}{n}.rss")

gevent.signal_handler(signal.SIGUSR1, sample)
if kind == "wsflask":
    import logging
    logging.getLogger("wsflask.access").setLevel(logging.WARNING)
    from wsflask import App
    app = App()

    @app.route("/echo")
    def echo(ws):
        for message in ws:
            ws.send(message)

    app.run("127.0.0.1", port)
else:
    import runpy
    sys.argv = [CALIBRATION, str(port)]
    runpy.run_path(CALIBRATION, run_name="__main__")
"""

HEAD = (
    b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def connect(port: int, count: int) -> list[socket.socket]:
    """``count`` upgraded connections (each past its 101), then left idle."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(HEAD)
        socks.append(sock)
    for sock in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise SystemExit("the server closed a connection before its 101")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101 "):
            raise SystemExit(f"not upgraded: {head[:80]!r}")
    return socks


def sample(child: subprocess.Popen[bytes], out: str, n: int, settle: float) -> int:
    time.sleep(settle)  # let the last greenlets reach their idle wait
    child.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 300
    while not os.path.exists(f"{out}{n}.rss"):
        if time.monotonic() > deadline or child.poll() is not None:
            raise SystemExit("the server did not answer the sample signal")
        time.sleep(0.05)
    return int(Path(f"{out}{n}.rss").read_text())


def report_traces(out: str, n: int, top: int) -> None:
    import tracemalloc

    before = tracemalloc.Snapshot.load(f"{out}0.trace")
    after = tracemalloc.Snapshot.load(f"{out}1.trace")
    rows = after.compare_to(before, "traceback")
    print(f"traced: {sum(r.size_diff for r in rows) / n:,.0f} B per idle connection")
    for row in rows[:top]:
        frames = list(row.traceback)[::-1][:5]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames)
        print(f"{row.size_diff / n:8.1f} B {row.count_diff / n:5.2f} objects  {where}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("connections", type=int, nargs="?", default=2000)
    p.add_argument("--warm", type=int, default=50, help="connections before the first sample")
    p.add_argument("--trace", action="store_true", help="tracemalloc by traceback too")
    p.add_argument("--top", type=int, default=30, help="tracebacks shown with --trace")
    p.add_argument("--calibration", action="store_true", help="the bare gevent server")
    args = p.parse_args()
    kind = "calibration" if args.calibration else "wsflask"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sample")
        env = dict(os.environ, IDLE_TRACE="1" if args.trace else "0")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
        script = CHILD.replace("CALIBRATION", repr(str(ROOT / "loadtests/servers/calibration.py")))
        argv = [sys.executable, "-c", script, out, kind, str(port)]
        child = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        socks: list[socket.socket] = []
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or child.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.1)
            socks += connect(port, args.warm)
            rss0 = sample(child, out, 0, 0.5)
            socks += connect(port, args.connections)
            rss1 = sample(child, out, 1, 1.0)
            traced = ", traced" if args.trace else ""
            per = (rss1 - rss0) / args.connections
            print(f"{kind}: RSS {per:.2f} KiB per idle connection ({args.connections:,}{traced})")
            if args.trace:
                report_traces(out, args.connections, args.top)
        finally:
            for sock in socks:
                sock.close()
            child.terminate()
            child.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
