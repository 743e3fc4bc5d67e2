"""Rooms: the index between room names and connections, and broadcast over it.

Each tracked connection is in its personal room ``ws.id``, which no other may join.
``broadcast()`` encodes a frame once and hands it to every member without blocking (slow
members get the room's ``Backpressure`` policy); with a backplane ``attach()``-ed it also
goes to the bus. No I/O and no locks: callers share one thread and nothing here yields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Generic, Protocol, cast

import gevent

from . import ids
from .config import Backpressure
from .errors import ConfigError
from .protocol import Opcode, encode_frame, frame_info, shared_frame

if TYPE_CHECKING:
    from typing_extensions import Self, TypeVar

    from .metrics import MetricsSink
    from .presence import PresencePage
    from .protocol import PerMessageDeflate
    from .protocol.deflate import ShareKey
    from .recovery import Recovery
    from .websocket import WebSocket

    #: the connection type a ``Rooms`` holds (``WebSocket`` unless a test says otherwise)
    M = TypeVar("M", bound="Member", default=WebSocket)
else:
    from typing import TypeVar

    M = TypeVar("M", bound="Member")

__all__ = ["BroadcastResult", "Bus", "Member", "Rooms", "encode_message"]

#: members a broadcast reaches between two yields to the hub (CM-19)
BROADCAST_BATCH = 1000


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


class Member(Protocol):
    """What ``Rooms`` needs of a connection (``WebSocket`` is one; tests write stand-ins)."""

    @property
    def id(self) -> str: ...
    @property
    def rooms(self) -> set[str]: ...
    @property
    def is_open(self) -> bool: ...
    @property
    def deflate(self) -> PerMessageDeflate | None: ...
    def add_close_callback(self, callback: Callable[[Self], None]) -> None: ...
    def send_prepared(self, frame: bytes, *, policy: str | None = None) -> bool: ...
    def send_nowait(self, data: str | bytes, *, policy: str | None = None) -> bool: ...


class Bus(Protocol):
    """What rooms need from a backplane bridge (``wsflask.backplane.Bridge``)."""

    def room_changed(self, room: str, count: int) -> None: ...
    def publish(
        self, rooms: str | Iterable[str] | None, data: str | bytes, exclude: Iterable[str] = ()
    ) -> None: ...
    def cluster_members(self, room: str) -> dict[str, list[str]]: ...


def encode_message(data: str | bytes) -> bytes:
    """Encode ``data`` as one unmasked server frame: ``str`` -> text, ``bytes`` -> binary."""
    if isinstance(data, str):
        return encode_frame(Opcode.TEXT, data.encode("utf-8"))
    return encode_frame(Opcode.BINARY, bytes(data))


class Rooms(Generic[M]):
    """The room index of one app (one process).

    Args:
        policy: the app-wide slow-consumer policy (``Config.backpressure_policy``);
            ``set_policy()`` overrides it per room.
        metrics: where the time spent compressing broadcasts is recorded (optional).

    Call ``track(ws)`` when a connection opens (the app does it for every route), then
    ``join()`` / ``leave()``, ``broadcast()``; queries are ``members()``, ``count()``,
    ``rooms()`` and ``ws.rooms``. A backplane bridge calls ``attach()``/``detach()``.
    """

    def __init__(
        self, *, policy: Backpressure | str = Backpressure.CLOSE, metrics: MetricsSink | None = None
    ) -> None:
        self._policy = _policy(policy)
        self.metrics = metrics
        #: named rooms only: a personal room is its entry in ``_connections`` (no dict each)
        self._rooms: dict[str, dict[str, M]] = {}
        self._connections: dict[str, M] = {}
        self._forget = self.forget  # one bound method for every close callback
        self._policies: dict[str, Backpressure] = {}
        self._bus: Bus | None = None
        self._node = ""
        #: outbound limit of ``broadcast()`` (the app sets ``max_message_size``); None: none
        self.max_message_size: int | None = None
        #: recoverable rooms (``recoverable()``, ``recovery.py``); None until the first rule
        self.recovery: Recovery | None = None
        #: fnmatch patterns of rooms whose members see ``_joined``/``_left`` (``presence.py``)
        self.presence_patterns: list[str] = []

    @property
    def policy(self) -> Backpressure:
        """The default slow-consumer policy (settable; ``"close"``/``"drop"`` accepted)."""
        return self._policy

    @policy.setter
    def policy(self, policy: Backpressure | str) -> None:
        self._policy = _policy(policy)

    # -- the backplane -------------------------------------------------------------------------

    def attach(self, bus: Bus, node: str) -> None:
        """Hand broadcasts and membership changes to ``bus`` from now on; ``node`` is ours."""
        self._bus, self._node = bus, node

    def detach(self) -> None:
        """Stop using the bus (idempotent): rooms are local again."""
        self._bus, self._node = None, ""

    @property
    def bus(self) -> Bus | None:
        """The attached backplane bridge, else None."""
        return self._bus

    @property
    def node(self) -> str:
        """This node's id while a bus is attached, else ``""``."""
        return self._node

    # -- membership -----------------------------------------------------------------------------

    def track(self, ws: M) -> None:
        """Register ``ws``: join its personal room ``ws.id``; leave all rooms when it closes.

        Idempotent; ``join()`` calls it for connections not tracked yet.
        """
        if ws.id in self._connections:
            return
        self._connections[ws.id] = ws
        self._add(ws.id, ws)
        ws.add_close_callback(self._forget)

    def forget(self, ws: M) -> None:
        """Leave every room, personal one included (the close callback; idempotent)."""
        for room in list(ws.rooms):
            self._remove(room, ws)
        self._remove(ws.id, ws)
        self._connections.pop(ws.id, None)

    def join(self, room: str, ws: M) -> None:
        """Add ``ws`` to ``room`` (created on first join). Closed connections are ignored.

        Raises:
            ValueError: ``room`` is reserved: it has the form of a connection id, or it is
                the id of another tracked connection (its personal room, which only
                ``to=ws.id`` may reach).
        """
        if not ws.is_open:
            return
        self.track(ws)
        if room != ws.id and (room in self._connections or ids.is_connection_id(room)):
            raise ValueError(f"room {room!r} is reserved: it is a connection's personal room")
        recovery, new = self.recovery, room not in ws.rooms
        self._add(room, ws)
        if new and self.presence_patterns:
            self._presence_notice(room, ws.id, joined=True)
        if recovery is not None and new:
            rule = recovery.rule_for(room)
            if rule is not None:
                recovery.joined(room, rule, ws)

    def leave(self, room: str, ws: M) -> None:
        """Remove ``ws`` from ``room`` (idempotent); an emptied room disappears."""
        if room != ws.id:
            self._remove(room, ws)

    def _add(self, room: str, ws: M) -> None:
        if room == ws.id:  # the personal room: ``_connections`` is its index
            ws.rooms.add(room)
            return
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = {}
        if self._bus is not None and ws.id not in members:
            members[ws.id] = ws
            self._bus.room_changed(room, len(members))
        members[ws.id] = ws
        ws.rooms.add(room)

    def _remove(self, room: str, ws: M) -> None:
        ws.rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None and members.pop(ws.id, None) is not None:
            if not members:
                del self._rooms[room]
            if self._bus is not None:
                self._bus.room_changed(room, len(members))
            if self.presence_patterns:
                self._presence_notice(room, ws.id, joined=False)

    def _members(self, room: str) -> dict[str, M]:
        """``room``'s members by id (not a copy for named rooms); empty when unknown."""
        members = self._rooms.get(room)
        if members is not None:
            return members
        ws = self._connections.get(room)
        return {} if ws is None else {room: ws}

    # -- queries --------------------------------------------------------------------------------

    def members(self, room: str) -> list[M]:
        """The connections in ``room`` (a copy; empty for unknown rooms)."""
        return list(self._members(room).values())

    def count(self, room: str, *, cluster: bool = False) -> int:
        """How many connections are in ``room``; with ``cluster=True``, on every live node.

        ``cluster=True`` asks the backplane (it yields for I/O and raises ``BackplaneDown``
        when the bus is unreachable); without a backplane it is the local count.
        """
        local = len(self._members(room))
        if cluster and self._bus is not None:
            return local + sum(len(ids) for ids in self._bus.cluster_members(room).values())
        return local

    def member_ids(self, room: str, *, cluster: bool = False) -> list[str]:
        """Connection ids in ``room``, local first; with ``cluster=True`` from every node."""
        ids = list(self._members(room))
        if cluster and self._bus is not None:
            for node_ids in self._bus.cluster_members(room).values():
                ids.extend(node_ids)
        return ids

    def rooms(self, *, personal: bool = False) -> list[str]:
        """Names of the non-empty rooms, sorted; personal rooms only with ``personal=True``."""
        if personal:
            return sorted([*self._rooms, *self._connections])
        return sorted(self._rooms)

    def connections(self) -> list[M]:
        """Every tracked (open) connection."""
        return list(self._connections.values())

    def set_policy(self, room: str, policy: Backpressure | str) -> None:
        """Use slow-consumer ``policy`` for broadcasts to ``room``."""
        self._policies[room] = _policy(policy)

    def policy_for(self, room: str) -> Backpressure:
        """The slow-consumer policy that applies to ``room``."""
        return self._policies.get(room, self._policy)

    # -- delivery -------------------------------------------------------------------------------

    def broadcast(
        self,
        room: str | Iterable[str] | None,
        data: str | bytes,
        *,
        exclude: M | Iterable[M] | None = None,
        filter: Callable[[M], bool] | None = None,
        include_only: Iterable[M | str] | None = None,
    ) -> BroadcastResult:
        """Send ``data`` to every member of ``room`` (or of each room given; ``None``: everyone).

        The frame is encoded once; no member can block the caller. Returns the local counts;
        with a backplane the message is also queued for the other nodes (never blocking).
        ``filter(ws)`` and ``include_only`` (connections or ids) narrow the members reached,
        the others count as ``skipped``; they apply to this node's members only, so such a
        broadcast is not published on the backplane.

        Raises:
            ValueError: ``data`` is over ``max_message_size`` (counted as a ``too_big``
                drop): every member would fail the connection with 1009.
        """
        limit = self.max_message_size
        if limit is not None and len(data) > limit >> 2:
            self._check_size(data, limit)
        narrowed = filter is not None or include_only is not None
        done = None
        if self.recovery is not None and room is not None and not narrowed:
            room, done = self._publish_recoverable(room, data, exclude)
            if not room:
                return done
        result = self.deliver(
            room, encode_message(data), exclude=exclude, data=data, filter=filter,
            include_only=include_only,
        )  # fmt: skip
        if self._bus is not None and not narrowed:
            self._bus.publish(room, data, _excluded_ids(exclude))
        if done is not None:
            result.sent += done.sent
            result.dropped += done.dropped
        return result

    def presence_events(self, pattern: str) -> None:
        """Members of rooms matching ``pattern`` (fnmatch) get ``_joined``/``_left``
        ``{"room", "id"}`` when a member joins or leaves (closing included), on every node."""
        self.presence_patterns.append(pattern)

    def _presence_notice(self, room: str, member_id: str, *, joined: bool) -> None:
        from fnmatch import fnmatchcase

        from .presence import joined_event, left_event

        if not any(fnmatchcase(room, pattern) for pattern in self.presence_patterns):
            return
        notice = (joined_event if joined else left_event)(room, member_id)
        self.deliver(room, encode_message(notice), exclude=member_id)
        if self._bus is not None:
            self._bus.publish(room, notice, (member_id,))

    def presence(
        self, room: str, *, cursor: int = 0, limit: int = 100, cluster: bool = False
    ) -> PresencePage:
        """One page of ``room``'s member ids (at most 1000; ``presence.page``)."""
        from .presence import page

        return page(self, room, cursor=cursor, limit=limit, cluster=cluster)

    def presence_stats(self, room: str, *, cluster: bool = False) -> dict[str, int]:
        """``{"connections": n, "nodes": k}`` for ``room`` (``presence.stats``)."""
        from .presence import stats

        return stats(self, room, cluster=cluster)

    def recoverable(
        self,
        pattern: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        max_replay: int | None = None,
    ) -> None:
        """Make rooms matching ``pattern`` (fnmatch: ``"chat:*"``) recoverable.

        Each event to such a room carries ``"room"``, ``"offset"`` and ``"epoch"``; the last
        ``history_size`` are kept while the room sees a publication every ``history_ttl``
        seconds, and a member that rejoins with its position gets what it missed (at most
        ``max_replay``, default ``history_size``) before live traffic (``recovery.py``).
        """
        if self.recovery is None:
            from .recovery import Recovery

            self.recovery = Recovery(self)
        self.recovery.add(pattern, history_size, history_ttl, max_replay)

    def _publish_recoverable(
        self, room: str | Iterable[str], data: str | bytes, exclude: M | Iterable[M] | None
    ) -> tuple[list[str], BroadcastResult]:
        """Publish to the recoverable rooms of ``room``; return the other rooms."""
        recovery, done = self.recovery, BroadcastResult()
        assert recovery is not None
        names = [room] if isinstance(room, str) else list(dict.fromkeys(room))
        rest: list[str] = []
        for name in names:
            rule = recovery.rule_for(name)
            if rule is None:
                rest.append(name)
            else:
                sent = recovery.publish(name, rule, data, _excluded_ids(exclude))
                if sent < 0:
                    done.dropped += 1  # the history was unreachable: not published
                else:
                    done.sent += sent
        return rest, done

    def _check_size(self, data: str | bytes, limit: int) -> None:
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if size > limit:
            if self.metrics is not None:
                self.metrics.dropped("too_big")
            raise ValueError(f"message of {size} bytes over max_message_size={limit}")

    def deliver(
        self,
        room: str | Iterable[str] | None,
        frame: bytes,
        *,
        exclude: M | Iterable[M | str] | str | None = None,
        data: str | bytes | None = None,
        filter: Callable[[M], bool] | None = None,
        include_only: Iterable[M | str] | None = None,
    ) -> BroadcastResult:
        """Hand an encoded ``frame`` to the local members of ``room``: the one delivery path.

        A connection reached through several rooms gets it once, under the policy of the
        first room (in the order given) that reached it. ``exclude`` takes connections or
        connection ids (the backplane excludes by id). Members with permessage-deflate get
        the message compressed: one shared compression per ``share_key``, or in their own
        stream with context takeover (RFC 7692). ``data`` is the message ``frame`` holds,
        read back from the frame when not given. Every ``BROADCAST_BATCH`` members it
        yields to the hub (CM-19), so a huge room does not stall heartbeats and reads.
        """
        excluded = _excluded_ids(exclude)
        only = None if include_only is None else _excluded_ids(include_only)
        result = BroadcastResult()
        shared: dict[ShareKey, tuple[bytes, int, int]] = {}
        for visited, (ws, policy) in enumerate(self._targets(room), 1):
            if visited % BROADCAST_BATCH == 0:
                gevent.sleep(0)  # the targets are a snapshot: safe to yield mid-way
            if (
                ws.id in excluded
                or not ws.is_open
                or (only is not None and ws.id not in only)
                or (filter is not None and not filter(ws))
            ):
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
                        totals = codec.totals
                        if totals is not None:  # and the server-wide ones (metrics)
                            totals[2] += packed[1]
                            totals[3] += packed[2]
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
        info = frame_info(frame)
        if not info.compressed:  # under the threshold: sent uncompressed
            return frame, 0, 0
        raw = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        return frame, raw, info.payload_length

    def _targets(self, room: str | Iterable[str] | None) -> Iterator[tuple[M, Backpressure]]:
        """Yield ``(ws, policy)`` once per member, from a snapshot of the index."""
        if room is None:
            for ws in list(self._connections.values()):
                yield ws, self._policy
            return
        if isinstance(room, str):
            policy = self.policy_for(room)
            for ws in list(self._members(room).values()):
                yield ws, policy
            return
        seen: dict[str, tuple[M, Backpressure]] = {}
        for name in room:
            policy = self.policy_for(name)
            for ws_id, ws in self._members(name).items():
                if ws_id not in seen:
                    seen[ws_id] = (ws, policy)
        yield from seen.values()


def _message_of(frame: bytes) -> str | bytes:
    """The message an unmasked, unfragmented text or binary frame holds."""
    info = frame_info(frame)
    payload = frame[info.header_length :]
    return payload.decode("utf-8") if info.opcode == Opcode.TEXT else payload


def _excluded_ids(exclude: Member | Iterable[Member | str] | str | None) -> frozenset[str]:
    if exclude is None:
        return frozenset()
    if isinstance(exclude, str):  # one connection id
        return frozenset((exclude,))
    one = getattr(exclude, "id", None)
    if isinstance(one, str):  # a single connection
        return frozenset((one,))
    return frozenset(
        item if isinstance(item, str) else item.id
        for item in cast("Iterable[Member | str]", exclude)
    )


def _policy(policy: Backpressure | str) -> Backpressure:
    """``policy`` as a ``Backpressure`` member; ``ConfigError`` for anything else."""
    try:
        return Backpressure(policy)
    except ValueError:
        choices = ", ".join(member.value for member in Backpressure)
        raise ConfigError(
            f"backpressure_policy={policy!r} is invalid: expected one of {choices}"
        ) from None
