"""Smoke test of the load generator (loadtests/wsload.c), so it does not rot (issue 7).

Builds ``wsload`` with the machine's gcc, starts a tiny echo server on 127.0.0.1 in a child
process (wsflask's App when it imports, else a minimal server on ``wsflask.protocol``), runs
1-second echo loads (7-bit, 16-bit and 64-bit frame lengths) and checks that messages came
back with no error. It asserts nothing about speed: benchmarks live in loadtests/rivals.py.
Every process it starts, it stops; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "loadtests" / "wsload.c"

SERVER = r'''
import sys

try:
    from wsflask import App, WebSocket

    app = App()

    @app.route("/echo")
    def echo(ws: WebSocket) -> None:
        for message in ws:
            ws.send(message)

    room = app.route("/room")

    @room.on("connect")
    def joined(ws: WebSocket) -> None:
        app.rooms.join("room", ws)

    @room.on("message")
    def said(ws: WebSocket, data: str | bytes) -> None:
        app.rooms.broadcast("room", data)

    server = app.make_server("127.0.0.1", 0)
    server.start()
    print("wsflask", server.server_port, flush=True)
    server.serve_forever()
except ImportError:  # the framework is not there yet: the protocol core alone
    from gevent.server import StreamServer
    from wsflask.protocol import (BinaryMessage, Connection, Limits, Request, Side, State,
                                  TextMessage)

    members = {}

    def handle(sock, addr):
        conn = Connection(Side.SERVER, limits=Limits(max_message_size=1 << 20))
        try:
            while conn.state is not State.CLOSED:
                data = sock.recv(65536)
                if data:
                    conn.receive_data(data)
                else:
                    conn.receive_eof()
                for event in conn.events_received():
                    if conn.state is not State.OPEN and not isinstance(event, Request):
                        continue
                    if isinstance(event, Request):
                        conn.accept(event)
                        if event.path == "/room":
                            members[sock] = conn
                    elif sock in members and isinstance(event, (TextMessage, BinaryMessage)):
                        for other_sock, other in list(members.items()):
                            if other.state is State.OPEN and other is not conn:
                                (other.send_text if isinstance(event, TextMessage)
                                 else other.send_binary)(event.data)
                                other_sock.sendall(other.data_to_send())
                        (conn.send_text if isinstance(event, TextMessage)
                         else conn.send_binary)(event.data)
                    elif isinstance(event, TextMessage):
                        conn.send_text(event.data)
                    elif isinstance(event, BinaryMessage):
                        conn.send_binary(event.data)
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
                if not data:
                    break
        finally:
            members.pop(sock, None)
            sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    print("protocol", server.server_port, flush=True)
    server.serve_forever()
'''


@pytest.fixture(scope="module")
def wsload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = require_tool("gcc", "apt-get install -y gcc")
    binary = tmp_path_factory.mktemp("wsload") / "wsload"
    subprocess.run([gcc, "-O2", "-o", str(binary), str(SOURCE)], check=True, timeout=120,
                   capture_output=True)
    return binary


@pytest.fixture(scope="module")
def echo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    script = tmp_path_factory.mktemp("server") / "echo_server.py"
    script.write_text(SERVER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=str(ROOT))
    try:
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            first = lines.get(timeout=30)
        except queue.Empty:
            pytest.fail("the echo server did not start within 30 s")
        if not first:
            pytest.fail(f"the echo server exited (code {proc.wait(5)})")
        yield int(first.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def run_wsload(wsload: Path, port: int, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(wsload), "--port", str(port), "-d", "1", "--warmup", "0.2", *args],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stdout
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


@pytest.mark.parametrize(
    "args",
    [
        ("-c", "4", "-s", "20"),                          # 7-bit length, text
        ("-c", "2", "-s", "16384", "--binary"),           # 16-bit length
        ("-c", "1", "-s", "70000", "--binary"),           # 64-bit length
    ],
    ids=["20B-text", "16KiB-binary", "70000B-binary"],
)
def test_echo_round_trips_without_errors(wsload: Path, echo_port: int,
                                         args: tuple[str, ...]) -> None:
    result = run_wsload(wsload, echo_port, *args)
    assert result["mode"] == "echo"
    assert result["errors"] == 0, result["error_detail"]
    assert result["received"] > 0
    assert result["connections_open"] == int(args[1])
    assert result["latency_us"]["count"] == result["received"]
    assert "pct" in result["cpu"]


@pytest.mark.parametrize("mode", ["broadcast", "fanout"])
def test_room_modes_count_deliveries(wsload: Path, echo_port: int, mode: str) -> None:
    result = run_wsload(wsload, echo_port, "--mode", mode, "-c", "5", "--path", "/room",
                        "--settle", "0.3")
    assert result["errors"] == 0, result["error_detail"]
    assert result["sent"] > 0
    assert result["received"] > 0
    assert result["latency_us"]["count"] == result["received"]


def test_idle_mode_holds_connections(wsload: Path, echo_port: int) -> None:
    result = run_wsload(wsload, echo_port, "--mode", "idle", "-c", "20")
    assert result["errors"] == 0, result["error_detail"]
    assert result["connections_open"] == 20


def test_handshake_mode_completes_handshakes(wsload: Path, echo_port: int) -> None:
    result = run_wsload(wsload, echo_port, "--mode", "handshake", "--concurrency", "2")
    assert result["handshakes"] > 0
    assert result["error_detail"]["handshake"] == 0


def test_refuses_a_non_loopback_target(wsload: Path) -> None:
    result = subprocess.run([str(wsload), "--host", "192.0.2.1", "--port", "80", "-d", "1"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "loopback" in result.stderr
