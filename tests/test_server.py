"""Server over real sockets: HTTP answers, admission (503/429), deadlines, TLS, drain, EMFILE.

Battery rows (design/reliability-battery.md §4.2): HS-06, CN-01 (scaled), CN-02 (subprocess
with a lowered RLIMIT_NOFILE), PR-03 (stop() and SIGTERM), TL-01/TL-04 (TLS deadline and bad
certificate), plus 100 concurrent echo clients and a canary connection through hostile tests.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, cast

import gevent
import gevent.event
import gevent.subprocess
import pytest
from helpers import require_tool, wait_until

from wsflask.client import connect
from wsflask.config import Config
from wsflask.errors import ConfigError, HandshakeRejected, NotFound, Reject
from wsflask.protocol import Request
from wsflask.server import HTTPResponse, Server, Upgrade
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

ROOT = Path(__file__).resolve().parent.parent
FAST: dict[str, Any] = {
    "port": 0,
    "close_timeout": 0.5,
    "handshake_timeout": 1.0,
    "shutdown_grace": 1.0,
}


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


def url(server: Any, path: str = "/", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.server_port}{path}"


def assert_canary(server: Any, **kwargs: Any) -> None:
    ws = connect(url(server), timeout=5, **kwargs)
    ws.send("canary")
    assert ws.receive(timeout=5) == "canary"
    ws.close()


class Statuses:
    """Records metrics.handshake(status); the other hooks are no-ops."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def handshake(self, status: int) -> None:
        self.statuses.append(status)

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


def resolver(request: Any, address: Any) -> Upgrade | HTTPResponse:
    if request.path == "/page":
        return HTTPResponse(200, b"a page", headers=(("X-Test", "1"),))
    if request.path == "/login":
        raise Reject(401, "login first", headers=(("WWW-Authenticate", "Bearer"),))
    if request.path == "/missing":
        raise NotFound("no such route")
    if request.path == "/crash":
        raise RuntimeError("resolver bug")
    return Upgrade(echo, session={"user": "u1"}, path_params={"room": "r"})


def http_get(port: int, path: str, raw_peer: Any) -> bytes:
    peer = raw_peer(port)
    peer.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return bytes(peer.read_until_eof(timeout=5))


# -- HTTP answers ---------------------------------------------------------------------------


def test_plain_get_gets_the_resolvers_http_response(serve: Any, raw_peer: Any) -> None:
    server = serve(resolve=resolver)
    answer = http_get(server.server_port, "/page", raw_peer)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"X-Test: 1\r\n" in answer and answer.endswith(b"\r\n\r\na page")


def test_plain_get_on_a_websocket_route_is_426(serve: Any, raw_peer: Any) -> None:
    server = serve(resolve=resolver)
    answer = http_get(server.server_port, "/chat", raw_peer)
    assert answer.startswith(b"HTTP/1.1 426 ")
    assert b"Upgrade: websocket\r\n" in answer and b"Sec-WebSocket-Version: 13\r\n" in answer


@pytest.mark.parametrize(
    ("path", "status", "header"),
    [
        ("/login", 401, b"WWW-Authenticate: Bearer"),
        ("/missing", 404, b""),
        ("/crash", 500, b""),
    ],
)
def test_resolver_refusals_answer_their_status(
    serve: Any, raw_peer: Any, path: str, status: int, header: bytes
) -> None:
    metrics = Statuses()
    server = serve(resolve=resolver, metrics=metrics)
    peer = raw_peer(server.server_port)
    head = peer.request(path)
    assert head.startswith(f"HTTP/1.1 {status} ".encode()) and header in head
    assert b"resolver bug" not in peer.read_until_eof()
    peer.close()
    server.stop(timeout=1)
    assert metrics.statuses == [status]


def test_upgrade_session_and_path_params_reach_the_connection(serve: Any) -> None:
    seen: list[Any] = []

    def resolve(request: Any, address: Any) -> Upgrade:
        def handler(ws: WebSocket) -> None:
            seen.append(
                (ws.session, ws.path_params, cast(Request, ws.request).path, ws.remote_address)
            )

        return Upgrade(handler, session={"user": "u1"}, path_params={"room": "r"})

    server = serve(resolve=resolve)
    ws = connect(url(server, "/chat/r?x=1"))
    assert ws.receive(timeout=5) is None
    ((session, params, path, address),) = seen
    assert session == {"user": "u1"} and params == {"room": "r"} and path == "/chat/r"
    assert address[0] == "127.0.0.1"


