"""The heartbeat: one greenlet pings every connection and fails the ones that stop answering.

``Heartbeat`` is a server ``Service`` (started and stopped with it) and a ``Watcher`` (told
as each connection opens and closes); it fails a peer that missed ``max_missed`` pings with
1011 (logged and counted) and, opt-in, closes with 1001 one that sent no message for
``idle_timeout``. No timer or greenlet per connection, no ping per message.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import gevent
from gevent.event import Event

from .protocol import CloseCode

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["Heartbeat", "Pingable"]

logger = logging.getLogger("wsflask.heartbeat")

#: Golden-ratio conjugate: consecutive multiples mod 1 spread evenly over [0, 1).
_PHI = 0.6180339887498949

#: Removed connections' heap slots are dropped in one pass once they are more than half of
#: the heap and more than this many (or the last watched connection is gone): the memory
#: held for closed connections stays bounded.
_COMPACT_MIN = 64


class Pingable(Protocol):
    """What the heartbeat needs of a connection (``WebSocket`` is one; tests write stand-ins).

    The driver stamps ``last_received`` on every frame and ``ping_sent_at`` on a heartbeat
    ping, clears ``ping_sent_at`` and sets ``latency`` when the matching pong arrives.
    """

    @property
    def id(self) -> str: ...
    @property
    def is_open(self) -> bool: ...
    @property
    def last_received(self) -> float: ...
    @property
    def ping_sent_at(self) -> float | None: ...
    @property
    def latency(self) -> float | None: ...
    @property
    def messages_received(self) -> int: ...
    def send_heartbeat_ping(self) -> None: ...
    def abort(self, code: int = ..., reason: str = "") -> None: ...
    def close(self, code: int = ..., reason: str = "") -> None: ...


class _Entry:
    """The heartbeat's bookkeeping for one connection."""

    __slots__ = ("active_at", "missed", "next_ping", "pinged", "seen", "ws")

    def __init__(self, ws: Pingable, next_ping: float, now: float) -> None:
        self.ws: Pingable | None = ws  #: None once removed (the heap may still hold the entry)
        self.next_ping = next_ping  #: monotonic time of the next heartbeat ping
        self.pinged = False  #: a ping we sent is not yet recorded as answered
        self.missed = 0  #: consecutive pings that got no frame back within ``timeout``
        self.seen = 0  #: ``ws.messages_received`` at the last visit (idle timeout only)
        self.active_at = now  #: when that count last changed (idle timeout)

    def __lt__(self, other: _Entry) -> bool:
        """Heap ties (the same due time) in any order: no sequence number per entry."""
        return False


