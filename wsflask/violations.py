"""What a peer did wrong, named from a fixed vocabulary and logged without flooding.

``classify(exc)`` reads a protocol-core error's ``code``, one of ``VIOLATION_TYPES`` (the
bounded label set of ``websocket_protocol_violations_total``); ``Reporter`` writes one record
per refused handshake or violation (at DEBUG also a hex dump of the offending frame's first
bytes, ``ProtocolError.frame``), and ONE escalation record when an address repeats itself
within a window (bounded LRU of addresses). No counting of its own beyond that (``Metrics``
counts), no blocking of addresses (admission control decides that).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .protocol.errors import FRAME_DUMP_BYTES, VIOLATION_CODES, ProtocolError
from .protocol.handshake import error_token as error_token

if TYPE_CHECKING:
    from .metrics import Metrics
    from .protocol import Closed

__all__ = [
    "VIOLATION_TYPES", "Reporter", "classify", "error_token", "refusal_level",
    "report_violation", "reporter",
]  # fmt: skip

logger = logging.getLogger("wsflask.violations")

#: Every ``type`` label ``websocket_protocol_violations_total`` can carry (bounded): the
#: core's ``ProtocolError.code`` vocabulary.
VIOLATION_TYPES: tuple[str, ...] = VIOLATION_CODES


def classify(exc: BaseException) -> str:
    """The ``VIOLATION_TYPES`` entry for a core error (``Closed.cause``): its ``code``;
    ``"other"`` for an error that is not a ``ProtocolError`` (a client-side handshake)."""
    return exc.code if isinstance(exc, ProtocolError) else "other"


def refusal_level(status: int) -> int:
    """The documented log level of a handshake refused with ``status``.

    5xx but 503: ERROR (our fault); 503 and 429 (load shedding) and 408 (a slow client):
    INFO, expected under load; every other 4xx (malformed, forbidden Origin, wrong
    version, too large): WARNING, a client doing something wrong.
    """
    if status in (408, 429, 503):
        return logging.INFO
    return logging.ERROR if status >= 500 else logging.WARNING


class Reporter:
    """Writes refusal and violation records; escalates repeat offenders once per window.

    Args:
        threshold: events from one address within ``window`` seconds that raise the one
            escalation record; later events from it in that window are logged at DEBUG.
        window: seconds an address's count lives.
        max_addresses: addresses remembered (least recently seen forgotten first).
        clock: a monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        threshold: int = 10,
        window: float = 60.0,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        #: ip -> [window start, events in the window]
        self._seen: OrderedDict[str, list[float]] = OrderedDict()

    def refusal(self, peer: tuple[str, int] | None, status: int, reason: str) -> None:
        """Log one refused handshake: ``peer``, ``status`` and ``reason`` as fields."""
        level = self.level(peer, refusal_level(status))
        if logger.isEnabledFor(level):
            fields = {"peer": _peer(peer), "status": status, "reason": reason}
            logger.log(level, "handshake refused with %d: %s", status, reason, extra=fields)

    def violation(
        self,
        peer: tuple[str, int] | None,
        conn_id: str,
        kind: str,
        code: int,
        cause: str,
        frame: bytes = b"",
    ) -> None:
        """Log one protocol violation: its type, close code and cause; at DEBUG, also the
        first bytes of the offending ``frame`` in hex (at most ``FRAME_DUMP_BYTES``)."""
        level = self.level(peer, logging.WARNING)
        if logger.isEnabledFor(level):
            fields = {"peer": _peer(peer), "id": conn_id, "type": kind, "close_code": code}
            logger.log(level, "protocol violation %s, closed with %d: %s", kind, code, cause,
                       extra=fields)  # fmt: skip
        if frame and logger.isEnabledFor(logging.DEBUG):  # the record above carries ``type``
            shown = frame[:FRAME_DUMP_BYTES]
            logger.debug("offending frame of %s, first %d bytes: %s", conn_id, len(shown),
                         shown.hex(" "), extra={"peer": _peer(peer), "id": conn_id,
                                                "frame": shown.hex()})  # fmt: skip

    def reset(self) -> None:
        """Forget every address."""
        self._seen.clear()

    def tracked(self) -> int:
        """Addresses remembered now (at most ``max_addresses``)."""
        return len(self._seen)

    def level(self, peer: tuple[str, int] | None, level: int) -> int:
        """Count one event from ``peer``; return ``level``, or DEBUG once its address
        reached the threshold in this window (the escalation record is written then)."""
        if peer is None:
            return level
        ip, now, seen = peer[0], self._clock(), self._seen
        entry = seen.get(ip)
        if entry is None or now - entry[0] >= self.window:
            entry = [now, 0.0]
            seen[ip] = entry
            if len(seen) > self.max_addresses:
                seen.popitem(last=False)
        seen.move_to_end(ip)
        entry[1] += 1
        if entry[1] == self.threshold:
            logger.warning(
                "%d refusals or violations from %s within %.0f s; further ones in this "
                "window are logged at DEBUG",
                self.threshold, ip, self.window, extra={"peer": ip},
            )  # fmt: skip
        return level if entry[1] < self.threshold else logging.DEBUG


def _peer(peer: tuple[str, int] | None) -> str:
    return f"{peer[0]}:{peer[1]}" if peer else "-"


#: The process's reporter (the server and the driver report to it).
reporter = Reporter()


def report_violation(
    peer: tuple[str, int] | None, conn_id: str, closed: Closed, metrics: Metrics | None
) -> None:
    """A connection ended with ``closed.cause`` (a core error): log it and count its type."""
    if closed.cause is None:
        return
    cause = closed.cause
    kind = classify(cause)
    if metrics is not None:
        metrics.violation(kind)
    frame = cause.frame if isinstance(cause, ProtocolError) else b""
    reporter.violation(peer, conn_id, kind, closed.code, str(cause), frame)