def test_bad_handshake_is_answered_by_the_core_and_counted(serve: Any, raw_peer: Any) -> None:
    metrics = Statuses()
    server = serve(echo, metrics=metrics)
    peer = raw_peer(server.server_port)
    peer.sock.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )  # no key
    assert peer.read_until_eof().startswith(b"HTTP/1.1 400 ")
    peer.close()  # the server waits for our FIN before it counts and forgets the socket
    server.stop(timeout=1)
    assert metrics.statuses == [400]


# -- HS-06: the handshake deadline --------------------------------------------------------------


def test_hs06_slowloris_is_closed_at_the_handshake_deadline(serve: Any, raw_peer: Any) -> None:
    metrics = Statuses()
    server = serve(echo, config=Config(**FAST), metrics=metrics)
    slow, silent = raw_peer(server.server_port), raw_peer(server.server_port)
    started = time.monotonic()

    def trickle() -> None:
        for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            try:
                slow.sock.send(bytes([byte]))
            except OSError:
                return
            gevent.sleep(0.5 if byte == ord("a") else 0.01)

    trickler = gevent.spawn(trickle)
    assert_canary(server)  # a fresh client connects while the slowloris trickles
    answer = slow.read_until_eof(timeout=3)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.8 <= elapsed <= 1.8
    assert silent.read_until_eof(timeout=3) == b""  # nothing sent: just closed
    assert time.monotonic() - started <= 1.8
    trickler.kill()
    server.stop(timeout=1)
    assert sorted(metrics.statuses) == [101, 408, 408]


# -- CN-01: admission --------------------------------------------------------------------------


def test_cn01_full_pool_answers_503_and_recovers(serve: Any, raw_peer: Any) -> None:
    metrics = Statuses()
    server = serve(echo, config=Config(**FAST, max_connections=2), metrics=metrics)
    first, second = connect(url(server)), connect(url(server))
    peer = raw_peer(server.server_port)
    answer = peer.read_until_eof(timeout=3)  # answered before the request is even sent
    assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in answer
    with pytest.raises(HandshakeRejected) as info:
        connect(url(server))
    assert info.value.status == 503
    first.close()
    second.send("still served")
    assert second.receive(timeout=5) == "still served"
    wait_until(lambda: len(server.pool) == 1, timeout=5)  # first's slot is free again
    assert_canary(server)
    assert metrics.statuses.count(503) >= 2
    second.close()


def test_cn01_per_ip_cap_answers_429(serve: Any) -> None:
    server = serve(echo, config=Config(**FAST, max_connections_per_ip=2))
    held = [connect(url(server)), connect(url(server))]
    with pytest.raises(HandshakeRejected) as info:
        connect(url(server))
    assert info.value.status == 429
    assert ("retry-after", "1") in info.value.headers
    for ws in held:
        ws.close()


