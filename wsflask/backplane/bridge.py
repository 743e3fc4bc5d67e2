"""The bridge between one App's rooms and a backplane: it makes the App a node of a cluster.

``start()`` joins the bus and ``stop()`` leaves it; broadcasts are queued, never blocking, and
remote ones are delivered once through ``Rooms.deliver``. A probe checks the link, presence
feeds cluster counts, beats tell lost nodes (``liveness.py``), group calls travel as ``q``/``a``
envelopes (``group.py``), and an outage ends in counted drops and gap notices. No message
history or replay here (``history.py``): a gap notice tells clients to resync.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from time import monotonic
from typing import TYPE_CHECKING

import gevent
from gevent import Timeout
from gevent.event import Event

from .. import envelopes, ids
from ..protocol import Opcode, encode_frame
from ..rooms import encode_message
from .base import Backplane, BackplaneDown
from .factory import open_backplane
from .group import GroupCalls
from .liveness import NodeWatch, grace
from .wire import BadEnvelope, BadSignature, Envelope, Router, decode, encode

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import MetricsSink
    from ..rooms import Rooms

__all__ = ["Bridge", "default_gap_message"]

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
    return envelopes.encode("_gap", {"room": room})


def backoff(failures: int, cap: float) -> float:
    """Delay before reconnect attempt ``failures`` (>= 1): capped exponential, 50-100 % jitter."""
    delay: float = min(cap, BACKOFF_MIN * 2.0 ** min(failures - 1, 30))
    return delay * random.uniform(0.5, 1.0)


class Bridge:
    """Connects ``rooms`` to the backplane ``config.backplane``: a ``Service`` of the server.

    Args:
        rooms: the app's room index (``start()`` attaches to it, ``stop()`` detaches).
        config: ``backplane`` (URL), ``backplane_interval``, ``backplane_backoff_max``,
            ``backplane_queue``.
        metrics: where drops are counted (``reason="backplane"``: the bus was down, refused
            or the queue was full; ``"backplane_invalid"``: a malformed envelope arrived;
            ``"backplane_order"``: an envelope numbered below its origin's last one).
        backplane: a ready-made backplane instead of opening ``config.backplane``.

    The node subscribes its own channel, "everyone" and one channel per room with local
    members. Every ``backplane_interval`` it publishes a probe to itself (no echo within two
    intervals: ``ready`` goes false and the session is rebuilt), writes its presence with
    a TTL of three intervals and beats (``liveness.py``): when another node's beat lapses
    (one interval plus ``grace``), its members leave cluster presence and this node's
    members get ``_left`` for them where presence notices are on. After a session comes
    back from a failure, local members get ``gap_message(room)`` and the other nodes get a
    gap envelope for what was dropped.
    Query ``ready`` and ``node``; ``cluster_members(room)`` asks the bus.
    """

    def __init__(
        self,
        rooms: Rooms,
        config: Config,
        metrics: MetricsSink | None = None,
        *,
        backplane: Backplane | None = None,
    ) -> None:
        self.rooms = rooms
        self.config = config
        self.metrics = metrics
        self.router = Router()
        #: the HMAC key of ``backplane_secret``: envelopes signed with it, others dropped
        self._key = config.backplane_secret.encode() if config.backplane_secret else None
        #: where numbered publications of recoverable rooms go (``RedisHistory.receive``)
        self.on_history: Callable[[bytes], None] | None = None
        #: this node's id ("" until start())
        self.node = ""
        #: room -> notice sent to local members after a gap (None: send nothing)
        self.gap_message: Callable[[str], str | bytes | None] = default_gap_message
        #: sessions lost or refused, and probes that timed out (for logs and tests)
        self.failures_total = 0
        self.probe_timeouts = 0
        #: presence writes the bus refused (retried every interval)
        self.presence_failures = 0
        self._given = backplane
        self._bus: Backplane | None = None
        self._running = False
        self._session_up = False
        self._probe_ok = False
        self._probe_sent: float | None = None
        self._failed = False  # a session failed since the last one that came up
        self._sessions = 0  # sessions that came up since start()
        self._started_at = 0.0  # monotonic time of start(): a late first session is a gap
        self._seq = 0
        self._seen: dict[str, int] = {}
        self._channels: set[str] = set()
        self._queue: deque[_Item] = deque()
        self._dropped: dict[str, list[str] | None] = {}
        self._wake = Event()
        self._tick = Event()
        self._flushed = Event()  # set when the publisher has ended (stop() waits on it)
        self._presence_dirty = True
        self._greenlets: list[gevent.Greenlet] = []
        self._listener: gevent.Greenlet | None = None
        #: the other nodes' liveness, seen from here (made by ``start()``)
        self.watch: NodeWatch | None = None
        #: ``hook(node)`` for each node declared lost (cluster group calls fail its members)
        self.node_lost_hooks: list[Callable[[str], None]] = []
        #: group calls across the cluster (``app.call``)
        self.group = GroupCalls(self)

    @property
    def interval(self) -> float:
        """Seconds between probes and presence writes (``Config.backplane_interval``)."""
        return float(self.config.backplane_interval)

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._running

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
        self.node = ids.new_node_id()
        self._running, self._failed, self._presence_dirty = True, False, True
        self._sessions, self._started_at = 0, monotonic()
        self._flushed.clear()
        self.rooms.attach(self, self.node)
        for channel in (self.router.node(self.node), self.router.everyone):
            self._subscribe(channel)
        for room in self.rooms.rooms():
            self._subscribe(self.router.room(room))
        self._start_recovery(url)
        self._listener = gevent.spawn(self._listen_loop)
        self.watch = NodeWatch(
            self._bus,
            self.node,
            self.interval,
            is_up=lambda: self._session_up,
            on_lost=self._node_lost,
            on_back=self._node_back,
        )
        self._greenlets = [
            self._listener,
            gevent.spawn(self._publish_loop),
            gevent.spawn(self._maintain_loop),
            gevent.spawn(self.watch.run),
            gevent.spawn(self._probe_loop),
        ]
        logger.info("backplane %s: node %s joining", _safe_url(url), self.node)

    def _start_recovery(self, url: str) -> None:
        """Recoverable rooms follow this bus: their history in Redis with a Redis bus."""
        recovery = self.rooms.recovery
        if recovery is None:
            return
        history = None
        if url.startswith(("redis://", "unix://")):
            from .history import RedisHistory

            history = RedisHistory(url, recovery.live, self)
        recovery.start(self, history)

    def stop(self, timeout: float = 1.0) -> None:
        """Leave the bus: flush queued publishes (up to ``timeout``), clear presence, close."""
        if not self._running:
            return
        self._running = False
        self.group.stop()
        if self.rooms.recovery is not None:
            self.rooms.recovery.stop(self)
        self.rooms.detach()
        bus = self._bus
        self._wake.set()  # the publisher sends what is queued, then ends
        if self._session_up:
            self._flushed.wait(timeout)
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
        self._seq += 1
        payload = encode(Envelope.message(self.node, self._seq, data, names, exclude), self._key)
        for channel in channels:
            self._queue.append((channel, payload, True))
        self._wake.set()

    def post(self, channels: list[str], kind: str, body: bytes, rooms: list[str] | None) -> bool:
        """Queue one envelope of ``kind`` (a group call's) for ``channels``; never blocks.
        False when the session is down or the queue full (counted, not a gap: no member
        message is lost)."""
        if not self._session_up or len(self._queue) + len(channels) > self.config.backplane_queue:
            if self.metrics is not None:
                self.metrics.dropped("backplane")
            return False
        self._seq += 1
        payload = encode(Envelope(self.node, kind, body, self._seq, rooms), self._key)
        for channel in channels:
            self._queue.append((channel, payload, False))
        self._wake.set()
        return True

    # -- queries -----------------------------------------------------------------------------

    @property
    def key(self) -> bytes | None:
        """The HMAC key envelopes are signed with (``backplane_secret``), else None."""
        return self._key

    def subscribed(self, room: str) -> bool:
        """True once this node receives ``room``'s traffic from the bus (a live session)."""
        bus = self._bus
        return bus is not None and self._session_up and bus.is_subscribed(self.router.room(room))

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
        # A first session later than one interval counts as a reconnection: members accepted
        # meanwhile may have missed cluster traffic (a prompt one: nothing to notice).
        late = not self._sessions and monotonic() - self._started_at >= self.interval
        self._sessions += 1
        if self._failed or late:
            if self._failed:
                logger.warning(
                    "backplane: node %s reconnected; resubscribed %d channels, sending gap notices",
                    self.node,
                    len(self._channels),
                )
            self._failed = False
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
        if payload.startswith(b"WSH1"):  # a recoverable room's numbered publication (ours too)
            if self.on_history is not None:
                self.on_history(payload)
            return
        try:
            envelope = decode(payload, self._key)
        except BadSignature as exc:
            if self.metrics is not None:
                self.metrics.dropped("backplane_unsigned")
            logger.warning("backplane: dropped an envelope on %s: %s", channel, exc)
            return
        except BadEnvelope as exc:
            if self.metrics is not None:
                self.metrics.dropped("backplane_invalid")
            logger.warning("backplane: ignored a malformed envelope on %s: %s", channel, exc)
            return
        if envelope.origin == self.node:  # our own echo (and our probe)
            if envelope.kind == "p":
                self._probe_ok, self._probe_sent = True, None
            return
        last = self._seen.get(envelope.origin, 0)
        if envelope.seq <= last:
            # An origin publishes in sequence order and one envelope to all its channels
            # before the next, so an equal number is a copy from another channel (handled);
            # a lower one arrived out of order and is lost: counted.
            if envelope.seq < last and self.metrics is not None:
                self.metrics.dropped("backplane_order")
            return
        self._remember(envelope.origin, envelope.seq)
        if envelope.kind == "g":
            self._notify_gap(envelope.rooms)
        elif envelope.kind == "q":
            self.group.request(envelope)
        elif envelope.kind == "a":
            self.group.answer(envelope)
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
                (
                    channel,
                    encode(Envelope(self.node, "g", seq=self._seq, rooms=rooms), self._key),
                    False,
                )
            )
        if dropped:
            self._wake.set()

    # -- internals: publisher and maintenance ----------------------------------------------------

    def _publish_loop(self) -> None:
        try:
            while self._running:
                self._wake.wait()
                self._wake.clear()
                self._publish_queued()
        finally:
            self._flushed.set()

    def _publish_queued(self) -> None:
        """Send the queue in batches until it is empty.

        A batch the bus refuses (down, or an error reply such as NOPERM) is dropped and
        counted, and the next one waits a capped exponential backoff.
        """
        failures = 0
        while self._queue and self._bus is not None:
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            try:
                self._bus.publish_many([(channel, payload) for channel, payload, _ in batch])
            except Exception as exc:  # BackplaneDown, or a bug: never end the publisher
                failures += 1
                self._publish_failed(exc, batch)
                if self._running:  # stopping: drop (and count) the rest without waiting
                    gevent.sleep(backoff(failures, self.config.backplane_backoff_max))
                continue
            failures = 0
            if self._dropped and self._session_up:
                self._flush_gaps()

    def _publish_failed(self, exc: Exception, batch: list[_Item]) -> None:
        if isinstance(exc, BackplaneDown):
            logger.warning("backplane publish failed on node %s: %s", self.node, exc)
        else:
            logger.exception("backplane publisher failed on node %s", self.node)
        for channel, _, counted in batch:
            if counted:
                self._drop(channel)

    def _send_probe(self) -> None:
        self._probe_sent = monotonic()
        self._seq += 1
        probe = encode(Envelope(self.node, "p", seq=self._seq), self._key)
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
                self._presence_dirty = True
            if self._presence_dirty and self._session_up:
                self._write_presence()  # a failure is retried at the next interval

    def _probe_loop(self) -> None:
        """Probes on their own greenlet: a presence write hung on a stalled Redis (up to the
        command timeout) must not hold the silence check back past two intervals (RD-03)."""
        while self._running:
            gevent.sleep(self.interval)
            self._check_probe()

    def _check_probe(self) -> None:
        if not self._session_up:
            return
        sent = self._probe_sent
        if sent is not None and monotonic() - sent >= 2 * self.interval:
            self.probe_timeouts += 1
            if self.metrics is not None:
                self.metrics.backplane_probe_timeout()
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

    def _node_lost(self, node: str, memberships: dict[str, list[str]]) -> None:
        """Another node's beat lapsed: its members left (our members hear it), calls fail."""
        from ..presence import notify_local

        notify_local(self.rooms, memberships, joined=False)
        for hook in list(self.node_lost_hooks):
            hook(node)

    def _node_back(self, node: str, memberships: dict[str, list[str]]) -> None:
        from ..presence import notify_local

        notify_local(self.rooms, memberships, joined=True)

    def _write_presence(self) -> None:
        if self._bus is None:
            return
        rooms = {room: [ws.id for ws in self.rooms.members(room)] for room in self.rooms.rooms()}
        self._presence_dirty = False
        try:
            # The beat first: a reader never sees memberships without it (it would retire
            # them as a lapsed node's, liveness.py); a beat without them is harmless.
            self._bus.beat(self.node, self.interval + grace(self.interval))
            self._bus.presence_write(self.node, rooms, 3 * self.interval)
        except Exception as exc:  # BackplaneDown (down, OOM...), or a bug: retried, never fatal
            self._presence_dirty = True
            self.presence_failures += 1
            if isinstance(exc, BackplaneDown):
                logger.warning("backplane presence write failed on node %s: %s", self.node, exc)
            else:
                logger.exception("backplane presence write failed on node %s", self.node)


def _safe_url(url: str) -> str:
    """``url`` without a password, for logs."""
    head, sep, tail = url.partition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"
