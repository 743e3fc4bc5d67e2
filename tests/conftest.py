"""Shared fixtures, by concept: safety nets, apps, servers and peers, subprocesses, redis and proxy.

Nothing here monkey-patches. Helpers that tests call directly (``wait_until``,
``require_tool``) live in ``helpers.py``.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import BACKPLANE_FAST, require_tool

if TYPE_CHECKING:
    from wsflask.app import App

# -- safety nets: a deadline per test, and no greenlet outlives the test that started it ------

#: How long a greenlet that is already ending gets to finish before it counts as leaked.
LEAK_GRACE = 0.05
#: Every gevent Greenlet that has run in this session (filled by the greenlet switch tracer,
#: which is far cheaper than scanning ``gc.get_objects()`` around every test).
_seen: weakref.WeakSet[Any] = weakref.WeakSet()


@pytest.fixture(autouse=True, scope="session")
def greenlet_registry() -> Iterator[None]:
    """Record every gevent Greenlet the hub switches into, for ``no_leaked_greenlets``."""
    import greenlet  # type: ignore[import-untyped]  # ships no annotations
    from gevent import Greenlet

    previous = greenlet.gettrace()

    def trace(event: str, args: Any) -> None:
        if event in ("switch", "throw") and isinstance(args[1], Greenlet):
            _seen.add(args[1])
        if previous is not None:
            previous(event, args)

    greenlet.settrace(trace)
    yield
    greenlet.settrace(previous)


def _describe(greenlet: Any) -> str:
    """The greenlet's function and the first wsflask or test frame that spawned it."""
    run = getattr(greenlet, "_run", None)
    name = getattr(run, "__qualname__", None) or repr(run)
    module = getattr(run, "__module__", "?")
    frame, where = getattr(greenlet, "spawning_stack", None), ""
    while frame is not None and not where:
        path = frame.f_code.co_filename
        if "/wsflask/" in path or "/tests/" in path:
            where = f" spawned at {'/'.join(path.split('/')[-2:])}:{frame.f_lineno}"
        frame = frame.f_back
    return f"{module}.{name}{where}"


@pytest.fixture(autouse=True)
def no_leaked_greenlets(request: pytest.FixtureRequest, greenlet_registry: None) -> Iterator[None]:
    """Fail a test that leaves a greenlet it started running (after a short grace join).

    Leaked greenlets are killed so they cannot disturb later tests. A test that knowingly
    leaks carries ``@pytest.mark.leaks_greenlets(reason)``. Blind spot: a greenlet scheduled
    with ``spawn_later`` whose timer has not fired by the end of the test was never switched
    into, so the tracer has not seen it.
    """
    import gevent

    before = [g for g in list(_seen) if g]
    yield
    gevent.sleep(0)  # greenlets spawned but not yet run start now, so the tracer sees them
    known = set(map(id, before))
    leaked = [g for g in list(_seen) if g and id(g) not in known]
    if not leaked:
        return
    gevent.joinall(leaked, timeout=LEAK_GRACE)
    leaked = [g for g in leaked if g]
    if not leaked:
        return
    names = sorted(_describe(g) for g in leaked)
    gevent.killall(leaked, timeout=1)
    if request.node.get_closest_marker("leaks_greenlets") is None:
        pytest.fail(
            f"{len(names)} greenlet(s) still running after the test: {names}", pytrace=False
        )


@pytest.fixture(autouse=True)
def test_deadline(request: pytest.FixtureRequest) -> Iterator[None]:
    """A gevent.Timeout over every test and its teardown, so no gevent wait can hang the
    suite: 60 s, or the test's own ``pytest.mark.timeout`` (pytest-timeout's limit, which
    also covers blocking calls outside gevent)."""
    import gevent

    marker = request.node.get_closest_marker("timeout")
    timer = gevent.Timeout(float(marker.args[0]) if marker and marker.args else 60.0)
    timer.start()
    yield
    timer.close()


# -- apps: App instances and their test clients -----------------------------------------


@pytest.fixture
def app_factory() -> Iterator[Callable[..., App]]:
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


# -- servers and peers: a Server on 127.0.0.1:0 and a raw-socket client -------------------


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
        self.buffer = buf[pos + size :]
        return buf[0] & 0x0F, buf[pos : pos + size]

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

    def start(
        handler: Any = None, *, resolve: Any = None, config: Any = None, **kwargs: Any
    ) -> Any:
        if resolve is None:

            def resolve(request: Any, address: Any) -> Upgrade:
                return Upgrade(handler)

        config = config or Config(
            port=0, close_timeout=1.0, handshake_timeout=2.0, shutdown_grace=1.0
        )
        server = Server(("127.0.0.1", 0), resolve, config, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=1)


# -- subprocesses: `python -m wsflask run ...` or an example script as a child ----------


