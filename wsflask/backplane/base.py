"""The ``Backplane`` protocol: what a message bus between nodes must offer.

Also ``BackplaneDown`` (the one error a bus raises when it is unreachable or refuses) and the
``READY`` marker ``listen()`` yields once a session is subscribed. A leaf: it imports no
implementation; no envelopes (``wire.py``), reconnection or delivery (``bridge.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from ..errors import WsflaskError

__all__ = ["READY", "Backplane", "BackplaneDown"]

#: What ``listen()`` yields first in each session, once every channel is subscribed.
READY: tuple[str, bytes] = ("", b"")


class BackplaneDown(WsflaskError, ConnectionError):
    """The bus is unreachable (refused, reset, timed out, closed under us) or refused a
    command (an error reply such as Redis' OOM or NOPERM); callers back off and retry."""


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

    def is_subscribed(self, channel: str) -> bool:
        """True once the live session receives ``channel`` (the bus confirmed it)."""
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
        """Remove ``node``'s memberships and its beat now (a clean shutdown)."""
        ...

    def beat(self, node: str, ttl: float) -> None:
        """Mark ``node`` alive for ``ttl`` seconds (its heartbeat, renewed every interval);
        ``presence_read`` leaves out the members of a node whose beat lapsed."""
        ...

    def liveness(self) -> dict[str, float]:
        """Every node with a beat or memberships stored -> seconds its beat has left
        (``<= 0``: lapsed). Nodes with neither are forgotten."""
        ...

    def presence_of(self, node: str) -> dict[str, list[str]]:
        """``node``'s memberships as last written (room -> ids), also after its beat
        lapsed, until they expire."""
        ...

    def close(self) -> None:
        """Release connections; a running ``listen()`` returns. Idempotent."""
        ...
