"""Recovery stress (issue 20): two nodes on one real redis-server, clients kicked again and again.

Usage (needs ``redis-server`` on the PATH; everything on 127.0.0.1, every process stopped)::

    .venv/bin/python loadtests/recovery_stress.py --duration 30 [--clients 6] [--dir DIR]

Phase 1 (most of ``--duration``): two nodes serve the recoverable room ``chat:s``; two
publishers per node emit without pause; ``--clients`` ``RecoveringClient``s read it while a
kicker aborts a random member on a random node every 100 ms and kicked clients come back on
the other node. Asserted per client: zero gaps, zero duplicates, contiguous offsets, every
answer ``recovered: true``; across clients: one body per offset. Phase 2: a client away for
more than ``max_replay`` publications is told ``too_many``. Phase 3: Redis restarts; every
client gets ``recovered: false, reason: epoch_changed`` and a new epoch. Phase 4: a third
node runs as its own process and publishes; half the clients move to it; it is SIGKILLed
mid-run; its clients come back through a surviving node and recover every publication
(``recovered: true``, zero gaps, zero duplicates, contiguous offsets), so nothing it had
numbered is lost. Prints ``OK`` last.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket as pysocket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gevent

from wsflask import App
from wsflask.reconnect import RecoveringClient

ROOM, SMALL = "chat:s", "small:s"


class Redis:
    """A redis-server child on a free port, restartable on the same port."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        with pysocket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            sys.exit("redis-server is not installed (apt-get install -y redis-server)")
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.directory, "--loglevel", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.ping():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                sys.exit("redis-server did not start")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with pysocket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def node(url: str) -> tuple[App, Any]:
    app = App(backplane=url, backplane_interval=0.5, backplane_backoff_max=0.3, close_timeout=1)
    app.rooms.recoverable("chat:*", history_size=100_000, history_ttl=300)
    app.rooms.recoverable("small:*", history_size=20, history_ttl=300)

    @app.route("/c/<room>")
    def handler(ws: Any, room: str) -> None:
        app.rooms.join(room, ws)
        for _ in ws:
            pass

    server = app.make_server("127.0.0.1", 0)
    server.start()
    return app, server


def serve_node(url: str, port_file: str) -> int:
    """``--node``: one node in its own process (phase 4): serve, publish to ``ROOM`` without
    pause, write the port to ``port_file`` once ready, run until killed."""
    app, server = node(url)
    wait(lambda: app.cluster is not None and app.cluster.ready, "the node's bus")
    with open(port_file + ".tmp", "w") as out:
        out.write(str(server.server_port))
    Path(port_file + ".tmp").rename(port_file)
    i = 0
    while True:
        i += 1
        app.emit("msg", {"p": "killed", "i": i}, to=ROOM)
        gevent.sleep(0.002)


