"""Autobahn TestSuite conformance (through kosoku) as part of ``make test``.

Runs ``tests/autobahn/run.py`` in a child process (its own process group): it normalises
kosoku 0.1.0's compression case file, starts the conformance echo server, runs every case
with ``kosoku -p 4`` and compares the verdicts with ``tests/autobahn/expected.json``. The test
passes when the runner does: no case FAILED and none worse than expected. The runner's
one-line summary is printed even when pytest captures output.

By default the long permessage-deflate cases are left out (373 of 517 cases, about 45 s);
``AUTOBAHN_FULL=1`` runs all 517 (about 10 minutes on 2 cores). Deselect the test with
``pytest -m "not autobahn"``. The run is bounded (``RUN_TIMEOUT``); on timeout or failure
every process the runner started is stopped (SIGTERM to its group, then SIGKILL). Reports:
build/autobahn/index.html; how to read them: the README's conformance section.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent / "autobahn" / "run.py"
FULL = os.environ.get("AUTOBAHN_FULL", "") not in ("", "0")
#: Bound on the whole run: waiting for a concurrent run (300 s at most), one restart if
#: kosoku stalls, a few retried cases. Typical: 45 s (default), 630 s (full).
RUN_TIMEOUT = 3000.0 if FULL else 900.0

pytestmark = [pytest.mark.autobahn, pytest.mark.timeout(RUN_TIMEOUT + 60)]


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the runner's process group (it stops its server and kosoku), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def test_autobahn_conformance(capsys: pytest.CaptureFixture[str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(RUNNER), *(["--full"] if FULL else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group: a timeout stops the server and kosoku too
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        output, _ = proc.communicate()
        pytest.fail(f"the Autobahn run did not finish within {RUN_TIMEOUT} s:\n{output}")
    finally:
        _stop_group(proc)
    summary = [
        line for line in output.splitlines() if line.startswith("autobahn: ") and " cases, " in line
    ]
    with capsys.disabled():
        print("\n" + (summary[-1] if summary else "autobahn: no summary line"))
    assert proc.returncode == 0, output
    assert summary and " 0 FAILED" in summary[-1], output
