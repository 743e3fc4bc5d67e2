"""Emit to rooms from processes that run no server: a Flask view, a cron job, a worker queue.

What it does: ``Emitter("redis://127.0.0.1:6379/0")`` publishes the same envelopes a node's
``broadcast()`` publishes (``wsflask.backplane.envelope``: JSON header + raw body, never
pickle), so every node with members in the target rooms delivers the message to them.
``emit("news", data, to="lobby")`` sends the JSON envelope ``{"event": "news", "data": ...}``
(what ``app.emit`` sends); ``send(text_or_bytes, to=...)`` sends a raw message; ``to`` is a
room, a list of rooms, a connection id (``ws.id``) or ``None`` for every connection of every
node; ``skip`` leaves connection ids out.

What it does not do: no server, no subscription, no gevent requirement: with Redis it uses
plain blocking sockets (a monkey-patched process makes them cooperative), and each call
returns when Redis has taken the message. No retries: ``BackplaneDown`` tells the caller the
message was not published.

Typical use::

    emitter = Emitter(os.environ["WSFLASK_BACKPLANE"])
    emitter.emit("price", {"sym": "ACME", "bid": 12.5}, to="ticker:ACME")
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .backplane.base import open_backplane
from .backplane.envelope import Envelope, Router, encode

__all__ = ["Emitter"]


class Emitter:
    """Publish to the rooms of every node on the backplane at ``url``.

    Args:
        url: the nodes' ``backplane`` URL (``redis://...``, or ``memory://name`` in tests).

    Call ``emit()`` / ``send()``; ``close()`` (or a ``with`` block) releases the connection.

    Raises:
        ConfigError: an unknown URL scheme, or ``redis`` not installed (with the install hint).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        #: the origin id on the bus (nodes never mistake it for one of theirs)
        self.origin = f"emitter-{secrets.token_hex(6)}"
        self._bus = open_backplane(url, cooperative=False)
        self._router = Router()
        self._seq = 0

    def emit(
        self,
        event: str,
        data: Any = None,
        *,
        to: str | Iterable[str] | None = None,
        skip: str | Iterable[str] = (),
    ) -> int:
        """Send ``{"event": event, "data": data}`` to ``to``; return the nodes reached.

        Raises:
            BackplaneDown: the bus is unreachable; nothing was published.
        """
        text = json.dumps({"event": event, "data": data}, separators=(",", ":"))
        return self.send(text, to=to, skip=skip)

    def send(
        self,
        message: str | bytes,
        *,
        to: str | Iterable[str] | None = None,
        skip: str | Iterable[str] = (),
    ) -> int:
        """Send a text (``str``) or binary message to ``to``; return the nodes reached.

        The count is per channel subscription (a node subscribed to two target rooms counts
        twice, but delivers once).

        Raises:
            BackplaneDown: the bus is unreachable; nothing (or only part) was published.
        """
        channels, names = self._router.route(to)
        kind, body = ("t", message.encode()) if isinstance(message, str) else ("b", message)
        self._seq += 1
        excluded = [skip] if isinstance(skip, str) else list(skip)
        payload = encode(Envelope(self.origin, kind, bytes(body), self._seq, names, excluded))
        return sum(self._bus.publish(channel, payload) for channel in channels)

    def close(self) -> None:
        """Release the connection to the bus (idempotent)."""
        self._bus.close()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
