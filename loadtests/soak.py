"""Soak: ``wsflask run soak:app --workers 2`` with its own redis-server, under load for hours.

``python loadtests/soak.py --duration 3600 [--out DIR]`` drives the chat-like ``app`` below
from this process (gevent): churn, acked room broadcasts across both workers, slow readers
(``drop`` policy), 2 s heartbeats, Redis kill -9 and restart half-way. Every 10 s it samples
RSS, descriptors, greenlets and /metrics per worker (``samples.csv``, ``soak.svg``). Exit 1
on growth past ``RSS_GROWTH``/``FD_GROWTH`` after warm-up, a dead worker, or a lost delivery
no drop counter or gap notice explains. It measures neither throughput nor latency.
"""

from __future__ import annotations

if __name__ == "__main__":  # the driver: patch before anything imports socket
    from gevent import monkey

    monkey.patch_all()

import argparse
import contextlib
import csv
import gc
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
from gevent.event import AsyncResult, Event
from greenlet import greenlet

from wsflask import App, WebSocket
from wsflask.client import connect, open_client
from wsflask.envelopes import encode
from wsflask.protocol import Connection, Side

# -- the server side: a small chat, imported by the workers as ``soak:app`` ---------------------

app = App()
room_route = app.route("/room/<name>", json=True)
control_route = app.route("/control", json=True)


def _hello(ws: WebSocket) -> None:
    info = {"id": ws.id, "pid": os.getpid(), "node": app.rooms.node}
    app.emit("hello", info, to=ws.id)


@room_route.on("connect")
def joined(ws: WebSocket, name: str) -> None:
    app.rooms.join(name, ws)
    _hello(ws)
    app.emit("joined", {"id": ws.id}, to=name, skip=ws)


@room_route.on("say")
def say(ws: WebSocket, data: Any, name: str) -> dict[str, bool]:
    app.emit("msg", data, to=name)  # the sender included: one order for every member
    return {"ok": True}


@room_route.on("keep")
def keep(ws: WebSocket, data: Any, name: str) -> None:
    """A slow reader's keep-alive (no id, so no answer to block on)."""


@room_route.on("disconnect")
def left(ws: WebSocket, name: str) -> None:
    app.emit("left", {"id": ws.id}, to=name)


@control_route.on("connect")
def control(ws: WebSocket) -> None:
    _hello(ws)


@control_route.on("stats")
def stats(ws: WebSocket, data: Any) -> dict[str, Any]:
    """This worker's pid, live greenlets and the text ``/metrics`` serves."""
    live = sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet))
    return {"pid": os.getpid(), "greenlets": live, "metrics": app.metrics.render()}


# -- the driver ----------------------------------------------------------------------------------

#: growth allowed between the first sample after warm-up and the last sample under load
RSS_GROWTH = 0.20  # +20 % RSS per worker
FD_GROWTH = 50  # +50 open descriptors per worker
SAMPLE_EVERY = 10.0
ROOMS = ("r0", "r1", "r2", "r3")
FIRE = "fire"  # the room with big messages and the slow readers
MEMBERS_PER_ROOM = 6
FIRE_MEMBERS, SLOW_READERS = 3, 2
ROOM_RATE, FIRE_RATE = 4.0, 20.0  # accepted messages per second per room
FIRE_PAD = 6000
CHURNERS = 3
REDIS_DOWN = 3.0  # seconds Redis stays dead
GAP_WINDOW = 30.0  # a gap notice covers the messages sent this long before it
SERVER_ENV = {
    "WSFLASK_PING_INTERVAL": "2",
    "WSFLASK_PONG_TIMEOUT": "5",
    "WSFLASK_BACKPRESSURE_POLICY": "drop",
    "WSFLASK_MAX_BACKPRESSURE": "32768",
    "WSFLASK_BACKPLANE_INTERVAL": "1",
    "WSFLASK_BACKPLANE_BACKOFF_MAX": "2",
    "WSFLASK_COMPRESSION": "false",
}
_ids = itertools.count(1)


class Failed(Exception):
    """The soak cannot continue (a process died, a client could not connect)."""


