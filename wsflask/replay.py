"""A bounded, expiring memory of ``Sec-WebSocket-Key`` values, to refuse replayed handshakes.

RFC 6455 §4.1 has clients pick a fresh random key per handshake; a key seen again within
``ttl`` seconds is a captured request being replayed (design HS-17, optional). Memory is
bounded by ``max_keys`` (oldest forgotten first). It proves nothing about a key never seen.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["KeyReplayCache"]


class KeyReplayCache:
    """Remembers keys for ``ttl`` seconds; ``seen(key)`` says whether one is a replay.

    Args:
        ttl: seconds a key is remembered.
        max_keys: keys remembered at most; the oldest are forgotten first past it.
        clock: a monotonic clock (tests pass a fake one).
    """

    def __init__(
        self, ttl: float, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, float] = OrderedDict()  # key -> when first seen

    def __len__(self) -> int:
        return len(self._keys)

    def seen(self, key: str) -> bool:
        """True when ``key`` was offered within ``ttl``; else remember it and return False."""
        now, keys = self._clock(), self._keys
        while keys:  # expire from the oldest end: amortised O(1)
            oldest, when = next(iter(keys.items()))
            if now - when < self.ttl:
                break
            del keys[oldest]
        if key in keys:
            return True
        keys[key] = now
        if len(keys) > self.max_keys:
            keys.popitem(last=False)
        return False
