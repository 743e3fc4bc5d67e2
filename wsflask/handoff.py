"""Handing work from other OS threads to the gevent hub thread that owns the app.

``Handoff.bind()`` records the serving thread and its hub's loop; ``run(fn, ...)`` called from
any other thread queues ``fn`` on that loop (``run_callback_threadsafe``), runs it in a new
greenlet there and waits for its result. No thread pool, no work for the hub's own thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import gevent

__all__ = ["Handoff"]

T = TypeVar("T")
#: seconds a foreign thread waits for the hub to run its call (the hub is stuck beyond it)
WAIT = 30.0


class Handoff:
    """The thread that serves an app, and a thread-safe way into its hub."""

    __slots__ = ("_loop", "_thread")

    def __init__(self) -> None:
        self._thread: int | None = None
        self._loop: Any = None

    def bind(self) -> None:
        """The calling thread serves from now on (``make_server``/``notify_started``)."""
        self._thread = threading.get_ident()
        self._loop = gevent.get_hub().loop

    def foreign(self) -> bool:
        """True when called from a thread other than the bound one (bound at all)."""
        return self._thread is not None and threading.get_ident() != self._thread

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a greenlet of the hub thread; return its result
        or raise its exception here. Raises ``TimeoutError`` after ``WAIT`` seconds."""
        future: Future[T] = Future()

        def call() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.run_callback_threadsafe(gevent.spawn, call)
        return future.result(timeout=WAIT)
