"""wsflask.wsgi: WebSockets and a WSGI app (Flask) on one pywsgi port, and gevent-websocket code.

Every server binds 127.0.0.1:0 and is stopped by its fixture; every wait is bounded.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest
from flask import Flask
from gevent import pywsgi

from wsflask import App, HandshakeRejected, Reject, WebSocket, connect
from wsflask.protocol import Request, encode_frame
from wsflask.wsgi import WebSocketHandler, WSGIServer

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0


@pytest.fixture
def wsgi_serve() -> Iterator[Callable[..., Any]]:
    """``wsgi_serve(wsgi_app, handler_class=None, server_class=WSGIServer)`` -> started server."""
    servers: list[Any] = []

    apps: list[Any] = []

    def start(wsgi_app: Any, handler_class: Any = None, server_class: Any = WSGIServer) -> Any:
        kwargs = {"handler_class": handler_class} if handler_class is not None else {}
        server = server_class(("127.0.0.1", 0), wsgi_app, log=None, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=2)
        for holder in (server.handler_class, server.application, server):
            if getattr(holder, "ws_app", None) is not None:  # the App serving upgrades
                apps.append(holder.ws_app)
    for app in apps:  # under pywsgi the App's heartbeat runs until its owner stops it
        app.heartbeat.stop()


def http_get(port: int, path: str, headers: str = "") -> tuple[int, str, bytes]:
    """A plain HTTP/1.1 GET on a gevent socket: ``(status, head, body)``."""
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"{headers}\r\n".encode()
        )
        data = b""
        with gevent.Timeout(WAIT):
            while chunk := sock.recv(65536):
                data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin-1"), body


def url(server: Any, path: str) -> str:
    return f"ws://127.0.0.1:{server.server_port}{path}"


def echo_app(**settings: Any) -> App:
    app = App(close_timeout=1.0, **settings)

    @app.route("/echo")
    def echo(ws: WebSocket) -> None:
        for message in ws:
            ws.send(message)

    return app


def flask_pages() -> Flask:
    flask_app = Flask("pages")

    @flask_app.route("/")
    def index() -> str:
        return "hello from flask"

    return flask_app


# -- one port: WSGI pages and App routes ---------------------------------------------------------


def test_pages_and_websocket_routes_share_one_port(wsgi_serve: Any) -> None:
    ws_app = echo_app()
    server = wsgi_serve(flask_pages(), ws_app.handler_class, pywsgi.WSGIServer)
    status, _, body = http_get(server.server_port, "/")
    assert (status, body) == (200, b"hello from flask")
    ws = connect(url(server, "/echo"), timeout=WAIT)
    ws.send("ping")
    ws.send(b"\x00\x01")
    assert ws.receive(timeout=WAIT) == "ping"
    assert ws.receive(timeout=WAIT) == b"\x00\x01"
    ws.close()
    assert http_get(server.server_port, "/echo")[0] == 426  # plain GET on a WebSocket route
    with pytest.raises(HandshakeRejected) as refused:  # an upgrade nobody serves: Flask's 404
        connect(url(server, "/nowhere"), timeout=WAIT)
    assert refused.value.status == 404
    assert http_get(server.server_port, "/")[0] == 200  # the server still serves pages


def test_middleware_routes_upgrades_under_the_plain_handler(wsgi_serve: Any) -> None:
    ws_app = echo_app()
    flask_app = flask_pages()
    flask_app.wsgi_app = ws_app.wsgi_middleware(flask_app.wsgi_app)  # type: ignore[method-assign]
    server = wsgi_serve(flask_app)  # WSGIServer: WebSocketHandler, bound to no App
    server.ws_app = ws_app  # for the fixture: this App's heartbeat runs until it is stopped
    ws = connect(url(server, "/echo"), timeout=WAIT)
    ws.send("via middleware")
    assert ws.receive(timeout=WAIT) == "via middleware"
    ws.close()
    assert ws.close_code == 1000
    assert http_get(server.server_port, "/")[2] == b"hello from flask"


def test_middleware_without_the_handler_answers_501(wsgi_serve: Any) -> None:
    ws_app = echo_app()
    server = wsgi_serve(
        ws_app.wsgi_middleware(flask_pages()), pywsgi.WSGIHandler, pywsgi.WSGIServer
    )
    with pytest.raises(HandshakeRejected) as refused:
        connect(url(server, "/echo"), timeout=WAIT)
    assert refused.value.status == 501
    assert b"WebSocketHandler" in refused.value.body


# -- the App's rules apply: core validation, limits, Origin, hooks, subprotocols, heartbeat --


def test_the_head_is_validated_by_the_protocol_core(wsgi_serve: Any, raw_peer: Any) -> None:
    server = wsgi_serve(flask_pages(), echo_app().handler_class)
    peer = raw_peer(server.server_port)
    peer.sock.sendall(
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    head = peer.read_head()
    assert head.startswith(b"HTTP/1.1 426 ")  # the core's answer, as Server gives it
    assert b"Sec-WebSocket-Version: 13" in head
    peer.read_until_eof(timeout=WAIT)  # and the socket is closed


def test_bytes_sent_right_after_the_head_reach_the_app(wsgi_serve: Any, raw_peer: Any) -> None:
    server = wsgi_serve(flask_pages(), echo_app().handler_class)
    peer = raw_peer(server.server_port)
    peer.sock.sendall(
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        + encode_frame(0x1, b"early", mask=b"\x01\x02\x03\x04")
    )
    assert peer.read_head().startswith(b"HTTP/1.1 101 ")
    assert peer.read_frame(timeout=WAIT) == (0x1, b"early")


def test_limits_origin_hooks_and_subprotocols_apply(wsgi_serve: Any) -> None:
    ws_app = echo_app(max_message_size=1024)
    chosen = ws_app.route("/proto", subprotocols=("v2", "v1"))

    @chosen.on("connect")
    def greet(ws: WebSocket) -> None:
        ws.send(f"{ws.subprotocol}:{ws.session.get('user')}")

    @ws_app.before_upgrade
    def token(request: Request) -> dict[str, Any]:
        if request.path == "/proto" and request.query != "token=ok":
            raise Reject(401, "no token")
        return {"user": "ann"}

    server = wsgi_serve(flask_pages(), ws_app.handler_class)
    with pytest.raises(HandshakeRejected) as refused:
        connect(url(server, "/echo"), headers=[("Origin", "https://evil.example")], timeout=WAIT)
    assert refused.value.status == 403
    with pytest.raises(HandshakeRejected) as refused:
        connect(url(server, "/proto"), timeout=WAIT)
    assert refused.value.status == 401
    ws = connect(url(server, "/proto?token=ok"), subprotocols=["v1"], timeout=WAIT)
    assert ws.subprotocol == "v1"
    assert ws.receive(timeout=WAIT) == "v1:ann"
    ws.close()
    big = connect(url(server, "/echo"), timeout=WAIT)
    big.send("x" * 2000)
    assert big.receive(timeout=WAIT) is None
    assert big.close_code == 1009
    assert ws_app.metrics.handshakes.get(101, 0) >= 2


def test_heartbeat_and_metrics_are_the_apps(wsgi_serve: Any) -> None:
    ws_app = echo_app(ping_interval=0.05, pong_timeout=5.0)
    server = wsgi_serve(flask_pages(), ws_app.handler_class)
    ws = connect(url(server, "/echo"), timeout=WAIT)
    with gevent.Timeout(WAIT):  # the client's core answers pings while it waits for echoes
        while ws_app.metrics.rtt_seconds.count == 0:
            ws.send("tick")
            assert ws.receive(timeout=WAIT) == "tick"
            gevent.sleep(0.02)
    assert ws_app.metrics.connections_current == 1
    ws.close()
    with gevent.Timeout(WAIT):
        while ws_app.metrics.connections_current:
            gevent.sleep(0.01)
    assert len(ws_app.heartbeat) == 0
    ws_app.heartbeat.stop()


# -- shutdown ---------------------------------------------------------------------------------


def test_server_stop_closes_websockets_with_1001(wsgi_serve: Any) -> None:
    ws_app = echo_app()
    server = wsgi_serve(flask_pages(), ws_app.handler_class)
    clients = [connect(url(server, "/echo"), timeout=WAIT) for _ in range(2)]
    for ws in clients:
        ws.send("up")
        assert ws.receive(timeout=WAIT) == "up"
    stopper = gevent.spawn(server.stop, 5)
    for ws in clients:
        assert ws.receive(timeout=WAIT) is None
        assert (ws.close_code, ws.close_reason) == (1001, "going away")
    stopper.join(timeout=WAIT)
    assert stopper.successful()
    assert server.websockets == {}
    ws_app.heartbeat.stop()


# -- gevent-websocket compatibility -------------------------------------------------------------


def gevent_websocket_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Written as gevent-websocket's README shows; nothing wsflask-specific."""
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain http"]
    while True:
        message = ws.receive()
        if message is None:
            break
        if message == "bye":
            ws.close()
            break
        ws.send(message.upper() if isinstance(message, str) else message)
    assert ws.closed
    return []