def wait(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        gevent.sleep(0.02)


class Reader:
    """One client: reads ``ROOM``, records (epoch, offset, body), moves node when kicked."""

    def __init__(self, urls: list[str], index: int) -> None:
        self.urls = urls
        self.side = index % 2
        self.rc = RecoveringClient(urls[self.side], attempts=200)
        self.log: list[tuple[str, int, Any]] = []
        self.markers: list[dict[str, Any]] = []
        self.gap_notices = 0
        self.running = True
        self.pinned = False  # phase 4 moves it: no switching node meanwhile

    def run(self) -> None:
        while self.running:
            try:
                envelope = self.rc.receive(timeout=0.5)
            except TimeoutError:
                continue
            if envelope["event"] == "_recovery":
                self.markers.append(envelope["data"])
            elif envelope["event"] == "_gap":
                self.gap_notices += 1  # the client reconnects and recovers by itself
            else:
                self.log.append((envelope["epoch"], envelope["offset"], envelope["data"]))
            ws = self.rc.ws
            if ws is not None and not ws.is_open and not self.pinned:
                self.side ^= 1  # kicked: come back through the other node
                self.rc.url = self.urls[self.side]


def check_reader(reader: Reader, bodies: dict[tuple[str, int], Any]) -> None:
    rc = reader.rc
    assert rc.duplicates == 0, f"{rc.duplicates} duplicates"
    assert rc.gaps == 0, f"{rc.gaps} gaps"
    previous: tuple[str, int] | None = None
    for epoch, offset, body in reader.log:
        if previous is not None and previous[0] == epoch:
            assert offset == previous[1] + 1, f"offset {offset} after {previous[1]}"
        previous = (epoch, offset)
        assert bodies.setdefault((epoch, offset), body) == body, f"two bodies at {offset}"
    rejoins = reader.markers[1:]
    bad = [m for m in rejoins if not m["recovered"]]
    assert not bad, f"unrecoverable during phase 1: {bad[:3]}"


def phase4(url: str, directory: str, readers: list[Reader], nodes: list[Any]) -> None:
    """A node process SIGKILLed while it publishes and serves half the clients."""
    port_file = f"{directory}/node.port"
    child = subprocess.Popen([sys.executable, __file__, "--node", url, port_file])
    try:
        wait(lambda: Path(port_file).exists(), "the node process serving", timeout=60)
        doomed = f"ws://127.0.0.1:{Path(port_file).read_text()}/c/{ROOM}"
        movers = readers[::2]
        for reader in readers:
            reader.rc.gaps = reader.rc.duplicates = 0
            reader.log.clear()
            reader.markers.clear()
        for reader in movers:  # onto the node process; back to node 0 when it dies
            reader.pinned = True
            reader.urls = [doomed, reader.urls[0]]
            reader.side = 0
            reader.rc.url = doomed
            reader.rc.drop()
        wait(lambda: all(r.markers for r in movers), "the movers joined on the node process")
        for reader in movers:
            reader.pinned = False
        wait(lambda: all(len(r.log) >= 50 for r in movers), "the movers reading from it")
        child.kill()  # SIGKILL: no drain, no Close frames, presence left to expire
        child.wait(timeout=10)
        for reader in movers:  # what a load balancer does: the next attempt goes elsewhere
            reader.side = 1
            reader.rc.url = reader.urls[1]
        wait(lambda: all(len(r.markers) >= 2 for r in movers), "the movers' recoveries")
        for i in range(20):  # live traffic again, from a survivor
            nodes[0][0].emit("msg", {"p": "after", "i": i}, to=ROOM)
        top = max(r.rc.positions[ROOM][0] for r in readers)
        wait(lambda: all(r.rc.positions[ROOM][0] >= top for r in readers), "caught up", 60)
        bodies: dict[tuple[str, int], Any] = {}
        for reader in readers:
            check_reader(reader, bodies)
        killed = sum(1 for (_, _), b in bodies.items() if b.get("p") == "killed")
        assert killed > 0, "the node process published nothing before it died"
        print(f"phase 4: node process SIGKILLed; {len(movers)} clients recovered on a survivor, "
              f"{killed} of its publications delivered, 0 gaps, 0 duplicates")  # fmt: skip
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--dir", default=None)
    parser.add_argument(
        "--node", nargs=2, metavar=("REDIS_URL", "PORT_FILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.node:
        return serve_node(*args.node)
    directory = args.dir or tempfile.mkdtemp(prefix="recovery-stress-")
    redis = Redis(directory)
    redis.start()
    url = f"redis://127.0.0.1:{redis.port}/0"
    nodes = [node(url), node(url)]
    greenlets: list[gevent.Greenlet] = []
    readers: list[Reader] = []
    try:
        wait(lambda: all(app.cluster is not None and app.cluster.ready for app, _ in nodes),
             "both nodes ready")  # fmt: skip
        urls = [f"ws://127.0.0.1:{server.server_port}/c/{ROOM}" for _, server in nodes]
        readers = [Reader(urls, i) for i in range(args.clients)]
        greenlets += [gevent.spawn(r.run) for r in readers]
        wait(lambda: all(r.markers for r in readers), "every client's first answer")
        published = [0]
        stop = [False]

        def publish(app: App, name: str) -> None:
            i = 0
            while not stop[0]:
                i += 1
                if app.emit("msg", {"p": name, "i": i}, to=ROOM).dropped == 0:
                    published[0] += 1
                gevent.sleep(0.002)  # pacing: the load, not a synchronisation

        def kick() -> None:
            while not stop[0]:
                gevent.sleep(0.1)
                app = random.choice(nodes)[0]
                members = app.rooms.members(ROOM)
                if members:
                    random.choice(members).abort()

        phase1 = max(5.0, args.duration - 8.0)
        workers = [gevent.spawn(publish, app, f"{n}{k}") for n, (app, _) in enumerate(nodes)
                   for k in range(2)] + [gevent.spawn(kick)]  # fmt: skip
        greenlets += workers
        gevent.sleep(phase1)
        stop[0] = True
        gevent.joinall(workers, timeout=10)
        top = max(r.rc.positions[ROOM][0] for r in readers)
        wait(lambda: all(r.rc.positions[ROOM][0] == top for r in readers),
             "every client caught up", timeout=60)  # fmt: skip
        bodies: dict[tuple[str, int], Any] = {}
        for reader in readers:
            check_reader(reader, bodies)
        kicks = sum(r.rc.reconnects - 1 for r in readers)
        assert kicks >= args.clients, f"only {kicks} reconnects: the kicker did not work"
        moved = sum(len(r.markers) - 1 for r in readers)
        print(f"phase 1: {top} publications, {kicks} reconnects, {moved} recoveries, "
              "0 gaps, 0 duplicates")  # fmt: skip

        # phase 2: away for more than max_replay publications -> too_many, no partial replay
        away = RecoveringClient(f"ws://127.0.0.1:{nodes[0][1].server_port}/c/{SMALL}")
        first = away.receive(timeout=10)
        assert first["event"] == "_recovery"
        away.drop()
        wait(lambda: nodes[0][0].rooms.count(SMALL) == 0, "the client left")
        for i in range(50):
            nodes[1][0].emit("msg", i, to=SMALL)
        answer = away.receive(timeout=10)["data"]
        away.close()
        assert (answer["recovered"], answer.get("reason")) == (False, "too_many"), answer
        print("phase 2: too_many reported")

        # phase 3: Redis restarts -> a new epoch, reported as unrecoverable
        old = {r.rc.positions[ROOM][1] for r in readers}
        for reader in readers:
            reader.markers.clear()
        redis.stop()
        redis.start()
        wait(lambda: all(app.cluster is not None and app.cluster.ready for app, _ in nodes),
             "both nodes ready again", timeout=60)  # fmt: skip
        for reader in readers:
            reader.rc.drop()
        wait(lambda: all(r.markers for r in readers), "every client's answer after restart")
        for reader in readers:
            last = reader.markers[-1]
            assert (last["recovered"], last.get("reason")) == (False, "epoch_changed"), last
            assert last["epoch"] not in old, last
        print("phase 3: epoch_changed reported to every client after the Redis restart")
        phase4(url, directory, readers, nodes)
        print("OK")
        return 0
    finally:
        for reader in readers:
            reader.running = False
        gevent.killall(greenlets, timeout=5)
        for reader in readers:
            reader.rc.close()
        for _, server in nodes:
            server.stop(timeout=2)
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