class Heartbeat:
    """Pings every registered connection and fails the ones that stop answering.

    A ``Service`` and a ``Watcher``. Each connection's first ping lands at its own phase
    inside the interval (a golden-ratio sequence), so a burst of accepts is not pinged on
    one tick. A connection with a ping outstanding that has received no frame since (any
    frame counts as liveness; a pong with the wrong payload does not) for ``timeout``
    seconds is aborted with 1011 "ping timeout"; a matched pong's ``latency`` goes to the
    ``websocket_rtt_seconds`` histogram. Deadlines live in a heap processed every tick;
    ``remove()`` is O(1) amortized: the heap entry is discarded when it comes up, or in one
    pass once removed entries are more than half of the heap (and more than
    ``_COMPACT_MIN``, or none is left open): many connections closing under a long
    interval do not each keep a slot until its due time (a day, at
    ``ping_interval=86400``). A connection added since the last tick waits in a plain dict,
    and gets its entry and heap slot at the next tick: one that closes before then (a
    short-lived connection) never costs either. Its deadlines count from its
    ``last_received`` at that tick: its opening (when ``add()`` is called), unless a frame
    came since. Monotonic clock only.

    Args:
        interval: seconds between pings of one connection (``Config.ping_interval``);
            ``0`` or less disables the heartbeat (``add()`` then does nothing).
        timeout: seconds without any frame after a ping before that ping counts as missed
            (``Config.pong_timeout``).
        max_missed: consecutive missed pings that fail the connection with 1011 "ping
            timeout" (``Config.max_missed_pongs``); a frame in between resets the count.
        idle_timeout: ``0`` = off; else seconds without a message (pings and pongs do not
            count) after which the connection is closed with 1001 "idle timeout".
        metrics: where round-trip times and heartbeat timeouts are recorded, if given.
        max_tick: the coarsest wake-up period in seconds; small intervals tick faster.
        clock: a monotonic clock; it must be the clock the driver stamps
            ``last_received``/``ping_sent_at`` with.

    Call ``start()`` once (the server does), ``add(ws)`` when a connection opens,
    ``remove(ws)`` when it closes (the driver's cleanup does), ``stop()`` at shutdown.
    """

    def __init__(
        self,
        interval: float,
        timeout: float,
        *,
        max_missed: int = 1,
        idle_timeout: float = 0.0,
        metrics: Metrics | None = None,
        max_tick: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.max_missed = max(1, max_missed)
        self.idle_timeout = idle_timeout
        self.metrics = metrics
        self._clock = clock
        self.max_tick = max_tick
        self.tick = self._tick()
        self._entries: dict[Pingable, _Entry] = {}
        #: added since the last tick (``_admit_new`` moves them); a dict for O(1) ``remove()``
        self._new: dict[Pingable, None] = {}
        self._heap: list[tuple[float, _Entry]] = []  # (due, entry): a pair per connection
        #: heap slots whose connection was removed (an upper bound: see ``remove()``)
        self._dead = 0
        self._added = 0
        #: watched connections whose last ping went unanswered past ``timeout`` (not failed
        #: yet: ``max_missed`` not reached); a partition shows here before the 1011
        self.late = 0
        self._stopping = Event()
        self._greenlet: gevent.Greenlet | None = None

    def _tick(self) -> float:
        """Wake-up period: a tenth of the shortest timer, at most max_tick, at least 10 ms."""
        timers = [t for t in (self.interval / 10, self.timeout / 4, self.idle_timeout / 10) if t]
        return max(0.01, min(self.max_tick, *timers)) if self.enabled and timers else 0

    def reconfigure(
        self, interval: float, timeout: float, max_missed: int, idle_timeout: float
    ) -> None:
        """Apply new settings to a running heartbeat (a reload); each entry adopts them at
        its next visit. Starting or stopping the greenlet is the caller's (``start()``)."""
        self.interval, self.timeout = interval, timeout
        self.max_missed, self.idle_timeout = max(1, max_missed), idle_timeout
        self.tick = self._tick()

    @property
    def enabled(self) -> bool:
        """True when ``interval`` or ``idle_timeout`` is positive."""
        return self.interval > 0 or self.idle_timeout > 0

    def mean_rtt(self) -> float | None:
        """Mean of the watched connections' last round-trip times (O(n)); None without any."""
        samples = [e.ws.latency for e in self._entries.values() if e.ws and e.ws.latency]
        return sum(samples) / len(samples) if samples else None

    def __len__(self) -> int:
        """The number of connections watched."""
        return len(self._entries) + len(self._new)

    def __contains__(self, ws: object) -> bool:
        return ws in self._entries or ws in self._new

    def add(self, ws: Pingable) -> None:
        """Watch ``ws`` (an open connection); its first ping comes within one interval.

        Call ``remove(ws)`` when it closes. Adding twice is a no-op.
        """
        if self.enabled and ws not in self._entries:
            self._new[ws] = None

    def remove(self, ws: Pingable) -> None:
        """Stop watching ``ws`` at once; idempotent. The driver calls it on close."""
        entry = self._entries.pop(ws, None)
        if entry is None:
            self._new.pop(ws, None)
            return
        self._retire(entry)
        # Its slot stays in the heap. (Removed during its own visit, it is out of the heap
        # and is counted anyway: the count may exceed the dead slots, never fall short.)
        self._dead += 1
        if self._dead * 2 > len(self._heap) and (self._dead > _COMPACT_MIN or not self._entries):
            self._compact()

    def _retire(self, entry: _Entry) -> None:
        entry.ws = None
        if entry.missed:
            self._late(-1)

    def _compact(self) -> None:
        """Drop every removed connection's heap slot in one O(n) pass."""
        heap = self._heap  # in place: ``run_due`` may hold it (a removal during a visit)
        heap[:] = [item for item in heap if item[1].ws is not None]
        heapq.heapify(heap)
        self._dead = 0

    def _admit_new(self) -> None:
        """Give each connection added since the last tick its entry, due as from its last
        frame (its opening, if none came since ``add()``): its first ping at its own phase of
        the interval, or its idle timeout if sooner."""
        new, self._new = self._new, {}
        interval, idle = self.interval, self.idle_timeout
        for ws in new:
            added = ws.last_received
            self._added += 1
            phase = (self._added * _PHI) % 1.0
            entry = _Entry(ws, added + interval * max(phase, 0.05), added)
            self._entries[ws] = entry
            first = entry.next_ping if interval > 0 else added + idle
            if idle > 0 and added + idle < first:
                first = added + idle  # an idle timeout shorter than the first ping
            self._push(first, entry)

    def start(self) -> None:
        """Spawn the heartbeat greenlet (idempotent). Call ``stop()`` to end it."""
        if self.enabled and (self._greenlet is None or self._greenlet.dead):
            self._stopping.clear()
            self._greenlet = gevent.spawn(self._run)
            logger.info(
                "heartbeat started: ping every %s s, %s s to answer, %d missed to fail, "
                "idle timeout %s",
                self.interval or "never", self.timeout, self.max_missed,
                f"{self.idle_timeout} s" if self.idle_timeout else "off",
            )  # fmt: skip

    def stop(self, timeout: float = 1.0) -> None:
        """Wake and end the heartbeat greenlet, waiting up to ``timeout`` s; idempotent."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is None:
            return
        self._stopping.set()
        greenlet.join(timeout)
        if not greenlet.dead:
            greenlet.kill(block=False)

    # -- the loop -----------------------------------------------------------------------------

    def _push(self, due: float, entry: _Entry) -> None:
        heapq.heappush(self._heap, (due, entry))

    def _run(self) -> None:
        """Process what is due, then wait one tick (or until ``stop()``)."""
        while not self._stopping.is_set():
            self.run_due()
            self._stopping.wait(self.tick or self.max_tick)  # tick 0: disabled by a reload

    def run_due(self) -> int:
        """Process every deadline that has passed; return how many entries were visited.

        The loop calls it every tick; tests may call it directly.
        """
        if self._new:
            self._admit_new()
        now = self._clock()
        heap = self._heap
        visited = 0
        while heap and heap[0][0] <= now:
            _, entry = heapq.heappop(heap)
            ws = entry.ws
            if ws is None:
                if self._dead:
                    self._dead -= 1
                continue  # removed since it was scheduled
            visited += 1
            try:
                due = self._visit(entry, ws, now)
            except Exception:  # the one safety net: one bad connection must not stop the rest
                logger.exception("heartbeat failed for connection %s", ws.id)
                due = None
            if due is None:
                if self._entries.pop(ws, None) is not None:
                    self._retire(entry)
            elif entry.ws is not None:  # not removed during its visit
                self._push(due, entry)
        return visited

    def _visit(self, entry: _Entry, ws: Pingable, now: float) -> float | None:
        """Ping, time out or reschedule one connection; return its next due time or None."""
        if not ws.is_open:
            return None
        idle_due = self._check_idle(entry, ws, now)
        if idle_due is None:
            return None
        if self.interval <= 0:
            return idle_due
        due = self._check_pings(entry, ws, now)
        return None if due is None else min(due, idle_due)

    def _check_idle(self, entry: _Entry, ws: Pingable, now: float) -> float | None:
        """Close with 1001 a connection silent for ``idle_timeout``; else when to look again."""
        if self.idle_timeout <= 0:
            return float("inf")
        count = ws.messages_received
        if count != entry.seen:
            entry.seen, entry.active_at = count, now
        due = entry.active_at + self.idle_timeout
        if now < due:
            return due
        logger.info("closing connection %s: no message for %s s", ws.id, self.idle_timeout,
                    extra={"id": ws.id})  # fmt: skip
        ws.close(CloseCode.GOING_AWAY, "idle timeout")
        return None

    def _check_pings(self, entry: _Entry, ws: Pingable, now: float) -> float | None:
        """Ping, count a missed ping, fail after ``max_missed``; else the next due time."""
        self._record_rtt(entry, ws)
        sent_at = ws.ping_sent_at
        if sent_at is not None and ws.last_received < sent_at:
            # A ping is outstanding and nothing arrived since: missed once timeout passes.
            deadline = sent_at + self.timeout
            if now < deadline:
                return deadline if entry.next_ping <= now else min(deadline, entry.next_ping)
            entry.missed += 1
            self._missed(entry)
            if entry.missed >= self.max_missed:
                self._timed_out(ws)
                return None
            return self._ping(entry, ws, now)  # try again at once
        if entry.missed:
            entry.missed = 0
            self._late(-1)
        if now >= entry.next_ping:
            return self._ping(entry, ws, now)
        return entry.next_ping

    def _missed(self, entry: _Entry) -> None:
        """One more unanswered ping: counted, and the connection is late from its first."""
        if self.metrics is not None:
            self.metrics.pong_missed()
        if entry.missed == 1:
            self._late(1)

    def _late(self, delta: int) -> None:
        self.late += delta
        if self.metrics is not None:
            self.metrics.late_pongs = self.late

    def _ping(self, entry: _Entry, ws: Pingable, now: float) -> float:
        ws.send_heartbeat_ping()
        entry.pinged = True
        entry.next_ping = now + self.interval
        return min(entry.next_ping, now + self.timeout)

    def _timed_out(self, ws: Pingable) -> None:
        """Fail a dead peer: 1011 (the documented choice, ARCHITECTURE §4), logged, counted."""
        logger.warning("ping timeout on connection %s: %d ping(s) unanswered", ws.id,
                       self.max_missed, extra={"id": ws.id})  # fmt: skip
        if self.metrics is not None:
            self.metrics.heartbeat_timeout()
        ws.abort(CloseCode.INTERNAL_ERROR, "ping timeout")

    def _record_rtt(self, entry: _Entry, ws: Pingable) -> None:
        """Record the latency of our last ping once the driver has matched its pong."""
        if entry.pinged and ws.ping_sent_at is None and ws.latency is not None:
            entry.pinged = False
            if self.metrics is not None:
                self.metrics.rtt(ws.latency)
