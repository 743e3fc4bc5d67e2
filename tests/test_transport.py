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


# -- corking: the writes of one batch leave in one send ---------------------------------------


class CountingSocket:
    """The OS socket under a Transport, counting its ``send`` calls."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sends: list[int] = []

    def send(self, data: bytes) -> int:
        sent: int = self.raw.send(data)
        self.sends.append(sent)
        return sent

    def __getattr__(self, name: str) -> Any:  # recv, fileno...: the socket's own
        return getattr(self.raw, name)


def counted(server: Any) -> tuple[Transport, CountingSocket]:
    transport = Transport(server, limit=1 << 20)
    counter = CountingSocket(transport._raw)
    transport._raw = counter
    return transport, counter


def read_exactly(sock: Any, size: int) -> bytes:
    data = b""
    with gevent.Timeout(10):
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, data
            data += chunk
    return data


def test_corked_writes_leave_in_one_send_at_uncork(pair: Any) -> None:
    server, client = pair
    transport, counter = counted(server)
    transport.cork()
    for part in (b"a" * 10, b"b" * 20, b"c" * 30):
        assert transport.write(part)
    assert counter.sends == [] and transport.buffered_amount == 60 and not transport.idle
    assert transport.uncork()
    assert counter.sends == [60] and transport.buffered_amount == 0 and transport.idle
    assert read_exactly(client, 60) == b"a" * 10 + b"b" * 20 + b"c" * 30
    assert transport.corked is None and transport.uncork()  # a second uncork: nothing to do


def test_every_other_write_hands_the_corked_data_on_first(pair: Any) -> None:
    server, client = pair
    transport, counter = counted(server)
    transport.cork()
    assert transport.write(b"1" * 5)
    assert transport.write_nowait(b"2" * 5, budget=1 << 20)  # fan-out after the handler
    assert transport.corked is None and counter.sends == [5, 5]
    transport.cork()
    assert transport.write(b"3" * 5)
    assert transport.write_urgent(b"P") == 0  # a control frame, never ahead of corked data
    assert read_exactly(client, 16) == b"1" * 5 + b"2" * 5 + b"3" * 5 + b"P"
    transport.cork()
    assert transport.write(b"4" * 5)
    transport.close(5.0)  # the orderly close sends what was corked
    assert read_all(client) == b"4" * 5


def test_corked_data_is_handed_on_when_the_greenlet_yields(pair: Any) -> None:
    server, client = pair
    transport, counter = counted(server)
    transport.cork()
    assert transport.write(b"x" * 7)
    assert counter.sends == []
    gevent.sleep(0)  # the corking greenlet waits for something else: the hub callback runs
    assert transport.corked is None and counter.sends == [7]
    assert read_exactly(client, 7) == b"x" * 7


def test_more_than_the_cork_limit_is_written_at_once(pair: Any) -> None:
    from wsflask.transport import CORK_LIMIT

    server, client = pair
    transport, _ = counted(server)
    reader = gevent.spawn(read_exactly, client, CORK_LIMIT + 10)
    transport.cork()
    assert transport.write(b"s" * 10)
    assert transport.write(b"L" * CORK_LIMIT)  # blocks like any write: backpressure holds
    assert transport.corked is None
    assert reader.get(timeout=10) == b"s" * 10 + b"L" * CORK_LIMIT


def test_drop_forgets_corked_data(pair: Any) -> None:
    server, _ = pair
    transport, counter = counted(server)
    transport.cork()
    assert transport.write(b"z" * 9)
    transport.drop()
    assert transport.corked is None and transport.buffered_amount == 0
    assert not transport.write(b"more") and counter.sends == []
    gevent.sleep(0)  # the pending hub callback finds nothing to send
    assert counter.sends == []


def test_fan_out_writes_of_one_turn_leave_in_one_send(pair: Any) -> None:
    server, client = pair
    transport, counter = counted(server)
    for part in (b"1" * 4, b"2" * 4, b"3" * 4):
        assert transport.write_soon(part, budget=1 << 20)  # never blocks
    assert counter.sends == [] and transport.buffered_amount == 12
    gevent.sleep(0)  # the end of this turn of the hub loop
    assert counter.sends == [12] and transport.buffered_amount == 0
    assert read_exactly(client, 12) == b"1" * 4 + b"2" * 4 + b"3" * 4


def test_fan_out_writes_refuse_exactly_as_write_nowait(pair: Any) -> None:
    server, _ = pair
    transport, counter = counted(server)
    assert transport.write_soon(b"a" * 150, budget=100)  # the first of a turn: always taken
    assert transport.write_soon(b"b" * 10, budget=100)  # over: handed on, the kernel decides
    assert counter.sends == [150, 10] and transport.corked is None
    queued = fill(transport)  # the kernel is full: now the outbox and its budget decide
    assert not transport.write_soon(b"c" * 100, budget=queued + 99)
    assert transport.write_soon(b"c" * 100, budget=queued + 100)
    assert transport.buffered_amount == queued + 100 and transport.corked is None
    transport.drop()
    assert not transport.write_soon(b"d", budget=1 << 20)
