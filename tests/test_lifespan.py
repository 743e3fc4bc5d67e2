"""Lifespan hooks (issue 15): ``on_startup`` once bound, background tasks killed and joined
at stop, ``on_shutdown`` after the drain; in-process for ``make_server`` and pywsgi, and in
subprocesses for ``app.run()`` (``WSFLASK_*`` and its log line), ``--workers`` and gunicorn."""

from __future__ import annotations

import re
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import pywsgi
from gevent import subprocess as gsubprocess
from gevent.event import Event

from wsflask import App
from wsflask.client import connect
from wsflask.errors import SetupError
from wsflask.protocol import CloseCode
from wsflask.wsgi import WSGIServer

WAIT = 10.0


def _recording_app(app_factory: Callable[..., App]) -> tuple[Any, list[Any]]:
    """An echo app whose hooks and background task append to the returned log."""
    app = app_factory(close_timeout=1.0)
    log: list[Any] = []
    ticking = Event()

    @app.route("/echo")
    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    def tick() -> None:
        try:
            ticking.set()
            gevent.sleep(60)
        finally:
            log.append("task stopped")

    @app.on_startup
    def up() -> None:
        log.append(("startup", app.address))
        app.start_background_task(tick)

    @app.on_shutdown
    def down() -> None:
        log.append(("shutdown", len(app.server.connections) if app.server else None))

    log.append(ticking)
    return app, log


def test_built_in_server_runs_hooks_and_stops_tasks_after_the_drain(
    app_factory: Callable[..., App],
) -> None:
    app, log = _recording_app(app_factory)
    ticking = log.pop()
    server = app.make_server("127.0.0.1", 0)
    assert log == [] and app.address is None  # not bound yet: nothing ran
    server.start()
    try:
        assert log == [("startup", ("127.0.0.1", server.server_port))]
        assert ticking.wait(WAIT)
        ws = connect(f"ws://127.0.0.1:{server.server_port}/echo", timeout=WAIT)
        ws.send("x")
        assert ws.receive(timeout=WAIT) == "x"
        app.notify_started(("127.0.0.1", 1))  # idempotent while started
        assert len(log) == 1 and app.address == ("127.0.0.1", server.server_port)
    finally:
        stopper = gevent.spawn(server.stop, 5)
        assert ws.receive(timeout=WAIT) is None and ws.close_code == CloseCode.GOING_AWAY
        stopper.join(timeout=WAIT)
    # the task was killed and joined before the shutdown hook, which saw no connection left
    assert log[1:] == ["task stopped", ("shutdown", 0)]
    assert not app.lifespan.tasks
    app.notify_stopped()  # idempotent
    assert log[1:] == ["task stopped", ("shutdown", 0)]


