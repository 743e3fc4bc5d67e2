"""Flask and wsflask on one pywsgi port (issue 15): drain on signals, 426, pages on the Flask side.

The signal tests run ``python examples/flask_app.py 0`` as a child (stopped by the
``wsflask_run`` fixture); the others serve in-process on 127.0.0.1:0. Every wait is bounded.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
from flask import Flask
from helpers import wait_until

from wsflask import App, WebSocket, connect
from wsflask.wsgi import WSGIServer, pages_app

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0


class HTTPPeer:
    """HTTP/1.1 requests over one keep-alive connection on a gevent socket."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.buffer = b""

    def request(self, path: str, method: str = "GET", headers: str = "") -> tuple[int, str, bytes]:
        """``(status, head, body)`` of one request (the body read by Content-Length)."""
        self.sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{headers}\r\n".encode()
        )
        with gevent.Timeout(WAIT):
            while b"\r\n\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                assert chunk, f"the server closed the connection: {self.buffer!r}"
                self.buffer += chunk
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            text = head.decode("latin-1")
            length = next(
                (
                    int(line.split(":", 1)[1])
                    for line in text.split("\r\n")
                    if line.lower().startswith("content-length:")
                ),
                0,
            )
            length = 0 if method == "HEAD" else length
            while len(self.buffer) < length:
                chunk = self.sock.recv(65536)
                assert chunk, "the server closed the connection mid-body"
                self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(text.split(" ", 2)[1]), text, body

    def close(self) -> None:
        self.sock.close()


def http(port: int, path: str, method: str = "GET", headers: str = "") -> tuple[int, str, bytes]:
    peer = HTTPPeer(port)
    try:
        return peer.request(path, method, headers)
    finally:
        peer.close()


def header(head: str, name: str) -> str | None:
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def login(port: int, name: str) -> str:
    """Log in to the example through Flask; return the session cookie (``name=value``)."""
    status, head, _ = http(port, f"/login?name={name}")
    assert status == 302, head
    cookie = header(head, "Set-Cookie")
    assert cookie is not None, head
    return cookie.split(";", 1)[0]


@pytest.fixture
def flask_example() -> Any:
    sys.path.insert(0, str(ROOT))
    try:
        from examples import flask_app
    finally:
        sys.path.remove(str(ROOT))
    return flask_app


@pytest.fixture
def wsgi_serve() -> Iterator[Callable[..., WSGIServer]]:
    """``wsgi_serve(wsgi_app, handler_class=None)`` -> a started ``WSGIServer``, stopped after."""
    servers: list[WSGIServer] = []

    def start(wsgi_app: Any, handler_class: Any = None) -> WSGIServer:
        kwargs = {"handler_class": handler_class} if handler_class is not None else {}
        server = WSGIServer(("127.0.0.1", 0), wsgi_app, log=None, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=2)  # also stops the heartbeats its handlers started


# -- SIGTERM / Ctrl-C: drain with 1001, exit 0, no traceback ------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_every_websocket_with_1001_and_exits_0(
    wsflask_run: Any, signum: signal.Signals
) -> None:
    proc = wsflask_run("0", script="examples/flask_app.py")
    port = proc.wait_serving()
    clients = []
    for name in ("ann", "bob"):
        cookie = login(port, name)
        clients.append(connect(f"ws://127.0.0.1:{port}/ws/chat", headers=[("Cookie", cookie)]))
    clients[0].send("hello")
    for ws in clients:  # both are in the room: the server serves them
        assert ws.receive(timeout=WAIT) == '{"user": "ann", "text": "hello"}'
    proc.proc.send_signal(signum)
    for ws in clients:
        assert ws.receive(timeout=WAIT) is None
        assert (ws.close_code, ws.close_reason) == (1001, "going away")
    assert proc.wait_exit(timeout=WAIT) == 0, proc.log
    assert "stopped" in proc.log
    assert "Traceback" not in proc.log and "KeyboardInterrupt" not in proc.log, proc.log


def test_a_websocket_killed_after_the_grace_ends_its_greenlet_cleanly(
    wsgi_serve: Any, raw_peer: Any
) -> None:
    app = chat_app()
    server = wsgi_serve(flask_pages(), app.handler_class)
    peer = raw_peer(server.server_port)  # answers nothing: not even the server's Close
    assert peer.request("/ws/echo").startswith(b"HTTP/1.1 101 ")
    wait_until(lambda: len(server.websockets) == 1, WAIT)
    (greenlet,) = server.websockets.values()
    server.stop(timeout=0.2)
    assert peer.read_frame(timeout=WAIT) == (0x8, b"\x03\xe9going away")  # 1001 first
    assert greenlet.dead
    assert greenlet.exception is None  # pywsgi wrote no 500 on the WebSocket's socket


# -- a plain request to a WebSocket route: 426, in both modes -----------------------------------


def chat_app() -> App:
    app = App(close_timeout=1.0)

    @app.route("/ws/echo")
    def echo(ws: WebSocket) -> None:
        for message in ws:
            ws.send(message)

    return app


def flask_pages() -> Flask:
    flask_app = Flask("pages")

    @flask_app.route("/")
    def index() -> str:
        return "hello from flask"

    @flask_app.route("/ws/echo")
    def shadowed() -> str:  # the WebSocket route owns this path
        return "flask must not answer this"

    return flask_app


