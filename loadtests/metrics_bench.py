"""Benchmark: how long ``Metrics.render()`` (the ``/metrics`` body) takes with 10,000 connections.

Fills a ``Metrics`` as 10,000 open connections would (every handshake status, close code,
violation type, message sizes, RTTs), once without and once with a permessage-deflate codec
per connection, then times ``render()``, best of several runs. Target (seed audit NF/OB-12):
under 1 ms, with deflate too. The codecs add their byte counts to ``Metrics.deflate_totals``
as they work, so the deflate case must cost what the other does (it took 3.0 ms when the
render summed 10,000 codecs); a codec's bytes before ``connection_opened`` are added there.
Benchmarks are not tests: nothing here asserts a speed. Run: ``python loadtests/metrics_bench.py``.
"""

from __future__ import annotations

import argparse
import random
import timeit

from wsflask.metrics import Metrics
from wsflask.protocol import CloseCode, PerMessageDeflate
from wsflask.violations import VIOLATION_TYPES


def filled(connections: int, deflate: bool) -> Metrics:
    """A Metrics as after ``connections`` opens and a day of traffic."""
    rng = random.Random(1)
    metrics = Metrics()
    for _ in range(connections):
        metrics.connection_opened(PerMessageDeflate() if deflate else None)
    for status in (101, 400, 403, 404, 408, 426, 429, 431, 503):
        metrics.handshake(status)
    for code in CloseCode:
        metrics.connection_closed(int(code), rng.uniform(0, 3600))
        metrics.connections_current += 1  # keep the open count at ``connections``
    for kind in VIOLATION_TYPES:
        metrics.violation(kind)
    for _ in range(100_000):
        size = rng.randrange(0, 1 << rng.randrange(1, 20))
        metrics.message_in(size)
        metrics.message_out(size)
        metrics.rtt(rng.uniform(0.0001, 0.5))
        metrics.frame_parse(rng.uniform(0, 0.001))
    return metrics


def best_ms(metrics: Metrics, number: int = 200, repeat: int = 5) -> float:
    return min(timeit.repeat(metrics.render, number=number, repeat=repeat)) / number * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    args = parser.parse_args()
    for deflate in (False, True):
        metrics = filled(args.connections, deflate)
        lines = metrics.render().count("\n")
        label = "with a deflate codec each" if deflate else "without deflate"
        print(f"render() with {args.connections} connections {label}: "
              f"{best_ms(metrics):.3f} ms ({lines} lines)")  # fmt: skip


if __name__ == "__main__":
    main()
