"""Deadlines: one greenlet that bounds how long a connection may hold a budget or a session.

Every tick it visits the open connections and closes (Close ``1008``, through
``WebSocket.close_now``) those whose fragmented message stayed unfinished for
``fragment_timeout`` seconds, and those whose ``ws.session["expires"]`` (a Unix timestamp,
like a JWT ``exp``) has passed. No timer per message or connection, no cost on the message
path; it is a ``Service`` the server starts and stops. Heartbeat pings live in heartbeat.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.event import Event

from .protocol import CloseCode

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Deadlines", "Timed"]

logger = logging.getLogger("wsflask")


class Timed(Protocol):
    """What a deadline check needs of a connection (``WebSocket`` is one)."""

    @property
    def receiving_message(self) -> bool: ...
    def peek_session(self) -> dict[str, Any] | None: ...
    def close_now(self, code: int, reason: str = "") -> None: ...


class Deadlines:
    """Close connections past ``fragment_timeout`` or their session's ``expires``.

    Args:
        connections: the live set of open connections (``Server.connections``).
        config: ``fragment_timeout`` (``0``: no limit).
        clock: monotonic seconds, for fragment ages; wall: Unix seconds, for ``expires``.
        max_tick: the coarsest tick; a fragment timeout ``t`` ticks every ``t / 4`` at most.
        note: told ``"fragment_timeout"`` or ``"session_expired"`` per close (metrics).

    A message is timed from the first tick that sees it unfinished, so it is closed between
    ``fragment_timeout`` and ``fragment_timeout`` plus two ticks after its first fragment.
    """

    def __init__(
        self,
        connections: Collection[Timed],
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_tick: float = 1.0,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.connections = connections
        self.note = note
        self.fragment_timeout = config.fragment_timeout
        self.clock = clock
        self.wall = wall
        limit = self.fragment_timeout / 4 if self.fragment_timeout else max_tick
        self.tick = max(0.01, min(max_tick, limit))
        #: the counts of connections closed, by reason ("fragment_timeout", "expired")
        self.closed: dict[str, int] = {"fragment_timeout": 0, "expired": 0}
        self._seen: dict[Timed, float] = {}  # first tick that saw a message unfinished
        self._stopping = Event()
        self._greenlet: gevent.Greenlet | None = None

    def reconfigure(self, config: Config, max_tick: float = 1.0) -> None:
        """Adopt a reloaded ``fragment_timeout`` (``wsflask.reload``) from the next tick."""
        self.fragment_timeout = config.fragment_timeout
        limit = self.fragment_timeout / 4 if self.fragment_timeout else max_tick
        self.tick = max(0.01, min(max_tick, limit))

    def start(self) -> None:
        """Spawn the greenlet (idempotent)."""
        if self._greenlet is None or self._greenlet.dead:
            self._stopping.clear()
            self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float = 1.0) -> None:
        """End the greenlet; idempotent."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            self._stopping.set()
            greenlet.join(timeout)
            if not greenlet.dead:
                greenlet.kill(block=False)

    def _run(self) -> None:
        while not self._stopping.wait(self.tick):
            try:
                self.run_due()
            except Exception:  # the safety net: a bad connection must not end the checks
                logger.exception("deadline check failed")

    def run_due(self) -> int:
        """Check every connection once; return how many were closed (tests call it)."""
        now, wall, closed = self.clock(), self.wall(), 0
        seen, timeout = self._seen, self.fragment_timeout
        for ws in list(self.connections):
            if timeout and ws.receiving_message:
                started = seen.setdefault(ws, now)
                if now - started >= timeout:
                    closed += self._close(ws, "fragment_timeout", "message not finished in time")
                    continue
            elif seen:
                seen.pop(ws, None)
            session = ws.peek_session()
            expires = session.get("expires") if session else None
            if isinstance(expires, int | float) and expires <= wall:
                closed += self._close(ws, "expired", "session expired")
        if len(seen) > len(self.connections):  # forget closed connections
            live = set(self.connections)
            for ws in [ws for ws in seen if ws not in live]:
                del seen[ws]
        return closed

    def _close(self, ws: Timed, kind: str, reason: str) -> int:
        self._seen.pop(ws, None)
        self.closed[kind] += 1
        if self.note is not None:
            self.note("session_expired" if kind == "expired" else kind)
        ws.close_now(CloseCode.POLICY, reason)
        return 1
