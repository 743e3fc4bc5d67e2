"""Giving freed heap memory back after connections close (``wsflask.heap``).

``release()`` is checked in a fresh interpreter, where the heap holds only what the test
freed. ``HeapTrimmer``'s rule (a fall of ``drop`` connections and a quarter below the peak
since the last trim, one trim per burst, none under flat churn) runs with an injected trim
and a short delay. Then the wiring: ``Server`` and the pywsgi ``WSGIServer`` report their
open counts, take the setting (and a reload) and count trims in the metrics. The
end-to-end RSS check with 1,000 deflate connections is PD-05 in ``test_battery_scale.py``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from helpers import wait_until

from wsflask import App, heap
from wsflask.client import connect
from wsflask.config import Config
from wsflask.heap import HeapTrimmer
from wsflask.metrics import Metrics

pytestmark = pytest.mark.usefixtures("test_deadline")

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.fixture
def short_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "DELAY", 0.01)


class FakeTrim:
    """Counts calls; gives back ``released`` bytes (None: a C library that cannot trim)."""

    def __init__(self, released: int | None = 4096) -> None:
        self.calls = 0
        self.released = released

    def __call__(self) -> int | None:
        self.calls += 1
        return self.released


def settle(trimmer: HeapTrimmer) -> None:
    wait_until(lambda: not trimmer.pending, 5)
    gevent.sleep(0.03)  # longer than DELAY: a trim wrongly scheduled again would run


def burst(trimmer: HeapTrimmer, peak: int, left: int) -> None:
    """``peak`` connections open, then all but ``left`` close at once; let a trim run."""
    trimmer.opened(peak)
    trimmer.closed(left)
    settle(trimmer)


# -- release() -----------------------------------------------------------------------------------

RELEASE_SCRIPT = """
import json
from wsflask import heap
# 40 MB in 32 KiB blocks: below glibc's mmap threshold, so they live in the heap; every
# hundredth stays, so the heap's top cannot simply shrink and only a trim gives pages back
blocks = [bytes(32 * 1024) for _ in range(1280)]
kept = blocks[::100]
del blocks
print(json.dumps({"released": heap.release(), "again": heap.release(), "kept": len(kept)}))
"""


def test_release_gives_freed_heap_pages_back_to_the_os() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    if not GLIBC:  # musl, macOS: no malloc_trim, so release() says it cannot
        assert out["released"] is None and out["again"] is None, out
        return
    assert out["released"] >= 30 * 1024 * 1024, out  # of the 40 MB freed
    assert 0 <= out["again"] < 1024 * 1024, out  # nothing left to give


def test_release_is_none_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert heap.release() is None


# -- the rule ------------------------------------------------------------------------------


@pytest.mark.usefixtures("short_delay")
def test_a_burst_of_closes_costs_one_trim_after_the_delay() -> None:
    trim, metrics = FakeTrim(), Metrics()
    trimmer = HeapTrimmer(100, metrics, trim=trim)
    for count in range(1, 1001):
        trimmer.opened(count)
    for count in range(999, 750, -1):  # 249 fewer: less than a quarter of the peak
        trimmer.closed(count)
    assert not trimmer.pending
    trimmer.closed(750)  # a quarter below the peak
    assert trimmer.pending and trim.calls == 0  # not at once: a burst shares it
    for count in range(749, -1, -1):
        trimmer.closed(count)
    settle(trimmer)
    assert trim.calls == 1 and trimmer.trims == 1 and trimmer.released == 4096
    assert metrics.heap_trims == 1 and metrics.heap_released_bytes == 4096
    assert "websocket_heap_trims_total 1" in metrics.render()
    assert "websocket_heap_released_bytes_total 4096" in metrics.render()


@pytest.mark.usefixtures("short_delay")
def test_the_peak_starts_again_from_the_count_at_the_trim() -> None:
    trim = FakeTrim()
    trimmer = HeapTrimmer(100, trim=trim)
    burst(trimmer, 1000, 600)  # trimmed at 600: the new peak
    assert trim.calls == 1
    trimmer.closed(451)  # 149 below 600: over drop, under a quarter of 600
    settle(trimmer)
    assert trim.calls == 1
    trimmer.closed(450)
    settle(trimmer)
    assert trim.calls == 2


@pytest.mark.usefixtures("short_delay")
def test_flat_churn_and_small_servers_never_trim() -> None:
    trim = FakeTrim()
    trimmer = HeapTrimmer(100, trim=trim)
    trimmer.opened(5000)
    for _ in range(10_000):  # connections come and go around 5,000
        trimmer.closed(4999)
        trimmer.opened(5000)
    small = HeapTrimmer(100, trim=trim)
    for count in range(1, 100):
        small.opened(count)
    for count in range(98, -1, -1):  # 99 gone: fewer than drop
        small.closed(count)
    settle(trimmer)
    settle(small)
    assert trim.calls == 0


@pytest.mark.usefixtures("short_delay")
def test_drop_zero_never_trims_and_a_reload_changes_the_drop() -> None:
    trim = FakeTrim()
    trimmer = HeapTrimmer(0, trim=trim)
    burst(trimmer, 1000, 0)
    assert trim.calls == 0
    trimmer.drop = 100  # from the current peak, 1,000
    trimmer.opened(0)
    trimmer.closed(749)
    assert trimmer.pending
    settle(trimmer)
    assert trim.calls == 1


@pytest.mark.usefixtures("short_delay")
def test_a_c_library_that_cannot_trim_is_asked_once() -> None:
    trim = FakeTrim(released=None)
    trimmer = HeapTrimmer(100, trim=trim)
    burst(trimmer, 1000, 0)
    burst(trimmer, 1000, 0)
    assert trim.calls == 1 and trimmer.trims == 0 and trimmer.drop == 0


def test_cancel_drops_a_pending_trim() -> None:
    trim = FakeTrim()
    trimmer = HeapTrimmer(100, trim=trim)
    trimmer.opened(1000)
    trimmer.closed(0)
    assert trimmer.pending
    trimmer.cancel()
    assert not trimmer.pending
    gevent.sleep(heap.DELAY + 0.2)
    assert trim.calls == 0


def test_the_setting_is_documented_and_bounded() -> None:
    from wsflask.errors import ConfigError

    assert Config().heap_trim_drop == 100
    assert Config(heap_trim_drop=0).heap_trim_drop == 0
    with pytest.raises(ConfigError, match="heap_trim_drop"):
        Config(heap_trim_drop=-1)


# -- the servers --------------------------------------------------------------------------------


@pytest.fixture
def fake_release(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTrim]:
    """The servers' trimmers call this instead of glibc."""
    trim = FakeTrim(released=8192)
    monkeypatch.setattr(heap, "release", trim)
    yield trim


