"""What a peer did wrong, named from a fixed vocabulary and logged without flooding.

``classify(exc)`` maps a protocol-core error to one of ``VIOLATION_TYPES`` (the bounded label
set of ``websocket_protocol_violations_total``); ``Reporter`` writes one record per refused
handshake or violation, and ONE escalation record when an address repeats itself within a
window (bounded LRU of addresses). No counting of its own beyond that (``Metrics`` counts),
no blocking of addresses (admission control decides that).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .protocol.errors import CompressionError, InvalidPayloadData, MessageTooBig

if TYPE_CHECKING:
    from .metrics import Metrics
    from .protocol import Closed

__all__ = [
    "VIOLATION_TYPES", "Reporter", "classify", "error_token", "refusal_level",
    "report_violation", "reporter",
]  # fmt: skip

logger = logging.getLogger("wsflask.violations")

#: Every ``type`` label ``websocket_protocol_violations_total`` can carry (bounded).
VIOLATION_TYPES: tuple[str, ...] = (
    "unmasked", "masked_server_frame", "reserved_opcode", "reserved_bits",
    "fragmented_control", "control_too_long", "bad_length", "too_big", "invalid_utf8",
    "invalid_close", "bad_continuation", "bad_compression", "other",
)  # fmt: skip

#: Message prefixes of the core's ``ProtocolError``s (frames.py, messages.py, close.py).
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("unmasked client frame", "unmasked"),
    ("masked server frame", "masked_server_frame"),
    ("reserved opcode", "reserved_opcode"),
    ("RSV", "reserved_bits"),
    ("fragmented control frame", "fragmented_control"),
    ("control frame payload over", "control_too_long"),
    ("non-minimal", "bad_length"),
    ("64-bit length", "bad_length"),
    ("new data frame inside", "bad_continuation"),
    ("continuation frame without", "bad_continuation"),
    ("close frame with", "invalid_close"),
    ("invalid close code", "invalid_close"),
    ("close reason", "invalid_close"),
)


def classify(exc: BaseException) -> str:
    """The ``VIOLATION_TYPES`` entry for a core error (``Closed.cause``); ``"other"`` if new."""
    text = str(exc)
    for prefix, kind in _PREFIXES:
        if text.startswith(prefix):
            return kind
    if isinstance(exc, MessageTooBig):
        return "too_big"
    if isinstance(exc, CompressionError):
        return "bad_compression"
    if isinstance(exc, InvalidPayloadData):
        return "invalid_utf8"
    return "other"


def error_token(reason: str) -> str:
    """``reason`` as an ``X-WebSocket-Error`` token: lower case, words joined by ``-``."""
    words = "".join(c if c.isascii() and c.isalnum() else " " for c in reason.lower()).split()
    return "-".join(words)[:64] or "refused"


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
        self, peer: tuple[str, int] | None, conn_id: str, kind: str, code: int, cause: str
    ) -> None:
        """Log one protocol violation: its type, close code and cause."""
        level = self.level(peer, logging.WARNING)
        if logger.isEnabledFor(level):
            fields = {"peer": _peer(peer), "id": conn_id, "type": kind, "close_code": code}
            logger.log(level, "protocol violation %s, closed with %d: %s", kind, code, cause,
                       extra=fields)  # fmt: skip

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
    kind = classify(closed.cause)
    if metrics is not None:
        metrics.violation(kind)
    reporter.violation(peer, conn_id, kind, closed.code, str(closed.cause))
