"""Debugging aids for a live server: hub-lag monitor, snapshots, health table, reconcile.

``LoopLagMonitor`` measures how long the hub went without running a periodic timer;
``performance_snapshot``, ``memory_report`` and ``health_table`` read a server's connections
on demand; ``reconcile`` repairs the rooms index. Nothing runs per message or starts unless
asked. No HTTP endpoint (``debug_page.py``), no state tracer (``tracing.py``).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

import gevent
import greenlet  # type: ignore[import-untyped]  # ships no annotations

from .protocol import State
from .protocol.handshake import GUID, accept_key

if TYPE_CHECKING:
    from .protocol import Request
    from .rooms import Rooms
    from .websocket import WebSocket

__all__ = [
    "HealthThresholds", "LoopLagMonitor", "health_table", "log_handshake_phases",
    "memory_report", "performance_snapshot", "reconcile",
]  # fmt: skip

logger = logging.getLogger("wsflask.diagnostics")


class LoopLagMonitor:
    """A greenlet that wakes every ``interval`` s and records the gaps between wake-ups.

    A gap is at least ``interval``; anything that blocks the hub (a handler calling
    ``time.sleep(0.2)``) stretches the gap around it by at least the blocked time, so
    ``max_lag`` (the longest gap since ``reset()``) is at least 0.2 s then. Start and stop
    it like a server ``Service``.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.last_lag = 0.0
        self.max_lag = 0.0
        self.ticks = 0
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Spawn the timer greenlet (idempotent)."""
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Kill the timer greenlet; idempotent."""
        greenlet_, self._greenlet = self._greenlet, None
        if greenlet_ is not None:
            greenlet_.kill()

    def reset(self) -> None:
        """Forget the longest gap seen so far."""
        self.max_lag = 0.0

    def _run(self) -> None:
        last = perf_counter()
        while True:
            gevent.sleep(self.interval)
            now = perf_counter()
            self.last_lag = now - last
            self.max_lag = max(self.max_lag, self.last_lag)
            self.ticks += 1
            last = now


def performance_snapshot(monitor: LoopLagMonitor | None = None) -> dict[str, Any]:
    """CPU seconds, RSS, open descriptors, live greenlets and hub lag of this process.

    Counting greenlets walks the garbage collector's objects: call it on demand, not often.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_user_seconds": usage.ru_utime,
        "cpu_system_seconds": usage.ru_stime,
        "rss_bytes": _rss(usage),
        "open_fds": _open_fds(),
        "greenlets": _count_greenlets(),
        "loop_lag_seconds": monitor.last_lag if monitor is not None else None,
        "loop_lag_max_seconds": monitor.max_lag if monitor is not None else None,
    }


def memory_report(connections: Iterable[WebSocket]) -> list[dict[str, Any]]:
    """Estimated bytes held per connection: outbox, zlib state, session; largest first."""
    rows: list[dict[str, Any]] = []
    for ws in connections:
        deflate = ws.deflate.memory_estimate() if ws.deflate is not None else 0
        buffered, session = ws.buffered_amount, _deep_size(ws.peek_session() or {})
        total = buffered + deflate + session
        rows.append({"id": ws.id, "buffered": buffered, "deflate": deflate,
                     "session": session, "total": total})  # fmt: skip
    rows.sort(key=lambda r: -int(r["total"]))
    return rows


@dataclass(frozen=True)
class HealthThresholds:
    """Where a connection turns from ``ok`` to ``warn``, and to ``critical`` at twice that."""

    rtt: float = 0.5  #: seconds of heartbeat round trip
    buffered: int = 256 * 1024  #: bytes queued for a slow reader
    silence: float = 60.0  #: seconds since the last frame received


def health_table(
    connections: Iterable[WebSocket], thresholds: HealthThresholds | None = None
) -> list[dict[str, Any]]:
    """One row per connection: RTT, buffered bytes, silence, and the worst status among
    them (``ok``, ``warn`` at a threshold, ``critical`` at twice it), worst first."""
    limits = thresholds or HealthThresholds()
    order = {"critical": 0, "warn": 1, "ok": 2}
    now, rows = monotonic(), []
    for ws in connections:
        rtt, buffered, silence = ws.rtt or 0.0, ws.buffered_amount, now - ws.last_received
        levels = [_level(rtt, limits.rtt), _level(buffered, limits.buffered),
                  _level(silence, limits.silence)]  # fmt: skip
        status = min(levels, key=order.__getitem__)
        rows.append({"id": ws.id, "state": ws.state.name, "rtt": rtt, "buffered": buffered,
                     "silence": round(silence, 3), "rooms": sorted(ws.rooms),
                     "status": status})  # fmt: skip
    rows.sort(key=lambda r: order[str(r["status"])])
    return rows


def reconcile(rooms: Rooms[Any]) -> list[str]:
    """Forget connections the rooms index still holds after they closed (CM-12).

    Their close callback should have removed them; each one found is logged at WARNING as
    a repair. Returns the ids removed. O(tracked connections).
    """
    repaired = []
    for ws in rooms.connections():
        if ws.state is State.CLOSED:
            logger.warning("reconcile: connection %s closed but still in rooms %s; removed",
                           ws.id, sorted(ws.rooms), extra={"id": ws.id})  # fmt: skip
            rooms.forget(ws)
            repaired.append(ws.id)
    return repaired


def log_handshake_phases(
    ws: WebSocket, request: Request, read_seconds: float, answer_seconds: float
) -> None:
    """At DEBUG: the key, SHA-1 hex of key+GUID, the accept value, read and answer times."""
    digest = hashlib.sha1((request.key + GUID).encode()).hexdigest() if request.key else "-"
    logger.debug(
        "handshake %s %s: read %.3f ms, validate+respond %.3f ms",
        ws.id, request.path, read_seconds * 1000, answer_seconds * 1000,
        extra={"id": ws.id, "key": request.key or "-", "sha1": digest,
               "accept": accept_key(request.key) if request.key else "-",
               "read_ms": round(read_seconds * 1000, 3),
               "answer_ms": round(answer_seconds * 1000, 3)},
    )  # fmt: skip


def _level(value: float, threshold: float) -> str:
    if value >= 2 * threshold:
        return "critical"
    return "warn" if value >= threshold else "ok"


def _count_greenlets() -> int:
    # type(), not isinstance(): a dead weak proxy among the objects raises on isinstance
    return sum(1 for o in gc.get_objects() if issubclass(type(o), greenlet.greenlet))


def _rss(usage: Any) -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(usage.ru_maxrss) * 1024  # the peak, in KiB on Linux


def _open_fds() -> int | None:
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(path))
        except OSError:
            continue
    return None


def _deep_size(value: Any, depth: int = 3) -> int:
    """``sys.getsizeof`` of ``value`` plus its items, three levels deep (an estimate)."""
    import sys

    size = sys.getsizeof(value)
    if depth and isinstance(value, dict):
        size += sum(_deep_size(k, depth - 1) + _deep_size(v, depth - 1) for k, v in value.items())
    elif depth and isinstance(value, list | tuple | set | frozenset):
        size += sum(_deep_size(v, depth - 1) for v in value)
    return size
