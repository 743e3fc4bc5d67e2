"""Live reload reaches open connections (seed-audit-2 item 21), in one process and in workers.

``reload.reload()`` (what the SIGHUP handler runs) lowers ``max_message_size`` and the next
message over it on an already-open connection is closed with 1009 while the others keep
echoing; a fragmented message in progress is held to the new budget; a reloaded
``fragment_timeout`` and message rate reach open connections; changed TLS files serve new
handshakes while TLS connections stay; an invalid file keeps the old settings. Then the same
through ``wsflask run --workers 2`` and SIGHUP to the supervisor, over real sockets, and a
worker restarted after the reload starts with the reloaded settings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import require_tool, wait_until

from wsflask import App
from wsflask.client import connect
from wsflask.config import Config, load_toml
from wsflask.protocol import CloseCode
from wsflask.protocol.close import parse_close
from wsflask.reload import reload
from wsflask.server import Server
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

FAST: dict[str, Any] = {"port": 0, "close_timeout": 1.0, "shutdown_grace": 1.0}


def loader(path: Path, base: Config) -> Callable[[], Config]:
    """What the CLI's SIGHUP handler reads: the file over the app's own settings."""
    return lambda: Config.from_mapping(load_toml(path), base=base)


def echo_server(app_factory: Callable[..., App], config: Config) -> tuple[App, Server]:
    app = app_factory(config=config)

    @app.route("/")
    def echo(ws: WebSocket) -> None:
        for message in ws:
            ws.send(message)

    server = app.make_server()
    server.start()
    return app, server


def echoes(ws: WebSocket, message: str) -> bool:
    ws.send(message)
    return ws.receive(timeout=5) == message


def test_a_lowered_max_message_size_closes_an_open_connection_with_1009(
    app_factory: Callable[..., App], tmp_path: Path
) -> None:
    base = Config(**FAST, max_message_size=2000)
    app, server = echo_server(app_factory, base)
    url = f"ws://127.0.0.1:{server.server_port}/"
    victim, kept = connect(url, timeout=5), connect(url, timeout=5)
    assert echoes(victim, "x" * 1500) and echoes(kept, "x" * 1500)
    settings = tmp_path / "wsflask.toml"
    settings.write_text("max_message_size = 1000\n")
    outcome = reload(app, loader(settings, base))
    assert (outcome.error, outcome.applied, outcome.connections) == (
        None, ["max_message_size"], 2
    )  # fmt: skip
    victim.send("y" * 1500)  # the SAME connection, opened under 2000
    assert victim.receive(timeout=5) is None
    assert victim.close_code == CloseCode.TOO_BIG
    assert echoes(kept, "z" * 1000)  # open across the reload, held to the new limit
    wait_until(lambda: len(server.connections) == 1, timeout=5)
    settings.write_text("max_message_size = [\n")  # not TOML: the old settings stay
    assert reload(app, loader(settings, base)).error is not None
    assert app.config.max_message_size == 1000 and echoes(kept, "z" * 1000)
    kept.send("w" * 1001)
    assert kept.receive(timeout=5) is None and kept.close_code == CloseCode.TOO_BIG


def test_a_fragmented_message_in_progress_is_held_to_the_new_budget(
    app_factory: Callable[..., App], tmp_path: Path, raw_peer: Callable[..., Any]
) -> None:
    base = Config(**FAST, max_message_size=4000, fragment_overhead=0)
    app, server = echo_server(app_factory, base)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    peer.send_frame(0x2, b"a" * 1500, fin=False)  # 1500 of 4000 used
    wait_until(lambda: any(ws.receiving_message for ws in server.connections), timeout=5)
    settings = tmp_path / "wsflask.toml"
    settings.write_text("max_message_size = 2000\n")
    assert reload(app, loader(settings, base)).error is None
    peer.send_frame(0x0, b"b" * 600, fin=True)  # 2100 in all: over the new 2000
    opcode, payload = peer.read_frame()
    assert opcode == 0x8 and parse_close(payload)[0] == CloseCode.TOO_BIG


def test_reloaded_fragment_timeout_and_message_rate_reach_open_connections(
    app_factory: Callable[..., App], tmp_path: Path, raw_peer: Callable[..., Any]
) -> None:
    base = Config(**FAST, fragment_timeout=1.0)  # ticks every 0.25 s until the reload
    app, server = echo_server(app_factory, base)
    stalled = raw_peer(server.server_port)
    assert stalled.request("/").startswith(b"HTTP/1.1 101")
    chatty = connect(f"ws://127.0.0.1:{server.server_port}/", timeout=5)
    assert echoes(chatty, "before")
    stalled.send_frame(0x1, b"never finished", fin=False)
    settings = tmp_path / "wsflask.toml"
    settings.write_text(
        "fragment_timeout = 0.2\nmax_messages_per_second = 0.01\nmessage_burst = 1\n"
    )
    outcome = reload(app, loader(settings, base))
    assert sorted(outcome.applied) == [
        "fragment_timeout", "max_messages_per_second", "message_burst"
    ]  # fmt: skip
    opcode, payload = stalled.read_frame(timeout=5)  # 0.2 s after the first tick saw it
    assert opcode == 0x8 and parse_close(payload) == (
        CloseCode.POLICY,
        "message not finished in time",
    )
    assert echoes(chatty, "one")  # the burst of 1
    chatty.send("two")
    assert chatty.receive(timeout=5) is None
    assert (chatty.close_code, chatty.close_reason) == (CloseCode.POLICY, "message rate exceeded")


def make_certificate(directory: Path, name: str) -> tuple[str, str]:
    require_tool("openssl", "apt-get install -y openssl")
    cert, key = str(directory / f"{name}.pem"), str(directory / f"{name}.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
         "-out", cert, "-days", "1", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_new_certificate_files_serve_new_handshakes_and_tls_connections_stay(
    app_factory: Callable[..., App], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_cert, old_key = make_certificate(tmp_path, "old")
    new_cert, new_key = make_certificate(tmp_path, "new")
    base = Config(**FAST)  # the app's own settings; the file adds TLS
    settings = tmp_path / "wsflask.toml"
    settings.write_text(f'certfile = "{old_cert}"\nkeyfile = "{old_key}"\n')
    app, server = echo_server(app_factory, loader(settings, base)())
    url = f"wss://127.0.0.1:{server.server_port}/"
    trusts_old = ssl.create_default_context(cafile=old_cert)
    trusts_new = ssl.create_default_context(cafile=new_cert)
    existing = connect(url, ssl_context=trusts_old, timeout=5)
    settings.write_text(f'certfile = "{tmp_path}/missing.pem"\nkeyfile = "{new_key}"\n')
    failed = reload(app, loader(settings, base))  # a file that does not load: nothing changes
    assert failed.error is not None and "cannot be loaded" in failed.error
    assert app.config.certfile == old_cert
    settings.write_text(f'certfile = "{new_cert}"\nkeyfile = "{new_key}"\n')
    assert sorted(reload(app, loader(settings, base)).applied) == ["certfile", "keyfile"]
    connect(url, ssl_context=trusts_new, timeout=5).close()  # new handshakes: new certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(url, ssl_context=trusts_old, timeout=5)
    assert echoes(existing, "still up")  # the TLS session made before stays
    settings.write_text("")  # TLS off: a restart, not a reload
    assert reload(app, loader(settings, base)).restart_required == ["certfile", "keyfile"]
    assert app.config.certfile == new_cert and echoes(existing, "still up")
    existing.close()


# -- wsflask run --workers 2: SIGHUP to the supervisor ---------------------------------------

WORKER_ENV = {
    "WSFLASK_BACKPLANE_INTERVAL": "1.0",
    "WSFLASK_BACKPLANE_BACKOFF_MAX": "0.5",
    "WSFLASK_SHUTDOWN_GRACE": "3",
    "WSFLASK_CLOSE_TIMEOUT": "1",
}


def member(port: int) -> tuple[WebSocket, int]:
    """A new member of room ``t`` and the pid of the worker that serves it."""
    ws = connect(f"ws://127.0.0.1:{port}/r/t", timeout=10)
    return ws, int(json.loads(str(ws.receive(timeout=10)))["pid"])


def member_of(port: int, pid: int, attempts: int = 200) -> WebSocket:
    """Connect until worker ``pid`` serves the member (the kernel picks; bounded)."""
    for _ in range(attempts):
        ws, served_by = member(port)
        if served_by == pid:
            return ws
        ws.close()
    raise AssertionError(f"worker {pid} never got a connection")


def spread(port: int, attempts: int = 200) -> dict[int, list[WebSocket]]:
    """Connect to room ``t`` until two workers hold two members each (bounded)."""
    by_pid: dict[int, list[WebSocket]] = {}
    for _ in range(attempts):
        ws, pid = member(port)
        by_pid.setdefault(pid, []).append(ws)
        if len(by_pid) >= 2 and sorted(len(v) for v in by_pid.values())[-2] >= 2:
            return by_pid
    raise AssertionError(f"the kernel never spread members over the workers: {by_pid.keys()}")


def test_sighup_to_the_supervisor_reloads_open_connections_in_every_worker(
    redis_server: Any, wsflask_run: Any, tmp_path: Path
) -> None:
    settings = tmp_path / "wsflask.toml"
    settings.write_text("max_message_size = 2000\n")
    proc = wsflask_run(
        "tests.backplane_node:app", "--port", "0", "--workers", "2", "--config", str(settings),
        env={**WORKER_ENV, "WSFLASK_BACKPLANE": redis_server.url},
    )  # fmt: skip
    port = proc.wait_serving()
    by_pid = {pid: group for pid, group in spread(port).items() if len(group) >= 2}
    pids, groups = list(by_pid)[:2], list(by_pid.values())[:2]
    victims = [group[0] for group in groups]  # one per worker
    kept = [ws for group in groups for ws in group[1:]]
    everyone = victims + kept
    kept[0].send("x" * 1500)  # under the first limit: the room (both workers) gets it
    assert all(ws.receive(timeout=10) == "x" * 1500 for ws in everyone)
    settings.write_text("max_message_size = 1000\n")
    proc.proc.send_signal(signal.SIGHUP)
    for index in (0, 1):  # each worker logs its own outcome
        proc.wait_for_log(
            rf"worker {index} \(pid \d+\): settings reloaded; changed: max_message_size"
        )
    proc.wait_for_log(r"supervisor: settings reloaded; changed: max_message_size")
    assert "SIGHUP forwarded to workers" in proc.log
    for ws in victims:  # opened under 2000, on either worker
        ws.send("y" * 1500)
        assert ws.receive(timeout=10) is None and ws.close_code == CloseCode.TOO_BIG
    kept[-1].send("after")  # nobody else was dropped, on either worker
    assert all(ws.receive(timeout=10) == "after" for ws in kept)
    crashed = pids[0]  # a worker restarted after the reload starts with the new settings
    os.kill(crashed, signal.SIGKILL)
    wait_until(lambda: len(re.findall(r"started \(pid (\d+)\)", proc.log)) >= 3, 30)
    restarted = int(re.findall(r"started \(pid (\d+)\)", proc.log)[-1])
    fresh = member_of(port, restarted)
    fresh.send("y" * 1500)
    assert fresh.receive(timeout=10) is None and fresh.close_code == CloseCode.TOO_BIG
    for ws in kept:
        ws.close()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait_exit(timeout=30) == 0, proc.log
    assert proc.log.count("exited with signal") == 1  # only the one killed on purpose
