"""Recoverable rooms: numbered publications, and replay without gap or duplicate on rejoin.

``Recovery`` holds the ``rooms.recoverable(pattern, ...)`` rules, numbers each event to a
matching room through a ``History`` (memory, or Redis Streams with a Redis backplane), and,
when a member joins, answers the position it presented in the handshake (query ``recover``)
with a replay then live traffic, held meanwhile. The wire protocol is in ``docs``/the README.
No storage of its own (``history.py``), no routing or membership (``rooms.py``).
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gevent

from . import envelopes
from .history import History, MemoryHistory, Replay
from .protocol import Opcode, encode_frame

__all__ = ["MARKER", "QUERY", "Recovery", "Rule", "parse_positions", "positioned"]

logger = logging.getLogger("wsflask.recovery")

#: the query parameter a reconnecting client presents its positions in
QUERY = "recover"
#: the event that answers each join of a recoverable room (before any replayed publication)
MARKER = "_recovery"
#: what a member left out of a publication (``skip``/``exclude``) gets in its place: the
#: position alone, so its client moves on instead of taking the hole for a loss
SKIPPED = "_skipped"
#: the most rooms one handshake may present positions for, and the most bytes of them
MAX_POSITIONS = 128
MAX_QUERY = 16_384
_Position = tuple[int, str]


class _Member(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def rooms(self) -> set[str]: ...
    @property
    def is_open(self) -> bool: ...
    def send_prepared(self, frame: bytes, *, policy: str | None = None) -> bool: ...


class _Counted(Protocol):
    @property
    def sent(self) -> int: ...


class _Bus(Protocol):
    def publish(self, rooms: str, data: str, exclude: Iterable[str] = ()) -> None: ...


class Index(Protocol):
    """What recovery needs of the room index (``Rooms``)."""

    @property
    def metrics(self) -> Any: ...
    @property
    def bus(self) -> _Bus | None: ...
    def policy_for(self, room: str) -> str: ...
    def deliver(self, room: str, frame: bytes, *, exclude: Iterable[str]) -> _Counted: ...
    def members(self, room: str) -> Sequence[_Member]: ...


class Link(Protocol):
    """What recovery needs of a backplane bridge: is a room's bus traffic reaching us."""

    def subscribed(self, room: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Rule:
    """Rooms matching ``pattern`` (fnmatch) keep ``size`` publications for ``ttl`` seconds;
    a rejoin replays at most ``max_replay`` of them (more: unrecoverable)."""

    pattern: str
    size: int
    ttl: float
    max_replay: int


def positioned(body: str, room: str, offset: int, epoch: str) -> str:
    """The event envelope ``body`` with ``"room"``, ``"offset"`` and ``"epoch"`` appended."""
    return f'{body[:-1]},"room":{json.dumps(room)},"offset":{offset},"epoch":"{epoch}"}}'


def parse_positions(raw: str | None) -> dict[str, _Position] | None:
    """The positions of a ``recover`` query value: ``{"room": {"offset": n, "epoch": e}}``.

    Returns ``{}`` when absent and None when malformed (each room then answers
    ``recovered: false, reason: "bad_position"``).
    """
    if not raw:
        return {}
    if len(raw) > MAX_QUERY:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or len(value) > MAX_POSITIONS:
        return None
    out: dict[str, _Position] = {}
    for room, pos in value.items():
        offset = pos.get("offset") if isinstance(pos, dict) else None
        epoch = pos.get("epoch") if isinstance(pos, dict) else None
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            return None
        if not isinstance(epoch, str) or not 0 < len(epoch) <= 64:
            return None
        out[room] = (offset, epoch)
    return out


class Recovery:
    """The recoverable rooms of one ``Rooms`` (made by ``rooms.recoverable()``).

    Args:
        rooms: the room index whose members get replays and live publications.

    While a backplane bridge runs it calls ``start(bridge, history)``: a Redis bridge gives
    a ``RedisHistory``; otherwise the history is kept in this process (``MemoryHistory``).
    """

    def __init__(self, rooms: Index) -> None:
        self.rooms = rooms
        self.rules: list[Rule] = []
        self.bridge: Link | None = None
        self.history: History | None = None
        #: publications that could not be numbered (history unreachable), for logs and tests
        self.failures = 0
        self._cache: dict[str, Rule | None] = {}
        #: room -> member id -> live publications held while that member replays
        self._held: dict[str, dict[str, list[tuple[int, str, str]]]] = {}
        #: room -> member id -> (epoch, top) of a finished replay: with Redis, live copies of
        #: replayed publications may still arrive (another connection); they are skipped
        self._floors: dict[str, dict[str, tuple[str, int]]] = {}
        self._result: _Counted | None = None
        self._greenlets: set[gevent.Greenlet] = set()

    # -- setup --------------------------------------------------------------------------------

    def add(self, pattern: str, size: int, ttl: float, max_replay: int | None) -> None:
        """Make rooms matching ``pattern`` recoverable (see ``Rooms.recoverable``)."""
        if size < 1 or ttl <= 0:
            raise ValueError("history_size must be >= 1 and history_ttl > 0")
        replay = size if max_replay is None else max_replay
        self.rules.append(Rule(pattern, size, float(ttl), max(0, replay)))
        self._cache.clear()

    def rule_for(self, room: str) -> Rule | None:
        """The first rule whose pattern matches ``room``, else None (cached, bounded)."""
        try:
            return self._cache[room]
        except KeyError:
            pass
        found = next((r for r in self.rules if fnmatch.fnmatchcase(room, r.pattern)), None)
        if len(self._cache) >= 10_000:
            self._cache.clear()
        self._cache[room] = found
        return found

    def _history(self) -> History:
        history = self.history
        if history is None:
            history = self.history = MemoryHistory(self.live)
        return history

    def start(self, bridge: Link, history: History | None) -> None:
        """A backplane bridge starts: ``history`` (None: this process's) from now on."""
        self.bridge = bridge
        if history is not None:
            self.history = history

    def stop(self, bridge: Link) -> None:
        """The bridge stops: end replays in progress, release a Redis history."""
        gevent.killall(list(self._greenlets), block=True, timeout=1)
        self.bridge = None
        if not isinstance(self.history, MemoryHistory) and self.history is not None:
            history, self.history = self.history, None
            history.close()

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, room: str, rule: Rule, data: str | bytes, exclude: Iterable[str]) -> int:
        """Number ``data`` (an event envelope) in ``room`` and deliver it; returns the members
        it reached on this node (0 when delivery goes through Redis), -1 when the history
        was unreachable (nothing numbered, nothing delivered; counted as ``history`` drop).

        Raises:
            ValueError: ``data`` is not a JSON object as text (recoverable rooms carry
                event envelopes: use ``app.emit``).
        """
        if not isinstance(data, str) or not data.endswith("}") or not data.startswith("{"):
            raise ValueError(f"recoverable room {room!r} carries event envelopes: use emit()")
        self._result = None
        try:
            self._history().publish(room, data, rule.size, rule.ttl, list(exclude))
        except ConnectionError as exc:  # BackplaneDown: not numbered, so no gap either
            self.failures += 1
            if self.rooms.metrics is not None:
                self.rooms.metrics.dropped("history")
            logger.warning("recoverable room %s: publication dropped: %s", room, exc)
            return -1
        result, self._result = self._result, None
        return 0 if result is None else result.sent

    def live(self, room: str, offset: int, epoch: str, body: str, exclude: list[str]) -> None:
        """Deliver numbered publication ``offset`` to the local members of ``room``; members
        still replaying get it after their replay (the history backends call this)."""
        message = positioned(body, room, offset, epoch)
        notice = positioned(envelopes.encode(SKIPPED), room, offset, epoch) if exclude else ""
        held, floors = self._held.get(room), self._floors.get(room)
        skip: Iterable[str] = exclude
        passed: set[str] = set()  # members whose replay already held this offset
        if held or floors:
            skip = set(exclude)
            for member_id, queue in (held or {}).items():
                queue.append((offset, epoch, notice if member_id in skip else message))
            skip.update(held or ())
            if floors:
                self._skip_replayed(room, floors, offset, epoch, passed)
                skip.update(passed)
        self._result = self.rooms.deliver(room, _frame(message), exclude=skip)
        if exclude:
            self._tell_skipped(room, notice, set(exclude) - passed - set(held or ()))
        bus = self.rooms.bus
        if bus is not None and isinstance(self.history, MemoryHistory):
            bus.publish(room, message, exclude)  # other nodes: live only (history is ours)

    def _tell_skipped(self, room: str, notice: str, member_ids: set[str]) -> None:
        """Send ``notice`` (the ``SKIPPED`` position) to the local members of ``room`` among
        ``member_ids``, found through their personal rooms, never a walk over ``room``."""
        frame = b""
        policy = self.rooms.policy_for(room)
        for member_id in member_ids:
            for ws in self.rooms.members(member_id):  # its personal room: [ws] when local
                if room in ws.rooms:
                    frame = frame or _frame(notice)
                    ws.send_prepared(frame, policy=policy)

    def _skip_replayed(
        self, room: str, floors: dict[str, tuple[str, int]], offset: int, epoch: str, skip: set[str]
    ) -> None:
        """Leave out members whose replay already held ``offset``; past their top (live
        traffic comes in offset order) they need no more checks."""
        for member_id, (top_epoch, top) in list(floors.items()):
            if top_epoch == epoch and offset <= top:
                skip.add(member_id)
            else:
                del floors[member_id]
        if not floors:
            del self._floors[room]

    # -- joining -------------------------------------------------------------------------------

    def joined(self, room: str, rule: Rule, ws: _Member) -> None:
        """``ws`` just joined ``room``: hold its live traffic and replay from its position."""
        positions = _positions_of(ws)
        position = None if positions is None else positions.get(room)
        self._held.setdefault(room, {})[ws.id] = []
        greenlet = gevent.spawn(self._replay, room, rule, ws, positions is None, position)
        self._greenlets.add(greenlet)
        greenlet.link(self._greenlets.discard)

    def _replay(
        self, room: str, rule: Rule, ws: _Member, bad: bool, position: _Position | None
    ) -> None:
        offset, epoch = position if position is not None else (None, None)
        try:
            self._wait_subscribed(room)
            answer = self._history().read(room, offset, epoch, rule.max_replay, rule.size, rule.ttl)
            if bad:
                answer = Replay(False, answer.offset, answer.epoch, reason="bad_position")
        except ConnectionError as exc:
            logger.warning("recoverable room %s: history unreachable: %s", room, exc)
            answer = Replay(False, 0, "", reason="unavailable")
        except BaseException:
            self._release(room, ws)
            raise
        self._answer(room, ws, answer, bad or offset is not None)

    def _wait_subscribed(self, room: str) -> None:
        """With Redis, wait (bounded) until this node receives ``room``'s live traffic, so
        that nothing published after the history read can be missed."""
        bridge = self.bridge
        if bridge is None or isinstance(self.history, MemoryHistory):
            return
        with gevent.Timeout(5.0, False):
            while not bridge.subscribed(room):
                gevent.sleep(0.005)

    def _answer(self, room: str, ws: _Member, answer: Replay, asked: bool) -> None:
        """Send the marker, the replay, then the held live publications above it."""
        held = self._release(room, ws)
        if not ws.is_open or room not in ws.rooms:
            return
        marker: dict[str, Any] = {
            "room": room,
            "recovered": answer.recovered,
            "offset": answer.offset,
            "epoch": answer.epoch,
        }
        if asked and not answer.recovered:
            marker["reason"] = answer.reason
        if answer.recovered:
            marker["replayed"] = len(answer.publications)
        policy = self.rooms.policy_for(room)
        ws.send_prepared(_frame(envelopes.encode(MARKER, marker)), policy=policy)
        for pub in answer.publications:
            message = positioned(pub.body, room, pub.offset, answer.epoch)
            ws.send_prepared(_frame(message), policy=policy)
        top = answer.offset
        for offset, epoch, message in held:
            if epoch != answer.epoch or offset > top:
                ws.send_prepared(_frame(message), policy=policy)
                top = offset if epoch == answer.epoch else top
        if not isinstance(self.history, MemoryHistory):
            self._floors.setdefault(room, {})[ws.id] = (answer.epoch, top)

    def _release(self, room: str, ws: _Member) -> list[tuple[int, str, str]]:
        held = self._held.get(room)
        if held is None:
            return []
        queue = held.pop(ws.id, [])
        if not held:
            del self._held[room]
        return queue


def _frame(message: str) -> bytes:
    return encode_frame(Opcode.TEXT, message.encode("utf-8"))


def _positions_of(ws: _Member) -> dict[str, _Position] | None:
    request = getattr(ws, "request", None)
    if request is None:
        return {}
    return parse_positions(request.args.get(QUERY))
