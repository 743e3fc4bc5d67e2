"""Group calls: one call to every local member of a room, one reply each, keyed by connection id.

``call_group(members, event, data, timeout)`` sends ``ws.call_async`` to each member at once and
waits under one deadline: a member that answers is in ``replies``, one that answers with an
error, cannot be called or disconnects (at once, not at the deadline) is in ``failed``, the
rest in ``timed_out``. Local node only: ``call_each`` (each member's outcome as it
settles) is what the cluster-wide version (``backplane/group.py``) builds on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent

from .calls import CallError
from .errors import ConnectionClosed, WsflaskError

if TYPE_CHECKING:
    from gevent.event import AsyncResult

    from .websocket import WebSocket

__all__ = ["FAILED", "REPLY", "TIMED_OUT", "GroupResult", "call_each", "call_group"]

#: the outcomes ``call_each`` reports: ``settle(id, outcome, value)``
REPLY, FAILED, TIMED_OUT = "reply", "failed", "timed_out"
Settle = Callable[[str, str, Any], None]


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


def call_each(
    members: Iterable[WebSocket], event: str, data: Any, timeout: float, settle: Settle
) -> list[str]:
    """Call ``event`` on every member without waiting; return the ids called.

    ``settle(id, outcome, value)`` runs once per id as its call settles (in the hub, so it
    must not block): ``REPLY`` with the ``ack`` data, ``FAILED`` with why (a disconnect at
    once), ``TIMED_OUT`` with None. A member that cannot be called settles at once.
    """
    called: list[str] = []
    for ws in members:
        called.append(ws.id)
        try:
            answer = ws.call_async(event, data, timeout=timeout)
        except ConnectionClosed:
            settle(ws.id, FAILED, "disconnected")
            continue
        except WsflaskError as exc:
            settle(ws.id, FAILED, type(exc).__name__)
            continue
        except ValueError:  # over this connection's max_message_size (counted there)
            settle(ws.id, FAILED, "TooBig")
            continue
        answer.rawlink(lambda done, ws_id=ws.id: settle(ws_id, *outcome(done)))
    return called


def outcome(answer: AsyncResult) -> tuple[str, Any]:
    """``(REPLY, data)``, ``(FAILED, why)`` or ``(TIMED_OUT, None)`` of a settled call."""
    if answer.successful():
        return REPLY, answer.value
    if isinstance(answer.exception, TimeoutError):
        return TIMED_OUT, None
    return FAILED, _why(answer.exception)


def _why(exc: BaseException | None) -> str:
    if isinstance(exc, ConnectionClosed):
        return "disconnected"
    if isinstance(exc, CallError):
        return f"CallError: {exc.type}: {exc.message}"
    return type(exc).__name__
