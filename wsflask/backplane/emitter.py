"""Emit to rooms from processes that run no server: a Flask view, a cron job, a worker queue.

``Emitter(url)`` publishes the envelopes a node's ``broadcast()`` publishes, so every node
with members in the target rooms delivers them; rooms declared with ``recoverable()`` get
numbered publications (offset, epoch) by the nodes' own Lua script, so they replay on
recovery. Thread-safe; plain blocking sockets, no gevent needed. No server, no
subscription, no retries (``BackplaneDown`` means not sent).
"""

from __future__ import annotations

import fnmatch
import secrets
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .. import envelopes
from ..errors import ConfigError
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
        emitter.recoverable("chat:*", history_size=1000, history_ttl=300)  # as the nodes do
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
        #: ``recoverable()`` rules: (pattern, history_size, history_ttl), first match wins
        self._rules: list[tuple[str, int, float]] = []
        self._numbering: Any = None
        self._client: Any = None

    def recoverable(
        self, pattern: str, *, history_size: int = 1000, history_ttl: float = 300.0
    ) -> None:
        """Number publications to rooms matching ``pattern`` as the nodes do: declare the
        same rules as the nodes' ``app.rooms.recoverable()`` (a room the nodes recover but
        the emitter does not number reaches clients without an offset, and is not replayed).

        Raises:
            ConfigError: the bus is not Redis (the history lives in Redis), or bad bounds.
        """
        if not self.url.startswith(("redis://", "unix://")):
            raise ConfigError(f"Emitter.recoverable needs a Redis backplane, not {self.url!r}")
        if history_size < 1 or history_ttl <= 0:
            raise ConfigError("history_size must be >= 1 and history_ttl > 0")
        if self._numbering is None:
            from .history import PUBLISH_SCRIPT, Numbering
            from .redis import cooperative_client

            client = cooperative_client(self.url, cooperative=False)
            self._client = client
            script = client.register_script(PUBLISH_SCRIPT)
            self._numbering = Numbering(script, self._router, self.origin, self._key)
        self._rules.append((pattern, history_size, float(history_ttl)))

    def _rule(self, room: str) -> tuple[str, int, float] | None:
        return next((r for r in self._rules if fnmatch.fnmatchcase(room, r[0])), None)

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
        delivers once). A room matching a ``recoverable()`` rule gets its publication
        numbered, stored and published by one Lua script (one round trip per such room).

        Raises:
            BackplaneDown: the bus is unreachable; nothing (or only part) was published.
            ValueError: ``message`` to a recoverable room is not an event envelope (JSON
                object text): use ``emit()``.
        """
        excluded = [skip] if isinstance(skip, str) else list(skip)
        reached = 0
        if self._rules and to is not None:
            to, reached = self._publish_numbered(to, message, excluded)
            if not to:
                return reached
        channels, names = self._router.route(to)
        with self._lock:
            self._seq += 1
            payload = encode(
                Envelope.message(self.origin, self._seq, message, names, excluded), self._key
            )
            return reached + sum(self._bus.publish(channel, payload) for channel in channels)

    def _publish_numbered(
        self, to: str | Iterable[str], message: str | bytes, excluded: list[str]
    ) -> tuple[list[str], int]:
        """Publish to the recoverable rooms of ``to`` through the numbering script; return
        the other rooms and the subscribers reached."""
        names = [to] if isinstance(to, str) else list(dict.fromkeys(to))
        rest, reached = [], 0
        for name in names:
            rule = self._rule(name)
            if rule is None:
                rest.append(name)
                continue
            if not isinstance(message, str) or not message.startswith("{"):
                raise ValueError(f"recoverable room {name!r} carries event envelopes: use emit()")
            _, size, ttl = rule
            reached += self._numbering.publish(name, message, size, ttl, excluded)[2]
        return rest, reached

    def close(self) -> None:
        """Release the connection to the bus (idempotent)."""
        self._bus.close()
        if self._numbering is not None:
            self._client.connection_pool.disconnect()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
