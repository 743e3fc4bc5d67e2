"""Group calls across the cluster: ``app.call(event, data, to=room)`` on every node's members.

The caller reads cluster presence, publishes one request (kind ``q``) on the room's channel
and on the channels of the nodes presence names, calls its own members, and waits under one
deadline. Every other node with the request calls its local members and answers on the
caller's node channel (kind ``a``): first the ids it called (batches, the last marked), then
each member's reply or failure as it settles, at most ``MAX_BATCH`` entries and about
``BATCH_BYTES`` per envelope. The caller keys all of it by connection id into one
``GroupResult``: a member that disconnects on any node fails at once (its node says so); a
member whose node never answers times out at the deadline, or fails ``"node_lost"`` as soon
as liveness declares its node lost. No retries: a lost answer envelope is a timeout.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from itertools import count
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.event import Event

from ..envelopes import encode
from ..group_calls import FAILED, REPLY, TIMED_OUT, GroupResult, call_each, call_group
from .wire import Envelope, Router

if TYPE_CHECKING:
    from ..rooms import Rooms

__all__ = ["BATCH_BYTES", "MAX_BATCH", "MAX_SERVING", "GroupCalls"]

logger = logging.getLogger("wsflask.backplane")

#: the most ids, replies or failures one answer envelope carries
MAX_BATCH = 500
#: an answer envelope is sent once its replies reach about this many bytes of JSON
BATCH_BYTES = 256 * 1024
#: other nodes' requests served at once; beyond, their members fail with ``"Busy"``
MAX_SERVING = 256
#: the longest timeout a request may ask of this node, in seconds
MAX_TIMEOUT = 3600.0
REQUEST, ANSWER = "q", "a"


class Node(Protocol):
    """What group calls need of their node's bridge."""

    node: str
    router: Router
    rooms: Rooms
    metrics: Any
    node_lost_hooks: list[Callable[[str], None]]

    @property
    def running(self) -> bool: ...
    def cluster_members(self, room: str) -> dict[str, list[str]]: ...
    def post(
        self, channels: list[str], kind: str, body: bytes, rooms: list[str] | None
    ) -> bool: ...


class _Pending:
    """One call of ours waiting for its members, local (node ``""``) and remote."""

    def __init__(self, local: list[str], others: dict[str, list[str]]) -> None:
        self.result = GroupResult()
        #: id -> node of every member not settled yet, in the order they became known
        self.waiting: dict[str, str] = dict.fromkeys(local, "")
        #: node -> the presence ids it has not confirmed (its called list is incomplete)
        self.unconfirmed = {node: set(ids) for node, ids in others.items()}
        self.confirmed: dict[str, set[str]] = {}
        for node, ids in others.items():
            self.waiting.update(dict.fromkeys(ids, node))
        self.done = Event()
        self.closed = False
        self._check()

    def settle(self, ws_id: str, outcome: str, value: Any) -> None:
        if self.closed or ws_id in self.result.replies or ws_id in self.result.failed:
            return
        if ws_id in self.result.timed_out:
            return
        if outcome == REPLY:
            self.result.replies[ws_id] = value
        elif outcome == FAILED:
            self.result.failed[ws_id] = str(value)
        else:
            self.result.timed_out.append(ws_id)
        self.waiting.pop(ws_id, None)
        self._check()

    def called(self, node: str, ids: list[str], last: bool) -> None:
        """Node ``node`` called ``ids``; after its ``last`` batch, members presence named
        there but not called (they left before the call) are not waited for."""
        if self.closed or self.done.is_set():  # complete: a late node's members stay out
            return
        seen = self.confirmed.setdefault(node, set())
        seen.update(ids)
        for ws_id in ids:
            if ws_id not in self.waiting and not self._settled(ws_id):
                self.waiting[ws_id] = node
        if last:
            for ws_id in self.unconfirmed.pop(node, set()) - seen:
                if self.waiting.get(ws_id) == node:
                    del self.waiting[ws_id]
            self.confirmed.pop(node, None)
        self._check()

    def lost(self, node: str) -> None:
        """Node ``node`` died: its members fail now, not at the deadline."""
        self.unconfirmed.pop(node, None)
        for ws_id in [i for i, n in self.waiting.items() if n == node]:
            self.settle(ws_id, FAILED, "node_lost")
        self._check()

    def unreachable(self) -> None:
        """The request could not be published: the other nodes' members fail now."""
        for node in list(self.unconfirmed):
            for ws_id in [i for i, n in self.waiting.items() if n == node]:
                self.settle(ws_id, FAILED, "backplane")
        self.unconfirmed.clear()
        self._check()

    def finish(self) -> GroupResult:
        """Close: the members still waited for time out."""
        self.closed = True
        self.result.timed_out.extend(self.waiting)
        self.waiting.clear()
        return self.result

    def _settled(self, ws_id: str) -> bool:
        result = self.result
        return ws_id in result.replies or ws_id in result.failed or ws_id in result.timed_out

    def _check(self) -> None:
        if not self.waiting and not self.unconfirmed:
            self.done.set()


