"""Violation codes, the DEBUG frame dump and the core's reason header, over real sockets.

Seed-audit-2 items 13/19 (``Closed.cause.code`` labels ``/metrics``; at DEBUG a bounded hex
dump of the offending frame) and 49 (``X-WebSocket-Error`` on the handshake core's own
400/405/426/431 when ``handshake_error_header`` is on, never when off).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import wait_until

from wsflask.config import Config
from wsflask.metrics import Metrics
from wsflask.protocol import CloseCode, ProtocolError, encode_frame
from wsflask.protocol.errors import FRAME_DUMP_BYTES
from wsflask.violations import reporter
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

FAST = Config(port=0, close_timeout=1.0, handshake_timeout=2.0, shutdown_grace=1.0)
KEY_MASK = b"\x0a\x0b\x0c\x0d"


@pytest.fixture(autouse=True)
def fresh_reporter() -> Iterator[None]:
    """No address starts escalated (the reporter's window is process-wide)."""
    reporter.reset()
    yield
    reporter.reset()


def dumps(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "wsflask.violations" and hasattr(r, "frame")]


def fail_with(serve: Any, raw_peer: Any, frame: bytes, **kwargs: Any) -> tuple[int, WebSocket]:
    """Send ``frame`` after a handshake; return the close code the server sent, and its ws."""
    seen: list[WebSocket] = []

    def handler(ws: WebSocket) -> None:
        seen.append(ws)
        for _ in ws:
            pass

    server = serve(handler, config=FAST, **kwargs)
    peer = raw_peer(server.server_port)
    assert peer.request().startswith(b"HTTP/1.1 101 ")
    peer.sock.sendall(frame)
    opcode, payload = peer.read_frame()
    assert opcode == 0x8
    wait_until(lambda: bool(seen) and seen[0].close_code is not None)
    return int.from_bytes(payload[:2], "big"), seen[0]


def test_rsv_frame_is_coded_counted_and_dumped_at_debug(
    serve: Any, raw_peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsflask.violations")
    metrics = Metrics()
    frame = encode_frame(0x1, b"hello", rsv=0x20, mask=KEY_MASK)  # RSV2, no extension
    code, ws = fail_with(serve, raw_peer, frame, metrics=metrics)
    assert code == CloseCode.PROTOCOL_ERROR
    assert isinstance(ws.close_cause, ProtocolError) and ws.close_cause.code == "reserved_bits"
    wait_until(lambda: bool(dumps(caplog)))
    assert metrics.violations == {"reserved_bits": 1}
    assert 'websocket_protocol_violations_total{type="reserved_bits"} 1' in metrics.render()
    (dump,) = dumps(caplog)
    assert dump.levelno == logging.DEBUG and dump.frame == frame.hex()  # type: ignore[attr-defined]
    assert frame.hex(" ") in dump.getMessage() and dump.id == ws.id  # type: ignore[attr-defined]


def test_dump_is_bounded_for_a_large_frame(
    serve: Any, raw_peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsflask.violations")
    frame = encode_frame(0x2, bytes(range(256)) * 40, rsv=0x10, mask=KEY_MASK)  # RSV3
    code, _ = fail_with(serve, raw_peer, frame)
    assert code == CloseCode.PROTOCOL_ERROR
    wait_until(lambda: bool(dumps(caplog)))
    (dump,) = dumps(caplog)
    shown = bytes.fromhex(dump.frame)  # type: ignore[attr-defined]
    # refused from its header: what had arrived of the frame, never more than the bound
    assert 10 <= len(shown) <= FRAME_DUMP_BYTES and frame.startswith(shown)


def test_dump_of_a_large_invalid_text_frame_is_exactly_the_bound(
    serve: Any, raw_peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsflask.violations")
    payload = b"a" * 4999 + b"\xff"
    code, ws = fail_with(serve, raw_peer, encode_frame(0x1, payload, mask=KEY_MASK))
    assert code == CloseCode.INVALID_DATA
    assert isinstance(ws.close_cause, ProtocolError) and ws.close_cause.code == "invalid_utf8"
    wait_until(lambda: bool(dumps(caplog)))
    (dump,) = dumps(caplog)
    # refused for what it carries: header re-encoded unmasked, payload in clear, cut at 64
    expected = b"\x81\x7e" + (5000).to_bytes(2, "big") + b"a" * (FRAME_DUMP_BYTES - 4)
    assert dump.frame == expected.hex()  # type: ignore[attr-defined]
    assert f"first {FRAME_DUMP_BYTES} bytes" in dump.getMessage()


def test_no_dump_above_debug(serve: Any, raw_peer: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wsflask.violations")
    code, _ = fail_with(serve, raw_peer, b"\x81\x05hello")  # unmasked
    assert code == CloseCode.PROTOCOL_ERROR
    wait_until(lambda: any(getattr(r, "type", None) == "unmasked" for r in caplog.records))
    assert dumps(caplog) == []


# -- item 49: the core's own refusals say why, when asked ----------------------------------


HEAD = "Host: 127.0.0.1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#: request -> (status, X-WebSocket-Error token); each refused by the handshake core itself
CORE_REFUSALS = {
    "no Connection": (
        f"GET / HTTP/1.1\r\n{HEAD}Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
        400,
        "missing-connection-header",
    ),
    "POST": (
        f"POST / HTTP/1.1\r\n{HEAD}Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n",
        405,
        "method-post-not-allowed-for-websocket-upgrade",
    ),
    "version 8": (
        f"GET / HTTP/1.1\r\n{HEAD}Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 8\r\n\r\n",
        426,
        "unsupported-websocket-version",
    ),
    "head too large": (
        f"GET / HTTP/1.1\r\n{HEAD}X-Big: {'b' * 20000}\r\n\r\n",
        431,
        "request-head-larger-than-16384-bytes",
    ),
}


def refusal_head(
    serve: Callable[..., Any], raw_peer: Callable[..., Any], config: Config, request: str
) -> bytes:
    server = serve(None, config=config)
    peer = raw_peer(server.server_port)
    peer.sock.sendall(request.encode())
    return bytes(peer.read_until_eof()).partition(b"\r\n\r\n")[0]


@pytest.mark.parametrize("name", sorted(CORE_REFUSALS))
def test_core_refusals_carry_x_websocket_error_only_when_enabled(
    serve: Callable[..., Any], raw_peer: Callable[..., Any], name: str
) -> None:
    request, status, token = CORE_REFUSALS[name]
    told = refusal_head(serve, raw_peer, FAST.replace(handshake_error_header=True), request)
    assert told.startswith(f"HTTP/1.1 {status} ".encode())
    assert f"\r\nX-WebSocket-Error: {token}".encode() in told
    plain = refusal_head(serve, raw_peer, FAST, request)
    assert plain.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"X-WebSocket-Error" not in plain
