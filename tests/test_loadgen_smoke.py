"""Smoke test of the load tools (loadtests/), so they do not rot (issues 7 and 14).

Builds ``wsload`` with gcc and runs 1-second loads against small servers on 127.0.0.1 (an
echo app, the calibration server); checks ``rivals.py --compare`` on synthetic results.json
files. It asserts nothing about speed: benchmarks live in loadtests/rivals.py.
Every process it starts, it stops; every wait is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import queue
import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "loadtests" / "wsload.c"
CALIBRATION = ROOT / "loadtests" / "servers" / "calibration.py"
RIVALS = ROOT / "loadtests" / "rivals.py"

SERVER = r"""
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
"""


@pytest.fixture(scope="module")
def wsload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = require_tool("gcc", "apt-get install -y gcc")
    binary = tmp_path_factory.mktemp("wsload") / "wsload"
    subprocess.run(
        [gcc, "-O2", "-o", str(binary), str(SOURCE)], check=True, timeout=120, capture_output=True
    )
    return binary


@pytest.fixture(scope="module")
def echo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    script = tmp_path_factory.mktemp("server") / "echo_server.py"
    script.write_text(SERVER)
    yield from serve(script)


@pytest.fixture(scope="module")
def calibration_port() -> Iterator[int]:
    yield from serve(CALIBRATION, "0")


def serve(script: Path, *args: str) -> Iterator[int]:
    """Run a server script that prints "<name> <port>" once listening; yield the port."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=str(ROOT),
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            first = lines.get(timeout=30)
        except queue.Empty:
            pytest.fail(f"{script.name} did not start within 30 s")
        if not first:
            pytest.fail(f"{script.name} exited (code {proc.wait(5)})")
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
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stdout
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


@pytest.mark.parametrize(
    "args",
    [
        ("-c", "4", "-s", "20"),  # 7-bit length, text
        ("-c", "2", "-s", "16384", "--binary"),  # 16-bit length
        ("-c", "1", "-s", "70000", "--binary"),  # 64-bit length
        ("-c", "1", "-s", "1048576", "--binary"),  # the echo1m row: 1 MiB, the limit
    ],
    ids=["20B-text", "16KiB-binary", "70000B-binary", "1MiB-binary"],
)
def test_echo_round_trips_without_errors(
    wsload: Path, echo_port: int, args: tuple[str, ...]
) -> None:
    result = run_wsload(wsload, echo_port, *args)
    assert result["mode"] == "echo"
    assert result["errors"] == 0, result["error_detail"]
    assert result["received"] > 0
    assert result["connections_open"] == int(args[1])
    assert result["latency_us"]["count"] == result["received"]
    assert result["handshake_latency_us"]["count"] == int(args[1])  # one per connection
    assert "pct" in result["cpu"]


@pytest.mark.parametrize("mode", ["broadcast", "fanout"])
def test_room_modes_count_deliveries(wsload: Path, echo_port: int, mode: str) -> None:
    result = run_wsload(
        wsload, echo_port, "--mode", mode, "-c", "5", "--path", "/room", "--settle", "0.3"
    )
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
    latency = result["handshake_latency_us"]  # connect() to a validated 101, each handshake
    assert latency["count"] >= result["handshakes"]
    assert 0 < latency["mean"] <= latency["max"]
    assert latency["p50"] <= latency["p99"] <= latency["max"]