def test_gevent_websocket_style_code_runs_unchanged(wsgi_serve: Any) -> None:
    server = wsgi_serve(gevent_websocket_app, WebSocketHandler, pywsgi.WSGIServer)
    assert http_get(server.server_port, "/")[2] == b"plain http"
    ws = connect(url(server, "/anything"), timeout=WAIT)
    ws.send("hello")
    ws.send(b"\xff")
    assert ws.receive(timeout=WAIT) == "HELLO"
    assert ws.receive(timeout=WAIT) == b"\xff"
    ws.send("bye")
    assert ws.receive(timeout=WAIT) is None
    assert ws.close_code == 1000
    second = connect(url(server, "/again"), timeout=WAIT)  # the server keeps serving
    second.send("x")
    assert second.receive(timeout=WAIT) == "X"
    second.close()


def test_gevent_websocket_style_code_gets_1001_on_stop(wsgi_serve: Any) -> None:
    server = wsgi_serve(gevent_websocket_app)
    ws = connect(url(server, "/"), timeout=WAIT)
    ws.send("a")
    assert ws.receive(timeout=WAIT) == "A"
    stopper = gevent.spawn(server.stop, 5)
    assert ws.receive(timeout=WAIT) is None
    assert ws.close_code == 1001
    stopper.join(timeout=WAIT)
    assert stopper.successful()


