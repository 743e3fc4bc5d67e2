"""Logging setup for the CLI: readable text by default, or one JSON object per line.

``setup(fmt, level)`` installs one root handler with ``TextFormatter`` or ``JSONFormatter``;
both render the fields a record carries in ``extra=`` (the access log's id, peer, route...).
The library itself never calls ``setup()`` and defines no log lines here: the server writes
the access lines to ``ACCESS_LOGGER``; unconfigured, they cost one level check.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["ACCESS_LOGGER", "FORMATS", "LEVELS", "JSONFormatter", "TextFormatter", "setup"]

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
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return json.dumps(body, default=str, separators=(",", ":"))


def setup(fmt: str = "text", level: str | int = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as ``fmt``.

    Replaces the root logger's handlers, so calling it twice does not duplicate lines.

    Raises:
        ValueError: ``fmt`` is not "text" or "json", or ``level`` is not a level name.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is invalid: allowed {' or '.join(FORMATS)}")
    if isinstance(level, str):
        if level.upper() not in LEVELS:
            raise ValueError(f"log level {level!r} is invalid: allowed {', '.join(LEVELS)}")
        level = level.upper()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text
