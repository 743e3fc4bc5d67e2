"""Security regressions over real sockets: Host allowlist (DNS rebinding), Origin scheme, and
a slow reader that must read its 1013 Close instead of a TCP reset.

Servers bind 127.0.0.1:0 (one test binds 0.0.0.0:0 to check the non-loopback default); the
``test_deadline`` fixture and gevent timeouts bound every wait.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest
from gevent.queue import Queue
from helpers import require_tool, wait_until

from wsflask import App
from wsflask.client import connect
from wsflask.config import Config
from wsflask.hosts import host_allowed, hostname_of
from wsflask.metrics import Metrics
from wsflask.protocol import CloseCode, encode_frame
from wsflask.protocol.errors import InvalidHandshakeResponse
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

FAST: dict[str, Any] = {
    "port": 0,
    "close_timeout": 2.0,
    "handshake_timeout": 2.0,
    "shutdown_grace": 1.0,
}


def status_of(raw_peer: Any, port: int, host: str, origin: str = "", extra: str = "") -> int:
    """The status the server answers to a handshake with these Host/Origin headers."""
    peer = raw_peer(port)
    origin_line = f"Origin: {origin}\r\n" if origin else ""
    peer.sock.sendall(
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"{origin_line}{extra}\r\n".encode()
    )
    status = int(bytes(peer.read_head()).split(b" ", 2)[1])
    peer.close()
    return status


# -- Host allowlist --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "allowed", "bound", "ok"),
    [
        ("localhost:8080", (), "127.0.0.1", True),
        ("127.0.0.1", (), "127.0.0.1", True),
        ("127.0.0.2:1", (), "127.0.0.1", True),
        ("[::1]:8080", (), "::1", True),
        ("app.localhost", (), "localhost", True),
        ("evil.example", (), "127.0.0.1", False),
        ("evil.example", (), "0.0.0.0", True),  # a public bind: any name unless set
        ("evil.example", (), None, True),  # bind unknown (WSGI host)
        (None, (), "127.0.0.1", False),
        ("localhost:x", (), "127.0.0.1", False),
        ("[::1", (), "127.0.0.1", False),
        ("api.example.com", (".example.com",), "0.0.0.0", True),
        ("example.com:443", (".example.com",), "0.0.0.0", True),
        ("evilexample.com", (".example.com",), "0.0.0.0", False),
        ("localhost", ("app.example",), "127.0.0.1", False),  # a set list is exact
        ("APP.example.", ("app.example",), "127.0.0.1", True),
        ("evil.example", ("*",), "127.0.0.1", True),
    ],
)
def test_host_allowed_table(
    header: str | None, allowed: tuple[str, ...], bound: str | None, ok: bool
) -> None:
    assert host_allowed(header, allowed, bound) is ok


def test_hostname_of_strips_port_and_brackets() -> None:
    assert hostname_of("[::1]:80") == "::1"
    assert hostname_of("Example.COM:8080") == "example.com"
    assert hostname_of(":80") is None


def test_loopback_server_refuses_evil_host_and_evil_origin(
    app_factory: Callable[..., App], raw_peer: Any
) -> None:
    app = app_factory()
    app.route("/")
    with app.test_client() as client:
        port = client.port
        # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1
        assert status_of(raw_peer, port, "evil.example", "http://evil.example") == 400
        evil = f"evil.example:{port}"
        assert status_of(raw_peer, port, evil, f"http://{evil}") == 400
        assert status_of(raw_peer, port, f"localhost:{port}", f"http://localhost:{port}") == 101
        assert status_of(raw_peer, port, f"127.0.0.1:{port}") == 101
        assert status_of(raw_peer, port, f"[::1]:{port}", f"http://[::1]:{port}") == 101
        # pages too (/metrics must not be readable through a rebound name)
        peer = raw_peer(port)
        peer.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        assert peer.read_head().startswith(b"HTTP/1.1 400 ")


def test_allowed_hosts_setting_names_the_hosts(
    app_factory: Callable[..., App], raw_peer: Any
) -> None:
    app = app_factory(allowed_hosts=(".example.com",))
    app.route("/")
    with app.test_client() as client:
        port = client.port
        assert status_of(raw_peer, port, "api.example.com", "http://api.example.com") == 101
        assert status_of(raw_peer, port, "localhost") == 400
        assert status_of(raw_peer, port, "evil.example") == 400


def test_public_bind_accepts_any_host_by_default(raw_peer: Any) -> None:
    app = App(port=0)
    app.route("/")
    server = app.make_server("0.0.0.0", 0)
    server.start()
    try:
        assert status_of(raw_peer, server.server_port, "anything.example") == 101
    finally:
        server.stop(timeout=1)
        app.heartbeat.stop()


# -- Origin scheme (reliability audit HS-08) -------------------------------------------------------


def test_http_origin_for_an_https_page_is_refused(
    app_factory: Callable[..., App], raw_peer: Any
) -> None:
    app = app_factory(allowed_origins=("https://app.example",), allowed_hosts=("*",))
    app.route("/")
    tls = "X-Forwarded-Proto: https\r\n"  # the page is served as https (a TLS proxy)
    with app.test_client() as client:
        port = client.port
        assert status_of(raw_peer, port, "app.example", "http://app.example", tls) == 403
        assert status_of(raw_peer, port, "app.example", "https://app.example", tls) == 101
        evil = "https://app.example.evil.com"
        assert status_of(raw_peer, port, "app.example", evil, tls) == 403
        # the allowlist names the scheme too: http://app.example is not https://app.example
        assert status_of(raw_peer, port, "other.example", "http://app.example") == 403
        host = f"127.0.0.1:{port}"
        assert status_of(raw_peer, port, host, f"http://{host}", tls) == 403
        # an allowlist replaces the same-origin default: only the listed origins get in
        assert status_of(raw_peer, port, host, f"https://{host}", tls) == 403


# -- control frames jump the outbox ----------------------------------------------------------------


def _fill_outbox(ws: WebSocket, frames: int) -> list[bytes]:
    """Queue ``frames`` numbered 1 KiB frames (the peer reads nothing yet)."""
    sent = []
    for index in range(frames):
        payload = struct.pack("!I", index) + b"x" * 1020
        assert ws.send_prepared(encode_frame(2, payload), policy="drop")
        sent.append(payload)
    return sent


def test_heartbeat_ping_jumps_the_outbox_queue(serve: Any, raw_peer: Any) -> None:
    holder: Queue = Queue()
    release = gevent.event.Event()

    def handler(ws: WebSocket) -> None:
        holder.put(ws)
        release.wait()

    config = Config(**FAST, max_backpressure=4 << 20)
    server = serve(handler, config=config)
    peer = raw_peer(server.server_port, rcvbuf=4096)
    assert peer.request().startswith(b"HTTP/1.1 101")
    ws = holder.get(timeout=5)
    ws.transport.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # keep it in our outbox
    _fill_outbox(ws, 2000)
    assert ws.buffered_amount > 100_000  # most of it waits in our outbox, not the kernel
    ws.send_heartbeat_ping()
    order = []
    while True:
        opcode, payload = peer.read_frame()
        if opcode == 0x9:
            break
        order.append(struct.unpack("!I", payload[:4])[0])
    assert order == list(range(len(order)))  # no frame split or reordered before the ping
    assert len(order) < 1000  # the ping overtook the queued frames
    remaining = [struct.unpack("!I", peer.read_frame()[1][:4])[0] for _ in range(2000 - len(order))]
    assert remaining == list(range(len(order), 2000))  # then the rest, in order
    release.set()


def test_slow_reader_closed_with_1013_reads_the_close_frame(serve: Any, raw_peer: Any) -> None:
    holder: Queue = Queue()

    def handler(ws: WebSocket) -> None:
        holder.put(ws)
        for _ in ws:
            pass

    config = Config(**FAST, max_backpressure=64 * 1024, backpressure_policy="close")
    metrics = Metrics()
    server = serve(handler, config=config, metrics=metrics)
    peer = raw_peer(server.server_port, rcvbuf=4096)
    assert peer.request().startswith(b"HTTP/1.1 101")
    ws = holder.get(timeout=5)
    frame = encode_frame(2, b"y" * 2048)
    sent = 0
    while ws.send_prepared(frame):  # a broadcaster that never blocks
        sent += 1
        assert sent < 100_000
    assert ws.close_code == CloseCode.TRY_AGAIN_LATER
    # the slow reader wakes up and reads: data first, then the Close, never a reset
    data_frames = 0
    while True:
        opcode, payload = peer.read_frame(timeout=5)
        if opcode == 0x8:
            break
        assert opcode == 0x2 and len(payload) == 2048  # whole frames only
        data_frames += 1
    assert struct.unpack("!H", payload[:2])[0] == CloseCode.TRY_AGAIN_LATER
    assert 0 < data_frames < sent  # queued data behind the Close was discarded ...
    assert metrics.drops["closing"] == sent - data_frames  # ... and counted, frame by frame
    assert metrics.slow_consumers_closed == 1
    peer.sock.sendall(encode_frame(8, payload[:2], mask=b"\x01\x02\x03\x04"))
    assert peer.read_until_eof() == b""
    wait_until(lambda: server.connections == set(), timeout=5)


# -- signed backplane envelopes (FX-08) ------------------------------------------------------------


def test_envelope_signature_round_trip_and_forgeries() -> None:
    from wsflask.backplane.wire import BadSignature, Envelope, decode, encode

    envelope = Envelope.message("node-a", 7, "hi", ["lobby"])
    signed = encode(envelope, b"k1")
    assert decode(signed, b"k1") == envelope
    assert decode(signed) == envelope  # a node without the key (rollout) still reads it
    with pytest.raises(BadSignature, match="unsigned"):
        decode(encode(envelope), b"k1")
    with pytest.raises(BadSignature, match="bad signature"):
        decode(encode(envelope, b"other key"), b"k1")
    tampered = signed.replace(b"hi", b"yo")
    with pytest.raises(BadSignature, match="bad signature"):
        decode(tampered, b"k1")


def test_unsigned_envelope_is_dropped_and_counted(app_factory: Callable[..., App]) -> None:
    from wsflask.backplane.memory import hub
    from wsflask.backplane.wire import Envelope, Router, encode

    bus = f"hmac-{id(app_factory)}"
    app = app_factory(
        backplane=f"memory://{bus}", backplane_secret="s3cret", backplane_interval=0.2
    )

    @app.route("/r/<room>")
    def chat(ws: WebSocket, room: str) -> None:
        app.rooms.join(room, ws)
        ws.send("joined")
        for _ in ws:
            pass

    with app.test_client() as client:
        ws = client.connect("/r/lobby")
        assert ws.receive(timeout=5) == "joined"
        wait_until(lambda: app.cluster is not None and app.cluster.ready, timeout=5)
        channel = Router().room("lobby")
        listeners = hub(bus).listeners
        forger = next(iter(listeners))  # any handle on the bus publishes like an intruder
        forger.publish(channel, encode(Envelope.message("intruder", 1, "unsigned", ["lobby"])))
        forged = encode(Envelope.message("intruder", 2, "forged", ["lobby"]), b"guess")
        forger.publish(channel, forged)
        good = encode(Envelope.message("emitter-x", 3, "signed", ["lobby"]), b"s3cret")
        forger.publish(channel, good)
        assert ws.receive(timeout=5) == "signed"  # the two before it never arrived
        assert app.metrics.drops["backplane_unsigned"] == 2


# -- TLS: certificate reload and client certificates (FX-05) ---------------------------------------


def make_certificate(directory: Path, name: str) -> tuple[str, str]:
    require_tool("openssl", "apt-get install -y openssl")
    cert, key = str(directory / f"{name}.pem"), str(directory / f"{name}.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
         "-out", cert, "-days", "1", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def wss(server: Any, context: ssl.SSLContext) -> WebSocket:
    return connect(f"wss://127.0.0.1:{server.server_port}/", ssl_context=context, timeout=5)


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


def test_certificate_reload_keeps_connections(serve: Any, tmp_path: Path) -> None:
    old_cert, old_key = make_certificate(tmp_path, "old")
    new_cert, new_key = make_certificate(tmp_path, "new")
    live_cert, live_key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    shutil.copy(old_cert, live_cert)
    shutil.copy(old_key, live_key)
    server = serve(echo, config=Config(**FAST, certfile=live_cert, keyfile=live_key))
    trusts_old = ssl.create_default_context(cafile=old_cert)
    trusts_new = ssl.create_default_context(cafile=new_cert)
    existing = wss(server, trusts_old)
    shutil.copy(new_cert, live_cert)
    shutil.copy(new_key, live_key)
    server.install_reload_handler()  # removed again by server.stop()
    before = server._ssl
    os.kill(os.getpid(), signal.SIGHUP)
    wait_until(lambda: server._ssl is not before, timeout=5)
    fresh = wss(server, trusts_new)  # new handshakes see the new certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        wss(server, trusts_old)
    for ws in (existing, fresh):  # and the old session was not dropped
        ws.send("still up")
        assert ws.receive(timeout=5) == "still up"
        ws.close()
    # a broken file at reload time keeps the working certificate
    Path(live_cert).write_text("not a certificate")
    assert server.reload_certificates() is False
    wss(server, trusts_new).close()


def test_required_client_certificate(serve: Any, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "server")
    client_cert, client_key = make_certificate(tmp_path, "client")
    config = Config(
        **FAST, certfile=cert, keyfile=key, ca_file=client_cert, require_client_cert=True
    )
    server = serve(echo, config=config)
    anonymous = ssl.create_default_context(cafile=cert)
    # the TLS handshake fails (TLS 1.3: the client learns it at its first read)
    with pytest.raises((ssl.SSLError, OSError, InvalidHandshakeResponse)):
        ws = wss(server, anonymous)
        ws.send("x")  # TLS 1.3 may report the refusal at the first read
        ws.receive(timeout=5)
        raise AssertionError("a client without a certificate was served")
    holder = ssl.create_default_context(cafile=cert)
    holder.load_cert_chain(client_cert, client_key)
    ws = wss(server, holder)
    ws.send("mutual")
    assert ws.receive(timeout=5) == "mutual"
    ws.close()


def test_require_client_cert_without_ca_file_fails_fast(tmp_path: Path) -> None:
    from wsflask.errors import ConfigError
    from wsflask.server import Server

    cert, key = make_certificate(tmp_path, "server")
    config = Config(port=0, certfile=cert, keyfile=key, require_client_cert=True)
    with pytest.raises(ConfigError, match="needs ca_file"):
        Server(("127.0.0.1", 0), lambda request, address: None, config)  # type: ignore


@pytest.mark.parametrize("bad", ["app.example", ("",), (1,)])
def test_allowed_hosts_must_be_a_tuple_of_names(bad: Any) -> None:
    from wsflask.errors import ConfigError

    with pytest.raises(ConfigError, match="allowed_hosts="):
        Config(allowed_hosts=bad)


def test_allowed_hosts_from_the_environment() -> None:
    config = Config.from_env("WSFLASK", {"WSFLASK_ALLOWED_HOSTS": "app.example, .example.com"})
    assert config.allowed_hosts == ("app.example", ".example.com")
