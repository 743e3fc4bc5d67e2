"""Admission control: whether a new TCP connection may start its handshake, and how soon.

One ``Admission`` per server decides from occupancy (the pool), the peer's IP and a resource
probe: a hard cap with hysteresis (full -> refuse until below 95 %), a per-IP handshake rate
(token bucket, 429 with ``Retry-After``), a resource check (503), a soft limit that delays
handshakes above 80 % of the cap, and slots reserved for priority connections (checked once
the resolver has spoken). It answers nothing itself: the server writes the refusal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .limits import TokenBucket
from .resources import Probe, system_probe

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Admission", "Probe", "Refusal"]

#: Once full, accept again only below this share of the cap (seed audit ER-11).
RESUME_BELOW = 0.95
#: Above this share of the cap new handshakes wait ``new_connection_delay`` (ER-12) ...
SLOW_ABOVE = 0.80
#: ... until occupancy is back below this share.
SLOW_UNTIL = 0.70
#: Seconds a resource sample is reused (the default probe lists /proc/self/fd).
SAMPLE_EVERY = 1.0
#: Per-IP buckets kept before the full (idle) ones are forgotten.
MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class Refusal:
    """Why a connection is refused: the HTTP status, a reason for the body and logs, and
    the ``Retry-After`` seconds."""

    status: int
    reason: str
    retry_after: int = 1


class Admission:
    """The admission policy of one server (``Server.admission``).

    Args:
        config: ``connection_limit()``, ``reserved_connections``, ``connection_rate_per_ip``,
            ``connection_rate_window``, ``resource_threshold``, ``new_connection_delay``.
        probe: resource ratios (default ``resources.system_probe``); injected in tests.
        clock: monotonic seconds; injected in tests.
    """

    def __init__(
        self,
        config: Config,
        *,
        probe: Probe | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if probe is None:
            probe = system_probe
        self.cap = config.connection_limit()
        #: slots only ``{"priority": True}`` sessions may take
        self.reserved = min(config.reserved_connections, self.cap - 1)
        self.delay = config.new_connection_delay
        self.threshold = config.resource_threshold
        self._rate = config.connection_rate_per_ip
        self._refill = self._rate / config.connection_rate_window
        self._probe = probe
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._full = False  # the hysteresis latch of the hard cap
        self._slow = False  # the soft-limit latch
        self._sample: Mapping[str, float] = {}
        self._sampled_at = -math.inf
        self._verdict: tuple[float, str] | None = None  # (threshold, answer) for the sample
        #: set by the degradation monitor: refuse every new handshake with this (or None)
        self.refuse_all: Refusal | None = None
        #: set by the degradation monitor: every new handshake waits this long first
        self.pressure_delay = 0.0

    def reconfigure(self, config: Config) -> None:
        """Adopt reloaded settings (``wsflask.reload``); the cap (``max_connections``) needs
        a restart. Per-IP buckets start afresh when the rate or its window changed."""
        self.reserved = min(config.reserved_connections, self.cap - 1)
        self.delay = config.new_connection_delay
        self.threshold = config.resource_threshold
        refill = config.connection_rate_per_ip / config.connection_rate_window
        if (config.connection_rate_per_ip, refill) != (self._rate, self._refill):
            self._rate, self._refill = config.connection_rate_per_ip, refill
            self._buckets.clear()

    def check(self, ip: str | None, occupied: int) -> Refusal | None:
        """The refusal for a new connection from ``ip`` with ``occupied`` slots taken, or
        None to admit it. Order: cap, pressure, resources, per-IP rate."""
        if self._over_cap(occupied):
            return Refusal(503, "server full")
        if self.refuse_all is not None:
            return self.refuse_all
        if self.threshold:
            over = self.resources_over()
            if over:
                return Refusal(503, f"insufficient resources: {over}", 5)
        if self._rate and ip is not None:
            return self._rate_check(ip)
        return None

    def _over_cap(self, occupied: int) -> bool:
        """Full at the cap; stays full until occupancy is below ``RESUME_BELOW`` of it."""
        if occupied >= self.cap:
            self._full = True
        elif self._full and occupied < RESUME_BELOW * self.cap:
            self._full = False
        return self._full

    def resources_over(self) -> str:
        """``"memory 0.91 >= 0.90"`` for the first resource at or over the threshold, else
        ``""``. The probe is sampled at most every ``SAMPLE_EVERY`` seconds."""
        now = self._clock()
        if now - self._sampled_at >= SAMPLE_EVERY:
            self._sample = self._probe()
            self._sampled_at = now
            self._verdict = None
        verdict = self._verdict
        if verdict is None or verdict[0] != self.threshold:  # judged once per sample
            verdict = self._verdict = (self.threshold, self._judge())
        return verdict[1]

    def _judge(self) -> str:
        for name, ratio in self._sample.items():
            if ratio >= self.threshold:
                return f"{name} {ratio:.2f} >= {self.threshold:.2f}"
        return ""

    def _rate_check(self, ip: str) -> Refusal | None:
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_idle()
            bucket = self._buckets[ip] = TokenBucket(self._refill, self._rate, clock=self._clock)
        if bucket.take():
            return None
        return Refusal(429, "too many connections", max(1, math.ceil(bucket.wait_time())))

    def _forget_idle(self) -> None:
        for ip in [ip for ip, bucket in self._buckets.items() if bucket.full()]:
            del self._buckets[ip]

    def handshake_delay(self, occupied: int) -> float:
        """Seconds a new handshake waits first: ``new_connection_delay`` above 80 % of the
        cap, until occupancy falls below 70 % (hysteresis); else 0."""
        if not self.delay:
            return self.pressure_delay
        if occupied > SLOW_ABOVE * self.cap:
            self._slow = True
        elif occupied < SLOW_UNTIL * self.cap:
            self._slow = False
        return max(self.delay if self._slow else 0.0, self.pressure_delay)

    def check_priority(self, session: Mapping[str, Any], occupied: int) -> Refusal | None:
        """After the resolver: outside the reserve unless ``session["priority"]`` is true.
        ``occupied`` includes this connection."""
        if self.reserved and occupied > self.cap - self.reserved and not session.get("priority"):
            return Refusal(503, "server full (reserved slots)")
        return None
