"""An app's lifespan in each serving process: startup and shutdown hooks, background tasks.

``Lifespan.notify_started(address)`` runs the startup hooks once the server is bound (once
per process, so each worker runs them); ``notify_stopped()`` kills and joins the background
tasks, then runs the shutdown hooks (after the drain). ``Started`` is the ``Server`` service
that calls both; ``host``/``hosted`` list the apps served under pywsgi or gunicorn in this
process. No serving, no signals, no threads.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

import gevent

__all__ = ["Hook", "Lifespan", "Started", "host", "hosted"]

logger = logging.getLogger("wsflask")

#: a startup or shutdown hook: called with no arguments
Hook = Callable[[], Any]
#: how long ``notify_stopped`` waits for killed background tasks to finish
TASK_KILL_TIMEOUT = 5.0


class Lifespan:
    """Hooks and background tasks of one app; see the module docstring.

    Attributes:
        address: ``(host, port)`` the server listens on, set just before the startup hooks
            run; ``None`` before that (and in a process that never served).
        startup, shutdown: the hooks, in registration order.
        tasks: the background tasks still running.
    """

    def __init__(self) -> None:
        self.startup: list[Hook] = []
        self.shutdown: list[Hook] = []
        self.tasks: set[gevent.Greenlet] = set()
        self.address: tuple[str, int] | None = None
        self._pid: int | None = None  # the process whose startup hooks ran; None: stopped

    @property
    def started(self) -> bool:
        """True in a process that ran the startup hooks and has not stopped since."""
        return self._pid == os.getpid()

    def spawn(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> gevent.Greenlet:
        """Start ``func(*args, **kwargs)`` in a greenlet killed and joined at stop."""
        task = gevent.spawn(func, *args, **kwargs)
        self.tasks.add(task)
        task.rawlink(self.tasks.discard)  # in the hub: no greenlet per finished task
        return task

    def notify_started(self, address: tuple[str, int]) -> None:
        """The server is bound at ``address``: run the startup hooks, once per process.

        Raises:
            Exception: what a startup hook raised (logged): the server should not serve.
        """
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.address = (str(address[0]), int(address[1]))
        for hook in self.startup:
            try:
                hook()
            except Exception:
                logger.exception("startup hook %r failed", hook)
                raise

    def notify_stopped(self) -> None:
        """The server drained: kill and join background tasks, then run the shutdown hooks
        (only after a start in this process; each failure is logged). Idempotent."""
        tasks, self.tasks = list(self.tasks), set()
        if tasks:
            gevent.killall(tasks, block=True, timeout=TASK_KILL_TIMEOUT)
        if self._pid != os.getpid():
            return
        self._pid = None
        for hook in self.shutdown:
            try:
                hook()
            except Exception:
                logger.exception("shutdown hook %r failed", hook)


class Started:
    """The ``Server`` service of a lifespan: ``start()`` after the bind reports
    ``address()``, ``stop()`` after the drain (``Server.stop`` stops services then)."""

    def __init__(self, lifespan: Lifespan, address: Callable[[], tuple[str, int]]) -> None:
        self.lifespan = lifespan
        self.address = address

    def start(self) -> None:
        self.lifespan.notify_started(self.address())

    def stop(self) -> None:
        self.lifespan.notify_stopped()


#: the lifespans of apps served under pywsgi/gunicorn in this process (``App.handler_class``,
#: ``App.wsgi_middleware``); weak, so an app nobody holds is forgotten
_hosted: weakref.WeakSet[Lifespan] = weakref.WeakSet()


def host(lifespan: Lifespan) -> None:
    """Record that ``lifespan``'s app is served by a WSGI server in this process."""
    _hosted.add(lifespan)


def hosted() -> list[Lifespan]:
    """The lifespans ``host()`` recorded that are still alive."""
    return list(_hosted)
