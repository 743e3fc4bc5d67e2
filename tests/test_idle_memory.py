"""Idle-connection memory (issue 14): what each open, idle connection keeps on the server.

Two kinds of checks, both deterministic: what an idle connection holds (shared objects,
lists made on first use, no personal-room dict, no spawning stack), and a tracemalloc bound
on the Python memory per idle connection, measured in a child server process that serves
nothing else. RSS per connection is measured by ``loadtests/rivals.py`` (its idle row), not
here: it depends on the allocator and the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
from helpers import wait_until

import wsflask.websocket as websocket_module
from wsflask import App, WebSocket
from wsflask.protocol import handshake
from wsflask.server import ConnectionGreenlet
from wsflask.websocket import MessagesPython

#: Python memory (tracemalloc) per idle connection in the child below, the greenlet's saved
#: C stack (~2.2 KiB) included: 5,904 B with the compiled message iterator, 6,202 B with its
#: pure-Python twin (stable to a few bytes run to run); 6,506 B before the iterator, the lazy
#: ``session``/``path_params``/event list and the shared host texts, about 8,200 B before
#: issue 14's idle work. A regression of a few hundred bytes per connection (an object or
#: closure held while idle) fails it.
TRACED_BOUND = 6_150 if websocket_module.Messages is not MessagesPython else 6_450
IDLE = 300
WARM = 20

HEAD = (
    b"GET /idle HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

CHILD = textwrap.dedent(
    """
    import gc, os, signal, sys, tracemalloc
    tracemalloc.start(1)
    import gevent
    from wsflask import App

    out, expected = sys.argv[1], [int(n) for n in sys.argv[2:]]
    app = App()

    @app.route("/idle")
    def idle(ws):
        for _ in ws:
            pass

    server = app.make_server("127.0.0.1", 0)
    server.start()
    snapshots = []

    def idle_now(count):
        return len(server.connections) == count and all(
            ws._reading for ws in server.connections
        )

    def snap():
        count = expected[len(snapshots)]
        with gevent.Timeout(20):
            while not idle_now(count):
                gevent.sleep(0.01)
        gc.collect()
        snapshots.append(tracemalloc.take_snapshot())
        if len(snapshots) == 2:
            grown = sum(d.size_diff for d in snapshots[1].compare_to(snapshots[0], "filename"))
            with open(out + ".tmp", "w") as f:
                f.write(str(grown))
            os.rename(out + ".tmp", out)
        else:
            open(out + ".0", "w").close()

    gevent.signal_handler(signal.SIGUSR1, lambda: gevent.spawn(snap))
    with open(out + ".port.tmp", "w") as f:
        f.write(str(server.server_port))
    os.rename(out + ".port.tmp", out + ".port")
    gevent.wait()
    """
)


def _connect(port: int, count: int) -> list[Any]:
    """``count`` upgraded, idle connections (raw sockets, each past its 101)."""
    socks = []
    for _ in range(count):
        sock = gevent.socket.create_connection(("127.0.0.1", port))
        sock.sendall(HEAD)
        socks.append(sock)
    for sock in socks:
        head = b""
        with gevent.Timeout(10):
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, "closed before the 101"
                head += chunk
        assert head.startswith(b"HTTP/1.1 101 ")
    return socks


@pytest.fixture
def child_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    out = tmp_path / "grown"
    env = {k: v for k, v in os.environ.items() if k != "GEVENT_TRACK_GREENLET_TREE"}
    argv = [sys.executable, "-c", CHILD, str(out), str(WARM), str(WARM + IDLE)]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    try:
        yield proc, out
    finally:
        proc.kill()
        proc.wait()


def test_idle_connection_python_memory_is_bounded(
    child_server: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, out = child_server
    port_file = Path(str(out) + ".port")
    wait_until(port_file.exists, timeout=20)
    port = int(port_file.read_text())
    socks = _connect(port, WARM)  # one-off caches and container growth come first
    try:
        proc.send_signal(signal.SIGUSR1)
        wait_until(Path(str(out) + ".0").exists, timeout=30)
        socks += _connect(port, IDLE)
        proc.send_signal(signal.SIGUSR1)
        wait_until(out.exists, timeout=30)
        per_connection = int(out.read_text()) / IDLE
        assert per_connection <= TRACED_BOUND, f"{per_connection:.0f} B per idle connection"
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def two_idle(app_factory: Callable[..., App]) -> Iterator[tuple[App, WebSocket, WebSocket]]:
    """Two idle connections on one route, the server's side of each."""
    handshake._SEEN_FIELDS.clear()  # as a fresh server: the test session saw many Hosts
    app = app_factory()

    @app.route("/idle")
    def idle(ws: WebSocket) -> None:
        for _ in ws:
            pass

    with app.test_client() as client:
        client.connect("/idle")
        client.connect("/idle")
        assert app.server is not None
        server = app.server
        wait_until(
            lambda: len(server.connections) == 2 and all(w._reading for w in server.connections)
        )
        a, b = server.connections
        yield app, a, b


