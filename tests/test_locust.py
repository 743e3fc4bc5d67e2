"""A 5-second headless locust run of loadtests/ against the chat example, both in subprocesses.

This process never imports ``wsflask.locust`` (locust monkey-patches on import). The run's
CSV must show every row with requests, no failures and non-zero response times: real round
trips, not the 0 ms a fire-and-forget user would log.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import subprocess

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0

SERVER = """
import sys
from gevent import monkey; monkey.patch_all()
sys.path.insert(0, sys.argv[1])
from examples.chat import app
server = app.make_server("127.0.0.1", 0)
server.start()
print("PORT", server.server_port, flush=True)
server.install_signal_handlers()
server.serve_forever()
"""


@pytest.fixture
def chat_server() -> Iterator[int]:
    """examples/chat.py in a subprocess on a free port; stopped (SIGTERM, then kill)."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        with gevent.Timeout(WAIT, TimeoutError("the chat server did not start")):
            line = process.stdout.readline()
        found = re.match(r"PORT (\d+)", line)
        assert found, f"unexpected output: {line!r}"
        yield int(found[1])
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)


def test_headless_locust_run_records_real_round_trips(chat_server: int, tmp_path: Path) -> None:
    locustfiles = f"{ROOT}/loadtests/locustfile_chat.py,{ROOT}/loadtests/locustfile_echo.py"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            locustfiles,
            "--headless",
            "-u",
            "6",
            "-r",
            "6",
            "-t",
            "5s",
            "--stop-timeout",
            "5",
            "--host",
            f"ws://127.0.0.1:{chat_server}",
            "--csv",
            str(tmp_path / "run"),
            "--only-summary",
            "--loglevel",
            "WARNING",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)
    assert process.returncode == 0, output
    rows = _stats(tmp_path / "run_stats.csv")
    assert set(rows) >= {"connect", "say", "fanout said", "echo"}, output
    for name, row in rows.items():
        assert row["Type"] == "WS"
        assert int(row["Request Count"]) > 0, name
        assert int(row["Failure Count"]) == 0, (name, output)
        assert float(row["Average Response Time"]) > 0, name
    assert int(rows["fanout said"]["Request Count"]) >= int(rows["say"]["Request Count"])


def _stats(path: Path) -> dict[str, Any]:
    with path.open(newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle) if row["Name"] != "Aggregated"}
