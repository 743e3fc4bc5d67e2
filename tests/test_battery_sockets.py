"""Battery rows checked over real sockets that were checked only sans-I/O before.

FR-01 and all 13 FR-02 variants: the server sends Close 1002, then closes TCP itself, and a
canary still echoes. HS-03/HS-09: after a 426 or a 404 the connection is no tunnel, a second
request on it gets no answer. HS-08: the origin allowlist refuses look-alike origins with 403.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from wsflask import App
from wsflask.client import connect
from wsflask.config import Config
from wsflask.errors import NotFound
from wsflask.server import Upgrade
from wsflask.websocket import WebSocket

FAST = Config(port=0, close_timeout=0.5, handshake_timeout=2.0)
KEY = b"\x37\xfa\x21\x3d"


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


def canary(port: int) -> None:
    ws = connect(f"ws://127.0.0.1:{port}/", timeout=5)
    ws.send("canary")
    assert ws.receive(timeout=5) == "canary"
    ws.close()
    assert ws.close_code == 1000


def _frame(first: int, payload: bytes = b"", *, masked: bool = True) -> bytes:
    """A raw frame header byte ``first`` (FIN, RSV, opcode) with a short payload."""
    if not masked:
        return bytes([first, len(payload)]) + payload
    body = bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))
    return bytes([first, 0x80 | len(payload)]) + KEY + body


VIOLATIONS = {
    "fr01_unmasked_text": _frame(0x81, b"hi", masked=False),
    "fr02_rsv1_without_deflate": _frame(0xC1, b"hi"),
    "fr02_rsv2": _frame(0xA1, b"hi"),
    "fr02_rsv3": _frame(0x91, b"hi"),
    **{f"fr02_opcode_{op:#x}": _frame(0x80 | op, b"hi") for op in (3, 4, 5, 6, 7)},
    **{f"fr02_opcode_{op:#x}": _frame(0x80 | op, b"hi") for op in (0xB, 0xC, 0xD, 0xE, 0xF)},
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_fr01_fr02_violation_gets_close_1002_then_the_server_closes_tcp(
    serve: Any, raw_peer: Any, name: str
) -> None:
    server = serve(echo, config=FAST)
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101")
    peer.sock.sendall(VIOLATIONS[name])
    opcode, payload = peer.read_frame(timeout=5)
    assert (opcode, payload[:2]) == (8, (1002).to_bytes(2, "big")), (opcode, payload)
    assert peer.read_until_eof(timeout=2) == b""  # the server's FIN, without our Close reply
    canary(server.server_port)


def test_fr02_covers_the_thirteen_battery_variants() -> None:
    assert len([n for n in VIOLATIONS if n.startswith("fr02")]) == 13


# -- HS-03 / HS-09: no tunnel after a refusal -----------------------------------------------


def _resolve(request: Any, address: Any) -> Upgrade:
    if request.path != "/":
        raise NotFound("no such route")
    return Upgrade(echo)


SECOND = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize(("path", "version", "status"), [("/nope", "13", 404), ("/", "8", 426)])
def test_hs03_hs09_bytes_after_a_refusal_are_never_answered(
    serve: Any, raw_peer: Any, path: str, version: str, status: int
) -> None:
    server = serve(resolve=_resolve, config=FAST)
    peer = raw_peer(server.server_port)
    peer.sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade"
        f"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}"
        "\r\n\r\n".encode()
        + SECOND  # pipelined: a second, valid upgrade on the same connection
    )
    answer = peer.read_until_eof(timeout=5)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert answer.count(b"HTTP/1.1") == 1 and b"101" not in answer.split(b"\r\n")[0]
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in answer
    canary(server.server_port)


# -- HS-08: look-alike origins ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example", True),
        ("https://evil.example", False),
        ("null", False),
        ("https://app.example.evil.com", False),
        ("https://app.example:8443", False),
        ("http://app.example", False),  # the allowlist replaces the same-origin default
    ],
)
def test_hs08_only_the_allowlisted_origin_is_accepted(
    app_factory: Callable[..., App], raw_peer: Any, origin: str, allowed: bool
) -> None:
    app = app_factory(
        allowed_origins=("https://app.example",), allowed_hosts=("app.example",), close_timeout=0.5
    )

    @app.route("/ws")
    def ws_route(ws: Any) -> None:
        echo(ws)

    with app.test_client() as client:
        client.start()
        assert app.server is not None
        peer = raw_peer(app.server.server_port)
        peer.sock.sendall(  # the Host a browser on https://app.example sends
            b"GET /ws HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nOrigin: " + origin.encode() + b"\r\n\r\n"
        )
        status = peer.read_head().split(b" ")[1]
        assert status == (b"101" if allowed else b"403")
        peer.close()


# -- CL-03: close() twice, close() in disconnect, data after the peer's Close ----------------


def test_cl03_one_close_frame_on_the_wire_and_nothing_after_it(
    app_factory: Callable[..., App], raw_peer: Any
) -> None:
    app = app_factory(close_timeout=0.5)
    disconnects: list[str] = []

    @app.on("connect")
    def hello(ws: Any) -> None:
        ws.send("hi")
        ws.close(4000, "first")
        ws.close(4001, "second")  # a second close() is a no-op

    @app.on("disconnect")
    def bye(ws: Any) -> None:
        disconnects.append(ws.id)
        ws.close(4002, "in disconnect")  # after the close: nothing more goes out
        ws.send_nowait("late")

    with app.test_client() as client:
        client.start()
        assert app.server is not None
        peer = raw_peer(app.server.server_port)
        assert peer.request().startswith(b"HTTP/1.1 101")
        assert peer.read_frame() == (1, b"hi")
        opcode, payload = peer.read_frame()
        assert (opcode, payload) == (8, (4000).to_bytes(2, "big") + b"first")
        peer.send_frame(1, b"data after the server's Close")  # ignored (RFC 6455 §5.5.1)
        peer.send_frame(8, (4000).to_bytes(2, "big"))
        assert peer.read_until_eof(timeout=5) == b""  # no second Close, no data frame
        assert app.server.wait_drained(5)
    assert len(disconnects) == 1


# -- BP-03: a flood at a handler that does not read --------------------------------------------


def test_bp03_the_server_stops_reading_within_the_inbound_budget(raw_peer: Any) -> None:
    import socket

    import gevent
    import gevent.event

    from wsflask.protocol import encode_frame
    from wsflask.server import Server

    release, first = gevent.event.Event(), gevent.event.Event()

    def slow(ws: WebSocket) -> None:
        ws.receive()
        first.set()
        release.wait()
        for _ in ws:
            pass

    # Accepted sockets inherit the listener's 64 KiB receive buffer (no autotuning to 32 MiB),
    # so what the server accepted beyond the kernel's share sits in wsflask's memory.
    listener = gevent.socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    config = Config(port=0, close_timeout=0.5, handshake_timeout=2.0)
    server = Server(listener, lambda r, a: Upgrade(slow), config)
    server.start()
    try:
        peer = raw_peer(server.server_port)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        assert peer.request().startswith(b"HTTP/1.1 101")
        frame = encode_frame(2, b"y" * 1024, mask=b"\x01\x02\x03\x04")
        peer.sock.sendall(frame)
        assert first.wait(5)
        peer.sock.settimeout(0.5)
        stream, total = frame * 64, 0
        try:
            while total < 64 * 1024 * 1024:
                total += peer.sock.send(stream[total % len(stream) :])
        except TimeoutError:
            pass  # TCP pushed back on us: the server stopped reading
        budget = config.max_message_size + 64 * 1024 + config.read_size
        kernel = 2 * (64 + 16) * 1024 * 2  # both buffers, doubled by Linux, with slack
        assert total <= budget + kernel, f"{total >> 10} KiB accepted from a non-reading app"
        release.set()
    finally:
        server.stop(timeout=1)


# -- HS-05 over a socket: 20 MB of header in one write, and 101 header fields ---------------


def _send_quietly(sock: Any, data: bytes) -> None:
    import contextlib

    with contextlib.suppress(OSError):  # the server answered and closed mid-write: expected
        sock.sendall(data)


def test_hs05_a_20mb_header_gets_431_within_100ms(serve: Any, raw_peer: Any) -> None:
    import time

    import gevent

    server = serve(echo, config=FAST)
    peer = raw_peer(server.server_port)
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000_000 + b"\r\n\r\n"
    started = time.monotonic()
    writer = gevent.spawn(_send_quietly, peer.sock, head)
    answer = peer.read_head(timeout=5)
    elapsed = time.monotonic() - started
    writer.kill()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:60]
    assert elapsed < 0.100, f"431 after {elapsed * 1e3:.0f} ms"
    canary(server.server_port)


def test_hs05_101_header_fields_get_431(serve: Any, raw_peer: Any) -> None:
    server = serve(echo, config=FAST)
    peer = raw_peer(server.server_port)
    fields = "".join(f"X-H{i}: v\r\n" for i in range(100))  # + Host = 101
    peer.sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}\r\n".encode())
    assert peer.read_until_eof(timeout=5).startswith(b"HTTP/1.1 431 ")
    canary(server.server_port)
