"""gunicorn with ``-k wsflask.gunicorn.GeventWorker``: Flask pages and WebSockets, then SIGTERM.

gunicorn runs in a subprocess on 127.0.0.1:0 (the port is read from its log); the fixture
kills it if the test fails before it exits by itself.
"""

from __future__ import annotations

import re
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gunicorn as _gunicorn  # type: ignore[import-untyped]  # noqa: F401 - needed, never skipped
import pytest
from gevent import subprocess

from wsflask import connect

WAIT = 20.0

APP = """
from flask import Flask
from wsflask import App

flask_app = Flask(__name__)
ws_app = App(close_timeout=2.0)
room = ws_app.route("/chat")


@flask_app.route("/")
def index():
    return "flask page"


@room.on("connect")
def joined(ws):
    ws_app.rooms.join("room", ws)


@room.on("message")
def said(ws, data):
    ws_app.send(data, to="room")


flask_app.wsgi_app = ws_app.wsgi_middleware(flask_app.wsgi_app)
"""


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[Any, int]]:
    """Start gunicorn on a free port; yield ``(process, port)``; kill it if still running."""
    (tmp_path / "gapp.py").write_text(textwrap.dedent(APP))
    log = tmp_path / "gunicorn.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "wsflask.gunicorn.GeventWorker",
            "-b",
            "127.0.0.1:0",
            "-w",
            "1",
            "--graceful-timeout",
            "10",
            "--no-control-socket",
            "--chdir",
            str(tmp_path),
            "--error-logfile",
            str(log),
            "gapp:flask_app",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process, _wait_for_port(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)


def _wait_for_port(process: Any, log: Path) -> int:
    """Poll gunicorn's log (bounded) until the worker booted; return the bound port."""
    with gevent.Timeout(WAIT, TimeoutError("gunicorn did not start")):
        while True:
            text = log.read_text() if log.exists() else ""
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
            if found and "Booting worker" in text:
                return int(found[1])
            assert process.poll() is None, f"gunicorn exited early:\n{text}"
            gevent.sleep(0.05)


def test_gunicorn_worker_serves_both_and_says_1001_on_sigterm(gunicorn: Any) -> None:
    process, port = gunicorn
    first = connect(f"ws://127.0.0.1:{port}/chat", timeout=WAIT)
    second = connect(f"ws://127.0.0.1:{port}/chat", timeout=WAIT)
    first.send("hello from one")
    assert first.receive(timeout=WAIT) == "hello from one"
    assert second.receive(timeout=WAIT) == "hello from one"
    second.send("hi from two")
    assert first.receive(timeout=WAIT) == "hi from two"
    assert second.receive(timeout=WAIT) == "hi from two"
    page = _http_get(port)
    assert page.startswith(b"HTTP/1.1 200") and page.endswith(b"flask page")

    process.send_signal(signal.SIGTERM)
    for ws in (first, second):
        assert ws.receive(timeout=WAIT) is None
        assert (ws.close_code, ws.close_reason) == (1001, "going away")
    assert process.wait(timeout=WAIT) == 0


def _http_get(port: int) -> bytes:
    import gevent.socket

    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        with gevent.Timeout(WAIT):
            while chunk := sock.recv(65536):
                data += chunk
        return data
    finally:
        sock.close()
