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
* permessage-deflate (RFC 7692): members without it get that frame; members whose server
  side has no context takeover get one compressed frame per distinct ``share_key`` (one
  compression per broadcast, ``protocol.shared_frame``); members with context takeover get
  a frame compressed in their own stream (``ws.send_nowait()``: one compression each).
  ``Config.deflate_no_context_takeover`` makes every member share.

Cross-process delivery is the backplane's (``backplane/bridge.py``): when one is attached
(``rooms.bus``), ``broadcast()`` also hands the message to it, rooms gaining their first or
losing their last member are reported to it (``room_changed``), tracked connections get
node-prefixed ids (``<node>.<n>``), and ``count()``/``member_ids()`` can ask it for the whole
cluster. Messages from other nodes come back through ``deliver()``, the single local-delivery
path. Without a backplane ``bus`` is None and none of this costs anything.

What it does not do: no I/O of its own. No locks: callers share one thread, and no method
yields between reading and updating the index (``cluster=True`` queries yield, for I/O).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Protocol, cast

from .errors import ConfigError
from .protocol import Opcode, encode_frame, shared_frame

if TYPE_CHECKING:
    from .metrics import Metrics
    from .protocol.deflate import ShareKey
    from .websocket import WebSocket

__all__ = ["POLICIES", "BroadcastResult", "Bus", "Rooms"]

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


class Bus(Protocol):
    """What rooms need from a backplane bridge (``wsflask.backplane.bridge.Bridge``)."""

    def room_changed(self, room: str, count: int) -> None: ...
    def publish(self, rooms: str | Iterable[str] | None, data: str | bytes,
                exclude: Iterable[str] = ()) -> None: ...
    def cluster_members(self, room: str) -> dict[str, list[str]]: ...


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
        #: the backplane bridge, while one is attached (its ``start()`` sets it)
        self.bus: Bus | None = None
        #: this node's id with a backplane: tracked connections get ids ``<node>.<n>``
        self.node = ""
        #: the app's metrics, for the time spent compressing broadcasts (optional)
        self.metrics: Metrics | None = None

    # -- membership -----------------------------------------------------------------------------

    def track(self, ws: WebSocket) -> None:
        """Register ``ws``: join its personal room ``ws.id``; leave all rooms when it closes.

        Idempotent; ``join()`` calls it for connections not tracked yet.
        """
        if ws.id in self._connections:
            return
        if self.node and "." not in ws.id:
            ws.id = f"{self.node}.{ws.id}"  # unique across nodes (ARCHITECTURE.md AMB-21)
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
        if self.bus is not None and ws.id not in members and room != ws.id:
            members[ws.id] = ws
            self.bus.room_changed(room, len(members))
        members[ws.id] = ws
        ws.rooms.add(room)

    def _remove(self, room: str, ws: WebSocket) -> None:
        ws.rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None and members.pop(ws.id, None) is not None:
            if not members:
                del self._rooms[room]
            if self.bus is not None and room != ws.id:
                self.bus.room_changed(room, len(members))

    # -- queries --------------------------------------------------------------------------------

    def members(self, room: str) -> list[WebSocket]:
        """The connections in ``room`` (a copy; empty for unknown rooms)."""
        return list(self._rooms.get(room, {}).values())

    def count(self, room: str, *, cluster: bool = False) -> int:
        """How many connections are in ``room``; with ``cluster=True``, on every live node.

        ``cluster=True`` asks the backplane (it yields for I/O and raises ``BackplaneDown``
        when the bus is unreachable); without a backplane it is the local count.
        """
        local = len(self._rooms.get(room, ()))
        if cluster and self.bus is not None:
            return local + sum(len(ids) for ids in self.bus.cluster_members(room).values())
        return local

    def member_ids(self, room: str, *, cluster: bool = False) -> list[str]:
        """Connection ids in ``room``, local first; with ``cluster=True`` from every node."""
        ids = list(self._rooms.get(room, {}))
        if cluster and self.bus is not None:
            for node_ids in self.bus.cluster_members(room).values():
                ids.extend(node_ids)
        return ids

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

        The frame is encoded once; no member can block the caller. Returns the local counts;
        with a backplane the message is also queued for the other nodes (never blocking).
        """
        result = self.deliver(room, encode_message(data), exclude=exclude, data=data)
        if self.bus is not None:
            self.bus.publish(room, data, _excluded_ids(exclude))
        return result

    def deliver(self, room: str | Iterable[str] | None, frame: bytes, *,
                exclude: WebSocket | Iterable[WebSocket | str] | None = None,
                data: str | bytes | None = None) -> BroadcastResult:
        """Hand an encoded ``frame`` to the local members of ``room``: the one delivery path.

        A connection reached through several rooms gets it once, under the policy of the
        first room (in the order given) that reached it. ``exclude`` takes connections or
        connection ids (the backplane excludes by id). Members with permessage-deflate get
        the message compressed (module docstring); ``data`` is the message ``frame`` holds,
        read back from the frame when not given.
        """
        excluded = _excluded_ids(exclude)
        result = BroadcastResult()
        shared: dict[ShareKey, tuple[bytes, int, int]] = {}
        for ws, policy in self._targets(room):
            if ws.id in excluded or not ws.is_open:
                result.skipped += 1
                continue
            codec = ws.deflate
            if codec is None:
                sent = ws.send_prepared(frame, policy=policy)
            else:
                if data is None:
                    data = _message_of(frame)
                key = codec.share_key
                if key is None:  # context takeover: compressed in the member's own stream
                    sent = ws.send_nowait(data, policy=policy)
                else:
                    packed = shared.get(key) or shared.setdefault(key, self._pack(data, key))
                    sent = ws.send_prepared(packed[0], policy=policy)
                    if sent and packed[2]:  # the codec's counters, as if it had compressed
                        codec.raw_out += packed[1]
                        codec.compressed_out += packed[2]
            if sent:
                result.sent += 1
            else:
                result.dropped += 1
        return result

    def _pack(self, data: str | bytes, key: ShareKey) -> tuple[bytes, int, int]:
        """One shared frame for ``key``: (frame, raw bytes, compressed bytes or 0)."""
        started = perf_counter()
        frame = shared_frame(data, key)
        if self.metrics is not None:
            self.metrics.compress_time(perf_counter() - started)
        if not frame[0] & 0x40:  # under the threshold: sent uncompressed
            return frame, 0, 0
        raw = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        return frame, raw, _payload_length(frame)

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


def _payload_length(frame: bytes) -> int:
    """Payload bytes of an unmasked frame (RFC 6455 §5.2)."""
    size = frame[1] & 0x7F
    return len(frame) - (2 + (2 if size == 126 else 8 if size == 127 else 0))


def _message_of(frame: bytes) -> str | bytes:
    """The message an unmasked, unfragmented text or binary frame holds."""
    payload = frame[len(frame) - _payload_length(frame):]
    return payload.decode("utf-8") if frame[0] & 0x0F == Opcode.TEXT else payload


def _excluded_ids(exclude: WebSocket | Iterable[WebSocket | str] | None) -> frozenset[str]:
    if exclude is None:
        return frozenset()
    if isinstance(exclude, str):  # one connection id
        return frozenset((exclude,))
    one = getattr(exclude, "id", None)
    if isinstance(one, str):  # a single connection
        return frozenset((one,))
    return frozenset(item if isinstance(item, str) else item.id
                     for item in cast("Iterable[WebSocket | str]", exclude))


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"backpressure_policy={policy!r} is invalid: expected one of "
                          f"{', '.join(POLICIES)}")
