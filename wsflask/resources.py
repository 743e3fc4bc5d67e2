"""Resource sampling: how much memory and how many descriptors this process uses.

``system_probe()`` returns usage ratios by name; admission and degradation read them through
an injectable ``Probe`` (tests pass fakes). Linux /proc only; elsewhere the ratios read 0.
It decides nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

__all__ = ["Probe", "system_probe"]

#: A resource probe: named usage ratios, e.g. ``{"memory": 0.42, "fds": 0.1}``.
Probe = Callable[[], Mapping[str, float]]


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
