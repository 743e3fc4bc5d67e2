"""Transport: the owned socket writer, over a real loopback TCP pair."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest

from wsflask.transport import Transport

pytestmark = pytest.mark.usefixtures("test_deadline")


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    """(server side, client side) gevent sockets; small buffers so the kernel fills fast."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gevent.socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    listener.close()
    yield server, client
    client.close()
    server.close()


def read_all(sock: Any) -> bytes:
    data = b""
    with gevent.Timeout(10):
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def fill(transport: Transport) -> int:
    """Queue until the kernel refuses; returns the bytes in the outbox."""
    chunk = b"x" * 65536
    while transport.buffered_amount == 0:
        assert transport.write_nowait(chunk, budget=None)
    return transport.buffered_amount


def test_write_nowait_over_budget_queues_nothing_and_reports_false(pair: Any) -> None:
    server, _ = pair
    transport = Transport(server, limit=1 << 20)
    queued = fill(transport)
    assert not transport.write_nowait(b"y" * 100, budget=queued + 99)
    assert transport.buffered_amount == queued and not transport.broken
    assert transport.write_nowait(b"y" * 100, budget=queued + 100)
    assert transport.buffered_amount == queued + 100
    transport.drop()


def test_writes_keep_their_order_and_close_flushes_then_half_closes(pair: Any) -> None:
    server, client = pair
    transport = Transport(server, limit=1 << 20)
    parts = [bytes([65 + i]) * 50000 for i in range(6)]
    reader = gevent.spawn(read_all, client)
    for index, part in enumerate(parts):
        if index % 2:
            assert transport.write(part)
        else:
            assert transport.write_nowait(part, budget=None)
    transport.close(5.0)
    assert reader.get(timeout=10) == b"".join(parts)
    assert server.fileno() == -1


def test_drop_fails_every_write_and_resets_the_peer(pair: Any) -> None:
    server, client = pair
    transport = Transport(server, limit=1 << 20)
    transport.drop()
    assert transport.broken
    assert not transport.write(b"late") and not transport.write_nowait(b"late", budget=None)
    transport.close(1.0)
    assert read_all(client) == b""


def test_write_blocks_while_the_outbox_is_over_the_limit(pair: Any) -> None:
    server, client = pair
    transport = Transport(server, limit=64 * 1024)
    fill(transport)
    writer = gevent.spawn(transport.write, b"z" * 200000)
    gevent.idle()
    assert not writer.ready()  # the peer does not read: natural backpressure
    received = gevent.spawn(read_all, client)
    assert writer.get(timeout=10) is True
    transport.close(5.0)
    assert received.get(timeout=10).endswith(b"z" * 200000)
