"""The ``wsflask`` command: settings precedence, ``config check``/``default``, ``run`` (SIGTERM
drain, /metrics, /healthz, /readyz, access logs) and ``client``, the last two as subprocesses."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from conftest import WsflaskProcess

import wsflask.server
from wsflask import App, Config, connect
from wsflask.cli import collect_settings, main, render_default_toml
from wsflask.config import load_toml
from wsflask.errors import ConfigError
from wsflask.logs import JSONFormatter, TextFormatter, setup
from wsflask.protocol import speedups_active

ROOT = Path(__file__).resolve().parent.parent
Run = Callable[..., Any]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- settings: file < env < flags -----------------------------------------------------------------


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.toml",
        "port = 9001\nping_interval = 3\nmax_message_size = 4096\n"
        'allowed_origins = ["https://a.example"]\n[log]\nformat = "json"\n',
    )
    environ = {
        "WSFLASK_PORT": "9002",
        "WSFLASK_MAX_MESSAGE_SIZE": "2048",
        "WSFLASK_LOG_LEVEL": "debug",
        "OTHER": "x",
    }
    settings = collect_settings(
        path, environ, {"port": 9003, "host": None, "log_format": "text", "log_level": None}
    )
    base = Config(close_timeout=2.0, ping_interval=7.0)  # the app's own settings
    config = settings.apply(base)
    assert config.port == 9003  # flag over env over file
    assert config.max_message_size == 2048  # env over file
    assert config.ping_interval == 3.0  # file over the app's own value
    assert config.close_timeout == 2.0  # untouched: the app's value stays
    assert config.allowed_origins == ("https://a.example",)  # TOML array -> tuple
    assert (settings.log_format, settings.log_level) == ("text", "debug")


def test_settings_errors_name_the_source(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "port = 70000\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: port=70000 is out of range: allowed 0"):
        collect_settings(path, {}, {})
    with pytest.raises(ConfigError, match="WSFLASK_PORT='x'"):
        collect_settings(None, {"WSFLASK_PORT": "x"}, {})


def test_run_layers_file_env_and_flags(wsflask_run: Run, tmp_path: Path) -> None:
    """port: file 1 < env 2 < flag 0 (ephemeral); max_message_size: file 100 < env 200."""
    path = write(tmp_path / "s.toml", "port = 1\nmax_message_size = 100\n")
    proc = wsflask_run(
        "examples.echo:app",
        "--config",
        path,
        "--port",
        "0",
        env={"WSFLASK_PORT": "2", "WSFLASK_MAX_MESSAGE_SIZE": "200"},
    )
    port = proc.wait_serving()
    assert port not in (1, 2, 8080)
    ws = connect(f"ws://127.0.0.1:{port}/echo", timeout=10)
    ws.send("x" * 150)  # over the file's limit, under the environment's
    assert ws.receive(timeout=10) == "x" * 150
    ws.send("x" * 250)
    assert ws.receive(timeout=10) is None
    assert ws.close_code == 1009


# -- config check / config default ------------------------------------------------------------


def test_config_check_reports_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "bad.toml",
        'port = 70000\nmax_conections = 5\nping_interval = "x"\n'
        'backpressure_policy = "block"\n[log]\nformat = "xml"\n',
    )
    assert main(["config", "check", path]) == 1
    err = capsys.readouterr().err
    assert f"{path}: port=70000 is out of range: allowed 0 to 65535" in err
    assert "unknown setting 'max_conections' (did you mean 'max_connections'?)" in err
    assert "ping_interval='x' is invalid: expected a number" in err
    assert "backpressure_policy='block' is invalid: allowed 'close' or 'drop'" in err
    assert "log.format='xml' is invalid: allowed 'text' or 'json'" in err


def test_config_check_cross_field_unreadable_and_invalid_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", write(tmp_path / "k.toml", 'keyfile = "k.pem"\n')]) == 1
    assert "keyfile='k.pem' is set without certfile" in capsys.readouterr().err
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["config", "check", write(tmp_path / "t.toml", "port = = 1\n")]) == 1
    assert "is not valid TOML" in capsys.readouterr().err


def test_config_check_accepts_a_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "ok.toml", 'port = 9000\nallowed_origins = ["*"]\n[log]\nlevel = "warning"\n'
    )
    assert main(["config", "check", path]) == 0
    assert "OK (2 settings)" in capsys.readouterr().out


def test_config_default_is_valid_toml_with_every_key_documented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "default"]) == 0
    text = capsys.readouterr().out
    assert text == render_default_toml()
    path = write(tmp_path / "d.toml", text)
    data = load_toml(path)
    assert data.pop("log") == {"format": "text", "level": "INFO"}
    assert Config.from_mapping(data) == Config()
    lines = text.splitlines()
    for name in Config.__dataclass_fields__:
        at = next(
            i for i, line in enumerate(lines) if line.startswith((f"{name} = ", f"# {name} = "))
        )
        assert lines[at - 1].startswith("# "), f"{name} has no comment"
    assert main(["config", "check", path]) == 0
    assert re.findall(r"\b[A-Z]{2}-\d{2}\b", text) == []  # no internal test-battery ids


# -- logging ------------------------------------------------------------------------------------


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(
        "wsflask.access", logging.INFO, __file__, 1, "connection %s", ("close",), None
    )
    record.__dict__.update(extra)
    return record


def test_formatters_render_the_structured_fields() -> None:
    record = _record(
        id="1f", peer="127.0.0.1:5000", route="/chat/a b", duration=1.5, close_code=1000
    )
    line = JSONFormatter().format(record)
    body = json.loads(line)
    assert "\n" not in line
    assert body["msg"] == "connection close" and body["logger"] == "wsflask.access"
    assert (body["id"], body["peer"], body["route"]) == ("1f", "127.0.0.1:5000", "/chat/a b")
    assert (body["duration"], body["close_code"], body["level"]) == (1.5, 1000, "INFO")
    assert body["ts"].endswith("Z")
    text = TextFormatter().format(record)
    assert text.endswith(
        'connection close id=1f peer=127.0.0.1:5000 route="/chat/a b" duration=1.5 close_code=1000'
    )
    with pytest.raises(ValueError, match="log format 'xml'"):
        setup("xml")
    with pytest.raises(ValueError, match="log level 'loud'"):
        setup("text", "loud")


@pytest.fixture
def access_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    calls: list[tuple[Any, ...]] = []
    real = wsflask.server._log_access

    def spy(*args: Any) -> None:
        calls.append(args)
        real(*args)

    monkeypatch.setattr(wsflask.server, "_log_access", spy)
    logger = logging.getLogger("wsflask.access")
    level = logger.level
    yield calls
    logger.setLevel(level)


def _echo_once(app_factory: Callable[..., App]) -> None:
    app = app_factory()

    @app.route("/echo")
    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    with app.test_client() as client:
        ws = client.connect("/echo")
        ws.send("hi")
        assert client.receive(ws) == "hi"
        ws.close()


def test_access_log_costs_nothing_when_disabled(
    app_factory: Callable[..., App], access_calls: list[tuple[Any, ...]]
) -> None:
    logging.getLogger("wsflask.access").setLevel(logging.WARNING)
    _echo_once(app_factory)
    assert access_calls == []


def test_access_log_lines_when_enabled(
    app_factory: Callable[..., App],
    access_calls: list[tuple[Any, ...]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wsflask.access")
    _echo_once(app_factory)  # the client stops the server: the close line is written by then
    records = [r for r in caplog.records if r.name == "wsflask.access"]
    assert [r.getMessage() for r in records] == ["connection open", "connection close"]
    opened, closed = (r.__dict__ for r in records)
    assert opened["id"] == closed["id"] and opened["route"] == "/echo"
    assert opened["peer"].startswith("127.0.0.1:")
    assert closed["close_code"] == 1000 and closed["duration"] >= 0
    assert [call[0] for call in access_calls] == ["open", "close"]


# -- wsflask run: SIGTERM drain, metrics, health -----------------------------------------------


def get(port: int, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()


def test_sigterm_drains_with_1001_and_exits_0(wsflask_run: Run) -> None:
    proc = wsflask_run("examples.echo:app", "--port", "0", "--log-format", "json")
    port = proc.wait_serving()
    ws = connect(f"ws://127.0.0.1:{port}/echo", timeout=10)
    ws.send("still here")
    assert ws.receive(timeout=10) == "still here"
    proc.wait_for_log(r'"msg":"connection open"')
    proc.proc.send_signal(15)
    with gevent.Timeout(20):
        assert ws.receive(timeout=20) is None
    assert ws.close_code == 1001
    assert proc.wait_exit() == 0
    lines = [json.loads(line) for line in proc.log.splitlines() if line.strip()]
    closes = [line for line in lines if line["msg"] == "connection close"]
    assert len(closes) == 1 and closes[0]["close_code"] == 1001
    assert {"id", "peer", "route", "duration", "ts", "level"} <= set(closes[0])
    assert closes[0]["route"] == "/echo"
    assert any("draining" in line["msg"] for line in lines)
    path = "compiled" if speedups_active() else "pure Python"  # the child has our environment
    assert f"protocol speedups: {path}" in [line["msg"] for line in lines]


def test_metrics_healthz_readyz_and_plain_http(wsflask_run: Run) -> None:
    proc = wsflask_run("examples.chat:app", "--port", "0")
    port = proc.wait_serving()
    ws = connect(f"ws://127.0.0.1:{port}/echo", timeout=10)
    ws.send("one")
    assert ws.receive(timeout=10) == "one"
    ws.close()
    status, kind, body = get(port, "/metrics")
    assert status == 200 and kind.startswith("text/plain; version=0.0.4")
    for name, family in [
        ("websocket_connections_total", "counter"),
        ("websocket_message_rate_per_second", "gauge"),
        ("websocket_frame_parsing_duration_ms", "histogram"),
    ]:
        assert f"# TYPE {name} {family}" in body
    samples = dict(line.rsplit(" ", 1) for line in body.splitlines() if line[0] != "#")
    assert int(samples["websocket_connections_total"]) >= 1
    assert float(samples["websocket_message_rate_per_second"]) > 0
    assert int(samples["websocket_frame_parsing_duration_ms_count"]) >= 1
    assert get(port, "/healthz")[::2] == (200, "ok")
    assert get(port, "/readyz")[::2] == (200, "ready")
    assert get(port, "/no/such/page")[0] == 404
    status, _, body = get(port, "/chat/lobby")  # a WebSocket route without the upgrade
    assert status == 426


def test_run_refuses_what_is_not_an_app(wsflask_run: Run) -> None:
    missing = wsflask_run("no_such_module_xyz:app")
    assert missing.wait_exit() == 1
    assert "cannot import 'no_such_module_xyz': no such module" in missing.log
    wrong = wsflask_run("examples.echo:nothing")
    assert wrong.wait_exit() == 1
    assert "examples.echo:nothing is NoneType, not a wsflask App" in wrong.log


# -- wsflask client -----------------------------------------------------------------------------


class Client:
    """``python -m wsflask client ...`` with pipes; every read has a deadline."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsflask", "client", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._buffer = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def readline(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise AssertionError(f"no line within {timeout} s: {self._buffer!r}")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"stdout closed: {self._buffer!r}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def finish(self) -> tuple[int, str]:
        """Close stdin (EOF); return the exit code and stderr."""
        try:
            _, err = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode, err.decode()


@pytest.fixture
def client_cli() -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def start(*args: str) -> Client:
        clients.append(Client(*args))
        return clients[-1]

    yield start
    for client in clients:
        if client.proc.poll() is None:
            client.proc.kill()
            client.proc.wait(timeout=10)


WHOAMI_APP = """
from wsflask import App

app = App()


@app.route("/whoami", subprotocols=("chat.v1",))
def whoami(ws):
    ws.send(f"{ws.subprotocol} {ws.request.header('x-team')}")
    for message in ws:
        ws.send(message)
"""


def test_client_echoes_lines_and_exits_on_eof(
    wsflask_run: Run, client_cli: Callable[..., Client]
) -> None:
    port = wsflask_run("examples.echo:app", "--port", "0").wait_serving()
    client = client_cli(f"ws://127.0.0.1:{port}/echo", "--linger", "0.1")
    client.send("hello")
    assert client.readline() == "hello"
    client.send("héllo wörld")
    assert client.readline() == "héllo wörld"
    code, err = client.finish()
    assert code == 0, err
    assert "connected to" in err and "closed: 1000" in err


def test_client_binary_subprotocol_and_headers(
    wsflask_run: Run, tmp_path: Path, client_cli: Callable[..., Client]
) -> None:
    (tmp_path / "whoami_app.py").write_text(WHOAMI_APP)
    proc = wsflask_run("whoami_app:app", "--port", "0", env={"PYTHONPATH": str(tmp_path)})
    port = proc.wait_serving()
    client = client_cli(
        f"ws://127.0.0.1:{port}/whoami",
        "--binary",
        "--subprotocol",
        "other",
        "--subprotocol",
        "chat.v1",
        "--header",
        "X-Team: blue",
        "--linger",
        "0.1",
    )
    assert client.readline() == "chat.v1 blue"
    client.send("bytes")
    assert client.readline() == "[binary 5 bytes] bytes"
    code, err = client.finish()
    assert code == 0 and "(subprotocol chat.v1)" in err


def test_client_reports_a_refused_handshake(
    wsflask_run: Run, client_cli: Callable[..., Client]
) -> None:
    port = wsflask_run("examples.echo:app", "--port", "0").wait_serving()
    code, err = client_cli(f"ws://127.0.0.1:{port}/nope").finish()
    assert code == 1
    assert "refused with HTTP 404" in err
    code, err = client_cli(f"ws://127.0.0.1:{port}/echo", "--header", "broken").finish()
    assert code == 1 and "expected 'Name: value'" in err


KICK_APP = """
from wsflask import App

app = App()


@app.route("/kick/<int:code>")
def kick(ws, code):
    ws.send("bye")
    ws.close(code, "kicked out")
    for _ in ws:
        pass
"""


@pytest.mark.parametrize(("close", "exit_code"), [(4001, 1), (1011, 1), (1000, 0), (1001, 0)])
def test_client_exit_code_follows_the_servers_close_code(
    wsflask_run: Run,
    tmp_path: Path,
    client_cli: Callable[..., Client],
    close: int,
    exit_code: int,
) -> None:
    (tmp_path / "kick_app.py").write_text(KICK_APP)
    proc = wsflask_run("kick_app:app", "--port", "0", env={"PYTHONPATH": str(tmp_path)})
    client = client_cli(f"ws://127.0.0.1:{proc.wait_serving()}/kick/{close}", "--linger", "5")
    assert client.readline() == "bye"
    code, err = client.finish()
    assert code == exit_code, err
    assert f"closed by the server: {close} kicked out" in err


def test_help_shows_the_synopsis_with_workers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "wsflask run module:app" in out and "--workers N" in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--workers N" in capsys.readouterr().out


def test_run_finds_the_app_in_the_current_directory(wsflask_run: Run, tmp_path: Path) -> None:
    """``cd examples && wsflask run chat:app``, through the console script, whose sys.path[0]
    is its own bin directory (``python -m`` would put the current directory there itself)."""
    script = Path(sys.executable).parent / "wsflask"
    if not script.exists():  # `pip install -e .` (make test) installs it
        message = "the wsflask console script is not installed: pip install -e ."
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    proc = WsflaskProcess(
        [str(script), "run", "chat:app", "--port", "0"],
        str(ROOT / "examples"),
        {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        tmp_path / "chat.log",
    )
    try:
        port = proc.wait_serving()
        ws = connect(f"ws://127.0.0.1:{port}/echo", timeout=10)
        ws.send("from examples/")
        assert ws.receive(timeout=10) == "from examples/"
        ws.close()
    finally:
        assert proc.stop() == 0, proc.log


# -- wsflask frames: captured bytes decoded -------------------------------------------------------

HELLO_MASKED = "81 85 37fa213d 7f9f4d5158"  # RFC 6455 §5.7 examples
HELLO_FRAGMENTED = "01 03 48656c 80 02 6c6f"


def frames(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["frames", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.splitlines()


def test_frames_decodes_the_rfc_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert frames(capsys, HELLO_MASKED) == (
        0,
        [
            "frame 1 at byte 0: FIN=1 RSV1=0 RSV2=0 RSV3=0 opcode=0x1 TEXT MASK=1 "
            "key=37fa213d length=5",
            "  payload (text): 'Hello'",
        ],
    )
    code, lines = frames(capsys, HELLO_FRAGMENTED, "89 05 48656c6c6f", "82 7e 0100", "00" * 256)
    assert code == 0
    assert lines == [
        "frame 1 at byte 0: FIN=0 RSV1=0 RSV2=0 RSV3=0 opcode=0x1 TEXT MASK=0 length=3",
        "  payload (text): 'Hel'",
        "frame 2 at byte 5: FIN=1 RSV1=0 RSV2=0 RSV3=0 opcode=0x0 CONT MASK=0 length=2",
        "  payload (text): 'lo'",
        "frame 3 at byte 9: FIN=1 RSV1=0 RSV2=0 RSV3=0 opcode=0x9 PING MASK=0 length=5",
        "  payload (text): 'Hello'",
        "frame 4 at byte 16: FIN=1 RSV1=0 RSV2=0 RSV3=0 opcode=0x2 BINARY MASK=0 length=256",
        "  payload (hex): " + "00" * 64 + " ... (192 more bytes)",
    ]


def test_frames_close_code_reason_stdin_and_truncation(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = b"bye".hex()
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"0x88 0x05\n0fa1:{reason}\n"))
    assert frames(capsys, "-")[1][1] == "  close: code 4001 application reason 'bye'"
    assert frames(capsys, "88 02 03e9")[1][1] == "  close: code 1001 GOING_AWAY reason ''"
    assert frames(capsys, "88 00")[1][1] == "  close: no status code (reported as 1005)"
    code, lines = frames(capsys, "81 7e 00c8", "61" * 200)
    assert code == 0 and lines[1] == f"  payload (text): '{'a' * 64}' ... (136 more characters)"
    code, lines = frames(capsys, "--deflate", "c1 03 f20400")  # RSV1 once negotiated
    assert code == 0 and lines == [
        "frame 1 at byte 0: FIN=1 RSV1=1 RSV2=0 RSV3=0 opcode=0x1 TEXT MASK=0 length=3",
        "  payload (compressed, not inflated): f20400",
    ]


@pytest.mark.parametrize(
    ("frame", "violation"),
    [
        ("c1 00", "RSV bits set without a negotiated extension -> close 1002 PROTOCOL_ERROR"),
        ("a2 00", "RSV bits set without a negotiated extension -> close 1002 PROTOCOL_ERROR"),
        ("83 00", "reserved opcode 0x3 -> close 1002 PROTOCOL_ERROR"),
        ("8b 00", "reserved opcode 0xb -> close 1002 PROTOCOL_ERROR"),
        ("81 7e 0005 4142434445", "non-minimal 16-bit length -> close 1002 PROTOCOL_ERROR"),
        ("82 7f 000000000000ffff", "non-minimal 64-bit length -> close 1002 PROTOCOL_ERROR"),
        ("82 7f 8000000000000000", "64-bit length with the top bit set -> close 1002"),
        ("09 00", "fragmented control frame -> close 1002 PROTOCOL_ERROR"),
        ("89 7e 007e", "control frame payload over 125 bytes -> close 1002 PROTOCOL_ERROR"),
        ("82 7f 0000000100000000", "frame of 4294967296 bytes, 1048576 left in the budget"),
        ("88 01 03", "close frame with a 1-byte payload -> close 1002 PROTOCOL_ERROR"),
        ("88 02 03ed", "invalid close code 1005 -> close 1002 PROTOCOL_ERROR"),
        ("88 03 03e8ff", "close reason is not UTF-8 -> close 1007 INVALID_DATA"),
        ("81 02 c328", "text message is not UTF-8 (byte 0) -> close 1007 INVALID_DATA"),
        ("00 01 41", "continuation frame without a message to continue -> close 1002"),
        ("01 01 41 01 01 42", "new data frame inside a fragmented message -> close 1002"),
        ("81 85 37fa213d 7f9f4d5158 81 00", "unmasked client frame -> close 1002"),
    ],
)
def test_frames_names_each_violation_with_its_close_code(
    capsys: pytest.CaptureFixture[str], frame: str, violation: str
) -> None:
    code, lines = frames(capsys, frame)
    assert code == 1
    assert lines[-1].startswith(f"VIOLATION: {violation}"), lines
    assert lines[-2].startswith("frame ") or lines[-2].startswith("  payload"), lines


def test_frames_incomplete_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = frames(capsys, "81 05 4142")
    assert code == 1 and lines[-1] == "INCOMPLETE: the stream ends after 2 of 5 payload bytes"
    code, lines = frames(capsys, "81 7e 01")
    assert code == 1 and lines == ["INCOMPLETE: the stream ends inside a frame header (3 bytes)"]
    assert main(["frames", "81 0g"]) == 1
    assert "wsflask: error: not hexadecimal: 'g'" in capsys.readouterr().err
    assert main(["frames", "810"]) == 1
    assert "odd number of hex digits (3)" in capsys.readouterr().err
    code, lines = frames(capsys, "--from", "server", HELLO_MASKED)
    assert code == 1 and lines[-1].startswith("VIOLATION: masked server frame -> close 1002")
    code, lines = frames(capsys, "--max-size", "4", "01 03 414243 80 03 444546")
    assert code == 1  # each fragment fits, the message does not
    assert lines[-1] == "VIOLATION: message of more than 4 bytes -> close 1009 TOO_BIG"


def test_frames_from_stdin_through_the_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wsflask", "frames", "-"],
        cwd=ROOT,
        input=HELLO_MASKED,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "  payload (text): 'Hello'"
