"""Metrics: counters, histograms, the sliding message rate and the Prometheus text format."""

from __future__ import annotations

import re
from typing import Any

import gevent.event
import pytest

from wsflask import App
from wsflask.metrics import PARSE_BUCKETS_MS, Histogram, Metrics

LABEL = r'[a-zA-Z_]+="(?:[^"\\]|\\.)*"'
SAMPLE = re.compile(rf"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{{{LABEL}(,{LABEL})*\}})? -?[0-9.e+-]+$")
REQUIRED = (
    "websocket_connections_current",
    "websocket_connections_total",
    "websocket_handshakes_total",
    "websocket_messages_received_total",
    "websocket_messages_sent_total",
    "websocket_received_bytes_total",
    "websocket_sent_bytes_total",
    "websocket_closes_total",
    "websocket_dropped_messages_total",
    "websocket_slow_consumers_closed_total",
    "websocket_rtt_seconds",
    "websocket_frame_parsing_duration_ms",
    "websocket_message_rate_per_second",
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in output")


def test_every_required_metric_has_help_and_type() -> None:
    text = Metrics().render()
    for name in REQUIRED:
        assert f"# HELP {name} " in text
        assert re.search(rf"^# TYPE {name} (counter|gauge|histogram)$", text, re.M), name


def test_output_is_valid_exposition_format() -> None:
    metrics = Metrics()
    metrics.handshake(101)
    metrics.handshake(403)
    metrics.dropped('quote"and\\slash')
    metrics.connection_opened()
    metrics.connection_closed(1006, 2.0)
    text = metrics.render()
    assert text.endswith("\n")
    declared = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), line
            base = re.sub(r"(_bucket|_sum|_count)$", "", line.split("{")[0].split()[0])
            assert base in declared or line.split("{")[0].split()[0] in declared, line
    assert 'websocket_dropped_messages_total{reason="quote\\"and\\\\slash"} 1' in text


def test_connection_counters() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.connection_opened()
    metrics.connection_closed(1000, 0.5)
    text = metrics.render()
    assert sample(text, "websocket_connections_current") == 2
    assert sample(text, "websocket_connections_total") == 3
    assert 'websocket_closes_total{code="1000"} 1' in text
    assert "websocket_connection_duration_seconds_count 1" in text


def test_labelled_counters() -> None:
    metrics = Metrics()
    metrics.handshake(101)
    metrics.handshake(101)
    metrics.handshake(429)
    metrics.dropped("backpressure")
    metrics.slow_consumer_closed()
    text = metrics.render()
    assert 'websocket_handshakes_total{status="101"} 2' in text
    assert 'websocket_handshakes_total{status="429"} 1' in text
    assert 'websocket_dropped_messages_total{reason="backpressure"} 1' in text
    assert sample(text, "websocket_slow_consumers_closed_total") == 1


def test_messages_and_bytes() -> None:
    metrics = Metrics()
    metrics.message_in(10)
    metrics.message_in(5)
    metrics.message_out(7)
    text = metrics.render()
    assert sample(text, "websocket_messages_received_total") == 2
    assert sample(text, "websocket_received_bytes_total") == 15
    assert sample(text, "websocket_messages_sent_total") == 1
    assert sample(text, "websocket_sent_bytes_total") == 7


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram([1.0, 2.0, 5.0])
    for value in (0.5, 1.0, 1.5, 3.0, 10.0):
        hist.observe(value)
    lines = hist.render_lines("h")
    assert lines == [
        'h_bucket{le="1"} 2',  # le is inclusive
        'h_bucket{le="2"} 3',
        'h_bucket{le="5"} 4',
        'h_bucket{le="+Inf"} 5',
        "h_sum 16",
        "h_count 5",
    ]


