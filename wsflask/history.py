"""Room history for recovery: per-room streams of publications numbered by (epoch, offset).

``History`` is the small protocol both backends follow: ``MemoryHistory`` (one process: a
bounded deque per room and a TTL) and ``RedisHistory`` (Redis Streams; one Lua script
numbers, appends, expires and publishes atomically). ``Replay`` is what a position asks back.
No delivery, no holding of live traffic, no client protocol (``recovery.py``).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Protocol

__all__ = [
    "History", "MemoryHistory", "Publication", "Replay", "new_epoch", "replay_from",
]  # fmt: skip

#: the reasons a position cannot be recovered (``Replay.reason``)
TRIMMED, EPOCH, TOO_MANY, AHEAD = "trimmed", "epoch_changed", "too_many", "unknown_offset"


def new_epoch() -> str:
    """A fresh random epoch (8 hex characters): chosen when a room's stream is created."""
    return secrets.token_hex(4)


@dataclass(slots=True)
class Publication:
    """One stored publication: its ``offset`` in the room's epoch and its message body."""

    offset: int
    body: str


@dataclass(slots=True)
class Replay:
    """The answer to a position: ``recovered`` with ``publications`` (possibly none), or not.

    ``offset``/``epoch`` are the stream's top when read: the position after the replay.
    ``reason`` says why not (``trimmed``, ``epoch_changed``, ``too_many``,
    ``unknown_offset``); an unrecoverable answer carries no publications at all.
    """

    recovered: bool
    offset: int
    epoch: str
    publications: list[Publication] = field(default_factory=list)
    reason: str | None = None


def replay_from(
    offset: int | None,
    epoch: str | None,
    top: int,
    current_epoch: str,
    publications: list[Publication],
    limit: int,
) -> Replay:
    """Decide a replay: ``publications`` are the stored ones after ``offset`` (ascending,
    at most ``limit + 1``); whole or nothing, never a partial replay."""
    if offset is None or epoch is None:  # a first join: nothing to recover, a position given
        return Replay(False, top, current_epoch, reason=None)
    if epoch != current_epoch:
        return Replay(False, top, current_epoch, reason=EPOCH)
    if offset > top:
        return Replay(False, top, current_epoch, reason=AHEAD)
    missed = top - offset
    if missed > limit:
        return Replay(False, top, current_epoch, reason=TOO_MANY)
    wanted = [p for p in publications if p.offset > offset]
    if len(wanted) != missed or (wanted and wanted[0].offset != offset + 1):
        return Replay(False, top, current_epoch, reason=TRIMMED)
    return Replay(True, top, current_epoch, wanted)


class History(Protocol):
    """Where the publications of recoverable rooms are numbered and kept.

    ``publish`` numbers one publication and makes it live (the backend delivers it through
    ``on_live(room, offset, epoch, body, exclude)``, in offset order); ``read`` answers a
    position with a ``Replay`` of at most ``limit`` publications. ``size``/``ttl`` bound each
    room's stream: a stream idle ``ttl`` seconds is lost (its next publication opens a new
    epoch). ``publish`` and ``read`` may yield for I/O and raise ``BackplaneDown``.
    """

    def publish(
        self, room: str, body: str, size: int, ttl: float, exclude: list[str]
    ) -> tuple[int, str]: ...

    def read(
        self, room: str, offset: int | None, epoch: str | None, limit: int, size: int, ttl: float
    ) -> Replay: ...

    def close(self) -> None: ...


#: ``on_live(room, offset, epoch, body, exclude)``: a numbered publication to deliver
LiveHook = Callable[[str, int, str, str, list[str]], None]


class _Stream:
    __slots__ = ("entries", "epoch", "expires", "top")

    def __init__(self, size: int, ttl: float) -> None:
        self.epoch = new_epoch()
        self.top = 0
        self.entries: deque[Publication] = deque(maxlen=size)
        self.expires = monotonic() + ttl


class MemoryHistory:
    """``History`` in this process: a deque of ``size`` publications per room.

    Delivery is synchronous: ``publish`` calls ``on_live`` before it returns. Not shared
    between processes: with ``--workers`` or several machines use ``RedisHistory``.
    """

    def __init__(self, on_live: LiveHook) -> None:
        self.on_live = on_live
        self._streams: dict[str, _Stream] = {}

    def _stream(self, room: str, size: int, ttl: float) -> _Stream:
        stream = self._streams.get(room)
        now = monotonic()
        if stream is None or stream.expires <= now:
            stream = self._streams[room] = _Stream(size, ttl)
        stream.expires = now + ttl
        return stream

    def publish(
        self, room: str, body: str, size: int, ttl: float, exclude: list[str]
    ) -> tuple[int, str]:
        stream = self._stream(room, size, ttl)
        stream.top += 1
        stream.entries.append(Publication(stream.top, body))
        self._prune(monotonic())
        self.on_live(room, stream.top, stream.epoch, body, exclude)
        return stream.top, stream.epoch

    def read(
        self, room: str, offset: int | None, epoch: str | None, limit: int, size: int, ttl: float
    ) -> Replay:
        stream = self._stream(room, size, ttl)  # a first join opens the stream (its epoch)
        entries = stream.entries
        start = max(0, len(entries) - (stream.top - (offset or 0)))
        chosen = [entries[i] for i in range(start, min(len(entries), start + limit + 1))]
        return replay_from(offset, epoch, stream.top, stream.epoch, chosen, limit)

    def _prune(self, now: float) -> None:
        """Forget expired streams (at most a few per call: bounded work per publish)."""
        for room in list(self._streams)[:4]:
            stream = self._streams[room]
            if stream.expires <= now:
                del self._streams[room]
            else:
                self._streams[room] = self._streams.pop(room)  # rotate: next call checks others

    def close(self) -> None:
        self._streams.clear()