def _open_and_close(port: int, count: int) -> None:
    clients = [connect(f"ws://127.0.0.1:{port}/", timeout=5) for _ in range(count)]
    for ws in clients:
        ws.close()


@pytest.mark.usefixtures("short_delay")
def test_the_server_trims_after_its_connections_close_and_counts_it(
    serve: Callable[..., Any], fake_release: FakeTrim
) -> None:
    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    metrics = Metrics()
    config = Config(port=0, close_timeout=1.0, handshake_timeout=2.0, heap_trim_drop=10)
    server = serve(echo, config=config, metrics=metrics)
    assert server.heap.drop == 10
    _open_and_close(server.server_port, 12)
    wait_until(lambda: not server.connections and fake_release.calls == 1, 5)
    settle(server.heap)
    assert fake_release.calls == 1 and metrics.heap_trims == 1
    assert metrics.heap_released_bytes == 8192
    server.apply_config(Config(port=0, close_timeout=1.0, handshake_timeout=2.0))
    assert server.heap.drop == Config().heap_trim_drop


def _not_found(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("404 Not Found", [])
    return []


@pytest.mark.usefixtures("short_delay")
def test_the_pywsgi_server_trims_with_its_apps_setting(fake_release: FakeTrim) -> None:
    from wsflask.wsgi import WSGIServer

    app = App(Config(heap_trim_drop=10, close_timeout=1.0))

    @app.route("/")
    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    server = WSGIServer(
        ("127.0.0.1", 0), lambda e, s: [], handler_class=app.handler_class, log=None
    )
    server.start()
    try:
        assert server.heap.drop == 10 and server.heap.metrics is app.metrics
        _open_and_close(server.server_port, 12)
        wait_until(lambda: not server.websockets and fake_release.calls == 1, 5)
        settle(server.heap)
        assert fake_release.calls == 1
        assert app.metrics is not None and app.metrics.heap_trims == 1
    finally:
        server.stop(timeout=1)
