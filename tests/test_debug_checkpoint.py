"""The debugging-infrastructure checkpoint (seed audit item 46, checklist TS-18).

One server process, driven with malformed input, and each tool must say exactly what went
wrong: malformed handshakes get their reason (``X-WebSocket-Error`` and the refusal log),
a client meeting a wrong accept key names it; broken frames get their close code, the
offending bytes at DEBUG and the same verdict from ``wsflask frames``; the tracer flags an
induced illegal transition; and a thousand connections near the descriptor limit raise the
resource warning while every connection is still served (before any failure).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_until

from wsflask.client import connect
from wsflask.frames_tool import describe
from wsflask.protocol import CloseCode, State, encode_frame
from wsflask.protocol.errors import InvalidHandshakeResponse
from wsflask.tracing import StateTracer

NOFILE = 1300  # the server's own soft limit: 1,000 connections take ~78 % of it
MASK = b"\x01\x02\x03\x04"


@pytest.fixture
def node(wsflask_run: Any) -> Any:
    server = wsflask_run(
        "checkpoint_node:app", "--log-level", "DEBUG",
        env={
            "CHECKPOINT_NOFILE": str(NOFILE), "PYTHONPATH": "tests",
            "WSFLASK_HANDSHAKE_ERROR_HEADER": "true", "WSFLASK_MAX_MESSAGE_SIZE": "1024",
            "WSFLASK_PRESSURE_THRESHOLD": "0.75", "WSFLASK_RESOURCE_THRESHOLD": "0",
            "WSFLASK_MAX_CONNECTIONS": "1250",
        },
    )  # fmt: skip
    server.wait_serving()
    return server


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        return head


def _upgrade(headers: str) -> bytes:
    return f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()


KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        (f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n",
         426, "this-resource-needs-a-websocket-upgrade"),
        (GOOD + "Sec-WebSocket-Version: 8\r\n", 426, "unsupported-websocket-version"),
        (GOOD, 400, "missing-sec-websocket-version-header"),
    ],
    ids=["no Upgrade header", "version 8", "no version"],
)  # fmt: skip
def test_malformed_handshakes_get_their_exact_reason(
    node: Any, headers: str, status: int, reason: str
) -> None:
    head = _exchange(node.port, _upgrade(headers)).decode("latin-1")
    first, _, rest = head.partition("\r\n")
    assert first.split(" ")[1] == str(status), head
    assert f"X-WebSocket-Error: {reason}" in rest.split("\r\n"), head
    node.wait_for_log(rf"status={status} reason=")  # the refusal log names it too


@pytest.fixture
def wrong_accept_server() -> Iterator[int]:
    """A fake server answering 101 with the accept key of another key (the wrong GUID)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            wrong = base64.b64encode(hashlib.sha1(b"not the key" + b"GUID").digest()).decode()
            conn.sendall(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {wrong}\r\n\r\n".encode()
            )
            conn.recv(4096)  # until the client gives up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()
    thread.join(timeout=10)


def test_a_wrong_accept_key_is_named_by_the_client(wrong_accept_server: int) -> None:
    with pytest.raises(InvalidHandshakeResponse, match="Sec-WebSocket-Accept"):
        connect(f"ws://127.0.0.1:{wrong_accept_server}/echo", timeout=10)


FRAMES: list[tuple[str, bytes, int, str]] = [
    ("reserved opcode", encode_frame(0x3, b"x", mask=MASK), CloseCode.PROTOCOL_ERROR, "opcode"),
    ("unmasked", encode_frame(0x1, b"hello"), CloseCode.PROTOCOL_ERROR, "mask"),
    ("oversized", encode_frame(0x2, b"x" * 2000, mask=MASK), CloseCode.TOO_BIG, "1024"),
]


@pytest.mark.parametrize(("name", "frame", "code", "word"), FRAMES, ids=[f[0] for f in FRAMES])
def test_broken_frames_get_code_dump_and_the_same_analysis(
    node: Any, name: str, frame: bytes, code: int, word: str
) -> None:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    with sock:
        sock.sendall(_upgrade(GOOD + "Sec-WebSocket-Version: 13\r\n"))
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 101")
        sock.sendall(frame)
        data = data.partition(b"\r\n\r\n")[2]
        while len(data) < 4:  # the server's Close frame: 0x88, length, 2-byte code
            chunk = sock.recv(4096)
            assert chunk, "TCP closed before the Close frame"
            data += chunk
    assert data[0] == 0x88 and int.from_bytes(data[2:4], "big") == code
    dumped = node.wait_for_log(r"offending frame of \S+, first (\d+) bytes: ([0-9a-f ]+)")
    assert int(dumped[1]) == min(64, len(frame))
    assert bytes.fromhex(dumped[2]) == frame[:64]  # refused from its header: as received
    verdict = list(describe(frame, expect_mask=True, max_size=1024))[-1]
    assert verdict.startswith("VIOLATION:") and verdict.endswith(f"{code} {CloseCode(code).name}")
    assert word in verdict.lower(), verdict


def test_the_tracer_flags_an_induced_illegal_transition() -> None:
    tracer = StateTracer(enabled=True)
    tracer.record("c1", State.OPEN, "handshake completed")
    tracer.record("c1", State.CLOSING, "close() sent Close")
    tracer.record("c1", State.OPEN, "a second reader finished the handshake again")  # the race
    assert [(c, old, new) for c, old, new, _ in tracer.illegal] == [
        ("c1", State.CLOSING, State.OPEN)
    ]
    assert len(tracer.transitions) == 3


def _open(port: int, count: int) -> list[socket.socket]:
    opened = []
    request = _upgrade(GOOD + "Sec-WebSocket-Version: 13\r\n")
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "refused before the warning"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:40]
        opened.append(sock)
    return opened


def test_a_thousand_connections_near_the_limit_warn_before_anything_fails(node: Any) -> None:
    socks: list[socket.socket] = []
    try:
        for _ in range(10):  # 1,000 in batches: each one fully served
            socks += _open(node.port, 100)
        warned = node.wait_for_log(r"resource level NORMAL -> WARNING \(pressure ([0-9.]+)")
        assert float(warned[1]) >= 1.0
        assert "-> CRITICAL" not in node.log
        echo = socks[-1]
        echo.sendall(encode_frame(0x1, b"still served", mask=MASK))
        wait_until(lambda: b"still served" in echo.recv(4096, socket.MSG_PEEK))
    finally:
        for sock in socks:
            sock.close()
