"""Emit to rooms from processes that run no server: a Flask view, a cron job, a worker queue.

``Emitter(url)`` publishes the envelopes a node's ``broadcast()`` publishes, so every node
with members in the target rooms delivers them. Thread-safe; plain blocking sockets, no
gevent needed. No server, no subscription, no retries (``BackplaneDown`` means not sent).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .. import envelopes
from .factory import open_backplane
from .wire import Envelope, Router, encode

__all__ = ["Emitter"]


class Emitter:
    """Publish to the rooms of every node on the backplane at ``url``.

    Args:
        url: the nodes' ``backplane`` URL (``redis://...``, or ``memory://name`` in tests).

    Call ``emit()`` / ``send()`` from any thread; ``close()`` (or a ``with`` block) releases
    the connection. Typical use::

        emitter = Emitter(os.environ["WSFLASK_BACKPLANE"])
        emitter.emit("price", {"sym": "ACME", "bid": 12.5}, to="ticker:ACME")

    Raises:
        ConfigError: an unknown URL scheme, or ``redis`` not installed (with the install hint).
    """

    def __init__(self, url: str, *, secret: str | None = None) -> None:
        self.url = url
        #: the nodes' ``backplane_secret``: with one set, unsigned envelopes are dropped
        self._key = secret.encode() if secret else None
        #: the origin id on the bus (nodes never mistake it for one of theirs)
        self.origin = f"emitter-{secrets.token_hex(6)}"
        self._bus = open_backplane(url, cooperative=False)
        self._router = Router()
        self._seq = 0
        # Nodes drop an envelope numbered below one they have handled (bridge.py), so the
        # number and the publish happen together, one sending thread at a time.
        self._lock = threading.Lock()

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
        return self.send(envelopes.encode(event, data), to=to, skip=skip)

    def send(
        self,
        message: str | bytes,
        *,
        to: str | Iterable[str] | None = None,
        skip: str | Iterable[str] = (),
    ) -> int:
        """Send a text (``str``) or binary message to ``to``; return the nodes reached.

        ``to`` is a room, a list of rooms, a connection id (``ws.id``) or ``None`` for every
        connection of every node; ``skip`` leaves connection ids out. The count is per
        channel subscription (a node subscribed to two target rooms counts twice, but
        delivers once).

        Raises:
            BackplaneDown: the bus is unreachable; nothing (or only part) was published.
        """
        channels, names = self._router.route(to)
        excluded = [skip] if isinstance(skip, str) else list(skip)
        with self._lock:
            self._seq += 1
            payload = encode(
                Envelope.message(self.origin, self._seq, message, names, excluded), self._key
            )
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
