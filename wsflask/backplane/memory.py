"""The in-process backplane: a named hub that Apps of one process share as a bus.

``memory://name``: two Apps on one hub behave as two nodes (tests, single-process code that
wants the bridge's behaviour); ``Hub.cut()``/``restore()`` simulate an outage. No
cross-process delivery (``--workers`` needs Redis), no persistence, and a publish never waits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from gevent.queue import Queue

from .base import READY, BackplaneDown

__all__ = ["Hub", "MemoryBackplane", "hub"]

_HUBS: dict[str, Hub] = {}
_DOWN: Any = object()
_CLOSED: Any = object()


class Hub:
    """The shared state of one ``memory://name`` bus."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: False while ``cut()`` simulates an outage
        self.up = True
        self.listeners: set[MemoryBackplane] = set()
        #: node -> (monotonic expiry, room -> ids)
        self.presence: dict[str, tuple[float, dict[str, list[str]]]] = {}
        #: node -> monotonic time its beat lapses
        self.alive: dict[str, float] = {}

    def cut(self) -> None:
        """Simulate an outage: sessions end with ``BackplaneDown``; publishes raise."""
        self.up = False
        for listener in list(self.listeners):
            listener.inbox.put(_DOWN)

    def restore(self) -> None:
        """End the simulated outage; listeners reconnect on their next attempt."""
        self.up = True

    def check(self) -> None:
        if not self.up:
            raise BackplaneDown(f"memory://{self.name} is cut")


def hub(name: str = "default") -> Hub:
    """The hub called ``name`` (created on first use)."""
    found = _HUBS.get(name)
    if found is None:
        found = _HUBS[name] = Hub(name)
    return found


class MemoryBackplane:
    """One node's handle on the hub ``name``; see ``Backplane`` for the method contracts.

    A publish puts the payload in the inbox (an unbounded gevent queue, drained at once) of
    every instance of the hub subscribed to the channel; ``listen()`` yields from its own
    inbox. Presence is a dict per hub with monotonic expiry times.
    """

    def __init__(self, name: str = "default") -> None:
        self.hub = hub(name)
        self.inbox: Queue[Any] = Queue()
        self.channels: set[str] = set()
        #: False starves the current session (nothing delivered: a silent subscriber, RD-03);
        #: the next ``listen()`` makes it True again
        self.live = False
        self._closed = False

    def publish(self, channel: str, payload: bytes) -> int:
        self.hub.check()
        receivers = 0
        for listener in self.hub.listeners:
            if listener.live and channel in listener.channels:
                listener.inbox.put((channel, payload))
                receivers += 1
        return receivers

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for channel, payload in items:
            self.publish(channel, payload)

    def subscribe(self, channel: str) -> None:
        self.channels.add(channel)

    def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)

    def is_subscribed(self, channel: str) -> bool:
        return self.live and channel in self.channels and self in self.hub.listeners

    def listen(self) -> Iterator[tuple[str, bytes]]:
        self.hub.check()
        if self._closed:
            return
        self.inbox = Queue()
        self.live = True
        self.hub.listeners.add(self)
        try:
            yield READY
            while True:
                item = self.inbox.get()
                if item is _CLOSED:
                    return
                if item is _DOWN:
                    raise BackplaneDown(f"memory://{self.hub.name} was cut")
                yield item
        finally:
            self.hub.listeners.discard(self)

    def presence_write(self, node: str, rooms: Mapping[str, Sequence[str]], ttl: float) -> None:
        self.hub.check()
        self.hub.presence[node] = (
            time.monotonic() + ttl,
            {room: list(ids) for room, ids in rooms.items()},
        )

    def presence_read(self, room: str) -> dict[str, list[str]]:
        self.hub.check()
        now = time.monotonic()
        out: dict[str, list[str]] = {}
        for node, (expiry, rooms) in list(self.hub.presence.items()):
            if expiry <= now:
                del self.hub.presence[node]
            elif room in rooms and self.hub.alive.get(node, 0.0) > now:
                out[node] = list(rooms[room])
        return out

    def presence_clear(self, node: str) -> None:
        self.hub.presence.pop(node, None)
        self.hub.alive.pop(node, None)

    def beat(self, node: str, ttl: float) -> None:
        self.hub.check()
        self.hub.alive[node] = time.monotonic() + ttl

    def liveness(self) -> dict[str, float]:
        self.hub.check()
        now = time.monotonic()
        out: dict[str, float] = {}
        for node in set(self.hub.alive) | set(self.hub.presence):
            left = self.hub.alive.get(node, now) - now
            stored = self.hub.presence.get(node, (now, {}))[0] > now
            if left > 0 or stored:
                out[node] = max(0.0, left)
            else:
                self.hub.alive.pop(node, None)
                self.hub.presence.pop(node, None)
        return out

    def presence_of(self, node: str) -> dict[str, list[str]]:
        self.hub.check()
        expiry, rooms = self.hub.presence.get(node, (0.0, {}))
        if expiry <= time.monotonic():
            return {}
        return {room: list(ids) for room, ids in rooms.items()}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.inbox.put(_CLOSED)
