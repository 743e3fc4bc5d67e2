"""A reconnecting client for recoverable rooms: it remembers positions and recovers by itself.

``RecoveringClient(url)`` connects with ``wsflask.client.connect``, reads JSON event envelopes,
records each recoverable room's last ``(offset, epoch)``, and on a lost connection reconnects
(capped backoff) presenting them in the ``recover`` query parameter; a ``_gap`` notice for such
a room makes it reconnect at once. Copies of publications it already has are dropped and
counted, never shown twice. No send queue while disconnected.
"""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any
from urllib.parse import quote

import gevent

from .client import connect
from .envelopes import decode
from .errors import ConnectionClosed
from .websocket import WebSocket

__all__ = ["RecoveringClient"]

#: the event the server answers each join of a recoverable room with (``recovery.MARKER``)
MARKER = "_recovery"
#: the backplane's gap notice (``bridge.default_gap_message``): a reason to recover at once
GAP = "_gap"
#: what the server sends a member left out of a publication (``recovery.SKIPPED``): the
#: position moves on, nothing is returned
SKIPPED = "_skipped"


class RecoveringClient:
    """One logical connection to ``url`` that survives reconnects without losing events.

    Args:
        url: ``ws://`` or ``wss://`` URL (a query string of its own is kept).
        attempts: reconnect attempts per loss before ``receive()`` raises (None: forever).
        backoff_max: the cap of the exponential backoff between attempts, in seconds.
        connect_kwargs: passed to ``wsflask.client.connect``.

    ``positions`` (room -> ``(offset, epoch)``), ``duplicates`` (copies dropped), ``gaps``
    (offsets skipped within an epoch, e.g. a member under the ``drop`` backpressure policy:
    each makes it reconnect and recover from the last offset it has),
    ``reconnects`` and ``last_markers`` (room -> the latest ``_recovery`` data) are public.
    """

    def __init__(
        self,
        url: str,
        *,
        attempts: int | None = 20,
        backoff_max: float = 1.0,
        **connect_kwargs: Any,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.backoff_max = backoff_max
        self.connect_kwargs = connect_kwargs
        self.positions: dict[str, tuple[int, str]] = {}
        self.duplicates = 0
        self.gaps = 0
        self.reconnects = 0
        self.last_markers: dict[str, dict[str, Any]] = {}
        self.ws: WebSocket | None = None
        self._closed = False

    def target(self) -> str:
        """The URL to connect to now: ``url`` plus ``recover=<positions as JSON>``."""
        if not self.positions:
            return self.url
        value = {room: {"offset": o, "epoch": e} for room, (o, e) in self.positions.items()}
        encoded = quote(json.dumps(value, separators=(",", ":")), safe="")
        return f"{self.url}{'&' if '?' in self.url else '?'}recover={encoded}"

    def connect(self) -> WebSocket:
        """Open (or reopen) the connection, presenting every known position."""
        self.ws = connect(self.target(), **self.connect_kwargs)
        return self.ws

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event envelope (markers included, copies dropped); reconnects as needed.

        Raises ``TimeoutError`` when ``timeout`` passes, ``ConnectionClosed`` after
        ``close()``, and the last connect error when ``attempts`` reconnects in a row failed.
        """
        while True:
            ws = self.ws if self.ws is not None else self._reconnect()
            message = ws.receive(timeout=timeout)
            if message is None:  # closed: reconnect, presenting our positions
                self.ws = None
                continue
            envelope = decode(message) if isinstance(message, str) else None
            if envelope is not None and self._track(envelope):
                return envelope

    def _track(self, envelope: dict[str, Any]) -> bool:
        """Update positions; False for a copy already seen."""
        data = envelope.get("data")
        if (
            envelope["event"] == GAP
            and isinstance(data, dict)
            and data.get("room") in self.positions
        ):
            self.drop()  # live traffic may be lost on the server: reconnect and recover it
            return True
        if envelope["event"] == MARKER and isinstance(data, dict):
            room = str(data.get("room"))
            self.last_markers[room] = data
            known = data.get("epoch") and (not data.get("recovered") or room not in self.positions)
            if known:  # no epoch ("unavailable"): keep what we had, to try again later
                self.positions[room] = (int(data["offset"]), str(data["epoch"]))
            return True
        where, offset, epoch = envelope.get("room"), envelope.get("offset"), envelope.get("epoch")
        if not isinstance(where, str) or not isinstance(offset, int) or not isinstance(epoch, str):
            return True
        known = self.positions.get(where)
        if known is not None and known[1] == epoch:
            if offset <= known[0]:
                self.duplicates += 1
                return False
            if offset > known[0] + 1:  # missed on the way (a drop policy): recover it
                self.gaps += 1
                self.drop()
                return False
        self.positions[where] = (offset, epoch)
        return bool(envelope["event"] != SKIPPED)

    def _reconnect(self) -> WebSocket:
        if self._closed:
            raise ConnectionClosed(1000, "closed by the client")
        failures = 0
        while True:
            try:
                ws = self.connect()
                self.reconnects += 1
                return ws
            except (OSError, ConnectionError, TimeoutError, ValueError):
                failures += 1
                if self.attempts is not None and failures >= self.attempts:
                    raise
            delay = min(self.backoff_max, 0.05 * 2 ** min(failures, 20))
            gevent.sleep(delay * random.uniform(0.5, 1.0))

    def emit(self, event: str, data: Any = None) -> None:
        """Send an event envelope on the current connection (connecting first if needed)."""
        ws = self.ws if self.ws is not None else self._reconnect()
        ws.emit(event, data)

    def drop(self) -> None:
        """Abort the current connection (tests, or a client that knows its link is dead);
        the next ``receive()`` reconnects and recovers."""
        if self.ws is not None:
            self.ws.abort()  # the next receive() reads the end, cleans up, reconnects

    def close(self) -> None:
        """Close for good: no more reconnects."""
        self._closed = True
        ws, self.ws = self.ws, None
        if ws is None:
            return
        if ws.is_open:
            ws.close()
        else:  # dropped: read to the end, which releases the socket
            with contextlib.suppress(TimeoutError):
                while ws.receive(timeout=1.0) is not None:
                    pass
