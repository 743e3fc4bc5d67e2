"""Room history in Redis Streams: one atomic Lua script numbers, stores, expires, publishes.

``RedisHistory`` follows ``wsflask.history.History``. Per room a hash ``wsflask:hmeta:<room>``
(``e`` epoch, ``o`` last offset) and a stream ``wsflask:hist:<room>`` (entry id
``<offset>-0``, field ``d``); publication and PUBLISH happen in one script, so every node
sees a room's publications in offset order. Live copies arrive through the bridge
(``HISTORY_MAGIC`` payloads on the room channel). No presence, no subscriptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..history import LiveHook, Publication, Replay, new_epoch, replay_from
from .base import BackplaneDown
from .redis import ERRORS, cooperative_client
from .wire import BadEnvelope, Envelope, Router, decode, encode

__all__ = ["HISTORY_MAGIC", "PUBLISH_SCRIPT", "Numbering", "RedisHistory"]

#: the first bytes of a numbered publication on a room channel: then b"<offset>:<epoch>:"
#: and a (signed, with ``backplane_secret``) wire envelope holding the body
HISTORY_MAGIC = b"WSH1"

# KEYS: stream, meta. ARGV: body, maxlen, ttl ms, channel, envelope, new epoch.
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local reached = redis.call('PUBLISH', ARGV[4], 'WSH1' .. offset .. ':' .. epoch .. ':' .. ARGV[5])
return {offset, epoch, reached}
"""

#: the script ``Numbering`` runs (an ``Emitter`` registers it on its own client)
PUBLISH_SCRIPT = _PUBLISH

# KEYS: stream, meta. ARGV: from offset (-1: none), count, ttl ms, new epoch.
_READ = """
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local top = tonumber(redis.call('HGET', KEYS[2], 'o'))
local out = {epoch, top}
local from = tonumber(ARGV[1])
if from >= 0 and from < top then
  local entries = redis.call('XRANGE', KEYS[1], (from + 1) .. '-0', '+', 'COUNT', ARGV[2])
  for _, entry in ipairs(entries) do
    table.insert(out, entry[1])
    table.insert(out, entry[2][2])
  end
end
return out
"""


class Node(Protocol):
    """What the history needs of its node's bridge."""

    node: str
    router: Router
    metrics: Any
    on_history: Callable[[bytes], None] | None

    @property
    def key(self) -> bytes | None: ...


class Numbering:
    """Numbers and publishes one publication of a recoverable room with the ``_PUBLISH``
    script: what a node's ``RedisHistory`` does, and what an ``Emitter`` does without one.

    Args:
        script: ``client.register_script(PUBLISH_SCRIPT)`` of a cooperative or plain client.
        router: channel names (the prefix nodes and emitters share).
        origin: the publisher's id on the bus (a node, or ``emitter-...``).
        key: the ``backplane_secret`` HMAC key, or None.
    """

    def __init__(self, script: Any, router: Router, origin: str, key: bytes | None) -> None:
        self.script, self.router, self.origin, self.key = script, router, origin, key

    def publish(
        self, room: str, body: str, size: int, ttl: float, exclude: list[str]
    ) -> tuple[int, str, int]:
        """``(offset, epoch, subscribers reached)`` of ``body`` published to ``room``.

        Raises:
            BackplaneDown: Redis is unreachable or refused; nothing was numbered.
        """
        envelope = encode(Envelope.message(self.origin, 0, body, [room], exclude), self.key)
        prefix = self.router.prefix
        keys = [f"{prefix}:hist:{room}", f"{prefix}:hmeta:{room}"]
        args = [body, size, _ms(ttl), self.router.room(room), envelope, new_epoch()]
        try:
            offset, epoch, reached = self.script(keys=keys, args=args)
        except ERRORS as exc:
            raise BackplaneDown(f"redis history publish failed: {exc}") from exc
        return int(offset), _text(epoch), int(reached)


class RedisHistory:
    """``History`` in Redis for the nodes of one backplane.

    Args:
        url: the Redis URL (the backplane's).
        on_live: where received numbered publications go (``Recovery.live``).
        bridge: this node's bridge (node id, HMAC key; it hands ``WSH1`` payloads over).
    """

    def __init__(self, url: str, on_live: LiveHook, bridge: Node) -> None:
        self.on_live = on_live
        self.bridge = bridge
        self.prefix = bridge.router.prefix
        self._client = cooperative_client(url)
        self._publish = self._client.register_script(_PUBLISH)
        self._read = self._client.register_script(_READ)
        bridge.on_history = self.receive

    def _keys(self, room: str) -> list[str]:
        return [f"{self.prefix}:hist:{room}", f"{self.prefix}:hmeta:{room}"]

    def publish(
        self, room: str, body: str, size: int, ttl: float, exclude: list[str]
    ) -> tuple[int, str]:
        bridge = self.bridge
        writer = Numbering(self._publish, bridge.router, bridge.node, bridge.key)
        offset, epoch, _ = writer.publish(room, body, size, ttl, exclude)
        return offset, epoch

    def read(
        self, room: str, offset: int | None, epoch: str | None, limit: int, size: int, ttl: float
    ) -> Replay:
        start = -1 if offset is None else offset
        try:
            reply: Any = self._read(
                keys=self._keys(room), args=[start, limit + 1, _ms(ttl), new_epoch()]
            )
        except ERRORS as exc:
            raise BackplaneDown(f"redis history read failed: {exc}") from exc
        current, top = _text(reply[0]), int(reply[1])
        pubs = [
            Publication(int(_text(reply[i]).split("-", 1)[0]), _text(reply[i + 1]))
            for i in range(2, len(reply), 2)
        ]
        return replay_from(offset, epoch, top, current, pubs, limit)

    def receive(self, payload: bytes) -> None:
        """A numbered publication from the room channel: verify it, deliver it locally."""
        head, _, raw = payload[4:].partition(b":")
        epoch, _, raw = raw.partition(b":")
        try:
            offset = int(head)
            envelope = decode(raw, self.bridge.key)
        except (ValueError, BadEnvelope):
            if self.bridge.metrics is not None:
                self.bridge.metrics.dropped("backplane_invalid")
            return
        if envelope.kind != "t" or not envelope.rooms:
            return
        body = envelope.body.decode("utf-8")
        self.on_live(envelope.rooms[0], offset, epoch.decode(), body, envelope.exclude)

    def close(self) -> None:
        if self.bridge.on_history == self.receive:
            self.bridge.on_history = None
        self._client.connection_pool.disconnect()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