def test_a_startup_hook_that_raises_fails_the_start(app_factory: Callable[..., App]) -> None:
    app = app_factory()

    @app.on_startup
    def broken() -> None:
        raise RuntimeError("no database")

    server = app.make_server("127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="no database"):
        server.start()
    server.stop(timeout=1)


def test_hooks_are_setup_methods(app_factory: Callable[..., App]) -> None:
    app = app_factory()
    app.make_server("127.0.0.1", 0)
    with pytest.raises(SetupError):
        app.on_startup(lambda: None)
    with pytest.raises(SetupError):
        app.on_shutdown(lambda: None)


def _wsgi_404(environ: Any, start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


def test_wsflask_wsgi_server_runs_hooks_at_start_and_stop(app_factory: Callable[..., App]) -> None:
    app, log = _recording_app(app_factory)
    ticking = log.pop()
    server = WSGIServer(("127.0.0.1", 0), _wsgi_404, handler_class=app.handler_class, log=None)
    server.start()
    try:
        assert log == [("startup", ("127.0.0.1", server.server_port))]
        assert ticking.wait(WAIT)
    finally:
        server.stop(timeout=2)
        app.heartbeat.stop()
    assert log[1:] == ["task stopped", ("shutdown", None)]


def test_plain_pywsgi_server_starts_hooks_on_first_upgrade(app_factory: Callable[..., App]) -> None:
    app, log = _recording_app(app_factory)
    ticking = log.pop()
    server = pywsgi.WSGIServer(
        ("127.0.0.1", 0), _wsgi_404, handler_class=app.handler_class, log=None
    )
    server.start()
    try:
        assert log == []
        ws = connect(f"ws://127.0.0.1:{server.server_port}/echo", timeout=WAIT)
        ws.send("y")
        assert ws.receive(timeout=WAIT) == "y"
        ws.close()
        assert log == [("startup", ("127.0.0.1", server.server_port))]
        assert ticking.wait(WAIT)
    finally:
        server.stop(timeout=2)
        app.heartbeat.stop()
        app.notify_stopped()  # the contract for servers wsflask does not own
    assert log[1:] == ["task stopped", ("shutdown", None)]


# -- subprocesses ------------------------------------------------------------------------------

LCAPP = """
import os

import gevent
from wsflask import App

app = App(close_timeout=1.0, shutdown_grace=3.0)


@app.route("/echo")
def echo(ws):
    for message in ws:
        ws.send(message)


def tick():
    try:
        gevent.sleep(600)
    finally:
        print(f"task stopped pid={os.getpid()}", flush=True)


@app.on_startup
def up():
    host, port = app.address
    print(f"startup pid={os.getpid()} address={host}:{port}", flush=True)
    app.start_background_task(tick)


@app.on_shutdown
def down():
    print(f"shutdown pid={os.getpid()}", flush=True)


if __name__ == "__main__":
    app.run()
"""

#: gunicorn's entry: the app behind the middleware (which ends its setup phase)
GUNICORN_ENTRY = """
from lcapp import app


def wsgi(environ, start_response):
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


wsgi_app = app.wsgi_middleware(wsgi)
"""


def _lcapp(tmp_path: Path) -> Path:
    path = tmp_path / "lcapp.py"
    path.write_text(textwrap.dedent(LCAPP))
    (tmp_path / "lcgunicorn.py").write_text(textwrap.dedent(GUNICORN_ENTRY))
    return path


def _assert_stopped_in_order(log: str, pid: str) -> None:
    task = log.index(f"task stopped pid={pid}")
    assert task < log.index(f"shutdown pid={pid}"), log


def test_app_run_honours_env_logs_its_address_and_runs_hooks(
    tmp_path: Path, wsflask_run: Any
) -> None:
    script = _lcapp(tmp_path)
    proc = wsflask_run(script=str(script), env={"WSFLASK_PORT": "0"})  # default would be 8080
    port = proc.wait_serving()  # logged at INFO with no logging configured by the app
    assert re.search(rf"INFO wsflask.app: wsflask serving on 127\.0\.0\.1:{port}", proc.log)
    found = proc.wait_for_log(rf"startup pid=(\d+) address=127\.0\.0\.1:{port}")
    ws = connect(f"ws://127.0.0.1:{port}/echo", timeout=WAIT)
    ws.send("z")
    assert ws.receive(timeout=WAIT) == "z"
    assert proc.stop(timeout=WAIT) == 0
    assert ws.receive(timeout=WAIT) is None and ws.close_code == CloseCode.GOING_AWAY
    _assert_stopped_in_order(proc.log, found[1])


def test_every_worker_runs_the_hooks(tmp_path: Path, wsflask_run: Any, redis_server: Any) -> None:
    _lcapp(tmp_path)
    env = {"PYTHONPATH": str(tmp_path), "WSFLASK_BACKPLANE": redis_server.url}
    proc = wsflask_run("lcapp:app", "--port", "0", "--workers", "2", env=env)
    port = proc.wait_serving()
    proc.wait_for_log(r"(?s)startup pid=\d+.*startup pid=\d+")
    pids = set(re.findall(rf"startup pid=(\d+) address=[^:\s]+:{port}", proc.log))
    assert len(pids) == 2
    assert proc.stop(timeout=WAIT * 2) == 0
    for pid in pids:
        _assert_stopped_in_order(proc.log, pid)


def test_gunicorn_worker_runs_the_hooks(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    _lcapp(tmp_path)
    out = tmp_path / "out.log"
    errors = tmp_path / "gunicorn.log"
    with out.open("wb") as sink:
        process = gsubprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "wsflask.gunicorn.GeventWorker",
             "-b", "127.0.0.1:0", "-w", "1", "--graceful-timeout", "5", "--no-control-socket",
             "--chdir", str(tmp_path), "--error-logfile", str(errors), "lcgunicorn:wsgi_app"],
            stdout=sink,
            stderr=gsubprocess.STDOUT,
        )  # fmt: skip
        try:
            with gevent.Timeout(WAIT * 2, TimeoutError("no startup line from gunicorn")):
                while not (found := re.search(r"startup pid=(\d+) address=\S+:(\d+)", _read(out))):
                    assert process.poll() is None, _read(out) + _read(errors)
                    gevent.sleep(0.05)
            pid, port = found[1], int(found[2])
            ws = connect(f"ws://127.0.0.1:{port}/echo", timeout=WAIT)
            ws.send("g")
            assert ws.receive(timeout=WAIT) == "g"
            process.send_signal(signal.SIGTERM)
            assert ws.receive(timeout=WAIT) is None and ws.close_code == CloseCode.GOING_AWAY
            assert process.wait(timeout=WAIT * 2) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=WAIT)
    _assert_stopped_in_order(_read(out), pid)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