# -- the Flask example: session cookie checked in before_upgrade ---------------------------------


@pytest.fixture
def flask_example() -> Any:
    sys.path.insert(0, str(ROOT))
    try:
        from examples import flask_app
    finally:
        sys.path.remove(str(ROOT))
    return flask_app


def test_flask_session_cookie_is_checked_before_upgrade(
    wsgi_serve: Any, flask_example: Any
) -> None:
    server = wsgi_serve(flask_example.flask_app)
    port = server.server_port
    with pytest.raises(HandshakeRejected) as refused:
        connect(url(server, "/ws/chat"), timeout=WAIT)
    assert refused.value.status == 401
    status, head, _ = http_get(port, "/login?name=ann")
    assert status == 302
    cookie = next(
        line.split(":", 1)[1].split(";", 1)[0].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("set-cookie:")
    )
    assert b"Logged in as <b>ann</b>" in http_get(port, "/", f"Cookie: {cookie}\r\n")[2]
    name, _, value = cookie.partition("=")
    with pytest.raises(HandshakeRejected) as refused:  # a tampered cookie is refused too
        connect(url(server, "/ws/chat"), headers=[("Cookie", f"{name}=x{value}")], timeout=WAIT)
    assert refused.value.status == 401
    ws = connect(url(server, "/ws/chat"), headers=[("Cookie", cookie)], timeout=WAIT)
    ws.send("hi all")
    assert ws.receive(timeout=WAIT) == '{"user": "ann", "text": "hi all"}'
    ws.close()
    flask_example.ws_app.heartbeat.stop()


# -- the same head gets the same answer as on Server (defects-2.md suspicions) ------------------

UPGRADE_LINES = [
    "GET /echo HTTP/1.1",
    "Host: 127.0.0.1",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
]


def first_line_of_answer(port: int, raw: bytes) -> bytes:
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        sock.sendall(raw)
        data = b""
        with gevent.Timeout(WAIT):
            while b"\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
    finally:
        sock.close()
    return data.partition(b"\r\n")[0]


@pytest.mark.parametrize("through", ["server", "pywsgi"])
def test_leading_crlf_is_ignored_and_bare_lf_gets_400_on_both_paths(
    wsgi_serve: Any, through: str
) -> None:
    app = echo_app(handshake_timeout=5.0)
    if through == "server":
        server = app.make_server("127.0.0.1", 0)
        server.start()
    else:
        server = wsgi_serve(flask_pages(), app.handler_class, pywsgi.WSGIServer)
    try:
        port = server.server_port
        crlf = ("\r\n" + "\r\n".join(UPGRADE_LINES) + "\r\n\r\n").encode()
        assert first_line_of_answer(port, crlf) == b"HTTP/1.1 101 Switching Protocols"
        bare = ("\n".join(UPGRADE_LINES) + "\n\n").encode()
        started = time.monotonic()
        assert first_line_of_answer(port, bare) == b"HTTP/1.1 400 Bad Request"
        assert time.monotonic() - started < 2.0  # at once, not a 408 later
    finally:
        if through == "server":
            server.stop(timeout=2)


def test_pywsgi_access_log_of_an_upgrade_leaves_the_query_out(wsgi_serve: Any) -> None:
    """Tokens travel in WebSocket query strings; wsflask logs paths only, pywsgi likewise."""
    lines: list[str] = []
    logged = gevent.event.Event()

    class Log:
        def write(self, line: str) -> None:
            lines.append(line)
            if "/echo" in line:
                logged.set()  # pywsgi writes its line after the handler returned

    ws_app = echo_app()
    server = pywsgi.WSGIServer(
        ("127.0.0.1", 0), flask_pages(), log=Log(), handler_class=ws_app.handler_class
    )
    server.start()
    try:
        ws = connect(url(server, "/echo?token=s3cret"), timeout=WAIT)
        ws.send("x")
        assert ws.receive(timeout=WAIT) == "x"
        ws.close()
        assert logged.wait(WAIT)
    finally:
        server.stop(timeout=2)
        ws_app.heartbeat.stop()
    (line,) = [line for line in lines if "/echo" in line]
    assert "s3cret" not in line and '"GET /echo HTTP/1.1" 101' in line
