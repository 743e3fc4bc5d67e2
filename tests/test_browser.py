"""The chat example in a real browser: Debian's chromium, headless, driven by playwright-core.

``wsflask run examples.chat:app`` serves on 127.0.0.1:<ephemeral>; ``tests/browser/chat.mjs``
opens two pages in one room (one sends, the other must show it; a ``/nick`` call shows its
ack), then asks for a server restart (this test restarts it on the same port; both pages
must reconnect on their own and chat again), then the dashboard (its canvas must hold drawn
series); it saves screenshots under ``build/screenshots/`` and prints what it saw as JSON.
Needs ``node`` and ``/usr/bin/chromium`` (``require_tool``); playwright-core is installed
from ``tests/browser/package-lock.json`` (``npm ci``) when ``node_modules`` is absent.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "browser"
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def playwright_core() -> Path:
    """tests/browser/node_modules with the pinned playwright-core (``npm ci`` if needed)."""
    require_tool("node", "apt-get install -y nodejs npm")
    require_tool(str(CHROMIUM), "apt-get install -y chromium")
    if not (DRIVER / "node_modules" / "playwright-core").is_dir():
        npm = shutil.which("npm")
        assert npm, "npm is missing: apt-get install -y npm (needed once for playwright-core)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=DRIVER, check=True, timeout=300)
    return DRIVER / "node_modules"


def run_driver(base: str, tmp_path: Path, restart: Callable[[], None]) -> dict[str, Any]:
    """Run chat.mjs; call ``restart()`` when it asks; its last line is what it saw."""
    assert NODE is not None
    proc = subprocess.Popen(
        [NODE, "chat.mjs", base, str(SHOTS), str(tmp_path / "profile")],
        cwd=DRIVER,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while True:
            line = lines.get(timeout=180)
            assert line is not None, f"driver failed:\n{proc.communicate(timeout=30)[1]}"
            step: dict[str, Any] = json.loads(line)
            if step["step"] == "restart":
                restart()
            elif step["step"] == "done":
                break
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        reader.join(timeout=30)
    return step


def test_two_pages_chat_restart_and_the_dashboard_draws(
    playwright_core: Path, wsflask_run: Any, tmp_path: Path
) -> None:
    server = wsflask_run("examples.chat:app", "--host", "127.0.0.1", "--port", "0")
    port = server.wait_serving()
    servers = [server]

    def restart() -> None:
        assert servers[-1].stop() == 0
        again = wsflask_run("examples.chat:app", "--host", "127.0.0.1", "--port", str(port))
        again.wait_serving()
        servers.append(again)

    seen = run_driver(f"http://127.0.0.1:{port}", tmp_path, restart)

    assert seen["problems"] == [], "console errors or page errors in the browser"
    assert seen["received"] == "hello from bob" and seen["receivedNick"] == "bob"
    assert seen["bobSeesOwn"] == "hello from bob"
    # chromium always offers permessage-deflate; our server accepts it (compression=True)
    assert seen["extensions"].startswith("permessage-deflate"), seen.get("extensions")
    assert sorted(seen["aliceMembers"]) == ["Aalice (you)", "Bbob"]  # avatar letter + name
    assert seen["latency"].endswith(" ms")
    assert seen["afterRestart"] == "still here after the restart"
    assert set(seen["refusedWhileDown"]) <= {"alice", "bob", "dashboard"}  # logged retries
    assert sorted(seen["aliceMembersAfterRestart"]) == ["Aalice (you)", "Rrobert"]
    assert len(servers) == 2
    assert seen["points"] >= 3
    assert seen["connectionPixels"] > 20, "the connections chart drew no line"
    assert seen["ratePixels"] > 20, "the messages/s chart drew no line"
    assert int(seen["statConnections"]) >= 3
    assert "#e2e2" in seen["rooms"]  # room name + member count
    shots = ("chat-alice.png", "chat-bob.png", "chat-retrying.png", "chat-reconnected.png")
    for name in (*shots, "dashboard.png", "chat-mobile.png", "join.png"):
        data = (SHOTS / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name
    servers[-1].stop()
    assert "route=/chat/e2e" in servers[0].log and "route=/dashboard/feed" in servers[1].log
