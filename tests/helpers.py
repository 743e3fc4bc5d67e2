"""Helpers the test modules import: bounded waits and the external-tool gate.

``wait_until`` polls a condition under a deadline (never a blind sleep); ``join_chat`` joins a
``chat_nodes`` node's room. ``cpu_ratio`` compares the CPU time of two input sizes for the
linear-time rows. ``require_tool`` finds
an executable the test needs; a missing one skips locally, naming the install command, and
fails under ``CI=true``, so a CI run cannot pass with a battery silently skipped. Fixtures
live in ``conftest.py``; this module holds only what tests call directly.
"""

from __future__ import annotations

import gc
import inspect
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

FALSE_VALUES = {"", "0", "false", "no", "off"}

#: backplane timings for in-process chat nodes (the ``chat_nodes`` fixture's defaults)
BACKPLANE_FAST: dict[str, Any] = {
    "backplane_interval": 1.0,
    "backplane_backoff_max": 0.5,
    "shutdown_grace": 2.0,
    "close_timeout": 1.0,
}


#: quick timeouts for a test's own ``Config(**SERVER_FAST, ...)`` on an ephemeral port
SERVER_FAST: dict[str, Any] = {
    "port": 0,
    "close_timeout": 1.0,
    "handshake_timeout": 2.0,
    "shutdown_grace": 1.0,
}


def join_chat(client: Any, room: str = "t") -> Any:
    """Connect ``client`` (a ``chat_nodes`` test client) to ``/r/<room>``, past its hello."""
    ws = client.connect(f"/r/{room}")
    assert "hello" in client.receive_json(ws)
    return ws


def wait_until(
    predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` every ``interval`` seconds (yielding to gevent) until it is true.

    Fails, quoting the predicate's source, if it is still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"not true after {timeout} s: {_source(predicate)}", pytrace=True)
        gevent.sleep(interval)


def _source(predicate: Callable[[], object]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to a true value (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in FALSE_VALUES


def require_tool(name: str, install_hint: str) -> str:
    """Return the path of the executable ``name`` (a name on ``PATH`` or an absolute path).

    If it is missing: under ``CI=true`` the test fails; otherwise it is skipped. Both messages
    name the tool and ``install_hint``, the command that installs it.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (install it with: {install_hint})"
    if in_ci():
        pytest.fail(f"{message}; CI=true requires every tool", pytrace=False)
    pytest.skip(message)


def cpu_ratio(
    small: Callable[[], object],
    large: Callable[[], object],
    *,
    within: float,
    samples: int = 9,
    min_sample: float = 0.03,
    attempts: int = 3,
) -> float:
    """CPU time of ``large()`` over CPU time of ``small()``, for "linear in the input" rows.

    The work is timed as this thread's CPU time (``time.thread_time``: the handler and
    backplane threads a test session leaves behind are not counted), with the cyclic GC off
    (its passes follow the allocation count, not the code under test). ``small`` is repeated
    until one sample takes at least ``min_sample`` seconds, and ``large`` the same number of
    times; the two sizes' samples alternate, so a noisy moment hits both, and the best of
    ``samples`` each is compared. A ratio above ``within`` (the test's bound) is measured
    again, up to ``attempts`` times in all, and the lowest returned: a busy neighbour on a
    shared core (cache, memory bandwidth) inflates the larger input's time more, while a
    superlinear cost shows in every attempt.
    """
    ratio = float("inf")
    for _ in range(attempts):
        ratio = min(ratio, _ratio_once(small, large, samples, min_sample))
        if ratio <= within:
            break
    return ratio


def _ratio_once(
    small: Callable[[], object], large: Callable[[], object], samples: int, min_sample: float
) -> float:
    small()
    large()  # warm caches and the allocator
    gc.collect()
    gc.disable()
    try:
        repeat = 1
        while _cpu(small, repeat) < min_sample and repeat < 1 << 16:
            repeat *= 2
        best_small = best_large = float("inf")
        for _ in range(samples):
            best_large = min(best_large, _cpu(large, repeat))
            best_small = min(best_small, _cpu(small, repeat))
    finally:
        gc.enable()
    return best_large / best_small


def _cpu(work: Callable[[], object], repeat: int) -> float:
    started = time.thread_time()
    for _ in range(repeat):
        work()
    return time.thread_time() - started