def test_100_concurrent_clients_echo(serve: Any) -> None:
    server = serve(echo)

    def client(n: int) -> bool:
        ws = connect(url(server), timeout=10)
        try:
            for i in range(10):
                ws.send(f"{n}:{i}")
                if ws.receive(timeout=10) != f"{n}:{i}":
                    return False
        finally:
            ws.close()
        return True

    jobs = [gevent.spawn(client, n) for n in range(100)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert all(job.value for job in jobs)


# -- PR-03: shutdown ----------------------------------------------------------------------------


def test_pr03_stop_sends_1001_to_open_and_503_to_handshaking(serve: Any, raw_peer: Any) -> None:
    server = serve(echo, config=Config(**{**FAST, "handshake_timeout": 10.0}))
    clients = [connect(url(server)) for _ in range(3)]
    handshaking = raw_peer(server.server_port)
    handshaking.sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # head not finished
    wait_until(lambda: len(server.pool) == 4, timeout=5)  # its greenlet holds a pool slot
    assert server.is_ready
    started = time.monotonic()
    stopper = gevent.spawn(server.stop)
    for ws in clients:
        assert ws.receive(timeout=5) is None
        assert ws.close_code == 1001
    assert handshaking.read_until_eof(timeout=5).startswith(b"HTTP/1.1 503 ")
    stopper.join(timeout=5)
    assert stopper.dead and time.monotonic() - started < 1.5
    assert not server.is_ready and not server.connections
    server.stop()  # idempotent
    with pytest.raises(OSError):
        connect(url(server), timeout=2)


def _child(code: str, *args: str) -> Any:
    script = textwrap.dedent(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return gevent.subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


SERVER_CHILD = """
    import resource, sys
    limit = int(sys.argv[1])
    if limit:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    from wsflask.config import Config
    from wsflask.server import Server, Upgrade

    def echo(ws):
        for message in ws:
            ws.send(message)

    config = Config(port=0, max_connections=1000, shutdown_grace=2.0, close_timeout=1.0)
    server = Server(("127.0.0.1", 0), lambda request, address: Upgrade(echo), config)
    server.install_signal_handlers()
    server.start()
    print(server.server_port, flush=True)
    server.serve_forever()
    print("drained", flush=True)
"""


def test_pr03_sigterm_drains_with_1001_and_exits_0() -> None:
    child = _child(SERVER_CHILD, "0")
    try:
        port = int(child.stdout.readline())
        ws = connect(f"ws://127.0.0.1:{port}/", timeout=5)
        ws.send("hi")
        assert ws.receive(timeout=5) == "hi"
        child.send_signal(signal.SIGTERM)
        assert ws.receive(timeout=5) is None
        assert ws.close_code == 1001
        assert child.wait(timeout=5) == 0
        assert child.stdout.read().strip() == "drained"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# -- CN-02: descriptor exhaustion ---------------------------------------------------------------


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _upgraded(peer: Any, timeout: float) -> bool:
    try:
        return bool(peer.read_head(timeout=timeout).startswith(b"HTTP/1.1 101"))
    except gevent.Timeout:
        return False


def test_cn02_accept_backs_off_at_the_fd_limit_and_recovers(raw_peer: Any) -> None:
    child = _child(SERVER_CHILD, "48")
    try:
        port = int(child.stdout.readline())
        peers = [raw_peer(port) for _ in range(70)]
        for peer in peers:
            peer.sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
        checks = [gevent.spawn(_upgraded, peer, 1.0) for peer in peers]
        gevent.joinall(checks, timeout=5)
        served = [peer for peer, check in zip(peers, checks, strict=True) if check.value]
        waiting = [p for p in peers if p not in served]
        assert 10 < len(served) < 48 and waiting, "the limit did not bite"
        # No spin while saturated: the accept loop backs off, so the process is nearly idle.
        cpu, wall = _cpu_ticks(child.pid), time.monotonic()
        gevent.sleep(1.0)  # the measurement window (scenario time, not a wait for an event)
        used = (_cpu_ticks(child.pid) - cpu) / os.sysconf("SC_CLK_TCK")
        assert used < 0.05 * (time.monotonic() - wall), f"{used:.2f} s CPU in a saturated 1 s"
        served[0].send_frame(1, b"alive")
        assert served[0].read_frame() == (1, b"alive")  # existing connections keep working
        for peer in served[1:20]:
            peer.close()
        started = time.monotonic()
        assert _upgraded(waiting[0], 3.0), "accept did not resume after descriptors freed"
        assert time.monotonic() - started < 2.5
    finally:
        child.kill()
        _, err = child.communicate(timeout=5)
    assert "backing off" in err and "Traceback" not in err


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    require_tool("openssl", "apt-get install -y openssl")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_wss_with_a_self_signed_certificate(
    serve: Any, raw_peer: Any, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    server = serve(echo, config=Config(**FAST, certfile=cert, keyfile=key))
    context = ssl.create_default_context(cafile=cert)
    ws = connect(url(server, scheme="wss"), ssl_context=context, timeout=5)
    for message in ("secure", b"\x00" * 100_000):
        ws.send(message)
        assert ws.receive(timeout=5) == message
    ws.close()
    assert ws.close_code == 1000
    silent = raw_peer(server.server_port)  # TL-01: a TCP connect that never says hello
    started = time.monotonic()
    assert silent.read_until_eof(timeout=3) == b""
    assert 0.8 <= time.monotonic() - started <= 1.8
    assert_canary_tls = connect(url(server, scheme="wss"), ssl_context=context, timeout=5)
    assert_canary_tls.close()


def test_tls_refuses_tls_1_1(serve: Any, certificate: tuple[str, str]) -> None:
    cert, key = certificate
    server = serve(echo, config=Config(**FAST, certfile=cert, keyfile=key))
    context = ssl.create_default_context(cafile=cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point: an outdated client
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((OSError, ValueError)):
        connect(url(server, scheme="wss"), ssl_context=context, timeout=5)


def test_tl04_unloadable_certificate_fails_at_construction(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="certfile="):
        Server(("127.0.0.1", 0), resolver, Config(port=0, certfile=missing))


# -- wiring: services, heartbeat watcher, ids, wait_drained ------------------------------------


class Recorder:
    """A service and a watcher at once: records what the server calls, in order."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def start(self) -> None:
        self.log.append(f"{self.name}.start")

    def stop(self) -> None:
        self.log.append(f"{self.name}.stop")


class Watcher:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def add(self, ws: WebSocket) -> None:
        self.log.append(f"add {ws.id}")

    def remove(self, ws: WebSocket) -> None:
        self.log.append(f"remove {ws.id}")


def test_services_start_in_order_and_stop_in_reverse_after_the_drain(serve: Any) -> None:
    log: list[str] = []
    server = serve(echo, services=(Recorder("a", log), Recorder("b", log)))
    assert log == ["a.start", "b.start"]
    ws = connect(url(server))
    ws.send("x")
    assert ws.receive(timeout=5) == "x"
    server.stop(timeout=2)
    assert ws.receive(timeout=5) is None and ws.close_code == 1001
    assert log == ["a.start", "b.start", "b.stop", "a.stop"]
    assert not server.connections


def test_heartbeat_watcher_sees_open_and_close_with_ids_from_new_id(serve: Any) -> None:
    log: list[str] = []
    ids = iter(["c1", "c2"])

    def handler(ws: WebSocket) -> None:
        ws.send(ws.id)
        echo(ws)

    server = serve(handler, heartbeat=Watcher(log), new_id=lambda: next(ids))
    ws = connect(url(server))
    assert ws.receive(timeout=5) == "c1"
    assert log == ["add c1"]
    ws.close()
    assert server.wait_drained(5)
    assert log == ["add c1", "remove c1"]


def test_default_ids_are_unguessable_and_distinct(serve: Any) -> None:
    from wsflask.ids import is_connection_id

    server = serve(lambda ws: ws.send(ws.id))
    clients = [connect(url(server)) for _ in range(3)]
    seen = {ws.receive(timeout=5) for ws in clients}
    for ws in clients:
        ws.close()
    assert len(seen) == 3 and all(isinstance(i, str) and is_connection_id(i) for i in seen)


def test_wait_drained_reports_false_while_a_connection_is_open(serve: Any) -> None:
    server = serve(echo)
    assert server.wait_drained(0)
    ws = connect(url(server))
    ws.send("x")
    assert ws.receive(timeout=5) == "x"
    assert not server.wait_drained(0.05)
    ws.close()
    assert server.wait_drained(5)


def test_defect11_abort_sends_its_close_frame_under_tls_too(
    serve: Any, certificate: tuple[str, str]
) -> None:
    """RFC 6455 §7.1.7: fail the connection with a Close first, over wss:// as over ws://."""
    cert, key = certificate

    def slow_consumer(ws: WebSocket) -> None:
        ws.receive(timeout=5)
        ws.abort(1013, "try again later")

    server = serve(slow_consumer, config=Config(**FAST, certfile=cert, keyfile=key))
    context = ssl.create_default_context(cafile=cert)
    ws = connect(url(server, scheme="wss"), ssl_context=context, timeout=5)
    ws.send("go")
    assert ws.receive(timeout=5) is None
    assert (ws.close_code, ws.close_reason) == (1013, "try again later")


def test_defect8_a_page_to_a_client_that_never_reads_has_a_write_deadline(
    serve: Any, raw_peer: Any
) -> None:
    """The answer's write is bounded by handshake_timeout: a pool slot is not held forever."""
    big = b"p" * (64 << 20)  # past any kernel send buffer
    answered = gevent.event.Event()

    class Answered(Statuses):
        def handshake(self, status: int) -> None:
            super().handshake(status)
            answered.set()

    metrics = Answered()
    server = serve(
        resolve=lambda r, a: HTTPResponse(200, big),
        metrics=metrics,
        config=Config(**{**FAST, "handshake_timeout": 0.5}),
    )
    peer = raw_peer(server.server_port, rcvbuf=4096)
    peer.sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # then never reads
    assert answered.wait(5) and metrics.statuses == [200]  # the greenlet is writing now
    assert len(server.pool) == 1
    assert server.pool.join(timeout=4), "the connection greenlet still holds its pool slot"
