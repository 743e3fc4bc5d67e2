"""The JavaScript client recovers a recoverable room by itself, in a real browser.

``tests/browser/recovery_app.py`` serves a page (``tests/browser/recovery.html``) whose
``/wsflask.js`` socket joins one room while a greenlet of the server emits numbered events to
it; ``tests/browser/recovery.mjs`` drives Debian's chromium, headless, through
playwright-core, has the server cut the page's TCP connection mid-flow (no Close frame: the
page sees 1006), and reads back the page's list from the DOM and the ``recovery`` events
the page was given. Recoverable: every number exactly once, in order, each rejoin
``recovered: true``; an offset gap in live traffic also makes the client recover.
Unrecoverable (3 publications kept, hundreds of ms offline): ``recovered: false`` with
``too_many``, no partial replay, live traffic after it. Needs ``node`` and
``/usr/bin/chromium`` (``require_tool``: a failure with CI=true).

``tests/browser/recovery_unit.mjs`` checks the client's bookkeeping in Node against a
scripted WebSocket, for what a real server never sends: copies, ``unavailable``, ``_gap``
notices, more than 128 rooms, and ``recover: false``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from itertools import pairwise
from pathlib import Path
from typing import Any

from helpers import require_tool
from test_browser import playwright_core as playwright_core  # the module fixture (npm ci)

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "browser"
ABNORMAL = 1006  # RFC 6455 §7.1.5: the connection closed without a Close frame


def drive(wsflask_run: Any, tmp_path: Path, case: str) -> dict[str, Any]:
    """Serve recovery_app.py, run ``recovery.mjs`` for ``case``, return what it saw."""
    server = wsflask_run(script="tests/browser/recovery_app.py", env={"WSFLASK_PORT": "0"})
    port = server.wait_serving()
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, "recovery.mjs", f"http://127.0.0.1:{port}", str(tmp_path / "profile"), case],
        cwd=DRIVER, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"driver failed:\n{done.stderr[-4000:]}\n{server.log[-4000:]}"
    seen: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert seen["step"] == "done"
    assert seen["problems"] == [], "console errors or page errors in the browser"
    assert server.stop() == 0
    return seen


def first_join(seen: dict[str, Any], room: str) -> str:
    """The first ``recovery`` event: a join that asked nothing; returns the room's epoch."""
    first = seen["recoveries"][0]
    assert first["room"] == room and first["recovered"] is False and first["reason"] is None
    assert first["offset"] == 0 and "recover=" not in seen["urls"][0]
    epoch: str = first["epoch"]
    assert len(epoch) == 8
    return epoch


def test_page_sees_every_message_once_across_cuts_and_a_gap(
    playwright_core: Path, wsflask_run: Any, tmp_path: Path
) -> None:
    seen = drive(wsflask_run, tmp_path, "whole")
    epoch = first_join(seen, "whole:a")

    assert seen["log"] == list(range(1, 322))  # the page's list: each number once, in order
    assert seen["kicked"] == [1, 1, 1]
    # three cuts (1006, no Close frame), then the client's own reconnect at the gap
    cuts, resume = seen["closes"][:3], seen["closes"][3:]
    for close in cuts:
        assert close == {"code": ABNORMAL, "reason": "", "deliberate": False,
                         "willReconnect": True}  # fmt: skip
    assert len(resume) == 1 and resume[0]["code"] == 1000 and resume[0]["willReconnect"]
    assert resume[0]["reason"].startswith("offset gap in whole:a: 304 then 306")
    assert (seen["gaps"], seen["duplicates"]) == (1, 0)

    rejoins = seen["recoveries"][1:]
    assert len(rejoins) == 4 and len(seen["urls"]) == 5
    for info, url in zip(rejoins, seen["urls"][1:], strict=True):
        assert info["recovered"] is True and info["reason"] is None, info
        assert info["epoch"] == epoch and info["replayed"] >= 1, info  # missed, then replayed
        assert "recover=" in url  # the position was presented
    assert rejoins[3]["replayed"] >= 2  # 305 (kept from the page) and 306 (dropped by it)
    assert seen["positions"] == {"whole:a": {"offset": 321, "epoch": epoch}}
    assert len(seen["shownRecoveries"]) == 5


def test_page_is_told_when_the_position_is_unrecoverable(
    playwright_core: Path, wsflask_run: Any, tmp_path: Path
) -> None:
    seen = drive(wsflask_run, tmp_path, "tiny")
    epoch = first_join(seen, "tiny:b")

    assert seen["kicked"] == [1]
    assert seen["closes"] == [{"code": ABNORMAL, "reason": "", "deliberate": False,
                               "willReconnect": True}]  # fmt: skip
    (answer,) = seen["recoveries"][1:]
    assert answer["room"] == "tiny:b" and answer["epoch"] == epoch
    assert (answer["recovered"], answer["reason"]) == (False, "too_many")
    assert "replayed" not in answer and "recover=" in seen["urls"][1]

    log = seen["log"]
    assert log == sorted(set(log)) and log[0] == 1 and log[-1] == 200  # no copy, in order
    holes = [(a, b) for a, b in pairwise(log) if b != a + 1]
    assert len(holes) == 1  # the outage, and nothing of it replayed (never a partial replay)
    before, after = holes[0]
    assert after - before - 1 > 3  # more missed than the 3 kept: too_many, as answered
    assert after == answer["offset"] + 1  # live traffic resumes right after the answer's top
    assert (seen["gaps"], seen["duplicates"]) == (0, 0)


UNIT_CHECKS = [
    "savedPositionsArePresentedFirst", "noPositionNoParameter", "replayThenCopiesDropped",
    "unrecoverableAnswerResetsThePosition", "unavailableKeepsThePosition",
    "offsetGapReconnectsAndPresents", "gapNoticeOfAKnownRoomReconnects",
    "dropPresentsOnTheNextConnection", "atMost128RoomsPresented", "turnedOff",
    "withoutReconnectAGapIsOnlyCounted", "aSkipMovesThePositionAndIsNotShown",
]  # fmt: skip


def test_client_bookkeeping_against_a_scripted_socket() -> None:
    node = require_tool("node", "apt-get install -y nodejs")
    done = subprocess.run(
        [node, "recovery_unit.mjs"], cwd=DRIVER, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"passed": UNIT_CHECKS}
