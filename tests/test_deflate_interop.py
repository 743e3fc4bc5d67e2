"""permessage-deflate interop: python-websockets and the Node ``ws`` client against our server.

The echo example runs in a child process (``wsflask run examples.echo:app``) with its default
compression settings (window bits 12, memLevel 5) and ``compress_threshold=0`` so that every
message is compressed both ways, the empty one included (RFC 7692 §7.2.3.6). Each client
offers permessage-deflate, sends text and binary messages of 0 B, 1 B, 1 KiB and 1 MiB and
checks every echo byte for byte; the test asserts the negotiated ``Sec-WebSocket-Extensions``
answer, and the server's ``/metrics`` (its codecs' byte counters) proves that messages did go
compressed in both directions. The Node test needs ``node`` (``require_tool``); the pinned
``ws`` package is installed from ``tests/browser/package-lock.json`` when absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "browser"
NODE = shutil.which("node")
SIZES = (0, 1, 1024, 1024 * 1024)
#: What our server answers to the usual offer ("permessage-deflate; client_max_window_bits").
ANSWER = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
ENV = {"WSFLASK_COMPRESS_THRESHOLD": "0", "WSFLASK_PING_INTERVAL": "3600"}

pytestmark = pytest.mark.timeout(240)


def text_of(size: int) -> str:
    unit = '{"user":"alice","room":"lobby","n":'
    out, i = "", 0
    while len(out) < size:
        out += f"{unit}{i}}}"
        i += 1
    return out[:size]


def binary_of(size: int) -> bytes:
    return bytes((i * 7) % 251 & (0xFF if i % 64 < 32 else 0x0F) for i in range(size))


def echo_server(wsflask_run: Any) -> int:
    server = wsflask_run("examples.echo:app", "--host", "127.0.0.1", "--port", "0", env=ENV)
    port: int = server.wait_serving()
    return port


def deflate_bytes(port: int) -> dict[tuple[str, str], int]:
    """The server's ``websocket_deflate_bytes_total`` samples by (direction, form)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("websocket_deflate_bytes_total{"):
            labels, value = line.split("{", 1)[1].split("} ")
            pairs = dict(item.split("=") for item in labels.split(","))
            out[(pairs["direction"].strip('"'), pairs["form"].strip('"'))] = int(value)
    return out


def assert_compressed_both_ways(port: int) -> None:
    counts = deflate_bytes(port)
    total = 2 * sum(SIZES)  # text and binary, each way
    assert counts[("in", "uncompressed")] == total
    assert counts[("out", "uncompressed")] == total
    assert 0 < counts[("in", "compressed")] < total // 10  # the 1 MiB messages shrink a lot
    assert 0 < counts[("out", "compressed")] < total // 10


def test_python_websockets_client(wsflask_run: Any) -> None:
    from websockets.sync.client import connect

    port = echo_server(wsflask_run)
    url = f"ws://127.0.0.1:{port}/echo"
    with connect(url, compression="deflate", max_size=4 << 20, open_timeout=30) as ws:
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Extensions"] == ANSWER
        for size in SIZES:
            for message in (text_of(size), binary_of(size)):
                ws.send(message)
                assert ws.recv(timeout=30) == message, f"{type(message).__name__} {size} B"
    assert_compressed_both_ways(port)


@pytest.fixture(scope="module")
def node_ws() -> Path:
    """tests/browser/node_modules with the pinned ``ws`` (``npm ci`` if it is missing)."""
    require_tool("node", "apt-get install -y nodejs npm")
    if not (DRIVER / "node_modules" / "ws").is_dir():
        npm = shutil.which("npm")
        assert npm, "npm is missing: apt-get install -y npm (needed once for the ws package)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=DRIVER, check=True, timeout=300)
    return DRIVER / "node_modules"


def test_node_ws_client(node_ws: Path, wsflask_run: Any) -> None:
    assert NODE is not None
    port = echo_server(wsflask_run)
    done = subprocess.run(
        [NODE, "ws_client.mjs", f"ws://127.0.0.1:{port}/echo"],
        cwd=DRIVER, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, f"ws client failed:\n{done.stderr}\n{done.stdout}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["extensions"] == ANSWER
    assert [(r["binary"], r["size"]) for r in seen["results"]] == [
        (binary, size) for binary in (False, True) for size in SIZES
    ]
    assert all(r["ok"] for r in seen["results"]), seen["results"]
    assert seen["closeCode"] == 1000
    assert_compressed_both_ways(port)
