"""Pre-forked workers: ``wsflask run module:app --workers N`` on one port.

What it does: ``run_workers(app, n)`` binds the port in the parent, one SO_REUSEPORT socket
per worker (the kernel spreads new connections over them; one shared socket where
SO_REUSEPORT is missing), forks ``n`` children that inherit their socket and
serve the app with its full server (each child joins the backplane with its own node id, so
rooms span the workers), then supervises them:

* a worker that dies is restarted after a backoff (0.1 s doubling to 10 s; reset once a
  worker has lived 30 s), so a crash loop does not spin;
* SIGTERM or SIGINT: the parent closes its copies of the listeners, forwards SIGTERM (each
  worker drains: 1001 to its clients, ARCHITECTURE.md §4), waits ``shutdown_grace`` plus a
  margin, SIGKILLs what is left, and returns 0 only when every worker exited 0;
* ``check_workers()`` refuses ``n > 1`` without a cross-process backplane: each worker would
  hold its own rooms, and a message sent in a room would reach only the members connected
  to the same worker.

The parent stays plain Python: it uses the original (unpatched) ``fork``, ``waitpid``,
``sleep`` and ``signal``, runs no event loop, and never builds a server, so no hub, socket or
Redis connection is shared across ``fork``. Children call ``gevent.reinit()``.

What it does not do: no hot reload, no dynamic worker count, no Windows (no ``fork``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .app import App

__all__ = ["bind", "bind_group", "check_workers", "run_workers"]

logger = logging.getLogger("wsflask.workers")

RESTART_MIN = 0.1
RESTART_MAX = 10.0
#: A worker that lived this long resets its restart backoff.
HEALTHY_AFTER = 30.0
#: Seconds added to ``shutdown_grace`` before the parent SIGKILLs a draining worker.
KILL_MARGIN = 3.0
POLL = 0.05
BACKLOG = 2048
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _original(module: str, name: str) -> Any:
    """The unpatched ``module.name`` (the CLI monkey-patches before importing the app)."""
    from gevent import monkey

    return monkey.get_original(module, name)


def check_workers(app: App, workers: int) -> None:
    """Refuse ``workers`` > 1 without a backplane that crosses processes.

    Raises:
        ConfigError: ``workers`` < 1, or > 1 with no ``backplane`` (or a ``memory://`` one).
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers} is invalid: expected 1 or more")
    url = app.config.backplane
    if workers > 1 and (not url or url.startswith("memory://")):
        raise ConfigError(
            f"--workers {workers} needs a backplane: without one each worker keeps its own "
            "rooms, so rooms would split (a message sent in a room would reach only the "
            "members on the same worker). Set WSFLASK_BACKPLANE=redis://127.0.0.1:6379/0 "
            "(pip install wsflask[redis]) or run one worker."
        )


def bind(
    host: str, port: int, backlog: int = BACKLOG, *, reuse_port: bool = False
) -> socket.socket:
    """A listening TCP socket on ``(host, port)`` (``port`` 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_group(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per worker on the same port, with SO_REUSEPORT where it exists.

    With SO_REUSEPORT the kernel spreads new connections over the sockets by a hash of the
    client's address, so every worker gets its share; one shared socket would hand most of
    them to whichever worker happens to wake first. The parent keeps every socket, so a
    restarted worker takes over its predecessor's socket and the connections queued on it.
    Without SO_REUSEPORT every worker shares one socket.
    """
    if count == 1 or not hasattr(socket, "SO_REUSEPORT"):
        return [bind(host, port)] * count
    first = bind(host, port, reuse_port=True)
    sockets = [first]
    try:
        actual_port = first.getsockname()[1]
        sockets += [bind(host, actual_port, reuse_port=True) for _ in range(count - 1)]
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def run_workers(
    app: App,
    workers: int,
    host: str | None = None,
    port: int | None = None,
    *,
    on_listen: Callable[[str, int], None] | None = None,
) -> int:
    """Serve ``app`` with ``workers`` pre-forked processes until SIGTERM/SIGINT; exit code.

    Args:
        app: the application (not served yet in this process).
        workers: how many processes (``check_workers`` rules apply).
        host, port: default ``app.config.host`` / ``app.config.port``.
        on_listen: called with the bound address before the first fork (default: a log line).

    Raises:
        ConfigError: see ``check_workers``. OSError: the address cannot be bound.
    """
    check_workers(app, workers)
    listeners = bind_group(
        host or app.config.host, app.config.port if port is None else port, workers
    )
    bound_host, bound_port = listeners[0].getsockname()[:2]
    if on_listen is not None:
        on_listen(bound_host, bound_port)
    logger.info(
        "serving on http://%s:%s/ with %d workers (SIGTERM to drain)",
        bound_host,
        bound_port,
        workers,
    )
    return _Supervisor(app, workers, listeners).run()