@dataclass
class Sent:
    """One accepted (acked) broadcast: id, room, send time, the sender's worker pid."""

    mid: str
    room: str
    at: float
    pid: int


class Member:
    """A client with a reader greenlet: records messages, gap notices, acks and its close."""

    def __init__(self, url: str, room: str, *, slow: bool = False) -> None:
        self.room, self.slow = room, slow
        self.ws = connect_small_window(url) if slow else connect(url, timeout=10)
        self.got: set[str] = set()
        self.duplicates = 0
        #: gap notices: [received at, room, id of the next message received after it]
        self.gaps: list[list[Any]] = []
        self.info: dict[str, Any] = {}
        self.hello, self.reading = Event(), Event()
        self.reading.set()
        self.joined_at = 0.0
        self.closed_code: int | None = None
        self.waiting: dict[int, AsyncResult] = {}
        self.reader = gevent.spawn(self._read)

    @property
    def pid(self) -> int:
        return int(self.info.get("pid", 0))

    def _read(self) -> None:
        while True:
            self.reading.wait()
            message = self.ws.receive()
            if message is None:
                self.closed_code = self.ws.close_code
                return
            envelope = json.loads(message)
            self._handle(envelope["event"], envelope.get("data"), envelope.get("id"))

    def _handle(self, event: str, data: Any, msg_id: Any) -> None:
        if event == "msg":
            if data["m"] in self.got:
                self.duplicates += 1
            self.got.add(data["m"])
            if self.gaps and self.gaps[-1][2] is None:
                self.gaps[-1][2] = data["m"]
        elif event == "ack" and msg_id in self.waiting:
            self.waiting.pop(msg_id).set(data)
        elif event == "hello":
            self.info, self.joined_at = data, time.monotonic()
            self.hello.set()
        elif event == "_gap":
            self.gaps.append([time.monotonic(), data["room"], None])

    def request(self, event: str, data: Any, timeout: float = 10.0) -> Any:
        """Send an envelope with an id and wait for its ack (``gevent.Timeout`` after timeout)."""
        msg_id = next(_ids)
        waiter = self.waiting[msg_id] = AsyncResult()
        try:
            self.ws.send(encode(event, data, msg_id))
            return waiter.get(timeout=timeout)
        finally:
            self.waiting.pop(msg_id, None)

    def wait_hello(self, timeout: float = 10.0) -> None:
        if not self.hello.wait(timeout):
            raise Failed(f"no hello within {timeout} s on {self.room}")

    def close(self, abrupt: bool = False) -> None:
        if abrupt:  # FIN without a Close frame: the server sees EOF (1006)
            with contextlib.suppress(OSError):
                self.ws.transport.shutdown(socket.SHUT_RDWR)
        else:
            self.ws.close()
        self.reading.set()
        self.reader.join(10)
        if not self.reader.dead:
            self.ws.abort()
            self.reader.kill()


