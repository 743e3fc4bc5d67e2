"""Rooms: the index between room names and connections, and broadcast over it.

What it does:

* keeps ``room -> {ws.id: ws}`` and, on each connection, ``ws.rooms`` (the names it is in);
* gives every tracked connection a personal room named ``ws.id``, so ``app.emit(..., to=ws.id)``
  reaches one client the way ``to=room`` reaches many (python-socketio's ``sid`` rooms);
* leaves every room automatically when the connection closes (a close callback registered
  by ``track()``, which runs before the app's disconnect handlers, ARCHITECTURE.md §4);
* ``broadcast()`` encodes the frame **once** with ``protocol.encode_frame`` and hands the same
  bytes to every member with ``ws.send_prepared()``, which never blocks: a slow member's frame
  goes to its bounded outbox or, past ``max_backpressure``, is handled by the room's
  slow-consumer policy (``"close"``: 1013, or ``"drop"``), both counted by the driver.
  A connection in several of the target rooms gets the message once.

What it does not do: no cross-process delivery. A backplane (Redis, issue 8) hooks in by
publishing what ``broadcast()`` encodes and by calling ``deliver()`` with frames it receives;
``deliver()`` is the single local-delivery path. No locks: callers share one thread, and no
method yields between reading and updating the index.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from .errors import ConfigError
from .protocol import Opcode, encode_frame

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["POLICIES", "BroadcastResult", "Rooms"]

#: Slow-consumer policies: close the member with 1013 "try again later", or drop the message.
POLICIES = ("close", "drop")


@dataclass(slots=True)
class BroadcastResult:
    """What one broadcast did.

    Attributes:
        sent: members the frame was written or queued for.
        dropped: members that did not get it (outbox over its bound, or closed meanwhile).
        skipped: members left out on purpose (``exclude``) or already closing.
    """

    sent: int = 0
    dropped: int = 0
    skipped: int = 0


def encode_message(data: str | bytes) -> bytes:
    """Encode ``data`` as one unmasked server frame: ``str`` -> text, ``bytes`` -> binary."""
    if isinstance(data, str):
        return encode_frame(Opcode.TEXT, data.encode("utf-8"))
    return encode_frame(Opcode.BINARY, bytes(data))


class Rooms:
    """The room index of one app (one process).

    Args:
        policy: the app-wide slow-consumer policy (``Config.backpressure_policy``);
            ``set_policy()`` overrides it per room.

    Call ``track(ws)`` when a connection opens (the app does it for every route), then
    ``join()`` / ``leave()``, ``broadcast()``; queries are ``members()``, ``count()``,
    ``rooms()`` and ``ws.rooms``.
    """

    def __init__(self, *, policy: str = "close") -> None:
        _check_policy(policy)
        #: the default slow-consumer policy
        self.policy = policy
        self._rooms: dict[str, dict[str, WebSocket]] = {}
        self._connections: dict[str, WebSocket] = {}
        self._policies: dict[str, str] = {}

    # -- membership -----------------------------------------------------------------------------

    def track(self, ws: WebSocket) -> None:
        """Register ``ws``: join its personal room ``ws.id``; leave all rooms when it closes.

        Idempotent; ``join()`` calls it for connections not tracked yet.
        """
        if ws.id in self._connections:
            return
        self._connections[ws.id] = ws
        self._add(ws.id, ws)
        ws.add_close_callback(self.forget)

    def forget(self, ws: WebSocket) -> None:
        """Leave every room, personal one included (the close callback; idempotent)."""
        for room in list(ws.rooms):
            self._remove(room, ws)
        self._remove(ws.id, ws)
        self._connections.pop(ws.id, None)

    def join(self, room: str, ws: WebSocket) -> None:
        """Add ``ws`` to ``room`` (created on first join). Closed connections are ignored."""
        if not ws.is_open:
            return
        self.track(ws)
        self._add(room, ws)

    def leave(self, room: str, ws: WebSocket) -> None:
        """Remove ``ws`` from ``room`` (idempotent); an emptied room disappears."""
        if room != ws.id:
            self._remove(room, ws)

    def _add(self, room: str, ws: WebSocket) -> None:
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = {}
        members[ws.id] = ws
        ws.rooms.add(room)

    def _remove(self, room: str, ws: WebSocket) -> None:
        ws.rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None and members.pop(ws.id, None) is not None and not members:
            del self._rooms[room]

    # -- queries --------------------------------------------------------------------------------

    def members(self, room: str) -> list[WebSocket]:
        """The connections in ``room`` (a copy; empty for unknown rooms)."""
        return list(self._rooms.get(room, {}).values())

    def count(self, room: str) -> int:
        """How many connections are in ``room``."""
        return len(self._rooms.get(room, ()))

    def rooms(self, *, personal: bool = False) -> list[str]:
        """Names of the non-empty rooms, sorted; personal rooms only with ``personal=True``."""
        if personal:
            return sorted(self._rooms)
        return sorted(name for name in self._rooms if name not in self._connections)

    def connections(self) -> list[WebSocket]:
        """Every tracked (open) connection."""
        return list(self._connections.values())

    def set_policy(self, room: str, policy: str) -> None:
        """Use slow-consumer ``policy`` (``"close"`` or ``"drop"``) for broadcasts to ``room``."""
        _check_policy(policy)
        self._policies[room] = policy

    def policy_for(self, room: str) -> str:
        """The slow-consumer policy that applies to ``room``."""
        return self._policies.get(room, self.policy)

    # -- delivery -------------------------------------------------------------------------------

    def broadcast(self, room: str | Iterable[str] | None, data: str | bytes, *,
                  exclude: WebSocket | Iterable[WebSocket] | None = None) -> BroadcastResult:
        """Send ``data`` to every member of ``room`` (or of each room given; ``None``: everyone).

        The frame is encoded once; no member can block the caller. Returns the counts.
        """
        return self.deliver(room, encode_message(data), exclude=exclude)

    def deliver(self, room: str | Iterable[str] | None, frame: bytes, *,
                exclude: WebSocket | Iterable[WebSocket] | None = None) -> BroadcastResult:
        """Hand an encoded ``frame`` to the local members of ``room``: the one delivery path.

        A connection reached through several rooms gets it once, under the policy of the
        first room (in the order given) that reached it.
        """
        excluded = _excluded_ids(exclude)
        result = BroadcastResult()
        for ws, policy in self._targets(room):
            if ws.id in excluded or not ws.is_open:
                result.skipped += 1
            elif ws.send_prepared(frame, policy=policy):
                result.sent += 1
            else:
                result.dropped += 1
        return result

    def _targets(self, room: str | Iterable[str] | None) -> Iterator[tuple[WebSocket, str]]:
        """Yield ``(ws, policy)`` once per member, from a snapshot of the index."""
        if room is None:
            for ws in list(self._connections.values()):
                yield ws, self.policy
            return
        if isinstance(room, str):
            policy = self.policy_for(room)
            for ws in list(self._rooms.get(room, {}).values()):
                yield ws, policy
            return
        seen: dict[str, tuple[WebSocket, str]] = {}
        for name in room:
            policy = self.policy_for(name)
            for ws_id, ws in self._rooms.get(name, {}).items():
                if ws_id not in seen:
                    seen[ws_id] = (ws, policy)
        yield from seen.values()


def _excluded_ids(exclude: WebSocket | Iterable[WebSocket] | None) -> frozenset[str]:
    if exclude is None:
        return frozenset()
    one = getattr(exclude, "id", None)
    if isinstance(one, str):  # a single connection
        return frozenset((one,))
    return frozenset(ws.id for ws in cast("Iterable[WebSocket]", exclude))


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"backpressure_policy={policy!r} is invalid: expected one of "
                          f"{', '.join(POLICIES)}")
