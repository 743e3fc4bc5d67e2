"""Group calls: one call to every local member of a room, one reply each, keyed by connection id.

``call_group(members, event, data, timeout)`` sends ``ws.call_async`` to each member at once and
waits under one deadline: a member that answers is in ``replies``, one that answers with an
error, cannot be called or disconnects (at once, not at the deadline) is in ``failed``, the
rest in ``timed_out``. Local node only: members on other nodes are not called.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent

from .calls import CallError
from .errors import ConnectionClosed, WsflaskError

if TYPE_CHECKING:
    from gevent.event import AsyncResult

    from .websocket import WebSocket

__all__ = ["GroupResult", "call_group"]


@dataclass(slots=True)
class GroupResult:
    """What a group call got back, by connection id.

    Attributes:
        replies: id -> the ``ack`` data.
        failed: id -> why (``"disconnected"``, ``"CallError: <type>: <message>"``, or the
            refusal, e.g. ``"TooManyPendingCalls"``).
        timed_out: ids that did not answer before the deadline.
    """

    replies: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    timed_out: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every member answered with an ``ack``."""
        return not self.failed and not self.timed_out


def call_group(members: Iterable[WebSocket], event: str, data: Any, timeout: float) -> GroupResult:
    """Call ``event`` on every member; return once all settled or ``timeout`` passed."""
    result = GroupResult()
    pending: dict[str, AsyncResult] = {}
    for ws in members:
        try:
            pending[ws.id] = ws.call_async(event, data, timeout=timeout)
        except ConnectionClosed:
            result.failed[ws.id] = "disconnected"
        except WsflaskError as exc:
            result.failed[ws.id] = type(exc).__name__
    gevent.wait(list(pending.values()), timeout=timeout)  # wakes when all settled
    for ws_id, answer in pending.items():
        if not answer.ready() or isinstance(answer.exception, TimeoutError):
            result.timed_out.append(ws_id)  # the call's own timer may have fired first
        elif answer.successful():
            result.replies[ws_id] = answer.value
        else:
            result.failed[ws_id] = _why(answer.exception)
    return result


def _why(exc: BaseException | None) -> str:
    if isinstance(exc, ConnectionClosed):
        return "disconnected"
    if isinstance(exc, CallError):
        return f"CallError: {exc.type}: {exc.message}"
    return type(exc).__name__
