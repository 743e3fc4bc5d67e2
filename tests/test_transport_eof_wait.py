"""Transport.close() on plain TCP waits for the peer's FIN on the OS socket and one hub
timer (no ``Timeout`` object per connection): every ending the gevent path had still holds.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest
from test_transport import pair as pair  # the fixture: a loopback TCP pair

from wsflask.transport import Transport

pytestmark = pytest.mark.usefixtures("test_deadline")


def _peer_end(client: Any) -> bytes:
    """What the peer reads until the server's side ends: b"" for a FIN, b"RST" for a reset."""
    with gevent.Timeout(10):
        try:
            while client.recv(65536):
                pass
        except ConnectionResetError:
            return b"RST"
    return b""


def test_close_returns_at_the_peers_fin_without_a_reset(pair: Any) -> None:
    server, client = pair
    transport = Transport(server, limit=1 << 20)
    assert transport._raw is not None  # the plain-TCP path is the one under test

    def peer() -> bytes:
        end = _peer_end(client)  # our FIN arrives first (shutdown SHUT_WR)
        client.sendall(b"late bytes are discarded")
        client.shutdown(socket.SHUT_WR)
        return end

    reader = gevent.spawn(peer)
    transport.close(5.0)
    assert reader.get(timeout=5) == b""
    assert not transport.broken  # an orderly close, no drop


def test_a_silent_peer_is_dropped_once_the_timeout_passes(pair: Any) -> None:
    server, client = pair
    transport = Transport(server, limit=1 << 20)
    began = time.monotonic()
    transport.close(0.2)
    elapsed = time.monotonic() - began
    assert transport.broken  # dropped: SO_LINGER 0, the peer sees a reset
    assert 0.2 <= elapsed < 3.0
    assert _peer_end(client) in (b"", b"RST")  # our FIN came first; then the reset


def test_a_peer_that_never_stops_sending_is_dropped_at_the_timeout(pair: Any) -> None:
    server, client = pair
    transport = Transport(server, limit=1 << 20)
    stop = gevent.event.Event()

    def flood() -> None:
        try:
            while not stop.is_set():
                client.sendall(b"x" * 4096)
                gevent.sleep(0)
        except OSError:
            pass  # the server dropped us

    flooder = gevent.spawn(flood)
    began = time.monotonic()
    transport.close(0.3)
    elapsed = time.monotonic() - began
    stop.set()
    flooder.join(5)
    assert flooder.dead
    assert transport.broken
    assert 0.3 <= elapsed < 3.0


def test_the_socket_closed_elsewhere_ends_the_wait(pair: Any) -> None:
    server, _client = pair
    transport = Transport(server, limit=1 << 20)
    closer = gevent.spawn_later(0.05, server.close)  # another greenlet closes it meanwhile
    began = time.monotonic()
    transport.close(5.0)  # the wait is cancelled (EBADF thrown in), not run to its timeout
    assert time.monotonic() - began < 3.0
    closer.join(5)
    assert closer.dead
