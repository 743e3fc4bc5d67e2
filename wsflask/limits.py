"""Token buckets: the one rate-limit primitive, for messages per connection and handshakes per IP.

``TokenBucket`` refills continuously at ``rate`` tokens per second up to ``burst``; ``take()``
spends one. ``MessageRate`` builds one from ``Config``. The clock is injected (monotonic by
default) so tests need no sleeps. No policy here: callers decide what refusal means.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

__all__ = ["MessageRate", "TokenBucket"]


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; ``take()`` spends one if it can."""

    __slots__ = ("_clock", "_stamp", "burst", "rate", "tokens")

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._clock = clock
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token; False (nothing spent) when the bucket is empty."""
        now = self._clock()
        tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def wait_time(self) -> float:
        """Seconds until one token is available (0 when one is)."""
        missing = 1.0 - self.tokens - (self._clock() - self._stamp) * self.rate
        return max(0.0, missing / self.rate) if self.rate > 0 else float("inf")

    def full(self) -> bool:
        """True when the bucket has refilled completely (the caller may forget it)."""
        return self.tokens + (self._clock() - self._stamp) * self.rate >= self.burst


class MessageRate(TokenBucket):
    """The per-connection message budget of ``Config.max_messages_per_second``."""

    __slots__ = ()

    @classmethod
    def of(cls, config: Config, clock: Callable[[], float] = time.monotonic) -> MessageRate:
        """``rate = max_messages_per_second``, ``burst = message_burst`` (0: two seconds'
        worth, at least 1)."""
        rate = config.max_messages_per_second
        burst = config.message_burst or max(1.0, 2.0 * rate)
        return cls(rate, burst, clock=clock)
