"""Live reload (seed-audit-2 item 21): SIGHUP re-reads the settings without dropping anyone.

In process: ``reload.reload()`` applies a raised ``max_message_size`` to new connections and
to an open one, keeps the old settings on an invalid file, and reports settings that need a
restart. Over a real ``wsflask run`` child: the same through SIGHUP and the CLI (the audit's
acceptance: 1500 bytes on the connection opened under 1000). Lowered limits, timeouts, TLS
files and ``--workers``: ``test_reload_live.py``.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wsflask import App
from wsflask.client import connect
from wsflask.config import Config, load_toml
from wsflask.errors import ConnectionClosed
from wsflask.protocol import CloseCode
from wsflask.reload import reload
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")


def loader(path: Path, base: Config) -> Any:
    return lambda: Config.from_mapping(load_toml(path), base=base)


def roundtrip(port: int, size: int) -> tuple[int | None, object]:
    """Send ``size`` bytes on a new connection, close it; return (close code, echo or None)."""
    ws = connect(f"ws://127.0.0.1:{port}/", timeout=5)
    try:
        ws.send("x" * size)
        answer = ws.receive(timeout=5)
    except ConnectionClosed:
        answer = None
    ws.close()
    return ws.close_code, answer


def test_reload_applies_limits_keeps_connections_and_reports_restarts(
    app_factory: Callable[..., App], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsflask.reload")
    base = Config(port=0, max_message_size=1000, close_timeout=1.0, shutdown_grace=1.0)
    app = app_factory(config=base)

    @app.route("/")
    def echo(ws: WebSocket) -> None:
        for message in ws:
            ws.send(message)

    server = app.make_server()
    server.start()
    port = server.server_port
    assert roundtrip(port, 1500)[0] == CloseCode.TOO_BIG
    kept = connect(f"ws://127.0.0.1:{port}/", timeout=5)
    settings = tmp_path / "wsflask.toml"
    settings.write_text("max_message_size = 2000\nping_interval = 5\nport = 9999\n")
    outcome = reload(app, loader(settings, base))
    assert outcome.error is None
    assert sorted(outcome.applied) == ["max_message_size", "ping_interval"]
    assert outcome.restart_required == ["port"]
    assert app.config.max_message_size == 2000 and app.config.port == 0
    assert app.heartbeat.interval == 5
    assert roundtrip(port, 1500) == (CloseCode.NORMAL, "x" * 1500)
    kept.send("k" * 1500)  # opened under 1000: the raised limit reached it too
    assert kept.receive(timeout=5) == "k" * 1500
    assert any("restart required" in r.getMessage() for r in caplog.records)

    settings.write_text("max_message_size = -5\n")
    failed = reload(app, loader(settings, base))
    assert failed.error is not None and "max_message_size" in failed.error
    assert app.config.max_message_size == 2000
    assert any(r.levelno == logging.ERROR and "old settings stay" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    kept.close()


def test_sighup_reloads_limits_without_dropping_connections(
    wsflask_run: Any, tmp_path: Path
) -> None:
    settings = tmp_path / "wsflask.toml"
    settings.write_text("max_message_size = 1000\n")
    proc = wsflask_run("examples.echo:app", "--port", "0", "--config", str(settings))
    port = proc.wait_serving()
    kept = connect(f"ws://127.0.0.1:{port}/echo", timeout=10)
    kept.send("before")
    assert kept.receive(timeout=10) == "before"
    settings.write_text("max_message_size = 2000\nread_size = 4096\n")  # a flag keeps port
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for_log(r"settings reloaded; changed: max_message_size")
    assert "restart required to change: read_size" in proc.log
    big = connect(f"ws://127.0.0.1:{port}/echo", timeout=10)
    big.send("y" * 1500)
    assert big.receive(timeout=10) == "y" * 1500
    big.close()
    kept.send("z" * 1500)  # the same connection, opened under 1000 (audit item 21)
    assert kept.receive(timeout=10) == "z" * 1500
    settings.write_text("max_message_size = [\n")  # not TOML
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for_log(r"reload failed, the old settings stay")
    kept.send("still")
    assert kept.receive(timeout=10) == "still"
    kept.close()
