"""Room presence: who is in a room, paged and bounded, and how many, locally or cluster-wide.

``page(rooms, room, cursor, limit)`` returns at most ``MAX_PAGE`` connection ids per call
(local first, then the other nodes' from the backplane) with the cursor of the next page;
``stats`` counts connections and nodes. ``joined_event``/``left_event`` are the per-room
presence notices; ``notify_local`` sends them to this node's members for another node's
members lost or back (``backplane/liveness.py``). No storage (the bridge writes presence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol

import gevent

from . import envelopes
from .protocol import Opcode, encode_frame

__all__ = [
    "MAX_PAGE", "PresencePage", "joined_event", "left_event", "notify_local", "page", "stats",
]  # fmt: skip

#: the largest page ``page()`` returns, whatever ``limit`` asks
MAX_PAGE = 1000
#: the events presence notices use (``rooms.presence_events(pattern)``)
JOINED, LEFT = "_joined", "_left"


#: notices ``notify_local`` sends between two yields to the hub
NOTICE_BATCH = 100


class _Local(Protocol):
    presence_patterns: list[str]

    def count(self, room: str, *, cluster: bool = False) -> int: ...
    def deliver(self, room: str, frame: bytes) -> Any: ...


class _Index(Protocol):
    def member_ids(self, room: str, *, cluster: bool = False) -> list[str]: ...
    def count(self, room: str, *, cluster: bool = False) -> int: ...
    @property
    def bus(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class PresencePage:
    """One page of a room's members: ``ids``, ``total`` members, and ``next`` (the cursor
    of the following page, None after the last)."""

    ids: list[str]
    total: int
    next: int | None


def page(
    rooms: _Index, room: str, *, cursor: int = 0, limit: int = 100, cluster: bool = False
) -> PresencePage:
    """The members of ``room`` from position ``cursor``, at most ``min(limit, MAX_PAGE)``.

    ``cluster=True`` includes the other nodes' members (it yields for I/O and raises
    ``BackplaneDown`` when the bus is unreachable). Raises ``ValueError`` for a negative
    cursor or a limit below 1.
    """
    if cursor < 0 or limit < 1:
        raise ValueError("cursor must be >= 0 and limit >= 1")
    ids = rooms.member_ids(room, cluster=cluster)
    size = min(limit, MAX_PAGE)
    end = cursor + size
    return PresencePage(ids[cursor:end], len(ids), end if end < len(ids) else None)


def stats(rooms: _Index, room: str, *, cluster: bool = False) -> dict[str, int]:
    """``{"connections": n, "nodes": k}`` for ``room`` (k counts this node when it has
    members); ``cluster=True`` asks the backplane (see ``page``)."""
    local = rooms.count(room)
    nodes = 1 if local else 0
    total = local
    if cluster and rooms.bus is not None:
        for ids in rooms.bus.cluster_members(room).values():
            if ids:
                nodes += 1
                total += len(ids)
    return {"connections": total, "nodes": nodes}


def joined_event(room: str, member_id: str) -> str:
    """``{"event": "_joined", "data": {"room": room, "id": member_id}}``."""
    return envelopes.encode(JOINED, {"room": room, "id": member_id})


def left_event(room: str, member_id: str) -> str:
    """``{"event": "_left", "data": {"room": room, "id": member_id}}``."""
    return envelopes.encode(LEFT, {"room": room, "id": member_id})


def notify_local(rooms: _Local, memberships: Mapping[str, Sequence[str]], *, joined: bool) -> int:
    """Send ``_left`` (or ``_joined``) for each id in ``memberships`` (room -> ids of another
    node's members) to THIS node's members of that room, where presence notices are on
    (``rooms.presence_events``); returns the notices sent (one per id and room, as if each
    had left by itself; the hub gets a turn every ``NOTICE_BATCH``)."""
    sent = 0
    make = joined_event if joined else left_event
    for room, ids in memberships.items():
        if not rooms.count(room) or not any(
            fnmatchcase(room, pattern) for pattern in rooms.presence_patterns
        ):
            continue
        for member_id in ids:
            rooms.deliver(room, encode_frame(Opcode.TEXT, make(room, member_id).encode()))
            sent += 1
            if sent % NOTICE_BATCH == 0:
                gevent.sleep(0)
    return sent
