"""Server metrics: counters, gauges and histograms rendered as Prometheus text (``/metrics``).

Increments are plain attribute adds (one thread, nothing yields, no locks); each
permessage-deflate codec adds its byte counts to ``deflate_totals`` as it works, so a render
costs the same with 10,000 compressed connections as with none; the message rate is computed
at render time. Labels stay bounded: statuses, registered close
codes (any other is ``code="other"``) and a few drop reasons; never per connection or room.
No ``prometheus_client`` dependency, no push gateway.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .protocol import CloseCode

if TYPE_CHECKING:
    from .protocol import PerMessageDeflate

__all__ = ["Histogram", "Metrics", "MetricsSink"]

#: Round-trip time buckets, in seconds (loopback is ~0.0001 s, a slow mobile link ~1 s).
RTT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: Frame-parse buckets, in milliseconds (one ``receive_data`` call for one wake-up).
PARSE_BUCKETS_MS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    50.0,
)
#: Close codes counted under their own label; any other (3000-4999, chosen by apps and peers)
#: is counted as ``code="other"``, so peers cannot add series by closing with new codes.
LABELLED_CLOSE_CODES = frozenset(int(code) for code in CloseCode)
#: Connection lifetime buckets, in seconds.
DURATION_BUCKETS: tuple[float, ...] = (1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)


def _fmt(value: float) -> str:
    """Format a sample value the way Prometheus expects (integers without ``.0``)."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    """Render ``{k="v",...}`` with the exposition format's escaping, or ``""``."""
    parts = []
    for key, value in pairs:
        escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{key}="{escaped}"')
    return "{" + ",".join(parts) + "}" if parts else ""