class _Supervisor:
    """The parent: forks, restarts and drains the workers."""

    def __init__(self, app: App, workers: int, listeners: list[socket.socket]) -> None:
        self.app = app
        #: worker i serves listeners[i] (the same socket for all without SO_REUSEPORT)
        self.listeners: list[socket.socket] = listeners
        self.slots: list[dict[str, Any]] = [
            {"pid": None, "started": 0.0, "failures": 0, "due": 0.0} for _ in range(workers)
        ]
        self.stopping = False
        self.statuses: list[int] = []
        self._monotonic: Callable[[], float] = _original("time", "monotonic")
        self._sleep: Callable[[float], None] = _original("time", "sleep")
        self._waitpid: Callable[[int, int], tuple[int, int]] = _original("os", "waitpid")

    def run(self) -> int:
        set_signal = _original("signal", "signal")
        previous = {
            sig: set_signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            while not self.stopping:
                self._spawn_due()
                self._reap()
                self._sleep(POLL)
            return self._drain()
        finally:
            for sig, handler in previous.items():
                set_signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _spawn_due(self) -> None:
        now = self._monotonic()
        for index, slot in enumerate(self.slots):
            if slot["pid"] is None and now >= slot["due"] and not self.stopping:
                slot["pid"], slot["started"] = self._fork(index), now

    def _fork(self, index: int) -> int:
        from gevent.os import fork_gevent

        # SIGTERM/SIGINT stay blocked across fork: a signal sent to a child before it set its
        # own handlers stays pending for them (never the copy of the parent's handler)
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid: int = fork_gevent()  # the original fork; gevent.reinit() in the child
            if pid == 0:
                _worker(self.app, self.listeners[index], index)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        logger.info("worker %d started (pid %d)", index, pid)
        return pid

    def _reap(self) -> None:
        for index, slot in enumerate(self.slots):
            status = self._poll(slot)
            if status is None:
                continue
            if self.stopping:
                continue
            lived = self._monotonic() - slot["started"]
            slot["failures"] = 1 if lived >= HEALTHY_AFTER else slot["failures"] + 1
            delay = min(RESTART_MAX, RESTART_MIN * 2 ** (slot["failures"] - 1))
            slot["due"] = self._monotonic() + delay
            logger.error(
                "worker %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                index,
                slot["last_pid"],
                _describe(status),
                lived,
                delay,
            )

    def _poll(self, slot: dict[str, Any]) -> int | None:
        """Reap ``slot``'s worker if it exited; return its wait status, else None."""
        pid = slot["pid"]
        if pid is None:
            return None
        try:
            done, status = self._waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: status unknown, count it as a failure
            done, status = pid, 1 << 8
        if done == 0:
            return None
        slot["pid"], slot["last_pid"] = None, pid
        self.statuses.append(status)
        return status

    def _drain(self) -> int:
        for sock in set(self.listeners):
            sock.close()  # the workers hold their own copies until they stop
        self.listeners = []
        self.statuses = []
        live = [slot for slot in self.slots if slot["pid"] is not None]
        logger.info("draining %d workers", len(live))
        for slot in live:
            _kill(slot["pid"], signal.SIGTERM)
        deadline = self._monotonic() + self.app.config.shutdown_grace + KILL_MARGIN
        while any(slot["pid"] is not None for slot in live):
            if self._monotonic() >= deadline:
                for slot in live:
                    if slot["pid"] is not None:
                        logger.error("worker pid %d did not drain in time: SIGKILL", slot["pid"])
                        _kill(slot["pid"], signal.SIGKILL)
                deadline = float("inf")
            for slot in live:
                self._poll(slot)
            self._sleep(POLL)
        clean = all(os.waitstatus_to_exitcode(status) == 0 for status in self.statuses)
        logger.info("all workers stopped (%s)", "clean" if clean else "with errors")
        return 0 if clean else 1


def _worker(app: App, listener: socket.socket, index: int) -> None:
    """A child: serve on the inherited listener until SIGTERM, then ``os._exit``."""
    code = 1
    early: list[int] = []
    try:
        for sig in _STOP_SIGNALS:  # until the server's own handlers are in place
            signal.signal(sig, lambda signum, frame: early.append(signum))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        os.environ["WSFLASK_WORKER"] = str(index)
        import gevent
        import gevent.socket

        sock = gevent.socket.socket(fileno=os.dup(listener.fileno()))
        listener.close()
        server = app.make_server(listener=sock)
        server.start()
        server.install_signal_handlers()
        if early:  # asked to stop while starting: drain at once
            gevent.spawn(server.stop)
        server.serve_forever()
        code = 0
    except BaseException:
        logger.exception("worker %d failed", index)
    finally:
        logging.shutdown()
        os._exit(code)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"signal {-code}" if code < 0 else f"code {code}"