@pytest.mark.parametrize("mode", ["handler_class", "middleware"])
def test_plain_get_on_a_websocket_route_gets_426(wsgi_serve: Any, mode: str) -> None:
    app = chat_app()
    flask_app = flask_pages()
    if mode == "handler_class":
        server = wsgi_serve(flask_app, app.handler_class)
    else:
        flask_app.wsgi_app = app.wsgi_middleware(flask_app.wsgi_app)  # type: ignore[method-assign]
        server = wsgi_serve(flask_app)
    port = server.server_port
    status, head, body = http(port, "/ws/echo")
    assert status == 426, head
    assert header(head, "Upgrade") == "websocket"
    assert header(head, "Sec-WebSocket-Version") == "13"
    assert body == b"this resource needs a WebSocket upgrade\n"
    assert http(port, "/ws/%65cho")[0] == 426  # matched as Server matches: percent-decoded
    assert http(port, "/ws/echo", "HEAD")[0] == 426
    assert http(port, "/")[2] == b"hello from flask"  # Flask still serves its pages
    assert app.metrics.handshakes[426] == 3
    ws = connect(f"ws://127.0.0.1:{port}/ws/echo", timeout=WAIT)  # and upgrades still work
    ws.send("x")
    assert ws.receive(timeout=WAIT) == "x"
    ws.close()
    assert ws.close_code == 1000


# -- /metrics, /healthz, /readyz (and @app.get pages) on the Flask side -------------------------


def test_the_example_serves_metrics_health_and_readiness_next_to_flask(
    wsgi_serve: Any, flask_example: Any
) -> None:
    metrics = flask_example.ws_app.metrics  # the module's App: other tests may have used it
    wait_until(lambda: metrics.connections_current == 0, WAIT)
    accepted = metrics.handshakes.get(101, 0)
    server = wsgi_serve(flask_example.flask_app)
    port = server.server_port
    ws = connect(
        f"ws://127.0.0.1:{port}/ws/chat", headers=[("Cookie", login(port, "ann"))], timeout=WAIT
    )
    ws.send("hi")
    assert ws.receive(timeout=WAIT) == '{"user": "ann", "text": "hi"}'
    status, head, body = http(port, "/metrics")
    assert status == 200
    assert header(head, "Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert "\nwebsocket_connections_current 1\n" in text
    assert f'\nwebsocket_handshakes_total{{status="101"}} {accepted + 1}\n' in text
    assert http(port, "/healthz")[0::2] == (200, b"ok")
    assert http(port, "/readyz")[0::2] == (200, b"ready")
    assert http(port, "/metrics", "POST", "Content-Length: 0\r\n")[0] == 405
    assert b"Log in" in http(port, "/")[2]  # Flask's page
    assert http(port, "/nowhere")[0] == 404  # Flask's 404
    ws.close()


def test_readyz_turns_503_when_the_server_drains(wsgi_serve: Any) -> None:
    app = chat_app()

    @app.get("/version")
    def version(request: Any) -> str:
        return f"v1 {request.query} {request.header('x-probe')}"

    flask_app = flask_pages()
    flask_app.wsgi_app = app.wsgi_middleware(  # type: ignore[method-assign]
        pages_app(app, flask_app.wsgi_app)
    )
    server = wsgi_serve(flask_app)
    peer = HTTPPeer(server.server_port)  # keep-alive: it outlives the listener
    try:
        assert peer.request("/version?a=1", headers="X-Probe: yes\r\n")[2] == b"v1 a=1 yes"
        assert peer.request("/readyz")[0::2] == (200, b"ready")
        server.close()  # draining: no new connections, the open one still asks
        assert peer.request("/readyz")[0::2] == (503, b"not ready")
        assert peer.request("/healthz")[0::2] == (200, b"ok")  # alive, just not ready
    finally:
        peer.close()


def test_pages_app_alone_answers_404_past_its_pages(wsgi_serve: Any) -> None:
    app = chat_app()
    server = wsgi_serve(pages_app(app), app.handler_class)
    port = server.server_port
    assert http(port, "/healthz")[0] == 200
    assert http(port, "/elsewhere")[0::2] == (404, b"not found\n")
    assert http(port, "/ws/echo")[0] == 426
    ws = connect(f"ws://127.0.0.1:{port}/ws/echo", timeout=WAIT)
    wait_until(lambda: app.metrics.connections_current == 1, WAIT)
    assert "\nwebsocket_connections_current 1\n" in http(port, "/metrics")[2].decode()
    ws.close()


def test_a_backplane_run_as_a_service_gates_readyz_and_stops_with_the_server(
    wsgi_serve: Any,
) -> None:
    app = App(backplane="memory://flask-one-port", backplane_interval=0.05)
    server = wsgi_serve(pages_app(app), app.handler_class)
    assert app.cluster is not None
    port = server.server_port
    assert http(port, "/readyz")[0::2] == (503, b"not ready: backplane down")
    server.run_service(app.cluster)
    wait_until(lambda: http(port, "/readyz")[0] == 200, WAIT)
    server.stop(timeout=1)
    assert not app.cluster.ready  # left the bus with the server