class _Serving:
    """Another node's call, served to our members: what is still to be sent back."""

    def __init__(self, members: int) -> None:
        self.called: list[str] = []
        self.sent = 0  # ids of ``called`` sent so far
        self.announced = False
        self.entries: deque[tuple[str, str, Any]] = deque()
        self.left = members
        self.wake = Event()

    def settle(self, ws_id: str, outcome: str, value: Any) -> None:
        if outcome != TIMED_OUT:  # the caller times its members out itself
            self.entries.append((ws_id, outcome, value))
        self.left -= 1
        self.wake.set()


class GroupCalls:
    """The cluster group calls of one node (the bridge makes it; ``app.call`` uses it)."""

    def __init__(self, bridge: Node) -> None:
        self.bridge = bridge
        self._ids = count(1)
        self._pending: dict[str, _Pending] = {}
        self._serving: set[gevent.Greenlet] = set()
        #: requests refused because ``MAX_SERVING`` were served (their members failed)
        self.busy = 0
        bridge.node_lost_hooks.append(self.node_lost)

    # -- the caller ---------------------------------------------------------------------------

    def call(self, event: str, data: Any, room: str, timeout: float) -> GroupResult:
        """Call ``event`` on every member of ``room`` in the cluster; see ``app.call``.

        Without a running bridge only this node's members are called.

        Raises:
            BackplaneDown: cluster presence is unreachable (the call would not be
                cluster-wide); nobody was called.
            ValueError: the call is over ``max_message_size`` (counted ``too_big``).
        """
        bridge = self.bridge
        members = bridge.rooms.members(room)
        if not bridge.running:
            return call_group(members, event, data, timeout)
        self._check_size(event, data)
        others = {node: ids for node, ids in bridge.cluster_members(room).items() if ids}
        cid = f"{bridge.node}:{next(self._ids)}"
        pending = self._pending[cid] = _Pending([ws.id for ws in members], others)
        try:
            if others:
                self._request(cid, pending, event, data, room, timeout, list(others))
            call_each(members, event, data, timeout, pending.settle)
            pending.done.wait(timeout)
        finally:
            del self._pending[cid]
        return pending.finish()

    def _check_size(self, event: str, data: Any) -> None:
        """Refuse (and count) a call over ``max_message_size``, before anyone is called:
        every member would refuse it (``ValueError``, as from ``ws.call``)."""
        rooms = self.bridge.rooms
        limit = rooms.max_message_size
        if limit is None:
            return
        size = len(encode(event, data, "s0").encode("utf-8"))
        if size > limit:
            if rooms.metrics is not None:
                rooms.metrics.dropped("too_big")
            raise ValueError(f"call of {size} bytes over max_message_size={limit}")

    def _request(
        self,
        cid: str,
        pending: _Pending,
        event: str,
        data: Any,
        room: str,
        timeout: float,
        nodes: list[str],
    ) -> None:
        router = self.bridge.router
        body = {"id": cid, "event": event, "data": data, "timeout": timeout}
        channels = [router.room(room), *(router.node(node) for node in nodes)]
        if not self.bridge.post(channels, REQUEST, _dumps(body), [room]):
            pending.unreachable()

    def in_progress(self) -> list[GroupResult]:
        """The partial results of our calls still waiting (read-only views)."""
        return [pending.result for pending in self._pending.values()]

    def answer(self, envelope: Envelope) -> None:
        """An answer to one of our calls from node ``envelope.origin`` (kind ``a``)."""
        body = _loads(envelope.body)
        cid = body.get("id") if body is not None else None
        if body is None or not isinstance(cid, str) or not _valid_answer(body):
            self._invalid(envelope)
            return
        pending = self._pending.get(cid)
        if pending is None:  # finished already (or not ours): late answers are ignored
            return
        if "called" in body:
            pending.called(envelope.origin, body["called"], bool(body.get("last")))
        for ws_id, value in body.get("replies", {}).items():
            pending.settle(ws_id, REPLY, value)
        for ws_id, why in body.get("failed", {}).items():
            pending.settle(ws_id, FAILED, why)

    def node_lost(self, node: str) -> None:
        """Liveness declared ``node`` lost: fail its members in every call of ours."""
        for pending in list(self._pending.values()):
            pending.lost(node)

    # -- serving another node's call ----------------------------------------------------------

    def request(self, envelope: Envelope) -> None:
        """Another node calls the members of ``envelope.rooms[0]``: call ours, answer back."""
        body = _loads(envelope.body)
        request = _valid_request(body, envelope)
        if request is None:
            self._invalid(envelope)
            return
        cid, event, data, timeout, room = request
        if len(self._serving) >= MAX_SERVING:
            self.busy += 1
            serving = _Serving(0)
            serving.called = [ws.id for ws in self.bridge.rooms.members(room)]
            serving.entries.extend((ws_id, FAILED, "Busy") for ws_id in serving.called)
            self._flush(envelope.origin, cid, serving)
            return
        greenlet = gevent.spawn(self._serve, envelope.origin, cid, event, data, timeout, room)
        self._serving.add(greenlet)
        greenlet.link(self._serving.discard)

    def _serve(
        self, caller: str, cid: str, event: str, data: Any, timeout: float, room: str
    ) -> None:
        members = self.bridge.rooms.members(room)
        serving = _Serving(len(members))
        serving.called = call_each(members, event, data, timeout, serving.settle)
        deadline = monotonic() + timeout
        self._flush(caller, cid, serving)
        while serving.left > 0:
            left = deadline - monotonic()
            if left <= 0 or not serving.wake.wait(left):
                break
            serving.wake.clear()
            self._flush(caller, cid, serving)
        self._flush(caller, cid, serving)

    def _flush(self, caller: str, cid: str, serving: _Serving) -> None:
        """Send what ``serving`` owes the caller: the called ids first, then results."""
        channel = [self.bridge.router.node(caller)]
        while not serving.announced:
            chunk = serving.called[serving.sent : serving.sent + MAX_BATCH]
            serving.sent += len(chunk)
            serving.announced = serving.sent >= len(serving.called)
            body: dict[str, Any] = {"id": cid, "called": chunk, "last": serving.announced}
            self.bridge.post(channel, ANSWER, _dumps(body), None)
        while serving.entries:
            replies: dict[str, Any] = {}
            failed: dict[str, str] = {}
            size = 0
            while serving.entries and len(replies) + len(failed) < MAX_BATCH:
                ws_id, outcome, value = serving.entries.popleft()
                if outcome == REPLY:
                    replies[ws_id] = value
                    size += len(_dumps(value))
                else:
                    failed[ws_id] = str(value)[:256]
                if size >= BATCH_BYTES:
                    break
            body = {"id": cid, "replies": replies, "failed": failed}
            self.bridge.post(channel, ANSWER, _dumps(body), None)

    def _invalid(self, envelope: Envelope) -> None:
        metrics = self.bridge.metrics
        if metrics is not None:
            metrics.dropped("backplane_invalid")
        logger.warning("backplane: ignored a malformed group call from %s", envelope.origin)

    def stop(self) -> None:
        """The bridge stops: end the calls we serve; our own calls end at their deadline."""
        gevent.killall(list(self._serving), block=True, timeout=1)
        for pending in self._pending.values():
            pending.done.set()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _loads(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _strings(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= MAX_BATCH
        and all(isinstance(item, str) for item in value)
    )


def _valid_answer(body: dict[str, Any]) -> bool:
    replies, failed = body.get("replies", {}), body.get("failed", {})
    return (
        ("called" not in body or _strings(body["called"]))
        and isinstance(replies, dict)
        and isinstance(failed, dict)
        and len(replies) + len(failed) <= MAX_BATCH
        and all(isinstance(why, str) for why in failed.values())
    )


def _valid_request(
    body: dict[str, Any] | None, envelope: Envelope
) -> tuple[str, str, Any, float, str] | None:
    """``(call id, event, data, timeout, room)`` of a well-formed request, else None."""
    if body is None or not envelope.rooms or len(envelope.rooms) != 1:
        return None
    cid, event, timeout = body.get("id"), body.get("event"), body.get("timeout")
    if not isinstance(cid, str) or not isinstance(event, str) or not 0 < len(event) <= 256:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        return None
    if not 0 < timeout <= MAX_TIMEOUT:
        return None
    return cid, event, body.get("data"), float(timeout), envelope.rooms[0]
