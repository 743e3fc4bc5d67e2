"""Shared fixtures. Engineers append their own sections; nothing here monkey-patches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

# -- F2 fixtures: apps and their test clients (app, rooms, heartbeat, testing tests) ---------


@pytest.fixture
def app_factory() -> Iterator[Callable[..., Any]]:
    """Make ``App(**settings)``; every server an app started is stopped after the test."""
    from wsflask.app import App

    apps: list[App] = []

    def make(**settings: Any) -> App:
        app = App(**settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        if app.server is not None:
            app.server.stop(timeout=1)
        app.heartbeat.stop()


# -- F1 fixtures: servers on 127.0.0.1:0 and a raw-socket peer (server/websocket/client tests) -


class RawPeer:
    """A hand-driven client on a plain gevent socket: exact bytes in, exact frames out."""

    def __init__(self, port: int, *, rcvbuf: int | None = None) -> None:
        import socket as pysocket

        import gevent.socket

        self.sock = gevent.socket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window scale stays small
            self.sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""

    def request(self, path: str = "/", headers: str = "") -> bytes:
        """Send an upgrade request for ``path``; return the response head."""
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{headers}\r\n".encode()
        )
        return self.read_head()

    def read_head(self, timeout: float = 5.0) -> bytes:
        import gevent

        with gevent.Timeout(timeout):
            while b"\r\n\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True) -> None:
        from wsflask.protocol import encode_frame

        self.sock.sendall(encode_frame(opcode, payload, fin=fin, mask=b"\x01\x02\x03\x04"))

    def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """Return ``(opcode, payload)`` of the next (unmasked, server) frame."""
        import gevent

        with gevent.Timeout(timeout):
            while True:
                frame = self._parse()
                if frame is not None:
                    return frame
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError("connection closed")
                self.buffer += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        size, pos = buf[1] & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            size, pos = int.from_bytes(buf[2:4], "big"), 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, pos = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < pos + size:
            return None
        self.buffer = buf[pos + size:]
        return buf[0] & 0x0F, buf[pos:pos + size]

    def read_until_eof(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes TCP (EOF or reset); return what came."""
        import gevent

        data = self.buffer
        self.buffer = b""
        with gevent.Timeout(timeout):
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    return data
                if not chunk:
                    return data
                data += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_peer() -> Iterator[Callable[..., RawPeer]]:
    """``raw_peer(port, rcvbuf=None)`` -> a connected ``RawPeer``; all closed after the test."""
    peers: list[RawPeer] = []

    def make(port: int, **kwargs: Any) -> RawPeer:
        peer = RawPeer(port, **kwargs)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    """``serve(handler | None, resolve=None, config=None, **server_kwargs)`` -> started Server.

    Binds 127.0.0.1:0 synchronously (no sleeps); every route runs ``handler`` unless a
    ``resolve`` is given. Small timeouts by default; each server is stopped after the test.
    """
    from wsflask.config import Config
    from wsflask.server import Server, Upgrade

    servers: list[Any] = []

    def start(handler: Any = None, *, resolve: Any = None, config: Any = None,
              **kwargs: Any) -> Any:
        if resolve is None:
            def resolve(request: Any, address: Any) -> Upgrade:
                return Upgrade(handler)
        config = config or Config(port=0, close_timeout=1.0, handshake_timeout=2.0,
                                  shutdown_grace=1.0)
        server = Server(("127.0.0.1", 0), resolve, config, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=1)


@pytest.fixture
def test_deadline() -> Iterator[None]:
    """A gevent.Timeout over the whole test, so no wait can hang the suite."""
    import gevent

    timer = gevent.Timeout(60)
    timer.start()
    yield
    timer.close()
