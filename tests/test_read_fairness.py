"""A connection whose peer keeps its socket full cannot hold the hub: one read per wake-up.

``read_size`` is the bytes a connection reads per wake-up. Before a connection reads again
after a full read, every other ready connection gets its read: two peers whose data already
sits in the kernel are read in alternation, not one to the end and then the other. (Found
with ``loadtests/cf02_ping_flood_bench.py``: with 100 ping flooders one hub turn ran each
flooder's greenlet for up to 44 reads of 64 KiB, and the canary waited 0.4-2 s for that
turn.) Covers the plain-TCP read (``for message in ws``) and the deadline read
(``receive(timeout=...)``). It does not measure latency: that is the benchmark's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent.event
import pytest
from helpers import wait_until

from wsflask.config import Config
from wsflask.server import Server
from wsflask.websocket import LONG_READ_MAX, WebSocket

READ = 1024  # the smallest read_size: one read holds less than one of the frames below
MESSAGES = 24
PAYLOAD = b"x" * READ  # a masked frame of it is 8 + 1024 bytes: one message per read at most


def _masked(payload: bytes) -> bytes:
    return b"\x82\xfe" + len(payload).to_bytes(2, "big") + b"\x00\x00\x00\x00" + payload


def _longest_run(log: list[str]) -> int:
    """The most consecutive entries from one connection."""
    longest = run = 0
    for i, name in enumerate(log):
        run = run + 1 if i and log[i - 1] == name else 1
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("deadline", [False, True], ids=["iterate", "receive_timeout"])
def test_two_full_sockets_are_read_in_alternation(
    serve: Callable[..., Server], raw_peer: Callable[..., Any], deadline: bool
) -> None:
    log: list[str] = []
    reading: dict[str, WebSocket] = {}
    done = gevent.event.Event()

    def handler(ws: WebSocket) -> None:
        name = ws.request.path if ws.request is not None else "?"
        reading[name] = ws
        for _ in range(MESSAGES):
            message = ws.receive(timeout=10) if deadline else ws.receive()
            assert message == PAYLOAD
            log.append(name)
        if len(log) == 2 * MESSAGES:
            done.set()

    config = Config(port=0, read_size=READ, close_timeout=0.5, ping_interval=86400)
    server = serve(handler, config=config)
    peers = [raw_peer(server.server_port) for _ in range(2)]
    for peer, path in zip(peers, ("/a", "/b"), strict=True):
        assert peer.request(path).startswith(b"HTTP/1.1 101")
    # Both handlers wait in their read: the data below reaches the kernel before either wakes
    wait_until(lambda: len(reading) == 2 and all(ws._reading for ws in reading.values()), 5)
    burst = _masked(PAYLOAD) * MESSAGES  # 24.2 KB: the kernel takes it without a wait
    for peer in peers:
        peer.sock.sendall(burst)
    assert done.wait(10), f"{len(log)} of {2 * MESSAGES} messages"
    # Until one connection is done, neither runs twice in a row more than one read's worth
    # (one message per read); before, one read all 24 while the other waited.
    first_done = min(i for i in range(len(log)) if log[: i + 1].count(log[i]) == MESSAGES)
    assert _longest_run(log[: first_done + 1]) <= 2, "".join(n[1] for n in log)


class _CountingReads:
    """The OS socket under a WebSocket, recording what each ``recv`` returned."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.reads: list[int] = []
        self.asked: list[int] = []

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        data: bytes = self.raw.recv(size)
        self.reads.append(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def _read_one_long_frame(
    serve: Callable[..., Server], raw_peer: Callable[..., Any], config: Config, size: int
) -> _CountingReads:
    """Serve a handler that receives one binary message of ``size`` bytes, sent in one go
    by a raw peer, through a ``_CountingReads``; returns it once the message arrived whole."""
    got: list[bytes] = []
    counters: list[_CountingReads] = []
    done = gevent.event.Event()

    def handler(ws: WebSocket) -> None:
        counters.append(_CountingReads(ws._raw))
        ws._raw = counters[0]
        message = ws.receive()
        assert isinstance(message, bytes)
        got.append(message)
        done.set()

    server = serve(handler, config=config)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    wait_until(lambda: bool(counters), 5)
    payload = bytes(range(256)) * (size // 256)  # masked with a zero key
    frame = b"\x82\xff" + len(payload).to_bytes(8, "big") + b"\x00\x00\x00\x00" + payload
    gevent.spawn(peer.sock.sendall, frame)
    assert done.wait(20)
    assert got == [payload]
    assert sum(counters[0].reads) == len(frame)
    return counters[0]


def test_the_rest_of_a_long_frame_is_read_at_once(
    serve: Callable[..., Server], raw_peer: Callable[..., Any]
) -> None:
    """After a full read inside a long frame whose header passed the limits, the next read
    (still after every other ready connection's) asks for all the frame still needs, not
    ``read_size``: a 64 KiB message in the kernel costs 2 reads, not 65 wake-ups."""
    config = Config(port=0, read_size=READ, close_timeout=0.5, ping_interval=86400)
    reads = _read_one_long_frame(serve, raw_peer, config, 65536).reads
    assert reads[0] == READ and len(reads) <= 3, reads  # was 65 reads of READ bytes


def test_a_long_frames_rest_is_read_a_bounded_chunk_at_a_time(
    serve: Callable[..., Server], raw_peer: Callable[..., Any]
) -> None:
    """Past LONG_READ_MAX, the rest of a long frame is asked for LONG_READ_MAX at a time:
    max_message_size (up to 2 GiB) never sizes one read's buffer."""
    size = 3 * LONG_READ_MAX
    config = Config(port=0, read_size=READ, max_message_size=size, ping_interval=86400)
    asked = _read_one_long_frame(serve, raw_peer, config, size).asked
    assert asked[0] == READ and max(asked) == LONG_READ_MAX, asked[:8]


@pytest.mark.parametrize("last_read_was_full", [False, True])
def test_a_timed_read_on_an_idle_socket_waits_instead_of_spinning(
    serve: Callable[..., Server], raw_peer: Callable[..., Any], last_read_was_full: bool
) -> None:
    """``receive(timeout)`` on plain TCP waits on one hub timer: an idle socket costs a
    couple of ``recv`` attempts over the whole timeout, also right after a full read (which
    reads first, after the other ready connections), never one attempt per hub turn."""
    config = Config(port=0, close_timeout=0.5, ping_interval=86400)
    outcome: list[tuple[str, float, int]] = []

    def handler(ws: WebSocket) -> None:
        counting = ws._raw = _CountingReads(ws._raw)
        ws._drained = not last_read_was_full
        began = time.monotonic()
        try:
            ws.receive(timeout=0.3)
        except TimeoutError as exc:
            outcome.append((type(exc).__name__, time.monotonic() - began, len(counting.asked)))

    server = serve(handler, config=config)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    wait_until(lambda: bool(outcome), 10)
    ((name, waited, attempts),) = outcome
    assert name == "TimeoutError" and 0.3 <= waited < 3.0
    assert attempts <= 3, attempts