class Histogram:
    """A fixed-bucket histogram; ``observe()`` is one bisect and three adds.

    Args:
        buckets: ascending upper bounds, in the exported unit; ``+Inf`` is implicit.
        unit: exported units per observed unit (``1000.0``: observed in seconds, exported
            in milliseconds); the conversion is made once, here and when rendering, not
            per observation.
    """

    __slots__ = ("_bounds", "buckets", "count", "counts", "sum", "unit")

    def __init__(self, buckets: Iterable[float], unit: float = 1.0) -> None:
        self.buckets: tuple[float, ...] = tuple(sorted(buckets))
        self.unit = unit
        #: the bounds in the observed unit, for the bisect
        self._bounds = tuple(b / unit for b in self.buckets) if unit != 1.0 else self.buckets
        #: non-cumulative count per bucket; the last slot is the ``+Inf`` overflow
        self.counts: list[int] = [0] * (len(self.buckets) + 1)
        self.sum: float = 0.0  # in the observed unit
        self.count: int = 0

    def observe(self, value: float) -> None:
        """Record one observation, in the observed unit. Call ``render_lines()`` to export."""
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value
        self.count += 1

    def render_lines(self, name: str) -> list[str]:
        """Return the ``_bucket``/``_sum``/``_count`` sample lines (cumulative buckets)."""
        lines = []
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{name}_bucket{{le="{_fmt(bound)}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {_fmt(self.sum * self.unit)}")
        lines.append(f"{name}_count {self.count}")
        return lines


class MetricsSink(Protocol):
    """The counters a connection (``WebSocket``) and ``Rooms`` bump; ``Metrics`` is one.

    Hand-written stand-ins in tests type against it. Every call must return at once.
    """

    def connection_opened(self, deflate: PerMessageDeflate | None = None) -> None: ...
    def connection_closed(
        self, code: int, duration: float, deflate: PerMessageDeflate | None = None
    ) -> None: ...
    def message_in(self, nbytes: int) -> None: ...
    def message_out(self, nbytes: int) -> None: ...
    def frame_parse(self, seconds: float) -> None: ...
    def compress_time(self, seconds: float) -> None: ...
    def dropped(self, reason: str) -> None: ...
    def slow_consumer_closed(self) -> None: ...
    def backplane_probe_timeout(self) -> None: ...


class Metrics:
    """Every counter the framework keeps, and their Prometheus rendering.

    Args:
        rate_window: width in seconds of the sliding window behind
            ``websocket_message_rate_per_second``.
        clock: a monotonic clock (tests pass a fake one).

    The driver calls ``connection_opened()`` / ``connection_closed()``, ``message_in()`` /
    ``message_out()`` and ``frame_parse()``; the server calls ``handshake()``; the heartbeat
    calls ``rtt()``; send paths call ``dropped()`` / ``slow_consumer_closed()``. Then serve
    ``render()``.
    """

    def __init__(
        self, *, rate_window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.rate_window = rate_window
        #: open WebSocket connections right now (gauge)
        self.connections_current = 0
        #: connections ever opened (counter)
        self.connections_total = 0
        #: handshake answers by HTTP status: 101 or the refusal status
        self.handshakes: dict[int, int] = {}
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: closed connections by close code (``"other"``: codes not in LABELLED_CLOSE_CODES)
        self.close_codes: dict[int | str, int] = {}
        #: messages or publishes dropped, by reason ("backpressure", "backplane", ...)
        self.drops: dict[str, int] = {}
        self.slow_consumers_closed = 0
        #: bounds and degradation at work, by event ("partition", "shed", "breaker_open",
        #: "fragment_timeout", "session_expired")
        self.degradations: dict[str, int] = {}
        self.rtt_seconds = Histogram(RTT_BUCKETS)
        self.frame_parse_ms = Histogram(PARSE_BUCKETS_MS, unit=1000.0)
        #: ``frame_parse(seconds)``: one ``receive_data()`` call took ``seconds`` (exported in
        #: milliseconds). The histogram's own ``observe``: no call in between on the hot path.
        self.frame_parse: Callable[[float], None] = self.frame_parse_ms.observe
        self.connection_duration = Histogram(DURATION_BUCKETS)
        #: permessage-deflate bytes of every connection, open or closed: compressed/inflated
        #: in, raw/compressed out; each codec adds to it as it works (``codec.totals``)
        self.deflate_totals = [0, 0, 0, 0]
        #: seconds spent compressing outbound messages (sends, broadcasts)
        self.compress_seconds = 0.0
        # -- operability (issue 16) --
        #: protocol violations by ``violations.VIOLATION_TYPES`` entry (a fixed set)
        self.violations: dict[str, int] = {}
        #: connections failed because no frame came after a heartbeat ping
        self.heartbeat_timeouts = 0
        #: backplane probes not echoed within two intervals (a silent or stalled bus)
        self.probe_timeouts = 0
        #: heartbeat pings that got nothing back within pong_timeout (each one counted)
        self.missed_pongs = 0
        #: connections whose last heartbeat ping is overdue right now (set by the heartbeat)
        self.late_pongs = 0
        #: heap trims after connections closed (``wsflask.heap``) and the bytes they gave back
        self.heap_trims = 0
        self.heap_released_bytes = 0
        #: message counts by payload size class ``nbytes.bit_length()``, in and out
        self.sizes_in = [0] * _SIZE_SLOTS
        self.sizes_out = [0] * _SIZE_SLOTS
        # (monotonic time, messages in + out) samples taken at render time
        self._rate_samples: deque[tuple[float, int]] = deque([(clock(), 0)])

    # -- increments (hot path: keep them trivial) -------------------------------------------

    def connection_opened(self, deflate: PerMessageDeflate | None = None) -> None:
        """A handshake completed with 101; call ``connection_closed()`` exactly once later.

        ``deflate``: the connection's permessage-deflate codec; from now on it adds its byte
        counts to ``deflate_totals`` as it works (what it counted before is added now).
        """
        self.connections_current += 1
        self.connections_total += 1
        if deflate is not None and deflate.totals is not self.deflate_totals:
            totals = self.deflate_totals
            for index, value in enumerate(_deflate_counters(deflate)):
                totals[index] += value
            deflate.totals = totals

    def connection_closed(
        self, code: int, duration: float, deflate: PerMessageDeflate | None = None
    ) -> None:
        """An open connection ended with close ``code`` after ``duration`` seconds."""
        self.connections_current -= 1
        label: int | str = code if code in LABELLED_CLOSE_CODES else "other"
        self.close_codes[label] = self.close_codes.get(label, 0) + 1
        self.connection_duration.observe(duration)
        if deflate is not None and deflate.totals is self.deflate_totals:
            deflate.totals = None  # counted: nothing after the close is

    def compress_time(self, seconds: float) -> None:
        """Compressing one outbound message (or one broadcast) took ``seconds``."""
        self.compress_seconds += seconds

    def deflate_bytes(self) -> tuple[int, int, int, int]:
        """permessage-deflate bytes so far: compressed in, inflated in, raw out, compressed out.

        Counts compressed messages only (uncompressed ones are in the message counters).
        O(1): the codecs add to ``deflate_totals`` as they work.
        """
        totals = self.deflate_totals
        return totals[0], totals[1], totals[2], totals[3]

    def handshake(self, status: int) -> None:
        """A handshake was answered with ``status`` (101, or the refusal's status)."""
        self.handshakes[status] = self.handshakes.get(status, 0) + 1

    def message_in(self, nbytes: int) -> None:
        """A complete message of ``nbytes`` payload bytes was received."""
        self.messages_in += 1
        self.bytes_in += nbytes
        self.sizes_in[nbytes.bit_length()] += 1

    def message_out(self, nbytes: int) -> None:
        """A message of ``nbytes`` payload (or frame) bytes was sent or queued."""
        self.messages_out += 1
        self.bytes_out += nbytes
        self.sizes_out[nbytes.bit_length()] += 1

    def dropped(self, reason: str) -> None:
        """A message was dropped instead of delivered, for ``reason``."""
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def slow_consumer_closed(self) -> None:
        """A connection was closed with 1013 because its outbox passed max_backpressure."""
        self.slow_consumers_closed += 1

    def degradation(self, event: str) -> None:
        """A bound or degradation step acted (``degradations``); rare, never per message."""
        self.degradations[event] = self.degradations.get(event, 0) + 1

    def violation(self, kind: str) -> None:
        """A peer broke the protocol; ``kind`` is one of ``violations.VIOLATION_TYPES``."""
        self.violations[kind] = self.violations.get(kind, 0) + 1

    def heap_trimmed(self, released: int) -> None:
        """The heap was trimmed after connections closed, giving ``released`` bytes back."""
        self.heap_trims += 1
        self.heap_released_bytes += released

    def heartbeat_timeout(self) -> None:
        """A connection was failed because its heartbeat ping went unanswered."""
        self.heartbeat_timeouts += 1

    def pong_missed(self) -> None:
        """A heartbeat ping got no frame back within ``pong_timeout`` (battery ER-27)."""
        self.missed_pongs += 1

    def backplane_probe_timeout(self) -> None:
        """The backplane's probe was not echoed within two intervals (battery RD-03)."""
        self.probe_timeouts += 1

    def rtt(self, seconds: float) -> None:
        """A heartbeat ping was answered after ``seconds``."""
        self.rtt_seconds.observe(seconds)

    # -- rendering ----------------------------------------------------------------------------

    def message_rate(self) -> float:
        """Messages (in + out) per second over the last ``rate_window`` seconds.

        Each call records a sample; the rate is measured against the oldest sample still
        inside the window (or the newest one before it, so rare scrapes still get a rate).
        """
        now = self._clock()
        total = self.messages_in + self.messages_out
        samples = self._rate_samples
        while len(samples) > 1 and samples[1][0] <= now - self.rate_window:
            samples.popleft()
        then, before = samples[0]
        samples.append((now, total))
        elapsed = now - then
        return (total - before) / elapsed if elapsed > 0 else 0.0

    def render(self) -> str:
        """Return every metric in the Prometheus text exposition format (``text/plain``).

        Each family is a ``# HELP`` line, a ``# TYPE`` line and its samples.
        """
        out: list[str] = []
        for name, kind, help_text, samples in self._families():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"

    def _families(self) -> list[tuple[str, str, str, list[str]]]:
        """``(name, type, help, sample lines)`` for every metric, in a stable order."""
        window = _fmt(self.rate_window)
        return [
            *self._core_families(window),
            *self._deflate_families(),
            *self._operability_families(),
        ]

    def _operability_families(self) -> list[_Family]:
        """Violations by type, heartbeat timeouts, message sizes, heap trims, dropped log
        records."""
        from .logs import dropped_records  # the logging pipeline's own counter

        return [
            _labelled(
                "websocket_protocol_violations_total",
                "Connections failed for breaking RFC 6455, by violation type.",
                "type",
                self.violations,
            ),
            _single(
                "websocket_heartbeat_timeouts_total",
                "counter",
                "Connections failed because a heartbeat ping went unanswered.",
                self.heartbeat_timeouts,
            ),
            _single(
                "websocket_heartbeat_missed_pongs_total",
                "counter",
                "Heartbeat pings that got nothing back within pong_timeout.",
                self.missed_pongs,
            ),
            _single(
                "websocket_heartbeat_late_connections",
                "gauge",
                "Connections whose last heartbeat ping is overdue (a partition shows here first).",
                self.late_pongs,
            ),
            _single(
                "websocket_backplane_probe_timeouts_total",
                "counter",
                "Backplane probes not echoed within two intervals (a silent or stalled bus).",
                self.probe_timeouts,
            ),
            (
                "websocket_message_size_bytes",
                "histogram",
                "Payload size of messages, by direction (power-of-two buckets).",
                _size_lines("websocket_message_size_bytes", "in", self.sizes_in, self.bytes_in)
                + _size_lines(
                    "websocket_message_size_bytes", "out", self.sizes_out, self.bytes_out
                ),
            ),
            _single(
                "websocket_heap_trims_total",
                "counter",
                "Times freed C heap memory was given back to the OS after connections closed.",
                self.heap_trims,
            ),
            _single(
                "websocket_heap_released_bytes_total",
                "counter",
                "Resident bytes those heap trims gave back to the OS.",
                self.heap_released_bytes,
            ),
            _single(
                "websocket_log_records_dropped_total",
                "counter",
                "Log records dropped because the log queue was full.",
                dropped_records(),
            ),
        ]

    def _deflate_families(self) -> list[_Family]:
        """permessage-deflate: bytes on the wire and inflated, both ways; ratio; CPU time."""
        zin, raw_in, raw_out, zout = self.deflate_bytes()
        ratio = (zin + zout) / (raw_in + raw_out) if raw_in + raw_out else 0.0
        name = "websocket_deflate_bytes_total"
        samples = [
            f'{name}{{direction="{d}",form="{f}"}} {v}'
            for d, f, v in (
                ("in", "compressed", zin),
                ("in", "uncompressed", raw_in),
                ("out", "compressed", zout),
                ("out", "uncompressed", raw_out),
            )
        ]
        return [
            (
                name,
                "counter",
                "Payload bytes of permessage-deflate messages, as sent on the "
                "wire (compressed) and as the application sees them (uncompressed).",
                samples,
            ),
            _single(
                "websocket_deflate_ratio",
                "gauge",
                "Compressed over uncompressed bytes of "
                "compressed messages, both directions (lower is better; 0: none yet).",
                ratio,
            ),
            _single(
                "websocket_deflate_compress_seconds_total",
                "counter",
                "Time spent compressing outbound messages.",
                self.compress_seconds,
            ),
        ]

    def _core_families(self, window: str) -> list[_Family]:
        return [
            _single(
                "websocket_connections_current",
                "gauge",
                "Open WebSocket connections.",
                self.connections_current,
            ),
            _single(
                "websocket_connections_total",
                "counter",
                "WebSocket connections opened.",
                self.connections_total,
            ),
            _labelled(
                "websocket_handshakes_total",
                "Opening handshakes answered, by HTTP status.",
                "status",
                self.handshakes,
            ),
            _single(
                "websocket_messages_received_total",
                "counter",
                "Messages received.",
                self.messages_in,
            ),
            _single(
                "websocket_messages_sent_total", "counter", "Messages sent.", self.messages_out
            ),
            _single(
                "websocket_received_bytes_total",
                "counter",
                "Payload bytes received.",
                self.bytes_in,
            ),
            _single("websocket_sent_bytes_total", "counter", "Bytes sent.", self.bytes_out),
            _single(
                "websocket_message_rate_per_second",
                "gauge",
                f"Messages in and out per second over the last {window} s.",
                self.message_rate(),
            ),
            _labelled(
                "websocket_closes_total",
                "Closed connections, by close code.",
                "code",
                self.close_codes,
            ),
            _labelled(
                "websocket_dropped_messages_total",
                "Messages dropped, by reason.",
                "reason",
                self.drops,
            ),
            _single(
                "websocket_slow_consumers_closed_total",
                "counter",
                "Connections closed with 1013 for exceeding max_backpressure.",
                self.slow_consumers_closed,
            ),
            _labelled(
                "websocket_degradation_events_total",
                "Bounds and degradation at work: partitions detected, connections shed, "
                "circuit-breaker trips, fragment timeouts, expired sessions.",
                "event",
                self.degradations,
            ),
            _histogram(
                "websocket_rtt_seconds", "Heartbeat ping round-trip time.", self.rtt_seconds
            ),
            _histogram(
                "websocket_frame_parsing_duration_ms",
                "Time to parse the frames of one read, in milliseconds.",
                self.frame_parse_ms,
            ),
            _histogram(
                "websocket_connection_duration_seconds",
                "Lifetime of closed connections.",
                self.connection_duration,
            ),
        ]


_Family = tuple[str, str, str, list[str]]

#: size classes: ``nbytes.bit_length()`` of any payload below 2**64
_SIZE_SLOTS = 65
#: the largest size class rendered as its own bucket (le=2**32); larger ones only in +Inf
_SIZE_SHOWN = 33


def _size_lines(name: str, direction: str, counts: list[int], total: int) -> list[str]:
    """Cumulative ``le`` buckets ``2**k - 1``: exactly the payloads of bit length k or less."""
    lines = []
    running = 0
    for k in range(_SIZE_SHOWN):
        running += counts[k]
        lines.append(f'{name}_bucket{{direction="{direction}",le="{(1 << k) - 1}"}} {running}')
    count = sum(counts)
    lines.append(f'{name}_bucket{{direction="{direction}",le="+Inf"}} {count}')
    lines.append(f'{name}_sum{{direction="{direction}"}} {total}')
    lines.append(f'{name}_count{{direction="{direction}"}} {count}')
    return lines


def _deflate_counters(codec: PerMessageDeflate) -> tuple[int, int, int, int]:
    return codec.compressed_in, codec.inflated_in, codec.raw_out, codec.compressed_out


def _single(name: str, kind: str, help_text: str, value: float) -> _Family:
    return name, kind, help_text, [f"{name} {_fmt(value)}"]


def _labelled(name: str, help_text: str, label: str, values: Mapping[Any, int]) -> _Family:
    ordered = sorted(values.items(), key=lambda kv: str(kv[0]))
    samples = [f"{name}{_labels([(label, str(key))])} {count}" for key, count in ordered]
    return name, "counter", help_text, samples


def _histogram(name: str, help_text: str, histogram: Histogram) -> _Family:
    return name, "histogram", help_text, histogram.render_lines(name)