class WsflaskProcess:
    """A server child (``python -m wsflask run ...`` or ``python examples/x.py``); its output
    goes to a file read by polling."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], log_path: Path) -> None:
        import subprocess

        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.port = 0

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> Any:
        """Poll the log until ``pattern`` (a regex) matches; fail if the process exits first."""
        import re
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log)
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"wsflask exited with {self.proc.returncode}:\n{self.log}")
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} in the log after {timeout} s:\n{self.log}")

    def wait_serving(self) -> int:
        """Wait for the "serving on" line (CLI or ``app.run()``); return the bound port."""
        self.port = int(self.wait_for_log(r"serving on (?:http://)?[^:\s]+:(\d+)")[1])
        return self.port

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (if still running), wait, SIGKILL as a last resort; return the exit code."""
        import subprocess

        try:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise
        finally:
            self._log.close()


@pytest.fixture
def wsflask_run(tmp_path: Path) -> Iterator[Callable[..., WsflaskProcess]]:
    """``wsflask_run(*args, env={...})`` starts ``python -m wsflask run *args`` from the repo
    root (a fresh environment without ``WSFLASK_*`` variables unless given); every process is
    stopped after the test, also when it fails. ``script=`` runs ``python <script> *args``."""
    import os
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    procs: list[WsflaskProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, script: str | None = None
    ) -> WsflaskProcess:
        base = {k: v for k, v in os.environ.items() if not k.startswith("WSFLASK_")}
        base["PYTHONUNBUFFERED"] = "1"
        head = [sys.executable, script] if script else [sys.executable, "-m", "wsflask", "run"]
        proc = WsflaskProcess(
            [*head, *args], root, {**base, **(env or {})}, tmp_path / f"wsflask-{len(procs)}.log"
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            proc.stop(timeout=15)
        except Exception:  # one stuck child must not keep the others alive
            continue


# -- redis and proxy: a real redis-server per test, and a cuttable TCP proxy ---------------


class RedisServer:
    """A ``redis-server`` child on 127.0.0.1 (no persistence, a temp dir), restartable."""

    def __init__(self, directory: Path, port: int = 0) -> None:
        self.directory = directory
        self.port = port or _free_port()
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start and poll PING until it answers (never a blind sleep)."""
        import shutil
        import subprocess
        import time

        exe = shutil.which("redis-server")
        assert exe is not None
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--loglevel",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.02)

    def ping(self) -> bool:
        import socket as pysocket

        try:
            with pysocket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; idempotent."""
        import subprocess

        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def client(self) -> Any:
        """A plain redis-py client for assertions (PUBSUB NUMSUB, presence keys)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


def _free_port() -> int:
    import socket as pysocket

    with pysocket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started ``RedisServer``; a missing redis-server skips locally and fails under CI."""
    require_tool("redis-server", "apt-get install -y redis-server")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TCPProxy:
    """A gevent TCP forwarder to ``127.0.0.1:target`` that a test can cut and restore.

    ``cut()`` closes the listener and every open pair (peers see a reset or EOF, new connects
    are refused), like a network partition; ``restore()`` listens again on the same port.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.server: Any = None
        self.pairs: list[tuple[Any, Any]] = []
        self.restore()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restore(self) -> None:
        from gevent.server import StreamServer

        self.server = StreamServer(("127.0.0.1", self.port), self._handle)
        self.server.init_socket()
        self.server.start()
        self.port = self.server.server_port

    def cut(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=0)
            self.server = None
        pairs, self.pairs = self.pairs, []
        for a, b in pairs:
            a.close()
            b.close()

    def _handle(self, client: Any, address: Any) -> None:
        import gevent
        import gevent.socket

        try:
            upstream = gevent.socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            client.close()
            return
        self.pairs.append((client, upstream))
        pump = gevent.spawn(_pipe, upstream, client)
        _pipe(client, upstream)
        pump.join()

    def close(self) -> None:
        self.cut()


def _pipe(source: Any, sink: Any) -> None:
    import contextlib

    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def chat_nodes() -> Iterator[Callable[..., tuple[App, Any]]]:
    """``chat_nodes(url, **settings)`` -> ``(app, test_client)``: an in-process chat node on
    Redis ``url`` (fast backplane timings unless ``settings`` say otherwise)."""
    clients: list[Any] = []

    def node(url: str, **settings: Any) -> tuple[App, Any]:
        from wsflask import App

        app = App(backplane=url, **{**BACKPLANE_FAST, **settings})

        @app.route("/r/<room>")
        def chat(ws: Any, room: str) -> None:
            app.rooms.join(room, ws)
            ws.send(json.dumps({"hello": ws.id}))
            for message in ws:
                app.send(message, to=room)

        client = app.test_client(timeout=10)
        clients.append(client)
        return app, client

    yield node
    for client in clients:
        client.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TCPProxy]]:
    """``tcp_proxy(port)`` -> a started ``TCPProxy`` to ``127.0.0.1:port``; closed after."""
    proxies: list[TCPProxy] = []

    def make(port: int) -> TCPProxy:
        proxy = TCPProxy(port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
