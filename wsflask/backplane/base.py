"""The ``Backplane`` protocol: what a message bus between nodes must offer, and its factory.

What it does: defines ``Backplane`` (a ``typing.Protocol``: ``publish``, ``publish_many``,
``subscribe``, ``unsubscribe``, ``listen``, ``close`` and three presence calls),
``BackplaneDown`` (the one error a bus raises when it is unreachable), the ``READY`` marker
``listen()`` yields when a subscription session is up, and ``open_backplane(url)``, which picks
the implementation from the URL scheme and imports ``redis`` only for ``redis://`` URLs.

What it does not do: no envelopes (``envelope.py``), no reconnection policy, probes or
delivery into rooms (``bridge.py`` does those, the same way for every implementation).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from ..errors import ConfigError, WsflaskError

__all__ = ["READY", "SCHEMES", "Backplane", "BackplaneDown", "open_backplane"]

#: What ``listen()`` yields first in each session, once every channel is subscribed.
READY: tuple[str, bytes] = ("", b"")
#: URL schemes ``open_backplane`` understands.
SCHEMES = ("memory://", "redis://", "unix://")


class BackplaneDown(WsflaskError, ConnectionError):
    """The bus is unreachable (refused, reset, timed out, or closed under us)."""


@runtime_checkable
class Backplane(Protocol):
    """A publish/subscribe bus shared by the nodes of one deployment.

    ``subscribe``/``unsubscribe`` record intent and never block: the implementation applies
    them to the live session, and subscribes every wanted channel again in each new session.
    ``listen()`` opens one session: it connects, subscribes, yields ``READY``, then yields
    ``(channel, payload)`` until the link breaks (``BackplaneDown``) or ``close()`` (it
    returns). The caller reconnects by calling ``listen()`` again, after a backoff of its own.
    ``publish*`` and the presence calls may block the calling greenlet for I/O and raise
    ``BackplaneDown``.
    """

    def publish(self, channel: str, payload: bytes) -> int:
        """Publish ``payload`` on ``channel``; return how many subscribers got it."""
        ...

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Publish several ``(channel, payload)`` in order, in one round trip if possible."""
        ...

    def subscribe(self, channel: str) -> None:
        """Want messages of ``channel`` (now, and in every later session)."""
        ...

    def unsubscribe(self, channel: str) -> None:
        """Stop wanting ``channel``."""
        ...

    def listen(self) -> Iterator[tuple[str, bytes]]:
        """One subscription session: ``READY``, then ``(channel, payload)`` items."""
        ...

    def presence_write(self, node: str, rooms: Mapping[str, Sequence[str]], ttl: float) -> None:
        """Replace ``node``'s memberships (room -> connection ids); they expire after ``ttl``."""
        ...

    def presence_read(self, room: str) -> dict[str, list[str]]:
        """Connection ids in ``room`` per live node (expired nodes are left out)."""
        ...

    def presence_clear(self, node: str) -> None:
        """Remove ``node``'s memberships now (a clean shutdown)."""
        ...

    def close(self) -> None:
        """Release connections; a running ``listen()`` returns. Idempotent."""
        ...


def open_backplane(url: str, *, cooperative: bool = True) -> Backplane:
    """Build the backplane for ``url``: ``memory://[name]`` or ``redis://host:port/db``.

    Args:
        url: the bus address (``Config.backplane``, ``WSFLASK_BACKPLANE``).
        cooperative: Redis only: use gevent sockets (True, inside a server) or plain ones
            (False, for an ``Emitter`` in a process without gevent).

    Raises:
        ConfigError: an unknown scheme, or ``redis`` is not installed (with the install hint).
    """
    if url.startswith("memory://"):
        from .memory import MemoryBackplane

        return MemoryBackplane(url[len("memory://") :] or "default")
    if url.startswith(("redis://", "unix://")):
        from .redis import RedisBackplane

        return RedisBackplane(url, cooperative=cooperative)
    raise ConfigError(
        f"backplane={url!r} is invalid: expected a URL starting with {', '.join(SCHEMES)}"
    )
