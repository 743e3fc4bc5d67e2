"""Giving the C heap's free memory back to the operating system once many connections closed.

glibc's ``malloc`` keeps what a process frees for its next allocations. After 1,000
permessage-deflate connections close, a server's RSS stays near its peak (about 83 MB
against a 29 MB baseline on the development machine) although nothing leaks: the zlib
streams and buffers were freed into the heap, not returned. ``HeapTrimmer`` follows the
number of open connections the server reports. Once it has fallen below its peak since the
last trim by ``drop`` connections and by a quarter of that peak, it calls ``release()``
once, ``DELAY`` seconds later, so a burst of closes costs one trim (about 4 ms for an 80 MB
heap). A count that stays flat under churn never trims: that memory is about to be reused.

``release()`` is glibc's ``malloc_trim(0)``. Where the C library has none (musl, macOS,
Windows) it returns None and the trimmer does nothing. Python's own small-object allocator
keeps its arenas either way. This module knows counts, not connections; its only I/O is
reading ``/proc/self/statm`` around a trim, to report the bytes given back.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["DELAY", "HeapTrimmer", "release"]

logger = logging.getLogger("wsflask.heap")

#: Seconds from the drop that calls for a trim to the trim: the closes of one burst share it.
DELAY = 1.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None without one; looked up once."""
    import ctypes

    try:
        function = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # no C library to open by name (Windows: TypeError)
        return None
    if function is not None:
        function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


def _rss() -> int:
    """Resident bytes of this process, or 0 where ``/proc`` is missing."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release() -> int | None:
    """Give the C heap's free pages back to the OS now (glibc ``malloc_trim(0)``).

    Returns the resident bytes that went away (0 when none did, or ``/proc`` is missing),
    or None where the C library cannot trim. Blocks for the trim (milliseconds).
    """
    trim = _malloc_trim()
    if trim is None:
        return None
    before = _rss()
    trim(0)
    return max(0, before - _rss())


class HeapTrimmer:
    """Trims the heap once the open connections fell well below their peak.

    Args:
        drop: the fall below the peak since the last trim, in connections, that calls for
            a trim (``Config.heap_trim_drop``; a reload may set ``drop``); a quarter of that
            peak is needed as well. ``0`` never trims.
        metrics: counts trims and bytes given back (``websocket_heap_trims_total``).
        trim: the trim itself (tests inject one); this module's ``release`` by default.

    The server calls ``opened(count)`` after a connection opened and ``closed(count)`` after
    one closed, with the open count then; both are O(1). ``cancel()`` drops a pending trim.
    """

    def __init__(
        self,
        drop: int,
        metrics: Metrics | None = None,
        trim: Callable[[], int | None] | None = None,
    ) -> None:
        self.drop = drop
        self.metrics = metrics
        self._trim = trim
        #: trims done, and the resident bytes they gave back
        self.trims = 0
        self.released = 0
        self._peak = 0  # the most connections open since the last trim
        self._open = 0  # the count last reported
        self._pending: gevent.Greenlet | None = None

    @property
    def pending(self) -> bool:
        """True while a trim is scheduled."""
        return self._pending is not None

    def opened(self, count: int) -> None:
        self._open = count
        if count > self._peak:
            self._peak = count

    def closed(self, count: int) -> None:
        self._open = count
        fall, drop = self._peak - count, self.drop
        if drop and fall >= drop and 4 * fall >= self._peak and self._pending is None:
            self._pending = gevent.spawn_later(DELAY, self._run)

    def cancel(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.kill(block=False)

    def _run(self) -> None:
        """The trim, after ``DELAY``: counted, logged; the peak starts again from now."""
        self._pending = None
        released = (self._trim or release)()
        self._peak = self._open
        if released is None:  # this C library cannot trim: stop asking
            self.drop = 0
            return
        self.trims += 1
        self.released += released
        if self.metrics is not None:
            self.metrics.heap_trimmed(released)
        logger.debug("heap trimmed: %d KiB given back", released >> 10)