def connect_small_window(url: str) -> WebSocket:
    """A client whose receive buffer is 4 KiB from the SYN on, so the server's fill soon.

    (Shrinking it after the handshake instead leaves a window the kernel advertised but
    cannot hold: the server's segments are dropped and retransmitted with backoff.)
    """
    host, _, port = url.split("/")[2].partition(":")
    sock = gevent.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    sock.settimeout(None)
    conn = Connection(Side.CLIENT)
    conn.connect(f"{host}:{port}", "/" + url.split("/", 3)[3])
    ws = WebSocket(sock, conn)
    with gevent.Timeout(10):
        open_client(ws)
    return ws


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed(f"{proc.args[0]} exited with {proc.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            gevent.sleep(0.05)
    raise Failed(f"nothing listens on port {port}")


class Redis:
    """A ``redis-server`` this script starts, kills and restarts on one port."""

    def __init__(self, out: Path) -> None:
        self.port = free_port()
        self.log = out / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--logfile", str(self.log)]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, time.monotonic() + 10, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Server:
    """``wsflask run soak:app --workers 2`` in its own session (so its workers go with it)."""

    def __init__(self, out: Path, redis_port: int) -> None:
        self.port = free_port()
        self.log = (out / "server.log").open("wb")
        env = dict(os.environ, **SERVER_ENV)
        env["WSFLASK_BACKPLANE"] = f"redis://127.0.0.1:{redis_port}/0"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")]
        )
        args = [sys.executable, "-m", "wsflask", "run", "soak:app", "--workers", "2",
                "--port", str(self.port), "--log-level", "WARNING"]  # fmt: skip
        self.proc = subprocess.Popen(
            args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_port(self.port, time.monotonic() + 30, self.proc)

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return sorted(int(pid) for pid in children.read_text().split())
        except OSError:
            return []

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise Failed(f"the server exited with {self.proc.returncode} (see server.log)")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` from the Prometheus text format."""
    values = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            values[match[1] + (match[2] or "")] = float(match[3])
    return values


def drops(metrics: dict[str, float], reason: str) -> int:
    return int(metrics.get(f'websocket_dropped_messages_total{{reason="{reason}"}}', 0))


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the driver's greenlets share."""

    url: str
    duration: float
    warmup: float
    out: Path
    started: float = field(default_factory=time.monotonic)
    running: bool = True
    members: list[Member] = field(default_factory=list)
    controls: dict[int, Member] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    unacked: int = 0
    churn_cycles: int = 0
    churn_errors: Counter[str] = field(default_factory=Counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    redis_killed_at: float | None = None
    redis_back_at: float | None = None
    closed: Counter[int] = field(default_factory=Counter)  # stable members the server closed

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def connect_members(run: Run) -> None:
    """Stable members: every room gets members on both workers; the fire room slow readers."""
    for room, count in [*((r, MEMBERS_PER_ROOM) for r in ROOMS), (FIRE, FIRE_MEMBERS)]:
        for _ in range(60):
            member = Member(f"{run.url}/room/{room}", room)
            member.wait_hello()
            run.members.append(member)
            mine = [m for m in run.members if m.room == room]
            if len(mine) >= count and len({m.pid for m in mine}) == 2:
                break
        else:
            raise Failed(f"room {room}: no members on both workers after 60 connections")
    for _ in range(SLOW_READERS):
        slow = Member(f"{run.url}/room/{FIRE}", FIRE, slow=True)
        slow.wait_hello()
        run.members.append(slow)


def connect_controls(run: Run, pids: list[int]) -> None:
    """One control connection per worker (they answer ``stats``)."""
    for _ in range(64):
        if set(run.controls) >= set(pids):
            return
        member = Member(f"{run.url}/control", "")
        member.wait_hello()
        if member.pid in run.controls:
            member.close()
        else:
            run.controls[member.pid] = member
    raise Failed(f"could not reach every worker {pids} with a control connection")


def talker(run: Run, room: str, rate: float, pad: int) -> None:
    """Accepted broadcasts to ``room`` at ``rate``/s, each from a random open member."""
    senders = [m for m in run.members if m.room == room and not m.slow]
    seq = itertools.count()
    while run.running:
        member = random.choice([m for m in senders if m.closed_code is None] or senders)
        mid = f"{room}:{next(seq)}"
        at = time.monotonic()
        try:
            member.request("say", {"m": mid, "pad": "x" * pad})
            run.sent.append(Sent(mid, room, at, member.pid))
        except (gevent.Timeout, Exception):
            run.unacked += 1
        gevent.sleep(max(0.0, 1.0 / rate - (time.monotonic() - at)))


def churner(run: Run) -> None:
    """Connect, maybe send one accepted message, close (cleanly or by a bare FIN), repeat."""
    while run.running:
        room = random.choice(ROOMS)
        try:
            member = Member(f"{run.url}/room/{room}", room)
            member.wait_hello()
            if random.random() < 0.5:
                mid, at = f"churn:{next(_ids)}", time.monotonic()
                member.request("say", {"m": mid, "pad": ""})
                run.sent.append(Sent(mid, room, at, member.pid))
            member.close(abrupt=random.random() < 0.33)
            run.churn_cycles += 1
        except (gevent.Timeout, Exception) as exc:
            run.churn_errors[type(exc).__name__] += 1
        gevent.sleep(random.uniform(0.05, 0.2))


def slow_reader_cycle(run: Run, member: Member, offset: float) -> None:
    """Read 10 s, stop reading 40 s (keep-alives only: the heartbeat sees us), repeat."""
    gevent.sleep(offset)
    while run.running:
        gevent.sleep(10)
        member.reading.clear()
        until = time.monotonic() + 40
        while run.running and time.monotonic() < until:
            member.ws.send(encode("keep"))
            gevent.sleep(1)
        member.reading.set()


def redis_restart(run: Run, redis: Redis) -> None:
    """kill -9 Redis half-way, restart it on the same port ``REDIS_DOWN`` s later."""
    gevent.sleep(run.duration / 2)
    run.redis_killed_at = time.monotonic()
    redis.kill()
    gevent.sleep(REDIS_DOWN)
    redis.start()
    run.redis_back_at = time.monotonic()


def sample(run: Run, server: Server, writer: Any) -> dict[int, dict[str, float]]:
    """One row per worker: RSS, fds, greenlets and /metrics figures."""
    server.check()
    figures = {}
    for pid, control in run.controls.items():
        answer = control.request("stats", None, timeout=15)
        metrics = parse_metrics(answer["metrics"])
        row = {
            "t": round(run.elapsed(), 1),
            "pid": pid,
            "rss_kib": rss_kib(pid),
            "fds": open_fds(pid),
            "greenlets": answer["greenlets"],
            "connections": int(metrics.get("websocket_connections_current", 0)),
            "connections_total": int(metrics.get("websocket_connections_total", 0)),
            "messages_out": int(metrics.get("websocket_messages_sent_total", 0)),
            "drops_backpressure": drops(metrics, "backpressure"),
            "drops_backplane": drops(metrics, "backplane"),
            "drops_backplane_order": drops(metrics, "backplane_order"),
            "drops_backplane_invalid": drops(metrics, "backplane_invalid"),
            "rtt_count": int(metrics.get("websocket_rtt_seconds_count", 0)),
            "closes_1011": int(metrics.get('websocket_closes_total{code="1011"}', 0)),
        }
        run.rows.append(row)
        writer.writerow(row)
        figures[pid] = row
    return figures


def sampler(run: Run, server: Server, handle: Any) -> None:
    writer = csv.DictWriter(handle, fieldnames=list(SAMPLE_FIELDS))
    writer.writeheader()
    while run.running:
        sample(run, server, writer)
        handle.flush()
        if sorted(run.controls) != server.workers():
            raise Failed(f"worker pids changed: {sorted(run.controls)} -> {server.workers()}")
        gevent.sleep(SAMPLE_EVERY)


SAMPLE_FIELDS = ("t", "pid", "rss_kib", "fds", "greenlets", "connections", "connections_total",
                 "messages_out", "drops_backpressure", "drops_backplane", "drops_backplane_order",
                 "drops_backplane_invalid", "rtt_count", "closes_1011")  # fmt: skip


def drain(run: Run) -> None:
    """Everyone reads again; wait until no member received anything for 3 s (at most 60 s)."""
    for member in run.members:
        member.reading.set()
    deadline, last, quiet_since = time.monotonic() + 60, -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 3:
        total = sum(len(m.got) for m in run.members)
        if total != last:
            last, quiet_since = total, time.monotonic()
        gevent.sleep(0.5)


# -- accounting ---------------------------------------------------------------------------------


def reconcile(run: Run) -> dict[str, Any]:
    """Expected deliveries vs received, then what gap notices and drop counters explain.

    A missing delivery is covered by a gap notice its member got for the room when it was
    sent at most ``GAP_WINDOW`` before the notice's place in the stream: the send time of
    the next message received after the notice (the notice may sit in buffers while the
    member does not read), else the notice's receipt. The rest, oldest first, must each
    find a drop counted by the second sample after its send: a ``backpressure`` drop on
    the member's worker (one per delivery) or, for a message from the other worker, a
    ``backplane`` drop on its origin (one per message and receiving worker).
    """
    expected = delivered = gap_covered = 0
    lost: list[tuple[Sent, Member, str]] = []
    sent_at = {sent.mid: sent.at for sent in run.sent}
    bounds = {
        id(member): [(r, min(t, sent_at.get(nxt, t))) for t, r, nxt in member.gaps]
        for member in run.members
    }
    for sent in run.sent:
        for member in run.members:
            if member.room != sent.room or member.joined_at > sent.at:
                continue
            expected += 1
            if sent.mid in member.got:
                delivered += 1
            elif any(
                r == sent.room and 0 <= t - sent.at <= GAP_WINDOW for r, t in bounds[id(member)]
            ):
                gap_covered += 1
                lost.append((sent, member, "gap"))
            else:
                lost.append((sent, member, "local" if member.pid == sent.pid else "cross"))
    unaccounted = explain(run, [loss for loss in lost if loss[2] != "gap"])
    write_losses(run, lost)
    return {
        "expected": expected,
        "delivered": delivered,
        "missing": expected - delivered,
        "gap_covered": gap_covered,
        "uncovered": len(lost) - gap_covered,
        "unaccounted": unaccounted,
    }


def explain(run: Run, losses: list[tuple[Sent, Member, str]]) -> int:
    """How many of ``losses`` (not gap-covered) no counted drop explains (see reconcile)."""
    used: Counter[tuple[int, str]] = Counter()
    explained: set[tuple[str, int]] = set()
    unaccounted = 0
    for sent, member, kind in sorted(losses, key=lambda loss: loss[0].at):
        t = sent.at - run.started
        if kind == "cross" and (sent.mid, member.pid) in explained:
            continue
        origin = (sent.pid, "drops_backplane")
        if kind == "cross" and counted_by(run, *origin, t) > used[origin]:
            used[origin] += 1
            explained.add((sent.mid, member.pid))
            continue
        local = (member.pid, "drops_backpressure")
        if counted_by(run, *local, t) > used[local]:
            used[local] += 1
            continue
        unaccounted += 1
    return unaccounted


def counted_by(run: Run, pid: int, key: str, t: float) -> int:
    """Worker ``pid``'s counter ``key`` at the second sample taken after time ``t``."""
    rows = [row for row in run.rows if row["pid"] == pid]
    later = [row for row in rows if row["t"] >= t]
    row = later[1] if len(later) > 1 else rows[-1]
    return int(row[key])


def write_losses(run: Run, lost: list[tuple[Sent, Member, str]]) -> None:
    """``missing.csv``: every delivery that did not arrive, with what covers it."""
    with (run.out / "missing.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["message", "room", "sent_t", "origin_pid", "member_pid", "slow", "kind",
                         "member_gap_notices_t"])  # fmt: skip
        for sent, member, kind in lost:
            gaps = " ".join(f"{t - run.started:.1f}" for t, _, _ in member.gaps)
            writer.writerow([sent.mid, sent.room, f"{sent.at - run.started:.2f}", sent.pid,
                             member.pid, member.slow, kind, gaps])  # fmt: skip


def growth(run: Run) -> tuple[list[str], dict[int, dict[str, int]]]:
    """Problems with RSS/fd growth per worker, and the figures (start, warm, end)."""
    problems, figures = [], {}
    for pid in run.controls:
        rows = [r for r in run.rows if r["pid"] == pid and r["t"] <= run.duration + 1]
        warm = next((r for r in rows if r["t"] >= run.warmup), rows[-1])
        start, end = rows[0], rows[-1]
        figures[pid] = {
            "rss_start": start["rss_kib"],
            "rss_warm": warm["rss_kib"],
            "rss_end": end["rss_kib"],
            "fds_start": start["fds"],
            "fds_warm": warm["fds"],
            "fds_end": end["fds"],
            "greenlets_warm": warm["greenlets"],
            "greenlets_end": end["greenlets"],
        }
        if end["rss_kib"] > warm["rss_kib"] * (1 + RSS_GROWTH):
            problems.append(
                f"worker {pid}: RSS grew {warm['rss_kib']} -> {end['rss_kib']} KiB "
                f"(bound +{RSS_GROWTH:.0%} after warm-up at t={warm['t']} s)"
            )
        if end["fds"] > warm["fds"] + FD_GROWTH:
            problems.append(
                f"worker {pid}: descriptors grew {warm['fds']} -> {end['fds']} "
                f"(bound +{FD_GROWTH} after warm-up at t={warm['t']} s)"
            )
    return problems, figures


# -- the chart ----------------------------------------------------------------------------------


def chart(run: Run, path: Path) -> None:
    """An SVG with two panels, RSS (MiB) and open descriptors, one line per worker."""
    width, height, pad = 900, 260, 50
    colours = ("#1f77b4", "#d62728", "#2ca02c")
    t_max = max([r["t"] for r in run.rows] + [1.0])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * height}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{2 * height}" fill="white"/>']  # fmt: skip
    for panel, (key, label, scale) in enumerate(
        [("rss_kib", "RSS (MiB)", 1 / 1024), ("fds", "open descriptors", 1.0)]
    ):
        top = panel * height
        values = [r[key] * scale for r in run.rows] or [1.0]
        v_max = max(values) * 1.1 or 1.0

        def x(t: float) -> float:
            return pad + (width - 2 * pad) * t / t_max

        def y(v: float, top: int = top, v_max: float = v_max) -> float:
            return top + height - pad + -(height - 2 * pad) * v / v_max

        parts.append(f'<text x="{pad}" y="{top + 20}" font-weight="bold">{label} per worker'
                     f" (soak, {run.duration:.0f} s)</text>")  # fmt: skip
        parts.append(f'<line x1="{pad}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" '
                     'stroke="black"/>')  # fmt: skip
        parts.append(f'<line x1="{pad}" y1="{y(0)}" x2="{pad}" y2="{y(v_max)}" stroke="black"/>')
        for frac in (0.5, 1.0):
            parts.append(f'<text x="5" y="{y(v_max * frac / 1.1) + 4:.1f}">'
                         f"{v_max * frac / 1.1:.1f}</text>")  # fmt: skip
        parts.append(f'<text x="{width - pad - 40}" y="{y(0) + 30}">{t_max:.0f} s</text>')
        marks = [(run.warmup, "warm-up end"), (_rel(run, run.redis_killed_at), "redis kill")]
        for at, name in marks:
            if at is not None:
                parts.append(
                    f'<line x1="{x(at):.1f}" y1="{y(0)}" x2="{x(at):.1f}" '
                    f'y2="{y(v_max)}" stroke="gray" stroke-dasharray="4"/>'
                    f'<text x="{x(at) + 3:.1f}" y="{top + 40}" fill="gray">{name}</text>'
                )
        for index, pid in enumerate(sorted(run.controls)):
            points = " ".join(
                f"{x(r['t']):.1f},{y(r[key] * scale):.1f}" for r in run.rows if r["pid"] == pid
            )
            colour = colours[index % len(colours)]
            parts.append(f'<polyline fill="none" stroke="{colour}" points="{points}"/>')
            parts.append(f'<text x="{width - 150}" y="{top + 20 + 15 * index}" fill="{colour}">'
                         f"worker pid {pid}</text>")  # fmt: skip
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def _rel(run: Run, at: float | None) -> float | None:
    return None if at is None else at - run.started


# -- main ---------------------------------------------------------------------------------------


def drive(run: Run, server: Server, redis: Redis) -> dict[int, dict[str, float]]:
    """Connect, run every load greenlet for the duration, drain; the final figures."""
    deadline = time.monotonic() + 30
    while len(server.workers()) < 2 and time.monotonic() < deadline:
        gevent.sleep(0.1)
    connect_controls(run, server.workers())
    connect_members(run)
    gevent.sleep(2)  # the workers' room subscriptions reach Redis
    run.started = time.monotonic()
    slow = [m for m in run.members if m.slow]
    with (run.out / "samples.csv").open("w", newline="") as handle:
        jobs = [gevent.spawn(sampler, run, server, handle), gevent.spawn(redis_restart, run, redis)]
        jobs += [gevent.spawn(talker, run, room, ROOM_RATE, 100) for room in ROOMS]
        jobs += [gevent.spawn(talker, run, FIRE, FIRE_RATE, FIRE_PAD)]
        jobs += [gevent.spawn(churner, run) for _ in range(CHURNERS)]
        jobs += [gevent.spawn(slow_reader_cycle, run, m, 5 * i) for i, m in enumerate(slow)]
        failed: list[gevent.Greenlet] = []
        while time.monotonic() < run.started + run.duration and not failed:
            gevent.sleep(1)
            failed = [job for job in jobs if job.dead and job.exception is not None]
        run.running = False
        gevent.joinall(jobs, timeout=30)
        gevent.killall(jobs, timeout=5)
        if failed:
            raise Failed(f"a driver greenlet failed: {failed[0].exception!r}")
        drain(run)
        run.closed = Counter(m.closed_code for m in run.members if m.closed_code is not None)
        return sample(run, server, csv.DictWriter(handle, fieldnames=list(SAMPLE_FIELDS)))


def report(run: Run, final: dict[int, dict[str, float]]) -> int:
    """Print the summary, write summary.json and the chart; 1 when a bound was passed."""
    accounts = reconcile(run)
    problems, figures = growth(run)
    closed = run.closed
    if accounts["unaccounted"]:
        problems.append(f"{accounts['unaccounted']} deliveries lost without a drop or gap notice")
    if closed:
        problems.append(f"stable members were closed: {dict(closed)}")
    chart(run, run.out / "soak.svg")
    summary = {
        "duration_s": run.duration,
        "warmup_s": run.warmup,
        "workers": figures,
        "accepted_messages": len(run.sent),
        "unacked_messages": run.unacked,
        "churn_cycles": run.churn_cycles,
        "churn_errors": dict(run.churn_errors),
        "duplicates": sum(m.duplicates for m in run.members),
        "gap_notices": sum(len(m.gaps) for m in run.members),
        "counted_drops": {
            key: sum(int(row[key]) for row in final.values())
            for key in ("drops_backpressure", "drops_backplane", "drops_backplane_order")
        },
        "deliveries": accounts,
        "redis_restart_at_s": _rel(run, run.redis_killed_at),
        "problems": problems,
    }
    (run.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for pid, fig in figures.items():
        print(
            f"worker {pid}: RSS {fig['rss_start']} -> {fig['rss_warm']} (warm) -> "
            f"{fig['rss_end']} KiB; fds {fig['fds_start']} -> {fig['fds_warm']} -> "
            f"{fig['fds_end']}; greenlets {fig['greenlets_warm']} -> {fig['greenlets_end']}"
        )
    print(f"accepted messages: {len(run.sent)} (unacked {run.unacked}); churn cycles: "
          f"{run.churn_cycles} (errors {dict(run.churn_errors)})")  # fmt: skip
    print(f"deliveries: expected {accounts['expected']}, delivered {accounts['delivered']}, "
          f"missing {accounts['missing']} (gap-noticed {accounts['gap_covered']}); "
          f"duplicates {summary['duplicates']}")  # fmt: skip
    print(f"counted drops: {summary['counted_drops']}; gap notices: {summary['gap_notices']}")
    print(f"unaccounted losses: {accounts['unaccounted']}")
    print(f"chart: {run.out / 'soak.svg'}; samples: {run.out / 'samples.csv'}")
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds under load")
    parser.add_argument("--warmup", type=float, help="default: 20 %% of the duration, <= 300 s")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "build" / "soak")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    warmup = args.warmup if args.warmup is not None else min(300.0, args.duration * 0.2)
    main_greenlet = gevent.getcurrent()
    gevent.signal_handler(signal.SIGTERM, main_greenlet.throw, KeyboardInterrupt())
    redis = Redis(args.out)
    server: Server | None = None
    try:
        redis.start()
        server = Server(args.out, redis.port)
        run = Run(f"ws://127.0.0.1:{server.port}", args.duration, warmup, args.out)
        final = drive(run, server, redis)
        for member in [*run.members, *run.controls.values()]:
            member.close()
    except Failed as exc:
        print(f"FAIL: {exc}")
        return 1
    finally:
        code = server.stop() if server is not None else None
        redis.kill()
    status = report(run, final)
    if code not in (0, None):
        print(f"FAIL: the server exited with {code} after SIGTERM (see {args.out}/server.log)")
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
