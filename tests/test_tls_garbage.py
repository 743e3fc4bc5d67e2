"""TL-02: bytes that are not TLS on the TLS port are closed at once while a canary echoes.

Plain HTTP, a ws:// upgrade, random bytes and a 16 KiB "ClientHello" record of garbage each
reach a wss:// server over a raw socket; the close (EOF, reset or an alert then EOF) must come
within 100 ms of the last byte sent, measured with a monotonic clock. A wss:// canary
connection keeps round-tripping throughout and must never miss an echo.
"""

from __future__ import annotations

import contextlib
import random
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest
from helpers import require_tool, wait_until

from wsflask import HTTPResponse, Request
from wsflask.client import connect
from wsflask.config import Config
from wsflask.websocket import WebSocket

#: The behaviour bound of the battery row: "Connection closed <100 ms".
CLOSE_WITHIN = 0.100


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    require_tool("openssl", "apt-get install -y openssl")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key),
            *("-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _random_bytes() -> bytes:
    """4 KiB of seeded noise whose first byte is no TLS record type (20-24): "random bytes"
    that cannot be read as the start of a record waiting for a body."""
    rng = random.Random(6455)
    data = bytearray(rng.randbytes(4096))
    if 20 <= data[0] <= 24:
        data[0] = 0x99
    return bytes(data)


def _garbage_client_hello() -> bytes:
    """A TLS handshake record of the maximum plaintext size (2^14) whose body is garbage."""
    body = bytes([1]) + random.Random(7692).randbytes(2**14 - 1)  # type 1 = ClientHello
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body


ATTACKS = {
    "plain_http": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "ws_upgrade": (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ),
    "random_bytes": _random_bytes(),
    "garbage_client_hello_16k": _garbage_client_hello(),
}


def _close_latency(port: int, data: bytes) -> tuple[float, bytes]:
    """Send ``data``; return the seconds from the last byte sent to the server's close, and
    what came back (a TLS alert, or nothing)."""
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(data)
        sent = time.monotonic()
        received = b""
        with gevent.Timeout(2, AssertionError("the server kept the connection open")):
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
        return time.monotonic() - sent, received
    finally:
        sock.close()


class Canary:
    """A wss:// connection echoing in its own greenlet; records every round trip."""

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        self.ws = connect(url, ssl_context=context, timeout=5)
        self.trips: list[float] = []
        self.failure: BaseException | None = None
        self.stopping = gevent.event.Event()
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        n = 0
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                self.ws.send(f"canary {n}")
                if self.ws.receive(timeout=5) != f"canary {n}":
                    raise AssertionError(f"canary {n} came back wrong")
                self.trips.append(time.monotonic() - started)
                n += 1
                self.stopping.wait(0.005)  # pacing of the canary, not synchronisation
        except BaseException as exc:  # reported by stop()
            self.failure = exc

    def stop(self) -> None:
        self.stopping.set()
        self.greenlet.join(timeout=5)
        self.ws.close()
        assert self.failure is None, f"the canary failed: {self.failure!r}"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_tl02_non_tls_bytes_are_closed_within_100ms_and_the_canary_echoes(
    serve: Any, certificate: tuple[str, str], attack: str
) -> None:
    cert, key = certificate
    server = serve(
        echo,
        config=Config(port=0, close_timeout=0.5, handshake_timeout=5.0, certfile=cert, keyfile=key),
    )
    context = ssl.create_default_context(cafile=cert)
    canary = Canary(f"wss://127.0.0.1:{server.server_port}/", context)
    try:
        latencies = []
        for _ in range(5):
            trips_before = len(canary.trips)
            latency, answer = _close_latency(server.server_port, ATTACKS[attack])
            latencies.append(latency)
            assert answer == b"" or answer[0] == 0x15, f"not a TLS alert: {answer[:16]!r}"
            # the canary keeps round-tripping between attacks
            wait_until(lambda n=trips_before: len(canary.trips) > n + 1 or canary.failure, 2)  # type: ignore[misc]
            assert canary.failure is None
        assert max(latencies) < CLOSE_WITHIN, f"close latencies {latencies}"
    finally:
        canary.stop()
    assert canary.trips and max(canary.trips) < 1.0
    fresh = connect(f"wss://127.0.0.1:{server.server_port}/", ssl_context=context, timeout=5)
    fresh.send("after")
    assert fresh.receive(timeout=5) == "after"
    fresh.close()
    assert fresh.close_code == 1000


# -- TL-01: 1 000 silent connects and 1 000 half ClientHellos --------------------------------


def _half_client_hello() -> bytes:
    """The first half of a real ClientHello (from an in-memory TLS client)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        client.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16 and len(hello) > 100
    return hello[: len(hello) // 2]


def _held_until_closed(
    port: int, data: bytes, closed_after: list[float], holding: list[int]
) -> None:
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    opened = time.monotonic()
    try:
        if data:
            sock.sendall(data)
        holding.append(1)
        with gevent.Timeout(30, AssertionError("never closed")):
            while True:
                try:
                    if not sock.recv(4096):
                        break
                except OSError:
                    break
        closed_after.append(time.monotonic() - opened)
    finally:
        sock.close()


def test_tl01_silent_and_half_hello_connects_close_at_the_deadline_while_wss_connects_fast(
    serve: Any, certificate: tuple[str, str]
) -> None:
    import os

    count, deadline = 1000, 2.0
    cert, key = certificate
    fds = len(os.listdir("/proc/self/fd"))
    server = serve(
        echo,
        config=Config(
            port=0,
            close_timeout=0.5,
            handshake_timeout=deadline,
            certfile=cert,
            keyfile=key,
            max_connections=4 * count,
        ),
    )
    context = ssl.create_default_context(cafile=cert)
    half = _half_client_hello()
    closed_after: list[float] = []
    holding: list[int] = []
    attackers = [
        gevent.spawn(_held_until_closed, server.server_port, data, closed_after, holding)
        for data in (b"", half)
        for _ in range(count)
    ]
    wait_until(lambda: len(holding) == 2 * count, 10)  # all 2 000 are connected and waiting
    connects: list[float] = []
    while not all(a.ready() for a in attackers):  # a legitimate wss client throughout
        started = time.monotonic()
        ws = connect(f"wss://127.0.0.1:{server.server_port}/", ssl_context=context, timeout=5)
        connects.append(time.monotonic() - started)
        ws.send("legit")
        assert ws.receive(timeout=5) == "legit"
        ws.close()
    gevent.joinall(attackers, raise_error=True)
    assert len(closed_after) == 2 * count
    early_or_late = [t for t in closed_after if not deadline - 0.05 <= t <= deadline + 1.0]
    assert not early_or_late, f"{len(early_or_late)} outside the deadline: {early_or_late[:5]}"
    assert len(connects) >= 3 and max(connects) < 0.100, connects
    server.stop(timeout=1)
    wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds, 5)


# -- TL-04: certificates that cannot serve fail at construction ---------------------------------


def test_tl04_a_key_that_does_not_match_the_certificate_fails_at_construction(
    certificate: tuple[str, str], tmp_path: Path
) -> None:
    from wsflask.errors import ConfigError
    from wsflask.server import Server

    cert, _ = certificate
    other = str(tmp_path / "other-key.pem")
    subprocess.run(
        ["openssl", "genrsa", "-out", other, "2048"], check=True, capture_output=True, timeout=60
    )
    with pytest.raises(ConfigError, match="certfile="):
        Server(("127.0.0.1", 0), _never_called, Config(port=0, certfile=cert, keyfile=other))


def test_tl04_a_garbage_key_file_fails_at_construction(
    certificate: tuple[str, str], tmp_path: Path
) -> None:
    from wsflask.errors import ConfigError
    from wsflask.server import Server

    cert, _ = certificate
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="certfile="):
        Server(("127.0.0.1", 0), _never_called, Config(port=0, certfile=cert, keyfile=str(garbage)))


def _never_called(request: Request, address: tuple[str, int]) -> HTTPResponse:
    raise AssertionError("a server whose key does not load never resolves a request")
