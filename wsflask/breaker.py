"""The handshake circuit breaker: fail fast while the resolver or its hooks keep failing.

``CircuitBreaker`` counts consecutive failures; at the threshold it opens (the server then
answers 503 at once), after ``reset`` seconds it lets one trial through (half-open), and that
trial's outcome closes or reopens it. Clock injected; no I/O, no HTTP (server.py answers).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

__all__ = ["Breaker", "CircuitBreaker"]

logger = logging.getLogger("wsflask.degradation")


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
