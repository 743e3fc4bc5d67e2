"""The Redis backplane: Redis pub/sub as the bus, expiring hashes for cluster presence.

Gevent sockets inside a server (cooperative, never monkey-patching), plain ones for an
``Emitter``; every failure, error replies included, is ``BackplaneDown`` (redis-py retries are
off: the bridge owns the backoff). No Sentinel, Cluster or TLS. Imported only for a
``redis://`` URL: ``pip install wsflask[redis]``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import gevent
import gevent.socket
from gevent.event import Event

from ..errors import ConfigError
from .base import READY, BackplaneDown
from .wire import Router

try:
    import redis as _redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError(
        "the Redis backplane needs the redis package: pip install wsflask[redis]"
    ) from exc

__all__ = ["ERRORS", "RedisBackplane", "cooperative_client"]

#: Seconds to connect to Redis, and to wait for a command's answer (not for pub/sub reads).
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
#: Failures reported as ``BackplaneDown``: the link, and error replies (OOM, NOPERM,
#: READONLY...), which the bridge handles the same way: counted, logged, retried.
_ERRORS = (
    _redis.exceptions.ConnectionError,
    _redis.exceptions.TimeoutError,
    _redis.exceptions.ResponseError,
    OSError,
)
ERRORS = _ERRORS
_SUBSCRIPTION = (b"subscribe", b"unsubscribe")


def _options(url: str, cooperative: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "protocol": 2,
    }  # RESP2: pub/sub replies are plain arrays
    if cooperative:
        options["connection_class"] = (
            _GeventUnixConnection if url.startswith("unix://") else _GeventConnection
        )
    return options


def cooperative_client(url: str, *, cooperative: bool = True) -> Any:
    """A redis-py client with the backplane's timeouts and no retries (the room history's
    connection pool): on gevent sockets, or on plain ones with ``cooperative=False`` (an
    ``Emitter``'s)."""
    pool = _redis.ConnectionPool.from_url(url, **_options(url, cooperative))
    return _redis.Redis(connection_pool=pool)


class _GeventConnection(_redis.connection.Connection):
    """A redis-py TCP connection on a gevent socket (cooperative, no monkey-patching)."""

    def _connect(self) -> Any:
        sock = gevent.socket.create_connection(
            (self.host, self.port), timeout=self.socket_connect_timeout
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.socket_timeout)
        return sock


class _GeventUnixConnection(_redis.connection.UnixDomainSocketConnection):
    """A redis-py UNIX-socket connection on a gevent socket."""

    def _connect(self) -> Any:
        sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.socket_connect_timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        sock.settimeout(self.socket_timeout)
        return sock


class RedisBackplane:
    """One node's (or one emitter's) handle on Redis; see ``Backplane`` for the contracts.

    One subscriber connection per node (``PUBSUB NUMSUB <room channel>`` counts nodes), its
    subscriptions changed by a small greenlet in batches and all renewed in one command per
    session; publishes go through a second, pooled connection (``publish_many``: one
    pipelined round trip). Presence is a hash per node, ``wsflask:presence:<node>`` (room ->
    JSON list of ids), written in one ``MULTI`` with a ``PEXPIRE``, plus the set
    ``wsflask:nodes``; readers prune nodes whose hash expired. A node's heartbeat is the
    TTL of ``wsflask:alive:<node>`` (``beat``); readers leave out nodes whose beat lapsed
    and move their hash to ``wsflask:gone:<node>`` (``presence_of`` still reads it).

    Args:
        url: ``redis://[:password@]host:port/db`` or ``unix:///path/redis.sock?db=0``.
        cooperative: gevent sockets (inside a server) or plain sockets (an ``Emitter``).
        prefix: channel and key prefix shared by every node and emitter.
    """

    def __init__(self, url: str, *, cooperative: bool = True, prefix: str = "wsflask") -> None:
        options = _options(url, cooperative)
        self.url = url
        self.router = Router(prefix)
        self._pool = _redis.ConnectionPool.from_url(url, **options)
        self._client = _redis.Redis(connection_pool=self._pool)
        self._wanted: set[str] = set()
        #: channels Redis confirmed in this session, and SUBSCRIBE/UNSUBSCRIBE replies due
        self._confirmed: set[str] = set()
        self._due: dict[str, int] = {}
        self._changed = Event()
        self._session: Any = None
        self._closed = False

    # -- publishing -----------------------------------------------------------------------

    def publish(self, channel: str, payload: bytes) -> int:
        try:
            return int(self._client.publish(channel, payload))
        except _ERRORS as exc:
            raise BackplaneDown(f"redis publish failed: {exc}") from exc

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if len(items) == 1:
            self.publish(*items[0])
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for channel, payload in items:
                pipe.publish(channel, payload)
            pipe.execute()
        except _ERRORS as exc:
            raise BackplaneDown(f"redis publish failed: {exc}") from exc

    # -- subscribing ------------------------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        self._wanted.add(channel)
        self._changed.set()

    def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._changed.set()

    def is_subscribed(self, channel: str) -> bool:
        return channel in self._wanted and channel in self._confirmed and not self._due.get(channel)

    def _sent(self, channels: Iterable[str]) -> None:
        for channel in channels:
            self._due[channel] = self._due.get(channel, 0) + 1

    def _confirm(self, reply: Any) -> None:
        """Track a SUBSCRIBE/UNSUBSCRIBE reply (``is_subscribed``)."""
        kind, channel = reply[0], reply[1].decode("utf-8", "replace")
        due = self._due.get(channel, 0) - 1
        if due > 0:
            self._due[channel] = due
        else:
            self._due.pop(channel, None)
        if kind == b"subscribe":
            self._confirmed.add(channel)
        else:
            self._confirmed.discard(channel)

    def listen(self) -> Iterator[tuple[str, bytes]]:
        if self._closed:
            return
        self._confirmed.clear()
        self._due.clear()
        kwargs = dict(self._pool.connection_kwargs, socket_timeout=None)  # reads wait forever
        conn = self._pool.connection_class(**kwargs)
        current: set[str] = set()
        syncer: gevent.Greenlet | None = None
        try:
            conn.connect()
            self._session = conn
            current.update(self._wanted)
            if current:
                conn.send_command("SUBSCRIBE", *sorted(current))
                self._sent(current)
            else:
                conn.send_command("PING")
            first = conn.read_response()  # a first answer: Redis itself talks (not a proxy)
            if current:
                self._confirm(first)
            syncer = gevent.spawn(self._sync, conn, current)
            yield READY
            while not self._closed:
                reply = conn.read_response()
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                    yield reply[1].decode("utf-8", "replace"), bytes(reply[2])
                elif isinstance(reply, list) and reply and reply[0] in _SUBSCRIPTION:
                    self._confirm(reply)
        except _ERRORS as exc:
            if not self._closed:
                raise BackplaneDown(f"redis subscription lost: {exc}") from exc
        finally:
            if syncer is not None:
                syncer.kill(block=False)
            self._session = None
            conn.disconnect()

    def _sync(self, conn: Any, current: set[str]) -> None:
        """Apply subscription changes to the live session, batched, until it ends."""
        while True:
            self._changed.wait()
            self._changed.clear()
            add, drop = self._wanted - current, current - self._wanted
            try:
                if add:
                    self._sent(add)
                    conn.send_command("SUBSCRIBE", *sorted(add))
                if drop:
                    self._sent(drop)
                    conn.send_command("UNSUBSCRIBE", *sorted(drop))
            except _ERRORS:
                return  # the reader sees the broken connection and ends the session
            current |= add
            current -= drop

    # -- presence ---------------------------------------------------------------------------

    def presence_write(self, node: str, rooms: Mapping[str, Sequence[str]], ttl: float) -> None:
        key = self.router.presence_key(node)
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(key)
            if rooms:
                pipe.hset(
                    key,
                    mapping={
                        room: json.dumps(list(ids), separators=(",", ":"))
                        for room, ids in rooms.items()
                    },
                )
                pipe.pexpire(key, max(1, int(ttl * 1000)))
            pipe.sadd(self.router.nodes_key, node)
            pipe.execute()
        except _ERRORS as exc:
            raise BackplaneDown(f"redis presence write failed: {exc}") from exc

    def presence_read(self, room: str) -> dict[str, list[str]]:
        try:
            raw: Any = self._client.smembers(self.router.nodes_key)
            nodes = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
            pipe = self._client.pipeline(transaction=False)
            for node in nodes:
                pipe.hget(self.router.presence_key(node), room)
                pipe.exists(self.router.presence_key(node))
                pipe.exists(self.router.alive_key(node))
            answers = pipe.execute()
            out: dict[str, list[str]] = {}
            dead, lapsed = [], []
            for i, node in enumerate(nodes):
                ids, stored, beating = answers[3 * i : 3 * i + 3]
                if not stored:
                    dead.append(node)
                elif not beating:  # a dead node's ghosts: out of presence at once
                    lapsed.append(node)
                elif ids is not None:
                    out[node] = [str(item) for item in json.loads(ids)]
            if dead:
                self._client.srem(self.router.nodes_key, *dead)
            if lapsed:
                self._retire(lapsed)
            return out
        except _ERRORS as exc:
            raise BackplaneDown(f"redis presence read failed: {exc}") from exc

    def _retire(self, nodes: list[str]) -> None:
        """Move lapsed nodes' memberships to their ``gone`` key (RENAME keeps the TTL): the
        survivors' liveness watch still reads them; presence no longer does."""
        pipe = self._client.pipeline(transaction=False)
        for node in nodes:
            pipe.rename(self.router.presence_key(node), self.router.gone_key(node))
        pipe.execute(raise_on_error=False)  # another reader may have moved one first

    def presence_clear(self, node: str) -> None:
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self.router.presence_key(node), self.router.alive_key(node))
            pipe.srem(self.router.nodes_key, node)
            pipe.execute()
        except _ERRORS as exc:
            raise BackplaneDown(f"redis presence clear failed: {exc}") from exc

    def beat(self, node: str, ttl: float) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self.router.alive_key(node), b"1", px=max(1, int(ttl * 1000)))
            pipe.sadd(self.router.nodes_key, node)
            pipe.execute()
        except _ERRORS as exc:
            raise BackplaneDown(f"redis heartbeat failed: {exc}") from exc

    def liveness(self) -> dict[str, float]:
        try:
            raw: Any = self._client.smembers(self.router.nodes_key)
            nodes = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
            pipe = self._client.pipeline(transaction=False)
            for node in nodes:
                pipe.pttl(self.router.alive_key(node))
                pipe.exists(self.router.presence_key(node), self.router.gone_key(node))
            answers = pipe.execute()
            out: dict[str, float] = {}
            for i, node in enumerate(nodes):
                left_ms, stored = int(answers[2 * i]), answers[2 * i + 1]
                if left_ms > 0 or stored:  # PTTL: -2 no key, -1 no expiry (never written so)
                    out[node] = max(0, left_ms) / 1000.0
            gone = [node for node in nodes if node not in out]
            if gone:
                self._client.srem(self.router.nodes_key, *gone)
            return out
        except _ERRORS as exc:
            raise BackplaneDown(f"redis liveness read failed: {exc}") from exc

    def presence_of(self, node: str) -> dict[str, list[str]]:
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(self.router.presence_key(node))
            pipe.hgetall(self.router.gone_key(node))
            current, gone = pipe.execute()
            raw: Any = current or gone
            return {
                (room.decode() if isinstance(room, bytes) else str(room)): [
                    str(item) for item in json.loads(ids)
                ]
                for room, ids in raw.items()
            }
        except _ERRORS as exc:
            raise BackplaneDown(f"redis presence read failed: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            session.disconnect()  # wakes the reader; listen() then returns
        self._pool.disconnect()
