"""The chat example in a real browser: Debian's chromium, headless, driven by playwright-core.

``wsflask run examples.chat:app`` serves on 127.0.0.1:<ephemeral>; ``tests/browser/chat.mjs``
opens two pages in one room (one sends, the other must show it) and the dashboard (its canvas
must hold drawn series), saves screenshots under ``build/screenshots/`` and prints what it saw
as JSON. Needs ``node`` and ``/usr/bin/chromium`` (``require_tool``); playwright-core is
installed from ``tests/browser/package-lock.json`` (``npm ci``) when ``node_modules`` is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
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


def run_driver(base: str, tmp_path: Path) -> dict[str, Any]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "chat.mjs", base, str(SHOTS), str(tmp_path / "profile")],
        cwd=DRIVER,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"driver failed:\n{done.stderr}\n{done.stdout}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_two_pages_chat_and_the_dashboard_draws(
    playwright_core: Path, wsflask_run: Any, tmp_path: Path
) -> None:
    server = wsflask_run("examples.chat:app", "--host", "127.0.0.1", "--port", "0")
    port = server.wait_serving()
    seen = run_driver(f"http://127.0.0.1:{port}", tmp_path)

    assert seen["problems"] == [], "console errors or page errors in the browser"
    assert seen["received"] == "hello from bob" and seen["receivedNick"] == "bob"
    assert seen["bobSeesOwn"] == "hello from bob"
    # chromium always offers permessage-deflate; our server accepts it (compression=True)
    assert seen["extensions"].startswith("permessage-deflate"), seen.get("extensions")
    assert sorted(seen["aliceMembers"]) == ["Aalice (you)", "Bbob"]  # avatar letter + name
    assert seen["points"] >= 3
    assert seen["connectionPixels"] > 20, "the connections chart drew no line"
    assert seen["ratePixels"] > 20, "the messages/s chart drew no line"
    assert int(seen["statConnections"]) >= 3
    assert "#e2e2" in seen["rooms"]  # room name + member count
    for name in ("chat-alice.png", "chat-bob.png", "dashboard.png", "chat-mobile.png", "join.png"):
        data = (SHOTS / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name
    server.stop()
    assert "route=/chat/e2e" in server.log and "route=/dashboard/feed" in server.log
