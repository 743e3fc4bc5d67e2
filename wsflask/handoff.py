"""Handing work from other OS threads to the gevent hub thread that owns the app.

``Handoff.bind()`` records the serving thread and its hub's loop; ``run(fn, ...)`` called from
any other thread queues ``fn`` on that loop (``run_callback_threadsafe``), runs it in a new
greenlet there and waits for its result on a real OS lock (right even when ``threading`` is
monkey-patched). No thread pool, no work for the hub's own thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent.monkey import get_original

__all__ = ["Handoff", "os_thread_id"]

T = TypeVar("T")
#: seconds a foreign thread waits for the hub to run its call (the hub is stuck beyond it)
WAIT = 30.0
#: the OS thread's id, also when ``threading`` is monkey-patched (its ids then name greenlets)
os_thread_id: Callable[[], int] = get_original("_thread", "get_ident")
_allocate_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")


class Handoff:
    """The thread that serves an app, and a thread-safe way into its hub."""

    __slots__ = ("_loop", "_thread")

    def __init__(self) -> None:
        self._thread: int | None = None
        self._loop: Any = None

    def bind(self) -> None:
        """The calling thread serves from now on (``make_server``/``notify_started``)."""
        self._thread = os_thread_id()
        self._loop = gevent.get_hub().loop

    def foreign(self) -> bool:
        """True when called from an OS thread other than the bound one (bound at all)."""
        return self._thread is not None and os_thread_id() != self._thread

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a greenlet of the hub thread; return its result
        or raise its exception here. Raises ``TimeoutError`` after ``WAIT`` seconds."""
        done = _allocate_lock()
        done.acquire()
        outcome: list[Any] = []

        def call() -> None:
            try:
                outcome.append((True, fn(*args, **kwargs)))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                done.release()

        self._loop.run_callback_threadsafe(gevent.spawn, call)
        if not done.acquire(True, WAIT):
            raise TimeoutError(f"the serving thread did not run the call within {WAIT} s")
        ok, value = outcome[0]
        if not ok:
            raise value
        result: T = value
        return result