def test_paired_cpu_measures_two_servers_side_by_side(wsload: Path) -> None:
    """``paired_cpu.py`` runs two servers at once (here the same tree twice) and prints each
    one's CPU per handshake and their ratio, for every round (a smoke run: no speed judged)."""
    require_tool("taskset", "apt-get install -y util-linux")
    out = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "paired_cpu.py"), f"a={ROOT}", f"b={ROOT}",
         "--rounds", "2", "--duration", "0.5", "--wsload", str(wsload)],
        cwd=ROOT / "loadtests", capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    rounds = [line for line in out.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2, out
    for line in rounds:
        a, b, ratio = (float(x) for x in re.findall(r"\d+\.\d+", line))  # A, B, B/A
        assert a > 0 and b > 0 and ratio == pytest.approx(b / a, rel=0.01), line
    assert re.search(r"median B/A \d+\.\d+ \(range", out), out


def test_refuses_a_non_loopback_target(wsload: Path) -> None:
    result = subprocess.run(
        [str(wsload), "--host", "192.0.2.1", "--port", "80", "-d", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr


# --------------------------------------------------------------------- calibration server


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One unmasked server frame: (first byte, payload)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the server closed the connection mid-frame"
            data += chunk
        return data

    b0, b1 = exactly(2)
    assert b1 & 0x80 == 0, "a server frame must not be masked"
    n = b1 & 127
    if n == 126:
        n = struct.unpack("!H", exactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exactly(8))[0]
    return b0, exactly(n)


def client_frame(b0: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = bytes([b0])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def test_calibration_server_answers_an_echo(calibration_port: int) -> None:
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    with socket.create_connection(("127.0.0.1", calibration_port), timeout=10) as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: "
            + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: " + accept + b"\r\n" in head
        big = os.urandom(70000)  # 64-bit length form, every mask offset
        sock.sendall(
            client_frame(0x81, b"hello") + client_frame(0x82, big) + client_frame(0x89, b"ping!")
        )
        assert read_frame(sock) == (0x81, b"hello")
        assert read_frame(sock) == (0x82, big)
        assert read_frame(sock) == (0x8A, b"ping!")
        sock.sendall(client_frame(0x88, struct.pack("!H", 1000)))
        b0, body = read_frame(sock)
        assert (b0, struct.unpack("!H", body)[0]) == (0x88, 1000)
        assert sock.recv(1) == b""  # then it closes the TCP connection


def test_wsload_echoes_1mib_through_the_calibration_server(
    wsload: Path, calibration_port: int
) -> None:
    result = run_wsload(wsload, calibration_port, "-c", "2", "-s", "1048576", "--binary")
    assert result["errors"] == 0, result["error_detail"]
    assert result["received"] > 0
    assert result["bytes_per_s"] == pytest.approx(result["msg_per_s"] * 1048576, rel=1e-3)


# --------------------------------------------------------------------- rivals.py --compare


@pytest.fixture(scope="module")
def rivals() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rivals_under_test", RIVALS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def cell(server: str, scenario: str, value: float, **result: Any) -> dict[str, Any]:
    return {
        "server": server,
        "scenario": scenario,
        "ok": True,
        "value": value,
        "note": "",
        "server_cpu_pct": 99.0,
        "generator_cpu_pct": 40.0,
        "server_rss_kib": 30000,
        "result": result,
    }


def run_file(cells: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "config": {
            "quick": False,
            "duration": 5.0,
            "warmup": 1.0,
            "server_cpu": 0,
            "generator_cpu": 1,
            "idle_connections": 15000,
            "window": None,
            "when": "synthetic",
        },
        "versions": {},
        "notes": [],
        "cells": cells,
    }


def baseline() -> list[dict[str, Any]]:
    handshake_latency = {
        "count": 9000,
        "mean": 1500.0,
        "p50": 1200.0,
        "p90": 2500.0,
        "p99": 12000.0,
        "p999": 20000.0,
        "max": 28000.0,
    }
    return [
        cell("wsflask", "echo20", 50000.0),
        cell("calibration", "echo20", 60000.0),
        cell("aiohttp", "echo20", 55000.0),
        cell("wsflask", "idle", 12.5),
        cell("wsflask", "handshake", 1800.0, handshake_latency_us=handshake_latency),
    ]


def compare(
    rivals: ModuleType,
    tmp_path: Path,
    new: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str]:
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    old_path.write_text(json.dumps(run_file(baseline())))
    new_path.write_text(json.dumps(run_file(new)))
    code = rivals.main(["--from-json", str(new_path), "--compare", str(old_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "old.json"]  # no redraw
    return code, capsys.readouterr().out


def test_compare_passes_an_unchanged_run(
    rivals: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = compare(rivals, tmp_path, baseline(), capsys)
    assert code == 0, out
    assert "ok        echo 100 x 20 B [wsflask]: 50,000 -> 50,000 msg/s +0.0%" in out
    assert "handshakes: latency p99 (connect to 101) [wsflask]: 12,000 -> 12,000 us" in out
    assert "0 regression(s) in wsflask" in out


def changed(
    server: str, scenario: str, factor: float, stat: str | None = None
) -> list[dict[str, Any]]:
    cells = baseline()
    for c in cells:
        if (c["server"], c["scenario"]) == (server, scenario):
            if stat is None:
                c["value"] *= factor
            else:
                c["result"]["handshake_latency_us"][stat] *= factor
    return cells


@pytest.mark.parametrize(
    ("server", "scenario", "factor", "stat", "code", "line"),
    [
        (
            "wsflask",
            "echo20",
            0.70,
            None,
            1,
            "REGRESSED echo 100 x 20 B [wsflask]: 50,000 -> 35,000 msg/s -30.0%",
        ),
        ("wsflask", "echo20", 0.80, None, 0, "ok        echo 100 x 20 B [wsflask]"),
        (
            "wsflask",
            "idle",
            1.60,
            None,
            1,
            "REGRESSED idle connections: RSS each [wsflask]: 12.5 -> 20.0 KiB +60.0%",
        ),
        ("wsflask", "idle", 1.40, None, 0, "ok        idle connections: RSS each [wsflask]"),
        (
            "wsflask",
            "handshake",
            1.60,
            "p99",
            1,
            "REGRESSED handshakes: latency p99 (connect to 101) [wsflask]: 12,000 -> 19,200 us",
        ),
        ("wsflask", "handshake", 0.60, None, 1, "REGRESSED handshakes [wsflask]"),
        (
            "aiohttp",
            "echo20",
            0.50,
            None,
            0,
            "REGRESSED echo 100 x 20 B [aiohttp]: 55,000 -> 27,500 msg/s -50.0% (context, not "
            "gating)",
        ),
        ("wsflask", "echo20", 1.50, None, 0, "improved  echo 100 x 20 B [wsflask]"),
    ],
    ids=[
        "throughput-30%",
        "throughput-20%",
        "memory+60%",
        "memory+40%",
        "latency+60%",
        "handshakes-40%",
        "rival-only",
        "faster",
    ],
)
def test_compare_flags_only_moves_past_the_band(
    rivals: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    server: str,
    scenario: str,
    factor: float,
    stat: str | None,
    code: int,
    line: str,
) -> None:
    got, out = compare(rivals, tmp_path, changed(server, scenario, factor, stat), capsys)
    assert got == code, out
    assert line in out
    assert f"{code} regression(s) in wsflask" in out


def test_compare_counts_a_row_that_now_fails(
    rivals: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cells = baseline()
    cells[0].update(ok=False, value=None, note="server did not start")
    code, out = compare(rivals, tmp_path, cells, capsys)
    assert code == 1
    assert "FAILED    echo 100 x 20 B [wsflask]: 50,000 -> n/a msg/s" in out


def test_compare_hints_at_the_machine_when_calibration_moves_too(
    rivals: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cells = changed("wsflask", "echo20", 0.6)
    cells[1]["value"] *= 0.6  # calibration, same row
    code, out = compare(rivals, tmp_path, cells, capsys)
    assert code == 1
    assert "calibration moved the same way in this row" in out


def test_compare_refuses_a_file_that_is_not_a_results_json(
    rivals: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "old.json"
    bad.write_text('{"cells": [{"server": "wsflask"}]}')
    with pytest.raises(SystemExit) as exc:
        rivals.main(["--from-json", str(bad), "--compare", str(bad)])
    assert exc.value.code == 2
    assert "is not a readable results.json" in capsys.readouterr().err


def test_tables_show_handshake_latency_next_to_the_rate(rivals: ModuleType) -> None:
    results = rivals.load_cells(run_file(baseline()))
    scenarios = [sc for sc in rivals.SCENARIOS if sc.key == "handshake"]
    rows = rivals.table_rows(results, ["wsflask"], scenarios)
    assert [r[1] for r in rows[1:]] == ["1,800", "1,500", "12,000", "28,000"]
    assert [r[0].split(" (")[0] for r in rows[1:]] == [
        "handshakes",
        "handshakes: latency mean",
        "handshakes: latency p99",
        "handshakes: latency max",
    ]
    keys = [sc.key for sc in rivals.SCENARIOS]
    assert {"idle", "echo1m", "handshake"} <= set(keys)  # all in the default run


@pytest.mark.parametrize(
    ("mean_us", "max_us", "verdict"),
    [(6_500, 25_800, 0), (100_000, 500_000, 0), (100_001, 20_000, 1), (9_000, 500_001, 1)],
)
def test_handshake_latency_gate_uses_the_absolute_bounds(
    rivals: ModuleType, mean_us: float, max_us: float, verdict: int
) -> None:
    """Seed audit item 50: a mean over 100 ms or any handshake over 500 ms fails the run."""
    latency = {"count": 10, "mean": mean_us, "p99": mean_us, "max": max_us}
    measured = rivals.Measurement(
        "wsflask", "handshake", True, 3000.0, result={"handshake_latency_us": latency}
    )
    assert rivals.handshake_latency_gate({("wsflask", "handshake"): measured}) == verdict
    assert rivals.handshake_latency_gate({}) == 0  # no handshake row measured: nothing to gate


def test_results_md_keeps_the_hand_written_tail(rivals: ModuleType, tmp_path: Path) -> None:
    """The targets and the soak are written by hand below the marker: a new run keeps them."""
    page = tmp_path / "RESULTS.md"
    assert rivals.kept_tail(page) == ""  # no file yet
    page.write_text(f"# old table\n\n{rivals.KEEP_MARKER}\n## Soak\nRSS flat.\n")
    assert rivals.kept_tail(page) == f"\n{rivals.KEEP_MARKER}\n## Soak\nRSS flat.\n"
    page.write_text("# a table without the marker\n")
    assert rivals.kept_tail(page) == ""


def test_repeat_keeps_each_cells_median_round_whole(rivals: ModuleType) -> None:
    """--repeat N: the median round is kept with its own latency rows; every value is kept."""
    rounds = [
        rivals.Measurement("wsflask", "handshakes", True, v, result={"id": v})
        for v in (300.0, 100.0, 200.0)
    ]
    chosen = rivals.median_of(rounds, "handshakes_per_s")
    assert chosen.value == 200.0 and chosen.result["id"] == 200.0  # one round, not a mix
    assert chosen.result["rounds"] == [300.0, 100.0, 200.0]
    assert "median of 3 rounds: 100 to 300" in chosen.note
    # an even count keeps the lower middle round; a failed round is named, never averaged in
    failed = rivals.Measurement("aiohttp", "echo20", False, note="server did not start")
    four = [rivals.Measurement("aiohttp", "echo20", True, float(v)) for v in (4, 1, 3)] + [failed]
    chosen = rivals.median_of(four, "msg_per_s")
    assert chosen.value == 3.0 and chosen.result["rounds"] == [4.0, 1.0, 3.0, None]
    assert "1 of 4 rounds failed" in chosen.note
    single = rivals.Measurement("picows", "echo20", True, 7.0)
    assert rivals.median_of([single], "msg_per_s") is single and single.note == ""
    assert rivals.median_of([failed, failed], "msg_per_s") is failed
    assert "measured 3 times" in rivals.repeated(3) and rivals.repeated(1) == ""
