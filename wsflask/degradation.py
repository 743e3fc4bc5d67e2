"""Graceful degradation: resource pressure, quality levels, load shedding, a handshake circuit
breaker and an error classifier.

``system_probe`` samples memory and descriptor use; ``ResourceMonitor`` turns samples into
levels (normal, warning, critical) with hysteresis; ``Degrader`` acts on levels (stretch the
heartbeat, refuse handshakes, shed low-priority idle connections with 1013); ``CircuitBreaker``
fails handshakes fast after repeated resolver failures; ``classify`` maps an error to a
category, severity and close code. No I/O of its own beyond reading /proc.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "Breaker", "CircuitBreaker", "Classified", "Level", "ResourceMonitor", "classify",
    "system_probe",
]  # fmt: skip

logger = logging.getLogger("wsflask.degradation")


def system_probe() -> dict[str, float]:
    """Usage ratios of this process: ``memory`` (RSS / physical RAM) and ``fds`` (open
    descriptors / RLIMIT_NOFILE soft limit). Missing sources (no /proc) read as 0."""
    return {"memory": _memory_ratio(), "fds": _fd_ratio()}


def _memory_ratio() -> float:
    try:
        with open("/proc/self/statm") as statm:
            rss_pages = int(statm.read().split()[1])
        total = os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, IndexError):
        return 0.0
    return rss_pages / total if total > 0 else 0.0


def _fd_ratio() -> float:
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = len(os.listdir("/proc/self/fd"))
    except (ImportError, OSError, ValueError):
        return 0.0
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 0.0
    return used / soft


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

    def update(self) -> Level:
        """Sample the probe and return the (possibly new) level; logs each change."""
        self.last = self.probe()
        pressure = self.pressure()
        down = self.hysteresis / self.threshold  # in pressure units
        level = self.level
        if pressure > self.critical:
            level = Level.CRITICAL
        elif pressure >= 1.0:
            level = max(Level.WARNING, level) if pressure > self.critical - down else Level.WARNING
        elif pressure < 1.0 - down:
            level = Level.NORMAL
        elif level is Level.CRITICAL:
            level = Level.WARNING
        if level is not self.level:
            log = logger.critical if level is Level.CRITICAL else logger.warning
            log("resource level %s -> %s (pressure %.2f: %s)", self.level.name, level.name,
                pressure, dict(self.last))  # fmt: skip
            self.level = level
        return level


# -- the handshake circuit breaker -------------------------------------------------------------


class Breaker(enum.Enum):
    """Circuit-breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Fail fast after ``failures`` consecutive failures; after ``reset`` seconds let one
    trial through (half-open): its success closes the circuit, its failure opens it again.

    ``failures=0`` disables it (``allow()`` is always True).
    """

    def __init__(
        self, failures: int, reset: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.reset = reset
        self.state = Breaker.CLOSED
        self.trips = 0  #: times the circuit opened (for /metrics)
        self._clock = clock
        self._count = 0
        self._opened_at = 0.0

    def allow(self) -> bool:
        """True when a request may go through now (one trial while half-open)."""
        if self.state is Breaker.CLOSED:
            return True
        if self.state is Breaker.OPEN and self._clock() - self._opened_at >= self.reset:
            self.state = Breaker.HALF_OPEN
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until the next trial."""
        left = self.reset - (self._clock() - self._opened_at)
        return max(1, int(left + 0.999))

    def success(self) -> None:
        """A request went through fine: close the circuit."""
        self._count = 0
        if self.state is not Breaker.CLOSED:
            logger.info("handshake circuit closed")
        self.state = Breaker.CLOSED

    def failure(self) -> None:
        """A request failed (the resolver raised or answered 5xx)."""
        self._count += 1
        if self.failures and (self.state is Breaker.HALF_OPEN or self._count >= self.failures):
            if self.state is not Breaker.OPEN:
                self.trips += 1
                logger.error("handshake circuit open after %d failure(s)", self._count)
            self.state = Breaker.OPEN
            self._opened_at = self._clock()


# -- the error classifier ----------------------------------------------------------------------


@dataclass(frozen=True)
class Classified:
    """What an error means: ``category`` (protocol, resource, client, network, internal),
    ``severity`` (a logging level) and the close ``code`` to send."""

    category: str
    severity: int
    code: int


def classify(exc: BaseException) -> Classified:
    """Map ``exc`` to its category, severity and close code (ER-03)."""
    from .errors import ConnectionClosed
    from .protocol import CloseCode, HandshakeError, ProtocolError

    if isinstance(exc, ProtocolError):
        code = int(getattr(exc, "close_code", CloseCode.PROTOCOL_ERROR))
        return Classified("protocol", logging.WARNING, code)
    if isinstance(exc, HandshakeError):
        return Classified("client", logging.INFO, CloseCode.POLICY)
    if isinstance(exc, MemoryError):
        return Classified("resource", logging.CRITICAL, CloseCode.TRY_AGAIN_LATER)
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        return Classified("resource", logging.ERROR, CloseCode.TRY_AGAIN_LATER)
    if isinstance(exc, ConnectionClosed | ConnectionError | TimeoutError):
        return Classified("network", logging.INFO, CloseCode.ABNORMAL)
    if isinstance(exc, OSError):
        return Classified("network", logging.WARNING, CloseCode.ABNORMAL)
    return Classified("internal", logging.ERROR, CloseCode.INTERNAL_ERROR)


_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