def test_idle_connections_share_request_parts(two_idle: tuple[App, WebSocket, WebSocket]) -> None:
    _, a, b = two_idle
    assert a.request is not None and b.request is not None
    assert a.connection.request is a.request  # one Request per connection, not two
    assert a.request.target is b.request.target
    common = [(x, y) for x, y in zip(a.request.headers, b.request.headers, strict=True)]
    shared = [x is y for x, y in common if x[0] != "sec-websocket-key"]
    assert shared and all(shared)
    key = [x is y for x, y in common if x[0] == "sec-websocket-key"]
    assert key == [False]  # never cached


def test_idle_connection_makes_lists_on_first_use(
    two_idle: tuple[App, WebSocket, WebSocket],
) -> None:
    _, a, _ = two_idle
    core = a.connection
    assert core._pending_input is None
    assert core._decoder._parts is None
    assert core._messages._parts is None
    assert core._events is None  # the events were taken: no empty list kept
    assert a.peek_session() is None and a._path_params is None  # made on first use
    assert a.session == {} and a.peek_session() is a.session  # then kept
    assert a.path_params == {} and a._path_params is a.path_params


def test_connections_from_one_address_share_its_host_text(
    two_idle: tuple[App, WebSocket, WebSocket],
) -> None:
    _, a, b = two_idle
    assert a.remote_address is not None and b.remote_address is not None
    assert a.remote_address[0] == "127.0.0.1"
    assert a.remote_address[0] is b.remote_address[0]
    assert a.remote_address[1] != b.remote_address[1]


def test_the_shared_host_texts_are_bounded() -> None:
    from wsflask import server as server_module

    server_module._HOSTS.clear()
    texts = [f"10.0.{i // 256}.{i % 256}" for i in range(server_module.HOSTS_SHARED_MAX + 5)]
    for text in texts:
        assert server_module._shared_host(text) is text
    assert len(server_module._HOSTS) <= server_module.HOSTS_SHARED_MAX
    again = ".".join(texts[-1].split("."))  # equal to the last text, another object
    assert again is not texts[-1] and server_module._shared_host(again) is texts[-1]


def test_personal_room_is_no_dict_and_callbacks_are_shared(
    two_idle: tuple[App, WebSocket, WebSocket],
) -> None:
    app, a, b = two_idle
    assert a.id not in app.rooms._rooms and b.id not in app.rooms._rooms
    assert app.rooms.members(a.id) == [a] and app.rooms.count(b.id) == 1
    assert sorted(app.rooms.rooms(personal=True)) == sorted([a.id, b.id])
    assert isinstance(a._callbacks, tuple) and a._callbacks[0] is b._callbacks[0]


def test_connection_greenlets_keep_no_spawning_stack_and_share_callbacks(
    two_idle: tuple[App, WebSocket, WebSocket],
) -> None:
    app = two_idle[0]
    assert app.server is not None
    greenlets = list(app.server.pool.greenlets)
    assert len(greenlets) == 2
    assert all(type(g) is ConnectionGreenlet and g.spawning_stack is None for g in greenlets)
    first, second = greenlets
    assert first.args[1] is second.args[1]  # one bound do_close for every connection
    pool = app.server.pool
    assert pool._discard is pool._discard  # one bound Pool._discard links them all
