"""Pre-forked workers: ``wsflask run module:app --workers N`` serves one port from N processes.

The parent validates what it can (TLS files, the bind), binds one SO_REUSEPORT socket per
worker, forks, restarts crashed workers with a backoff, gives up (exit 1) when workers keep
failing at startup, and drains on SIGTERM/SIGINT. It runs no event loop and builds no server.
SIGHUP to the parent is forwarded to every worker, which reloads its settings
(``reload.py``: open connections included) and logs the outcome under ``worker N (pid P)``.
Any worker answers ``/metrics`` for all of them (``worker_metrics.py``).
Not done: a dynamic worker count, Windows (no ``fork``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .worker_metrics import WorkerMetrics

if TYPE_CHECKING:
    from .app import App
    from .config import Config

#: ``reload_settings``: reads the settings file (and environment, flags) again on SIGHUP
Loader = Callable[[], "Config"]

__all__ = ["bind", "bind_group", "check_workers", "run_workers"]

logger = logging.getLogger("wsflask.workers")

RESTART_MIN = 0.1
RESTART_MAX = 10.0
#: A worker that lived this long resets its restart backoff.
HEALTHY_AFTER = 30.0
#: A slot whose worker exits before it is serving this many times in a row: give up.
STARTUP_FAILURES = 5
#: Seconds added to ``shutdown_grace`` before the parent SIGKILLs a draining worker.
KILL_MARGIN = 3.0
POLL = 0.05
BACKLOG = 2048
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
#: blocked across fork: the stop signals, and SIGHUP (the supervisor forwards it)
_FORK_BLOCKED = {*_STOP_SIGNALS, signal.SIGHUP}
_READY = b"\x01"


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
    reload_settings: Loader | None = None,
) -> int:
    """Serve ``app`` with ``workers`` pre-forked processes until SIGTERM/SIGINT; exit code.

    Returns 0 when every worker drained cleanly, 1 when a worker was down or failed, or when
    the supervisor gave up because workers kept failing at startup.

    Args:
        app: the application (not served yet in this process).
        workers: how many processes (``check_workers`` rules apply).
        host, port: default ``app.config.host`` / ``app.config.port``.
        on_listen: called with the bound address before the first fork (default: a log line).
        reload_settings: on SIGHUP each worker reloads with it (``reload.reload``); None:
            SIGHUP only reloads the TLS certificate.

    Raises:
        ConfigError: see ``check_workers``; the TLS files cannot be loaded.
        OSError: the address cannot be bound.
    """
    check_workers(app, workers)
    check_startup(app)
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
    return _Supervisor(app, workers, listeners, reload_settings).run()


def check_startup(app: App) -> None:
    """Fail in the parent, before any fork, on what would make every worker fail at startup.

    Raises:
        ConfigError: ``certfile``/``keyfile`` cannot be loaded (missing, or not a pair).
    """
    from .server import _make_ssl_context  # the context each worker's Server builds

    _make_ssl_context(app.config)


@dataclass
class _Slot:
    """One worker position: its current process and its failure history."""

    pid: int | None = None
    last_pid: int = 0
    started: float = 0.0
    due: float = 0.0
    #: consecutive exits (restart backoff); consecutive exits before serving (giving up)
    failures: int = 0
    startup_failures: int = 0
    #: read end of the pipe the worker writes one byte to once it is serving
    ready_fd: int | None = None
    ready: bool = False


class _Supervisor:
    """The parent: forks, restarts and drains the workers.

    * A worker that dies is restarted after a backoff (``RESTART_MIN`` doubling to
      ``RESTART_MAX``; reset once a worker lived ``HEALTHY_AFTER`` s).
    * A worker that exits before it wrote its readiness byte failed at startup; when every
      worker's first start failed, or one failed ``STARTUP_FAILURES`` times in a row, the
      supervisor gives up: it drains the rest and returns 1.
    * SIGTERM/SIGINT: close the parent's listeners, SIGTERM the workers (each drains: 1001
      to its clients), SIGKILL what is left after ``shutdown_grace`` + ``KILL_MARGIN``.
      Returns 0 only if no worker was down and every worker exited 0.

    It stays plain Python: the original (unpatched) ``fork``, ``waitpid``, ``sleep`` and
    ``signal``, no event loop, no server, so nothing of gevent or Redis crosses a fork.
    """

    def __init__(
        self,
        app: App,
        workers: int,
        listeners: list[socket.socket],
        reload_settings: Loader | None = None,
    ) -> None:
        self.app = app
        self.reload_settings = reload_settings
        #: SIGHUPs forwarded and not yet logged (the handler only counts)
        self.hangups = 0
        #: worker i serves listeners[i] (the same socket for all without SO_REUSEPORT)
        self.listeners: list[socket.socket] = listeners
        self.slots = [_Slot() for _ in range(workers)]
        self.stopping = False
        #: why the supervisor gave up (workers kept failing at startup), else None
        self.gave_up: str | None = None
        self.ever_ready = False
        self._monotonic: Callable[[], float] = _original("time", "monotonic")
        self._sleep: Callable[[float], None] = _original("time", "sleep")
        self._waitpid: Callable[[int, int], tuple[int, int]] = _original("os", "waitpid")
        #: the workers' metrics sockets (0700; removed when run() returns)
        self.metrics_dir = tempfile.mkdtemp(prefix="wsflask-metrics-")

    def run(self) -> int:
        set_signal = _original("signal", "signal")
        previous = {
            sig: set_signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        previous[signal.SIGHUP] = set_signal(signal.SIGHUP, self._forward_hangup)
        try:
            while not self.stopping and self.gave_up is None:
                self._spawn_due()
                self._reap()
                self._log_hangups()
                self._sleep(POLL)
            return self._drain()
        finally:
            for sig, handler in previous.items():
                set_signal(sig, handler)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _forward_hangup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP (reload the settings and certificate) goes to every worker; the supervisor
        stays. Logged by the loop, not here (a handler may interrupt a log call)."""
        for slot in self.slots:
            if slot.pid is not None:
                _kill(slot.pid, signal.SIGHUP)
        self.hangups += 1

    def _log_hangups(self) -> None:
        """After a SIGHUP: say which workers were asked, and reload here too, so that a
        worker restarted later starts with the new settings (and the drain deadline uses
        the new ``shutdown_grace``). Each worker logs its own reload outcome."""
        if not self.hangups:
            return
        self.hangups = 0
        pids = [str(slot.pid) for slot in self.slots if slot.pid is not None]
        logger.info("SIGHUP forwarded to workers (pids %s): each reloads", ", ".join(pids))
        if self.reload_settings is not None:
            from .reload import reload

            reload(self.app, self.reload_settings, "supervisor")  # no server here: config only

    def _spawn_due(self) -> None:
        now = self._monotonic()
        for index, slot in enumerate(self.slots):
            if slot.pid is None and now >= slot.due and not self.stopping:
                self._fork(index, slot)
                slot.started = now

    def _fork(self, index: int, slot: _Slot) -> None:
        from gevent.os import fork_gevent

        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        # SIGTERM/SIGINT/SIGHUP stay blocked across fork: a signal sent to a child before it
        # set its own handlers stays pending for them (never the copy of the parent's handler)
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_BLOCKED)
        try:
            pid: int = fork_gevent()  # the original fork; gevent.reinit() in the child
            if pid == 0:
                os.close(read_end)
                _close_inherited(self._descriptors(), keep=self.listeners[index])
                shared = (self.metrics_dir, len(self.slots))
                listener, load = self.listeners[index], self.reload_settings
                _worker(self.app, listener, index, write_end, shared, load)  # no return
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORK_BLOCKED)
        os.close(write_end)
        slot.pid, slot.ready_fd, slot.ready = pid, read_end, False
        logger.info("worker %d started (pid %d)", index, pid)

    def _descriptors(self) -> list[int]:
        """The descriptors a new child inherits from this process and must close."""
        fds = {sock.fileno() for sock in self.listeners}
        fds.update(slot.ready_fd for slot in self.slots if slot.ready_fd is not None)
        return sorted(fds)

    def _reap(self) -> None:
        for index, slot in enumerate(self.slots):
            self._check_ready(slot)
            status = self._poll(slot)
            if status is None or self.stopping:
                continue
            lived = self._monotonic() - slot.started
            slot.failures = 1 if lived >= HEALTHY_AFTER else slot.failures + 1
            delay = min(RESTART_MAX, RESTART_MIN * 2 ** (slot.failures - 1))
            slot.due = self._monotonic() + delay
            if not slot.ready:
                slot.startup_failures += 1
                self._check_give_up(index, slot)
            logger.error(
                "worker %d (pid %d) exited with %s after %.1f s%s; %s",
                index,
                slot.last_pid,
                _describe(status),
                lived,
                "" if slot.ready else " before serving",
                f"restarting in {delay:.1f} s" if self.gave_up is None else "not restarted",
            )
        if self.gave_up is not None:
            logger.error("%s: giving up (see the worker errors above)", self.gave_up)

    def _check_give_up(self, index: int, slot: _Slot) -> None:
        """Stop restarting when workers cannot start: the cause will not go away by itself."""
        if slot.startup_failures >= STARTUP_FAILURES:
            self.gave_up = (
                f"worker {index} failed at startup {slot.startup_failures} times in a row"
            )
        elif not self.ever_ready and all(s.startup_failures for s in self.slots):
            self.gave_up = "every worker failed at startup"

    def _check_ready(self, slot: _Slot) -> None:
        """Read the worker's readiness byte, if any; close the pipe once it is known."""
        if slot.ready_fd is None:
            return
        try:
            data = os.read(slot.ready_fd, 1)
        except BlockingIOError:  # still starting
            return
        if data == _READY:
            slot.ready, slot.startup_failures = True, 0
            self.ever_ready = True
        os.close(slot.ready_fd)  # the byte, or EOF: the worker exited before serving
        slot.ready_fd = None

    def _poll(self, slot: _Slot) -> int | None:
        """Reap ``slot``'s worker if it exited; return its wait status, else None."""
        if slot.pid is None:
            return None
        try:
            done, status = self._waitpid(slot.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: status unknown, count it as a failure
            done, status = slot.pid, 1 << 8
        if done == 0:
            return None
        self._check_ready(slot)  # it may have become ready just before it exited
        if slot.ready_fd is not None:
            os.close(slot.ready_fd)
            slot.ready_fd = None
        slot.last_pid, slot.pid = done, None
        return status

    def _drain(self) -> int:
        for sock in set(self.listeners):
            sock.close()  # the workers hold their own copies until they stop
        self.listeners = []
        down = [f"worker {i} was down" for i, s in enumerate(self.slots) if s.pid is None]
        problems = [self.gave_up] if self.gave_up else down
        live = [(i, slot) for i, slot in enumerate(self.slots) if slot.pid is not None]
        logger.info("draining %d workers", len(live))
        for _, slot in live:
            _kill(slot.pid, signal.SIGTERM)
        problems += self._await_exits(live)
        if problems:
            logger.error("all workers stopped (with errors: %s)", "; ".join(problems))
            return 1
        logger.info("all workers stopped (clean)")
        return 0

    def _await_exits(self, live: list[tuple[int, _Slot]]) -> list[str]:
        """Wait for the drained workers (SIGKILL after the grace); their failures."""
        problems = []
        deadline = self._monotonic() + self.app.config.shutdown_grace + KILL_MARGIN
        while any(slot.pid is not None for _, slot in live):
            if self._monotonic() >= deadline:
                for _, slot in live:
                    if slot.pid is not None:
                        logger.error("worker pid %d did not drain in time: SIGKILL", slot.pid)
                        _kill(slot.pid, signal.SIGKILL)
                deadline = float("inf")
            for index, slot in live:
                status = self._poll(slot)
                if status is not None and os.waitstatus_to_exitcode(status) != 0:
                    problems.append(f"worker {index} exited with {_describe(status)}")
            self._sleep(POLL)
        return problems


def _close_inherited(fds: list[int], keep: socket.socket) -> None:
    """In a new child: close the other workers' listeners and the parent's pipes.

    A listener left open in a worker that never accepts on it keeps it listening after its
    own worker closed it in a drain: the kernel would queue connections there unanswered.
    """
    for fd in fds:
        if fd != keep.fileno():
            with contextlib.suppress(OSError):
                os.close(fd)


def _worker(
    app: App,
    listener: socket.socket,
    index: int,
    ready_fd: int,
    shared: tuple[str, int],
    reload_settings: Loader | None = None,
) -> None:
    """A child: serve on the inherited listener until SIGTERM, then ``os._exit``.

    ``shared``: the metrics directory and the worker count (``WorkerMetrics``).
    ``reload_settings``: SIGHUP reloads the settings with it (``reload.install``).
    """
    code = 1
    early: list[int] = []
    try:
        for sig in _STOP_SIGNALS:  # until the server's own handlers are in place
            signal.signal(sig, lambda signum, frame: early.append(signum))
        # SIGHUP reloads the certificate once the server handles it (with certfile); until
        # then, or without TLS, it is ignored rather than ending the worker
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORK_BLOCKED)
        os.environ["WSFLASK_WORKER"] = str(index)
        import gevent
        import gevent.socket

        sock = gevent.socket.socket(fileno=os.dup(listener.fileno()))
        listener.close()
        server = app.make_server(listener=sock)
        metrics = WorkerMetrics(*shared, index=index, render=app.metrics.render)
        metrics.start()  # this worker's own text, for its siblings
        app.pages.render_metrics = metrics.render_all  # GET /metrics: every worker's
        if reload_settings is not None:  # before the first connection is served
            from . import reload

            reload.install(app, reload_settings, f"worker {index} (pid {os.getpid()})")
        server.start()
        server.install_signal_handlers()
        with contextlib.suppress(OSError):  # the parent is gone: it will not ask
            os.write(ready_fd, _READY)
        os.close(ready_fd)
        if early:  # asked to stop while starting: drain at once
            gevent.spawn(server.stop)
        server.serve_forever()
        metrics.stop()
        code = 0
    except BaseException:
        logger.exception("worker %d failed", index)
    finally:
        logging.shutdown()
        os._exit(code)


def _kill(pid: int | None, sig: int) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"signal {-code}" if code < 0 else f"code {code}"
