"""Logging setup for the CLI: text or JSON lines, written by a thread behind a bounded queue.

``setup(fmt, level)`` installs one root ``BoundedQueueHandler``: the hub only copies each
record into a bounded queue (full: the record is dropped and counted, ``dropped_records()``)
and a ring buffer (``recent(n)``, for debug exports); an OS thread formats and writes, so a
slow stderr never stalls the hub. The library itself never calls ``setup()``; unconfigured,
a record costs one level check.
"""

from __future__ import annotations

import _queue
import atexit
import json
import logging
import os
import re
import sys
import time
from collections import deque
from typing import Any, TextIO

from gevent import monkey

__all__ = [
    "ACCESS_LOGGER", "FORMATS", "LEVELS", "BoundedQueueHandler", "JSONFormatter",
    "TextFormatter", "dropped_records", "recent", "setup", "shutdown",
]  # fmt: skip

#: the logger of the one-line-per-connection open/close records
ACCESS_LOGGER = "wsflask.access"
FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: attributes every LogRecord has; anything else came in through ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields passed with ``extra=`` on ``record``, in insertion order."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``2025-01-01 12:00:00,123 INFO wsflask.access: open id=1f peer=127.0.0.1:5151 ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return text
        head, sep, tail = text.partition("\n")  # keep tracebacks after the fields
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return f"{head} {pairs}{sep}{tail}"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``,
    the ``extra=`` fields, and ``exc`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(extra_fields(record))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted before the record crossed the log queue
            body["exc"] = record.exc_text
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return json.dumps(body, default=str, separators=(",", ":"))


#: records kept for ``recent()`` (the debug export)
RING_SIZE = 1000
#: records waiting for the writer thread by default; more are dropped and counted
QUEUE_SIZE = 10_000

_ring: deque[logging.LogRecord] = deque(maxlen=RING_SIZE)
_dropped = [0]
_STOP = object()


def dropped_records() -> int:
    """Records dropped because the log queue was full (``/metrics``)."""
    return _dropped[0]


def recent(n: int = RING_SIZE) -> list[logging.LogRecord]:
    """The last ``n`` records that went through ``BoundedQueueHandler``, oldest first."""
    if n <= 0:
        return []
    items = list(_ring)
    return items[-n:]


class BoundedQueueHandler(logging.Handler):
    """Queue records for an OS writer thread; never blocks the caller.

    Args:
        handlers: what the writer thread passes each record to (their own levels apply).
        size: records waiting at most; past it a record is dropped and counted.

    The thread is a real OS thread even under gevent's monkey-patching (the original
    ``_thread``), so a handler blocked on a full pipe holds up only itself. Call ``close()``
    to drain (bounded wait) and stop it.
    """

    def __init__(self, handlers: list[logging.Handler], size: int = QUEUE_SIZE) -> None:
        super().__init__()
        self.targets = handlers
        self.size = size
        self._queue: Any = None
        self._spawn()

    def _spawn(self) -> None:
        """A fresh queue and writer thread (at start, and in a forked child: threads do not
        survive ``fork()``, so a pre-forked worker would otherwise queue and never write)."""
        self._queue = _queue.SimpleQueue()  # C-level, not replaced by gevent's patching
        self._done = monkey.get_original("_thread", "allocate_lock")()
        self._done.acquire()
        monkey.get_original("_thread", "start_new_thread")(self._run, (self._queue,))

    def emit(self, record: logging.LogRecord) -> None:
        """Copy ``record`` (message merged, traceback formatted) into the ring and the queue."""
        try:
            prepared = self._prepare(record)
        except Exception:
            self.handleError(record)
            return
        _ring.append(prepared)
        if self._queue.qsize() >= self.size:
            _dropped[0] += 1
            return
        self._queue.put_nowait(prepared)

    def _prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # a plain attribute copy: makeLogRecord() would run LogRecord.__init__ again (thread,
        # process and time look-ups) in the hub, for every record
        copy = logging.LogRecord.__new__(logging.LogRecord)
        copy.__dict__.update(record.__dict__)
        copy.msg = record.getMessage()
        copy.args = None
        if record.exc_info:
            copy.exc_text = logging.Formatter().formatException(record.exc_info)
            copy.exc_info = None
        return copy

    def _run(self, queue: Any) -> None:
        """The writer thread: hand each record to the targets until the stop marker."""
        try:
            while (record := queue.get()) is not _STOP:
                for target in self.targets:
                    if record.levelno >= target.level:
                        try:
                            target.handle(record)
                        except Exception:  # one broken target must not end the writer
                            target.handleError(record)
        finally:
            self._done.release()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most ``timeout`` s), stop the thread; idempotent."""
        if self._queue is not None:
            self._queue.put_nowait(_STOP)
            self._queue = None
            self._done.acquire(True, timeout)
        super().close()


#: (logger, handler) pairs installed by ``setup()`` and ``attach()``
_installed: list[tuple[logging.Logger, BoundedQueueHandler]] = []


def shutdown() -> None:
    """Drain and remove the handlers ``setup()`` and ``attach()`` installed (atexit does it
    too)."""
    while _installed:
        owner, handler = _installed.pop()
        owner.removeHandler(handler)
        handler.close()


atexit.register(shutdown)


def _after_fork_in_child() -> None:
    for _owner, handler in _installed:
        handler._spawn()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def setup(
    fmt: str = "text",
    level: str | int = "INFO",
    *,
    stream: TextIO | None = None,
    queue_size: int = QUEUE_SIZE,
) -> BoundedQueueHandler:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as ``fmt``.

    Records cross a bounded queue (``queue_size``) to a writer thread. Replaces the root
    logger's handlers, so calling it twice does not duplicate lines. Returns the handler.

    Raises:
        ValueError: ``fmt`` is not "text" or "json", or ``level`` is not a level name.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is invalid: allowed {' or '.join(FORMATS)}")
    if isinstance(level, str):
        if level.upper() not in LEVELS:
            raise ValueError(f"log level {level!r} is invalid: allowed {', '.join(LEVELS)}")
        level = level.upper()
    writer = logging.StreamHandler(stream if stream is not None else sys.stderr)
    writer.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    shutdown()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = BoundedQueueHandler([writer], queue_size)
    _installed.append((root, handler))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def attach(owner: logging.Logger, *, stream: TextIO | None = None) -> BoundedQueueHandler:
    """Add a text ``BoundedQueueHandler`` to ``owner`` only (not the root), for a server that
    must show its lines while the application left logging unconfigured (``App.run``): the
    hub never formats or writes. ``shutdown()`` removes it."""
    writer = logging.StreamHandler(stream if stream is not None else sys.stderr)
    writer.setFormatter(TextFormatter())
    handler = BoundedQueueHandler([writer])
    _installed.append((owner, handler))
    owner.addHandler(handler)
    return handler


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


#: a value holding any of these is quoted, so ``key=value`` pairs stay splittable
_NEEDS_QUOTES = re.compile(r'[\s"=]').search


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or _NEEDS_QUOTES(text) else text
