"""The bridge between one App's rooms and a backplane: one node of a cluster.

What it does, once ``start()`` ran (the server's start does it, in the worker process):

* gives this node a random 12-hex id; connections tracked from then on get ids
  ``<node>.<n>``, unique across nodes, so ``to=ws.id`` and ``skip=ws`` work cluster-wide;
* subscribes the node channel, the "everyone" channel and one channel per room with local
  members (subscribe on the first local member, unsubscribe on the last: ``Rooms`` calls
  ``room_changed()``); the backplane subscribes them all again after each reconnect;
* ``publish()`` (called by ``Rooms.broadcast`` after the local delivery) never blocks: it
  queues one envelope per target channel for the publisher greenlet, which sends them in
  order and in batches. While the bus is down, or past ``backplane_queue`` queued items,
  each publish is counted in ``websocket_dropped_messages_total{reason="backplane"}``;
* the listener greenlet delivers remote envelopes with ``Rooms.deliver`` (the one local
  delivery path, same ``exclude`` semantics, by connection id), drops this node's own echoes,
  and handles an envelope once even when it arrives on several channels (per-origin sequence
  numbers). A lost session is retried with capped exponential backoff and jitter;
* a probe: every ``backplane_interval`` seconds the node publishes to its own channel; no
  echo within two intervals -> an error in the log, ``ready`` goes false (``/readyz`` 503)
  and the session is torn down and reconnected (a silent, starved subscriber counts as down);
* gap notices (battery RD-01): after a session comes back from a failure, every local member
  of every local room gets ``gap_message(room)`` (default: the JSON envelope
  ``{"event":"_gap","data":{"room":...}}``; set ``app.cluster.gap_message`` to change it, or to
  a function returning None to send nothing), and for each channel whose publishes were
  dropped a gap envelope goes out so the members on other nodes get the notice too;
* presence: every interval (and shortly after membership changes) the node writes its
  memberships with a TTL of three intervals; ``Rooms.count(room, cluster=True)`` adds the
  other live nodes' counts. A dead node's presence expires with its TTL.

What it does not do: no message history or replay (a gap notice tells clients to resync),
no acknowledgements, no delivery guarantee across an outage beyond "counted, then notified".
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from time import monotonic
from typing import TYPE_CHECKING

import gevent
from gevent import Timeout
from gevent.event import Event

from ..protocol import Opcode, encode_frame
from .base import Backplane, BackplaneDown, open_backplane
from .envelope import BadEnvelope, Envelope, Router, decode, encode

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import Metrics
    from ..rooms import Rooms
    from ..websocket import HeartbeatLike, WebSocket

__all__ = ["Bridge", "NodeLifecycle", "default_gap_message"]

logger = logging.getLogger("wsflask.backplane")

#: First reconnect delay, in seconds (doubled per failure up to ``backplane_backoff_max``).
BACKOFF_MIN = 0.1
#: Seconds a burst of membership changes is coalesced into one presence write.
PRESENCE_DEBOUNCE = 0.05
#: Envelopes sent per publish round trip.
BATCH = 256
#: Origins remembered for the once-only check (oldest forgotten first).
MAX_ORIGINS = 10_000
_Item = tuple[str, bytes, bool]  # (channel, payload, counts as a message)


def default_gap_message(room: str) -> str:
    """The default gap notice: ``{"event":"_gap","data":{"room":room}}``."""
    return json.dumps({"event": "_gap", "data": {"room": room}}, separators=(",", ":"))


def backoff(failures: int, cap: float) -> float:
    """Delay before reconnect attempt ``failures`` (>= 1): capped exponential, 50-100 % jitter."""
    delay: float = min(cap, BACKOFF_MIN * 2.0 ** min(failures - 1, 30))
    return delay * random.uniform(0.5, 1.0)


class Bridge:
    """Connects ``rooms`` to the backplane ``config.backplane``.

    Args:
        rooms: the app's room index.
        config: ``backplane`` (URL), ``backplane_interval``, ``backplane_backoff_max``,
            ``backplane_queue``.
        metrics: where drops are counted.
        backplane: a ready-made backplane instead of opening ``config.backplane``.

    The app makes it; ``start()``/``stop()`` run with the server (``NodeLifecycle``). Query
    ``ready``, ``node``; ``cluster_members(room)`` asks the bus.
    """

    def __init__(
        self,
        rooms: Rooms,
        config: Config,
        metrics: Metrics | None = None,
        *,
        backplane: Backplane | None = None,
    ) -> None:
        self.rooms = rooms
        self.config = config
        self.metrics = metrics
        self.router = Router()
        #: this node's id ("" until start())
        self.node = ""
        #: room -> notice sent to local members after a gap (None: send nothing)
        self.gap_message: Callable[[str], str | bytes | None] = default_gap_message
        #: sessions lost or refused, and probes that timed out (for logs and tests)
        self.failures_total = 0
        self.probe_timeouts = 0
        self._given = backplane
        self._bus: Backplane | None = None
        self._running = False
        self._session_up = False
        self._probe_ok = False
        self._probe_sent: float | None = None
        self._failed = False  # a session failed since the last one that came up
        self._seq = 0
        self._seen: dict[str, int] = {}
        self._channels: set[str] = set()
        self._queue: deque[_Item] = deque()
        self._dropped: dict[str, list[str] | None] = {}
        self._wake = Event()
        self._tick = Event()
        self._presence_dirty = True
        self._greenlets: list[gevent.Greenlet] = []
        self._listener: gevent.Greenlet | None = None

    @property
    def interval(self) -> float:
        return float(self.config.backplane_interval)

    @property
    def ready(self) -> bool:
        """True while a session is up and the last probe came back (``/readyz``)."""
        return self._running and self._session_up and self._probe_ok

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Join the bus: node id, subscriptions, greenlets. Returns at once (idempotent)."""
        if self._running:
            return
        url = self.config.backplane or "memory://"
        self._bus = self._given if self._given is not None else open_backplane(url)
        self.node = secrets.token_hex(6)
        self._running, self._failed, self._presence_dirty = True, False, True
        self.rooms.attach(self, self.node)
        for channel in (self.router.node(self.node), self.router.everyone):
            self._subscribe(channel)
        for room in self.rooms.rooms():
            self._subscribe(self.router.room(room))
        self._listener = gevent.spawn(self._listen_loop)
        self._greenlets = [
            self._listener,
            gevent.spawn(self._publish_loop),
            gevent.spawn(self._maintain_loop),
        ]
        logger.info("backplane %s: node %s joining", _safe_url(url), self.node)

    def stop(self, timeout: float = 1.0) -> None:
        """Leave the bus: flush queued publishes (up to ``timeout``), clear presence, close."""
        if not self._running:
            return
        self._running = False
        self.rooms.detach()
        bus = self._bus
        with Timeout(timeout, False):
            while self._queue and self._session_up:
                self._wake.set()
                gevent.sleep(0.01)
        gevent.killall(self._greenlets, block=True, timeout=timeout)
        if bus is not None:
            with Timeout(timeout, False), contextlib.suppress(BackplaneDown):
                bus.presence_clear(self.node)
            bus.close()
        self._session_up = self._probe_ok = False
        self._channels.clear()
        self._queue.clear()

    # -- called by Rooms (never yield) ----------------------------------------------------------

    def room_changed(self, room: str, count: int) -> None:
        """A local room gained or lost a member; ``count`` members are left."""
        channel = self.router.room(room)
        if count and channel not in self._channels:
            self._subscribe(channel)
        elif not count and channel in self._channels:
            self._channels.discard(channel)
            if self._bus is not None:
                self._bus.unsubscribe(channel)
        self._presence_dirty = True
        self._tick.set()

    def publish(
        self, rooms: str | Iterable[str] | None, data: str | bytes, exclude: Iterable[str] = ()
    ) -> None:
        """Queue ``data`` for the other nodes' members of ``rooms``; never blocks."""
        channels, names = self.router.route(rooms, self.node)
        if not channels:
            return
        if not self._session_up or len(self._queue) + len(channels) > self.config.backplane_queue:
            for channel in channels:
                self._drop(channel)
            return
        kind, body = ("t", data.encode()) if isinstance(data, str) else ("b", bytes(data))
        self._seq += 1
        payload = encode(Envelope(self.node, kind, body, self._seq, names, list(exclude)))
        for channel in channels:
            self._queue.append((channel, payload, True))
        self._wake.set()

    # -- queries -----------------------------------------------------------------------------

    def cluster_members(self, room: str) -> dict[str, list[str]]:
        """Connection ids in ``room`` per *other* live node; yields for I/O.

        Raises:
            BackplaneDown: the bus is unreachable (the answer would not be cluster-wide).
        """
        if self._bus is None or not self._running:
            raise BackplaneDown("the backplane is not started")
        members = self._bus.presence_read(room)
        members.pop(self.node, None)
        return members

    # -- internals: subscriptions and drops -------------------------------------------------------

    def _subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        if self._bus is not None:
            self._bus.subscribe(channel)

    def _drop(self, channel: str) -> None:
        if self.metrics is not None:
            self.metrics.dropped("backplane")
        if channel == self.router.everyone:
            self._dropped[channel] = None
        else:
            room = self.router.room_of(channel)
            if room is not None:
                self._dropped[channel] = [room]

    # -- internals: the listener -----------------------------------------------------------------

    def _listen_loop(self) -> None:
        failures = 0
        while self._running and self._bus is not None:
            try:
                for channel, payload in self._bus.listen():
                    if not channel:
                        self._session_started()
                        failures = 0
                    else:
                        self._receive(channel, payload)
                if not self._running:
                    return
                raise BackplaneDown("the subscription ended")
            except BackplaneDown as exc:
                failures += 1
                self._session_lost(exc, failures)
            except Exception as exc:  # a bug must not end cluster delivery for good
                logger.exception("backplane listener failed")
                failures += 1
                self._session_lost(exc, failures)
            gevent.sleep(backoff(failures, self.config.backplane_backoff_max))

    def _session_started(self) -> None:
        self._session_up, self._probe_ok = True, False
        self._presence_dirty = True
        self._send_probe()
        if self._failed:
            self._failed = False
            logger.warning(
                "backplane: node %s reconnected; resubscribed %d channels, sending gap notices",
                self.node,
                len(self._channels),
            )
            self._notify_gap(None)
        self._flush_gaps()
        self._tick.set()

    def _session_lost(self, exc: Exception, failures: int) -> None:
        was_up, self._session_up, self._probe_ok = self._session_up, False, False
        self._failed = True
        self.failures_total += 1
        if was_up or failures == 1:
            logger.error(
                "backplane DOWN on node %s: %s; publishes are dropped and counted "
                "(reason=backplane), /readyz is 503, reconnecting with backoff",
                self.node,
                exc,
            )
        elif failures % 10 == 0:
            logger.error(
                "backplane still down on node %s after %d attempts: %s", self.node, failures, exc
            )

    def _receive(self, channel: str, payload: bytes) -> None:
        try:
            envelope = decode(payload)
        except BadEnvelope as exc:
            if self.metrics is not None:
                self.metrics.dropped("backplane_invalid")
            logger.warning("backplane: ignored a malformed envelope on %s: %s", channel, exc)
            return
        if envelope.origin == self.node:  # our own echo (and our probe)
            if envelope.kind == "p":
                self._probe_ok, self._probe_sent = True, None
            return
        if envelope.seq <= self._seen.get(envelope.origin, 0):
            return  # already handled on another channel
        self._remember(envelope.origin, envelope.seq)
        if envelope.kind == "g":
            self._notify_gap(envelope.rooms)
        elif envelope.kind in ("t", "b"):
            opcode = Opcode.TEXT if envelope.kind == "t" else Opcode.BINARY
            self.rooms.deliver(
                envelope.rooms, encode_frame(opcode, envelope.body), exclude=envelope.exclude
            )

    def _remember(self, origin: str, seq: int) -> None:
        seen = self._seen
        if origin not in seen and len(seen) >= MAX_ORIGINS:
            del seen[next(iter(seen))]
        seen[origin] = seq

    def _notify_gap(self, rooms: list[str] | None) -> None:
        from ..rooms import encode_message

        for room in self.rooms.rooms() if rooms is None else rooms:
            message = self.gap_message(room)
            if message is not None and self.rooms.count(room):
                self.rooms.deliver(room, encode_message(message))

    def _flush_gaps(self) -> None:
        """Tell the other nodes about the channels whose publishes this node dropped."""
        dropped, self._dropped = self._dropped, {}
        for channel, rooms in dropped.items():
            self._seq += 1
            self._queue.append(
                (channel, encode(Envelope(self.node, "g", seq=self._seq, rooms=rooms)), False)
            )
        if dropped:
            self._wake.set()

    # -- internals: publisher and maintenance ----------------------------------------------------

    def _publish_loop(self) -> None:
        while self._running:
            self._wake.wait()
            self._wake.clear()
            while self._queue and self._bus is not None:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                try:
                    self._bus.publish_many([(channel, payload) for channel, payload, _ in batch])
                except BackplaneDown as exc:
                    logger.warning("backplane publish failed on node %s: %s", self.node, exc)
                    for channel, _, counted in batch:
                        if counted:
                            self._drop(channel)
                    continue
                if self._dropped and self._session_up:
                    self._flush_gaps()

    def _send_probe(self) -> None:
        self._probe_sent = monotonic()
        self._seq += 1
        probe = encode(Envelope(self.node, "p", seq=self._seq))
        self._queue.append((self.router.node(self.node), probe, False))
        self._wake.set()

    def _maintain_loop(self) -> None:
        due = monotonic() + self.interval
        while self._running:
            self._tick.wait(timeout=max(0.0, due - monotonic()))
            self._tick.clear()
            if self._presence_dirty:
                gevent.sleep(PRESENCE_DEBOUNCE)  # coalesce a burst of joins
            if monotonic() >= due:
                due = monotonic() + self.interval
                self._check_probe()
                self._presence_dirty = True
            if self._presence_dirty and self._session_up:
                self._write_presence()

    def _check_probe(self) -> None:
        if not self._session_up:
            return
        sent = self._probe_sent
        if sent is not None and monotonic() - sent >= 2 * self.interval:
            self.probe_timeouts += 1
            self._probe_ok = False
            logger.error(
                "backplane SILENT on node %s: no probe echo for %.1f s; /readyz is "
                "503, reconnecting",
                self.node,
                monotonic() - sent,
            )
            if self._listener is not None:
                self._listener.kill(BackplaneDown("probe timeout"), block=False)
            return
        if sent is None:
            self._send_probe()

    def _write_presence(self) -> None:
        if self._bus is None:
            return
        rooms = {room: [ws.id for ws in self.rooms.members(room)] for room in self.rooms.rooms()}
        self._presence_dirty = False
        try:
            self._bus.presence_write(self.node, rooms, 3 * self.interval)
        except BackplaneDown as exc:
            self._presence_dirty = True
            logger.warning("backplane presence write failed on node %s: %s", self.node, exc)


class NodeLifecycle:
    """Runs the bridge with the server: a ``HeartbeatLike`` the server starts and stops.

    ``Server.start()`` starts the heartbeat then the bridge; ``Server.stop()`` stops them
    after the connections drained (so the node leaves the bus last).
    """

    def __init__(self, heartbeat: HeartbeatLike, bridge: Bridge) -> None:
        self.heartbeat = heartbeat
        self.bridge = bridge

    def add(self, ws: WebSocket) -> None:
        self.heartbeat.add(ws)

    def remove(self, ws: WebSocket) -> None:
        self.heartbeat.remove(ws)

    def start(self) -> None:
        self.heartbeat.start()
        self.bridge.start()

    def stop(self) -> None:
        self.heartbeat.stop()
        self.bridge.stop()


def _safe_url(url: str) -> str:
    """``url`` without a password, for logs."""
    head, sep, tail = url.partition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"
