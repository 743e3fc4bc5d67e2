"""The JavaScript client (``/wsflask.js``) in Node against a real wsflask server.

``tests/browser/js_client.mjs`` downloads ``/wsflask.js`` from the server, imports it and
runs it with the ``ws`` package as its WebSocket: emit, calls acked, refused and timed out,
server calls answered (the server side written with plain ``ws.send``/``ws.receive`` in the
wire format), a drop that rejects a pending call at once, 1008 without retry, and a server
restart the client rides through with backoff. Also: the ETag, ``304`` and package data.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from helpers import require_tool
from test_typing import wheel as built_wheel  # the module fixture that builds the wheel

from wsflask import App

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "browser"
STEP = 30.0
UNKNOWN = 'unknown event "nosuch"'
THROWN = "handler failed on purpose"


@pytest.fixture(scope="module")
def node_ws() -> str:
    """``node`` and the pinned ``ws`` package in tests/browser/node_modules."""
    node = require_tool("node", "apt-get install -y nodejs npm")
    if not (DRIVER / "node_modules" / "ws").is_dir():
        npm = require_tool("npm", "apt-get install -y npm")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=DRIVER, check=True, timeout=300)
    return node


class Lines:
    """A child's stdout lines, read by a thread into a queue (so each wait has a deadline)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def next_step(self) -> dict[str, Any]:
        line = self.queue.get(timeout=STEP)
        assert line is not None, f"the node client exited: {self.proc.wait(STEP)}"
        step: dict[str, Any] = json.loads(line)
        return step

    def until(self, name: str) -> dict[str, Any]:
        while (step := self.next_step())["step"] != name:
            pass
        return step


def test_js_client_against_a_real_server(node_ws: str, wsflask_run: Any) -> None:
    server = wsflask_run(script="tests/browser/js_app.py", env={"WSFLASK_PORT": "0"})
    port = server.wait_serving()
    proc = subprocess.Popen(
        [node_ws, "js_client.mjs", f"http://127.0.0.1:{port}"],
        cwd=DRIVER,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = Lines(proc)
        lines.until("restart")
        assert server.stop() == 0
        attempts = 0
        while attempts < 3:  # the client keeps retrying while nothing listens
            attempts = lines.until("reconnect")["attempt"]
        restarted = wsflask_run(script="tests/browser/js_app.py", env={"WSFLASK_PORT": str(port)})
        restarted.wait_serving()
        result = lines.until("done")
        assert proc.wait(timeout=STEP) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate(timeout=STEP)[1]
        lines.thread.join(timeout=STEP)
    assert stderr == ""

    served = result["served"]
    assert served["status"] == 200 and served["type"] == "text/javascript; charset=utf-8"
    assert served["revalidated"] == 304
    assert result["firstOpen"] == {"reconnected": False}
    assert result["emitted"] is True and result["shouted"] == "HELLO"
    assert result["sum"] == 5
    assert result["failed"]["name"] == "CallError" and result["failed"]["type"] == "ValueError"
    # rejected, not resolved by the late answer (1.5 s); Node timers may fire 1 ms early
    assert result["timedOut"]["type"] == "Timeout" and result["timeoutMs"] >= 190
    # a drop rejects a pending call at once, not after its 60 s timeout; then it reconnects
    assert result["dropped"]["type"] == "Disconnected" and result["dropMs"] < 5000
    assert result["dropClose"] == {
        "code": 1001,
        "reason": "dropped on purpose",
        "deliberate": False,
        "willReconnect": True,
    }
    assert result["reopened"] == {"reconnected": True}
    assert result["sumAfterDrop"] == 42
    # the server called the client: an ack, an unknown event, a throwing handler
    assert result["replies"] == [
        {"event": "ack", "id": "s1", "data": 2},
        {"event": "error", "id": "s2", "data": {"type": "UnknownEvent", "message": UNKNOWN}},
        {"event": "error", "id": "s3", "data": {"type": "TypeError", "message": THROWN}},
    ]
    assert result["deliberate"]["deliberate"] is True
    assert result["deliberate"]["willReconnect"] is False
    assert result["refusedClose"]["code"] == 1008
    assert result["refusedClose"]["willReconnect"] is False
    assert result["refusedReconnects"] == 0 and result["refusedTimer"] is None
    # the restart: a call while down fails at once; delays grow and stay under the cap
    assert result["restartClose"]["code"] == 1001 and result["restartClose"]["willReconnect"]
    assert result["whileDown"]["type"] == "NotConnected"
    assert result["restartOpen"] == {"reconnected": True}
    reconnects = result["restartReconnects"]
    assert [r["attempt"] for r in reconnects] == list(range(1, len(reconnects) + 1))
    assert len(reconnects) >= 3
    for info in reconnects:
        assert 0 <= info["delay"] <= min(800, 100 * 2 ** (info["attempt"] - 1))
    assert result["sumAfterRestart"] == 3


def test_client_files_are_served_with_etag_and_304() -> None:
    app = App()
    with app.test_client(timeout=10) as client:
        js = client.get("/wsflask.js")
        assert js.status == 200 and js.headers["cache-control"] == "no-cache"
        assert js.body == (ROOT / "wsflask" / "static" / "wsflask.js").read_bytes()
        etag = js.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"')
        for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            again = client.get("/wsflask.js", headers=[("If-None-Match", header)])
            assert again.status == 304 and again.body == b"", header
            assert again.headers["etag"] == etag
        assert client.get("/wsflask.js", headers=[("If-None-Match", '"other"')]).status == 200
        types = client.get("/wsflask.d.ts")
        assert types.status == 200 and b"export declare function connect" in types.body
        assert types.headers["etag"] != etag


wheel = built_wheel


def test_the_wheel_ships_the_client(wheel: Path) -> None:
    """``/wsflask.js`` works from an installed wheel: the files are package data."""
    with zipfile.ZipFile(wheel) as archive:
        for name in ("wsflask.js", "wsflask.d.ts"):
            shipped = archive.read(f"wsflask/static/{name}")
            assert shipped == (ROOT / "wsflask" / "static" / name).read_bytes(), name