def test_frame_parse_recorded_in_milliseconds_and_rtt_in_seconds() -> None:
    metrics = Metrics()
    metrics.frame_parse(0.002)  # 2 ms
    metrics.rtt(0.003)
    text = metrics.render()
    assert 'websocket_frame_parsing_duration_ms_bucket{le="1"} 0' in text
    assert 'websocket_frame_parsing_duration_ms_bucket{le="2.5"} 1' in text
    assert "websocket_frame_parsing_duration_ms_sum 2" in text
    assert 'websocket_rtt_seconds_bucket{le="0.005"} 1' in text


def test_a_histogram_observed_in_seconds_and_exported_in_ms_keeps_its_bounds() -> None:
    """Observations on a bucket's bound fall in that bucket (``le`` is inclusive), one just
    above it in the next; the sum is exported in milliseconds."""
    for bound in PARSE_BUCKETS_MS:
        histogram = Histogram(PARSE_BUCKETS_MS, unit=1000.0)
        histogram.observe(bound / 1000.0)
        histogram.observe(bound / 1000.0 * 1.0001)
        lines = histogram.render_lines("h")
        at = PARSE_BUCKETS_MS.index(bound)
        assert histogram.counts[at] == 1 and histogram.counts[at + 1] == 1, bound
        assert abs(float(lines[-2].split()[1]) - bound * 2.0001) < 1e-9 * max(1.0, bound)


def test_message_rate_over_sliding_window() -> None:
    clock = FakeClock()
    metrics = Metrics(rate_window=10.0, clock=clock)
    clock.now += 5
    for _ in range(50):
        metrics.message_in(1)
    assert metrics.message_rate() == pytest.approx(10.0)  # 50 messages in 5 s
    clock.now += 5
    for _ in range(100):
        metrics.message_out(1)
    assert metrics.message_rate() == pytest.approx(15.0)  # 150 in the 10 s window
    clock.now += 10
    for _ in range(30):
        metrics.message_in(1)
    assert metrics.message_rate() == pytest.approx(3.0)  # 30 since the sample 10 s ago
    clock.now += 10
    assert metrics.message_rate() == 0.0  # idle window
    text = metrics.render()
    assert "websocket_message_rate_per_second 0" in text


def test_rate_with_rare_scrapes_uses_the_last_sample() -> None:
    clock = FakeClock()
    metrics = Metrics(rate_window=10.0, clock=clock)
    clock.now += 100
    for _ in range(200):
        metrics.message_in(1)
    assert metrics.message_rate() == pytest.approx(2.0)


def test_same_instant_rate_is_zero_not_a_division_error() -> None:
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    metrics.message_in(1)
    assert metrics.message_rate() == 0.0


def test_close_codes_outside_the_registry_share_one_label() -> None:
    metrics = Metrics()
    for code in (1000, 1001, 1011, 3000, 3999, 4000, 4999, 1006):
        metrics.connection_opened()
        metrics.connection_closed(code, 0.1)
    assert metrics.close_codes == {1000: 1, 1001: 1, 1011: 1, 1006: 1, "other": 4}
    text = metrics.render()
    assert 'websocket_closes_total{code="other"} 4' in text
    assert 'websocket_closes_total{code="1011"} 1' in text
    assert 'code="4000"' not in text


def test_peers_cannot_grow_metrics_with_distinct_close_codes(app_factory: Any) -> None:
    app: App = app_factory()
    peers = 40
    gone: list[int] = []
    all_gone = gevent.event.Event()

    @app.on("disconnect")
    def left(ws: Any) -> None:
        gone.append(ws.close_code)
        if len(gone) == peers:
            all_gone.set()

    with app.test_client() as client:
        for code in range(4000, 4000 + peers):
            client.connect("/").close(code)
        assert all_gone.wait(10)
        text = client.get("/metrics").text
    assert sorted(gone) == list(range(4000, 4000 + peers))  # the app still sees each code
    series = [line for line in text.splitlines() if line.startswith("websocket_closes_total{")]
    assert series == [f'websocket_closes_total{{code="other"}} {peers}']
