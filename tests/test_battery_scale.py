"""Battery rows at the battery's scale, measured from outside the code under test.

HS-05: CPU time (``resource.getrusage``) of a whole server ``Connection`` fed 14 KiB of
headers one byte at a time, as a ratio against 7 KiB (2x bytes -> at most 2.2x CPU), not the
``HeadReader.scanned`` counter. HS-06: 1 000 connections trickling one header byte per second
are each closed at ``handshake_timeout`` (+1 s), a canary round-trips throughout, and the
process's descriptor count returns to its baseline. ``WSFLASK_BATTERY_SCALE=full`` runs the
battery's numbers where CI runs fewer (see ``scale``).
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

import gevent
import gevent.event
import gevent.socket
from helpers import wait_until

from wsflask.client import connect
from wsflask.config import Config
from wsflask.protocol import Connection, Request, Side
from wsflask.websocket import WebSocket

FULL = os.environ.get("WSFLASK_BATTERY_SCALE", "").lower() == "full"


def scale(ci: int, full: int) -> int:
    """The CI number, or the battery's with ``WSFLASK_BATTERY_SCALE=full``."""
    return full if FULL else ci


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


# -- HS-05: linear CPU for a head arriving one byte per segment ---------------------------------


def _head(headers: int) -> bytes:
    lines = "".join(f"X-H{i}: {'v' * 140}\r\n" for i in range(headers))
    return f"GET / HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()


def _cpu_to_parse_bytewise(head: bytes) -> float:
    """Best of 5: CPU seconds for a server Connection to read ``head`` one byte per call."""
    best = float("inf")
    for _ in range(5):
        conn = Connection(Side.SERVER, http=True)
        started = cpu_seconds()
        for i in range(len(head)):
            conn.receive_data(head[i : i + 1])
        best = min(best, cpu_seconds() - started)
        (request,) = conn.events_received()
        assert isinstance(request, Request) and request.path == "/"
    return best


def test_hs05_bytewise_head_cpu_is_linear_in_its_size() -> None:
    small, large = _head(49), _head(99)  # with Host: 50 and 100 fields
    assert 14 * 1024 <= len(large) <= 16 * 1024 and len(large) / len(small) > 1.95
    _cpu_to_parse_bytewise(small)  # warm caches and the allocator
    ratio = _cpu_to_parse_bytewise(large) / _cpu_to_parse_bytewise(small)
    assert ratio <= 2.2 * len(large) / len(small) / 2, f"2x bytes cost {ratio:.2f}x CPU"


# -- HS-06: 1 000 slowloris connections -----------------------------------------------------


class Canary:
    """A ws:// connection round-tripping in its own greenlet; a fresh connect every 20 trips."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.trips = 0
        self.failure: BaseException | None = None
        self.stopping = gevent.event.Event()
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                ws = connect(self.url, timeout=5)  # a fresh client connects throughout
                for n in range(20):
                    ws.send(f"c{n}")
                    if ws.receive(timeout=5) != f"c{n}":
                        raise AssertionError("the canary's echo came back wrong")
                    self.trips += 1
                    if self.stopping.wait(0.01):  # pacing, not synchronisation
                        break
                ws.close()
        except BaseException as exc:  # reported by stop()
            self.failure = exc

    def stop(self) -> None:
        self.stopping.set()
        self.greenlet.join(timeout=10)
        assert self.failure is None, f"the canary failed: {self.failure!r}"


def _trickle(port: int, results: list[float]) -> None:
    """Connect, send one header byte per second; record seconds from connect to close."""
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=30)
    opened = time.monotonic()
    sock.settimeout(1.0)  # the trickle's pace: one byte, then up to a second for the close
    try:
        for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.send(bytes([byte]))
                while sock.recv(65536):  # the 408 answer, then EOF
                    pass
                break
            except TimeoutError:
                continue  # a second passed: the next byte
            except OSError:  # reset: closed
                break
        results.append(time.monotonic() - opened)
    finally:
        sock.close()


def test_hs06_a_thousand_slowloris_connections_are_closed_at_the_deadline(serve: Any) -> None:
    count, timeout = scale(1000, 1000), 3.0
    baseline = open_fds()
    server = serve(
        echo,
        config=Config(port=0, close_timeout=0.5, handshake_timeout=timeout, max_connections=4000),
    )
    canary = Canary(f"ws://127.0.0.1:{server.server_port}/")
    wait_until(lambda: canary.trips > 0 or canary.failure, 10)
    results: list[float] = []
    trickles = [
        gevent.spawn(_trickle, server.server_port, results) for _ in range(count)
    ]
    try:
        gevent.joinall(trickles, timeout=timeout + 20, raise_error=True)
        trips_during = canary.trips
    finally:
        canary.stop()
    assert len(results) == count, f"{count - len(results)} trickling connections never closed"
    late = sorted(r for r in results if not timeout - 0.05 <= r <= timeout + 1.0)
    assert not late, f"{len(late)} closed outside [{timeout}, {timeout + 1}] s: {late[:5]}"
    assert trips_during > 20
    server.stop(timeout=1)
    wait_until(lambda: open_fds() <= baseline, 5)
