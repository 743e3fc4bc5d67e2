"""Calls with acks: an event sent with an id, answered by the peer's ``ack`` or ``error``.

``Calls`` is one connection's call table, made on first use (``ws.call``/``ws.on_call``): it
numbers our calls ``"s1"``, ``"s2"``..., bounds how many wait (``max_pending_calls``), times
them out, resolves replies by id, fails the rest at once on close, and answers the peer's
calls with registered handlers. No socket I/O (the ``WebSocket`` sends), no route dispatch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gevent import get_hub
from gevent.event import AsyncResult

from .envelopes import decode, encode, error
from .errors import ConnectionClosed, WsflaskError

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["REPLY_EVENTS", "CallError", "Calls", "TooManyPendingCalls", "is_call_id"]

#: the events that answer a call; they are never dispatched to handlers as requests
REPLY_EVENTS = ("ack", "error")
#: the first character of the ids of server-to-client calls (``"s1"``, ``"s2"``...)
CALL_ID_PREFIX = "s"
#: the handler of a peer's call: ``fn(data) -> ack data``
CallHandler = Callable[[Any], Any]


class CallError(WsflaskError):
    """The peer answered a call with an ``error`` envelope ``{"type", "message"}``."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


class TooManyPendingCalls(WsflaskError, RuntimeError):
    """``max_pending_calls`` calls already wait for a reply on this connection (counted as
    the drop ``pending_calls``)."""


def is_call_id(msg_id: Any) -> bool:
    """True for the id of a server-to-client call (a str starting with ``"s"``)."""
    return isinstance(msg_id, str) and msg_id.startswith(CALL_ID_PREFIX)


class Calls:
    """The pending calls of one connection, and the handlers that answer the peer's calls.

    Args:
        limit: the most calls waiting for a reply at once (``Config.max_pending_calls``).
        metrics: where refusals over ``limit`` are counted (``dropped("pending_calls")``).
    """

    __slots__ = ("_count", "_limit", "_metrics", "handlers", "pending")

    def __init__(self, limit: int, metrics: Metrics | None = None) -> None:
        self._count = 0
        self._limit = limit
        self._metrics = metrics
        #: call id -> (the caller's result, its timeout timer)
        self.pending: dict[str, tuple[AsyncResult, Any]] = {}
        #: event -> handler for the peer's calls; None: the peer's calls are plain messages
        self.handlers: dict[str, CallHandler] | None = None

    def reconfigure(self, limit: int) -> None:
        """A reloaded ``max_pending_calls``: the next ``open()`` is judged by it; calls
        already pending stay (``wsflask.reload``)."""
        self._limit = limit

    def open(self, timeout: float) -> tuple[str, AsyncResult]:
        """A new call id and the result its reply sets; it fails with ``TimeoutError`` after
        ``timeout`` seconds.

        Raises:
            TooManyPendingCalls: ``limit`` calls are pending already (counted).
        """
        if len(self.pending) >= self._limit:
            if self._metrics is not None:
                self._metrics.dropped("pending_calls")
            raise TooManyPendingCalls(f"{self._limit} calls already wait for a reply")
        self._count += 1
        msg_id = f"{CALL_ID_PREFIX}{self._count}"
        result = AsyncResult()
        timer = get_hub().loop.timer(timeout)
        timer.start(self._expire, msg_id, timeout)
        self.pending[msg_id] = (result, timer)
        return msg_id, result

    def forget(self, msg_id: str) -> None:
        """Drop call ``msg_id`` without resolving it (its envelope could not be sent)."""
        entry = self.pending.pop(msg_id, None)
        if entry is not None:
            _stop(entry[1])

    def _expire(self, msg_id: str, timeout: float) -> None:
        entry = self.pending.pop(msg_id, None)
        if entry is not None:
            _stop(entry[1])
            entry[0].set_exception(TimeoutError(f"no reply to call {msg_id} within {timeout} s"))

    def fail_all(self, exc: ConnectionClosed) -> None:
        """The connection closed: fail every pending call with ``exc`` now."""
        pending, self.pending = self.pending, {}
        for result, timer in pending.values():
            _stop(timer)
            result.set_exception(exc)

    def take(self, message: str) -> dict[str, Any] | None:
        """Consume ``message`` if it is a reply to a pending call (resolve it; returns an
        empty dict) or, with ``handlers``, a call of the peer (returns the envelope for
        ``answer()``). None: an ordinary message."""
        if not self.pending and self.handlers is None:
            return None  # a connection that called once pays nothing after its replies
        if '"id"' not in message:  # every envelope handled here carries an id "s..."
            return None
        envelope = decode(message)
        msg_id = None if envelope is None else envelope.get("id")
        if envelope is None or not isinstance(msg_id, str) or not is_call_id(msg_id):
            return None
        if envelope["event"] in REPLY_EVENTS:
            entry = self.pending.pop(msg_id, None)
            if entry is None:
                return None  # not ours (late, or the peer's own): an ordinary message
            _stop(entry[1])
            _settle(entry[0], envelope)
            return {}
        return envelope if self.handlers is not None else None

    def answer(self, envelope: dict[str, Any]) -> str:
        """The reply to the peer's call ``envelope``: its handler's result as an ``ack``, an
        ``error`` for an unknown event or a handler that raised."""
        event, msg_id = envelope["event"], envelope.get("id")
        handler = (self.handlers or {}).get(event)
        if handler is None:
            return error("UnknownEvent", f"unknown event {event[:64]!r}", msg_id)
        try:
            return encode("ack", handler(envelope.get("data")), msg_id)
        except Exception as exc:  # the caller sees which call failed, and why
            return error(type(exc).__name__, str(exc), msg_id)


def _settle(result: AsyncResult, envelope: dict[str, Any]) -> None:
    data = envelope.get("data")
    if envelope["event"] == "ack":
        result.set(data)
        return
    info = data if isinstance(data, dict) else {}
    result.set_exception(
        CallError(str(info.get("type", "Error"))[:64], str(info.get("message", ""))[:256])
    )


def _stop(timer: Any) -> None:
    timer.stop()
    timer.close()
