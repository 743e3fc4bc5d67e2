"""The client: handshake, refusals, masking, timeouts and closing, against real sockets."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest
from helpers import wait_until

from wsflask.client import _host_header, _parse_url, connect
from wsflask.config import Config
from wsflask.errors import ConnectionClosed, HandshakeRejected, Reject
from wsflask.server import Upgrade
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


def test_refusal_raises_handshake_rejected_with_status_headers_body(serve: Any) -> None:
    def resolve(request: Any, address: Any) -> Upgrade:
        raise Reject(401, "login first", headers=(("WWW-Authenticate", "Bearer"),))

    server = serve(resolve=resolve)
    with pytest.raises(HandshakeRejected) as info:
        connect(f"ws://127.0.0.1:{server.server_port}/")
    assert info.value.status == 401
    assert ("www-authenticate", "Bearer") in info.value.headers
    assert info.value.body == b"login first"


def test_subprotocol_headers_and_query_reach_the_server(serve: Any) -> None:
    seen: list[Any] = []

    def resolve(request: Any, address: Any) -> Upgrade:
        seen.append((request.subprotocols, request.header("origin"), request.target))
        return Upgrade(echo, subprotocol="chat")

    server = serve(resolve=resolve)
    ws = connect(
        f"ws://127.0.0.1:{server.server_port}/room?x=1",
        subprotocols=["superchat", "chat"],
        headers=[("Origin", "https://app.example")],
    )
    assert ws.subprotocol == "chat"
    assert seen == [(("superchat", "chat"), "https://app.example", "/room?x=1")]
    ws.close()


def test_close_completes_the_handshake_and_closes_the_socket(serve: Any) -> None:
    server = serve(echo)
    ws = connect(f"ws://127.0.0.1:{server.server_port}/")
    started = time.monotonic()
    ws.close(1000, "done")
    assert time.monotonic() - started < 0.5
    assert ws.close_code == 1000 and ws.transport.fileno() == -1
    ws.close()  # idempotent
    with pytest.raises(ConnectionClosed):
        ws.send("x")


def test_client_limits_apply_to_what_the_server_sends(serve: Any) -> None:
    server = serve(lambda ws: ws.send(b"z" * 200) or ws.receive())
    ws = connect(f"ws://127.0.0.1:{server.server_port}/", config=Config(max_message_size=100))
    assert ws.receive(timeout=5) is None
    assert ws.close_code == 1009


def _fake_server(reply: bool, frames: list[bytes]) -> tuple[Any, Any]:
    """A listener that answers one handshake (or never does) and records raw bytes."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        sock, _ = listener.accept()
        with sock:  # closed also when the test kills this greenlet
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(4096)
            if not reply:
                gevent.event.Event().wait()  # never answers; the test kills this greenlet
            key = next(
                line.split(b":", 1)[1].strip()
                for line in data.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            while chunk := sock.recv(4096):
                frames.append(chunk)

    return listener, gevent.spawn(run)


def test_client_frames_are_masked_with_fresh_keys() -> None:
    frames: list[bytes] = []
    listener, job = _fake_server(True, frames)
    ws = connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/")
    for _ in range(2):
        ws.send(b"same payload")
    wait_until(lambda: sum(map(len, frames)) >= 2 * (2 + 4 + 12), 5)
    data = b"".join(frames)
    first, second = data[:18], data[18:36]
    assert first[1] & 0x80 and second[1] & 0x80  # MASK bit set (RFC 6455 §5.3)
    assert first[2:6] != second[2:6] and first[6:] != b"same payload"
    job.kill()
    listener.close()
    ws.close()  # the peer is gone: ends at its EOF, no close_timeout wait


def test_handshake_timeout_raises_timeout_error() -> None:
    listener, job = _fake_server(False, [])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", timeout=0.3)
    assert time.monotonic() - started < 1.0
    job.kill()
    listener.close()


def test_connection_refused_is_an_os_error() -> None:
    probe = gevent.socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(OSError):
        connect(f"ws://127.0.0.1:{port}/", timeout=2)


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("ws://h/", (False, "h", 80, "/")),
        ("wss://h:8443/a/b?c=d", (True, "h", 8443, "/a/b?c=d")),
        ("ws://[::1]:9000", (False, "::1", 9000, "/")),
    ],
)
def test_url_parsing(url: str, parsed: tuple[bool, str, int, str]) -> None:
    assert _parse_url(url) == parsed


@pytest.mark.parametrize("url", ["http://h/", "ws://", "h:80"])
def test_bad_urls_raise_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        connect(url)


def test_host_header_omits_default_ports() -> None:
    assert _host_header("h", 80, False) == "h"
    assert _host_header("h", 443, True) == "h"
    assert _host_header("::1", 9000, False) == "[::1]:9000"
