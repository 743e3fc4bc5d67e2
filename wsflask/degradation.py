"""Graceful degradation under resource pressure: levels, and what each level does.

``ResourceMonitor`` turns samples (``resources.system_probe``, or a fake) into
levels (normal, warning, critical) with hysteresis; ``Degrader`` acts on levels (stretch the
heartbeat, slow or refuse handshakes, shed low-priority idle connections with 1013). The
handshake circuit breaker is ``breaker.py``, the error classifier ``classify.py``.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import gevent
from gevent.event import Event

from .admission import Admission, Refusal
from .protocol import CloseCode
from .resources import system_probe

__all__ = ["Degrader", "Level", "ResourceMonitor"]

logger = logging.getLogger("wsflask.degradation")


# -- resource levels ---------------------------------------------------------------------------


class Level(enum.IntEnum):
    """Pressure levels, ordered."""

    NORMAL = 0
    WARNING = 1
    CRITICAL = 2


class ResourceMonitor:
    """Levels from resource ratios, with hysteresis.

    ``WARNING`` at ``threshold`` or more, ``CRITICAL`` above ``critical`` times the threshold
    (1.1: ER-22); a level is left only once pressure is ``hysteresis`` below its entry point.

    Args:
        probe: ratios by name (``system_probe``, or a fake in tests); a ``loop_lag`` entry
            in seconds may be included and is compared against ``lag_threshold``.
        threshold: the warning ratio (0.85 by default).
    """

    def __init__(
        self,
        probe: Callable[[], Mapping[str, float]] = system_probe,
        *,
        threshold: float = 0.85,
        critical: float = 1.1,
        hysteresis: float = 0.05,
        lag_threshold: float = 0.1,
    ) -> None:
        self.probe = probe
        self.threshold = threshold
        self.critical = critical
        self.hysteresis = hysteresis
        self.lag_threshold = lag_threshold
        self.level = Level.NORMAL
        self.last: Mapping[str, float] = {}

    def pressure(self, sample: Mapping[str, float] | None = None) -> float:
        """The largest ratio over its threshold's scale (1.0 = at the warning threshold)."""
        sample = self.last if sample is None else sample
        worst = 0.0
        for name, value in sample.items():
            scale = self.lag_threshold if name == "loop_lag" else self.threshold
            worst = max(worst, value / scale)
        return worst

    def update(self, extra: Mapping[str, float] | None = None) -> Level:
        """Sample the probe (plus ``extra``, e.g. the measured ``loop_lag``) and return the
        (possibly new) level; logs each change."""
        self.last = {**self.probe(), **(extra or {})}
        pressure = self.pressure()
        down = self.hysteresis / self.threshold  # in pressure units
        critical = self.level is Level.CRITICAL
        if pressure > self.critical or (critical and pressure > self.critical - down):
            level = Level.CRITICAL
        elif pressure >= 1.0 or (self.level is not Level.NORMAL and pressure >= 1.0 - down):
            level = Level.WARNING
        else:
            level = Level.NORMAL
        if level is not self.level:
            log = logger.critical if level is Level.CRITICAL else logger.warning
            log("resource level %s -> %s (pressure %.2f: %s)", self.level.name, level.name,
                pressure, dict(self.last))  # fmt: skip
            self.level = level
        return level


# -- acting on levels ---------------------------------------------------------------------------


class Sheddable(Protocol):
    """What shedding needs of a connection (``WebSocket`` is one)."""

    def peek_session(self) -> dict[str, Any] | None: ...
    @property
    def last_received(self) -> float: ...
    @property
    def is_open(self) -> bool: ...
    def close_now(self, code: int, reason: str = "") -> None: ...


class Stretchable(Protocol):
    """A heartbeat whose ``interval`` may be stretched (``Heartbeat`` is one)."""

    interval: float


class Degrader:
    """Acts on the monitor's level, every ``interval`` seconds (a ``Service``).

    * WARNING and up: the heartbeat interval is doubled (fewer pings) and new handshakes
      wait ``slow_accept`` seconds first (quality levels, ER-21/ER-25).
    * CRITICAL: new handshakes get 503 at once, and shedding starts: each tick closes up
      to ``shed_batch`` connections with 1013, those without ``session["priority"]`` only,
      the longest idle first (ER-23/ER-24). Shedding stops once the level is back to
      NORMAL (pressure below the threshold minus the hysteresis), not merely WARNING.

    ``loop_lag`` (how late this greenlet woke, in seconds) is added to every sample;
    ``note("shed")`` is called per connection shed (metrics).
    """

    def __init__(
        self,
        monitor: ResourceMonitor,
        *,
        connections: Collection[Sheddable],
        admission: Admission,
        heartbeat: Stretchable | None = None,
        interval: float = 1.0,
        shed_batch: int = 10,
        slow_accept: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.note = note
        self.connections = connections
        self.admission = admission
        self.heartbeat = heartbeat
        self.interval = interval
        self.shed_batch = shed_batch
        self.slow_accept = slow_accept
        self.clock = clock
        self.shedding = False
        self.shed = 0  #: connections closed by shedding (for /metrics)
        self._base_interval = heartbeat.interval if heartbeat is not None else 0.0
        self._stopping = Event()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Spawn the greenlet (idempotent)."""
        if self._greenlet is None or self._greenlet.dead:
            self._stopping.clear()
            self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float = 1.0) -> None:
        """End the greenlet and undo every degradation; idempotent."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            self._stopping.set()
            greenlet.join(timeout)
            if not greenlet.dead:
                greenlet.kill(block=False)

    def _run(self) -> None:
        due = self.clock() + self.interval
        while not self._stopping.wait(max(0.0, due - self.clock())):
            lag = max(0.0, self.clock() - due)
            due = self.clock() + self.interval
            try:
                self.run_once(lag)
            except Exception:  # the safety net: keep watching
                logger.exception("degradation check failed")

    def run_once(self, loop_lag: float = 0.0) -> Level:
        """Sample, then apply the level: quality, admission and shedding. Tests call it."""
        level = self.monitor.update({"loop_lag": loop_lag})
        if self.heartbeat is not None and self._base_interval > 0:
            stretch = 2.0 if level >= Level.WARNING else 1.0
            self.heartbeat.interval = self._base_interval * stretch
        self.admission.pressure_delay = self.slow_accept if level >= Level.WARNING else 0.0
        critical = level is Level.CRITICAL
        self.admission.refuse_all = Refusal(503, "overloaded", 5) if critical else None
        if critical:
            self.shedding = True
        elif level is Level.NORMAL:
            self.shedding = False
        if self.shedding:
            self._shed_some()
        return level

    def _shed_some(self) -> None:
        idle = sorted(
            (ws for ws in self.connections if ws.is_open and not _priority(ws)),
            key=lambda ws: ws.last_received,
        )
        for ws in idle[: self.shed_batch]:
            ws.close_now(CloseCode.TRY_AGAIN_LATER, "server overloaded")
            self.shed += 1
            if self.note is not None:
                self.note("shed")
        if idle:
            logger.warning("shed %d connection(s) under pressure", min(len(idle), self.shed_batch))


def _priority(ws: Sheddable) -> bool:
    """True when the connection's session marks it ``priority`` (never shed)."""
    session = ws.peek_session()
    return bool(session and session.get("priority"))
