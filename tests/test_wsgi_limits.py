"""Limits under pywsgi (issue 18): ``max_connections`` (503), ``max_connections_per_ip`` (429)
and ``handshake_timeout`` (408) on ``wsflask.wsgi.WebSocketHandler``, over real sockets.

Every server binds 127.0.0.1:0 and is stopped by its fixture; every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from flask import Flask
from helpers import wait_until

from wsflask import App, HandshakeRejected, WebSocket, connect
from wsflask.wsgi import WSGIServer

WAIT = 10.0
UPGRADE = (
    b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


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


@pytest.fixture
def serve_app() -> Iterator[Callable[..., WSGIServer]]:
    """``serve_app(app, mode)``: Flask and ``app`` on one ``WSGIServer``, stopped after."""
    servers: list[WSGIServer] = []

    def start(app: App, mode: str = "handler_class") -> WSGIServer:
        flask_app = flask_pages()
        if mode == "handler_class":
            server = WSGIServer(
                ("127.0.0.1", 0), flask_app, log=None, handler_class=app.handler_class
            )
        else:
            flask_app.wsgi_app = app.wsgi_middleware(flask_app.wsgi_app)  # type: ignore[method-assign]
            server = WSGIServer(("127.0.0.1", 0), flask_app, log=None)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=2)


def url(server: WSGIServer) -> str:
    return f"ws://127.0.0.1:{server.server_port}/echo"


def answer_from(port: int, source: str) -> bytes:
    """The response head to an upgrade sent from ``source`` (another loopback address)."""
    sock = gevent.socket.create_connection(("127.0.0.1", port), WAIT, (source, 0))
    try:
        sock.sendall(UPGRADE)
        data = b""
        with gevent.Timeout(WAIT):
            while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
        return data.partition(b"\r\n\r\n")[0]
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["handler_class", "middleware"])
def test_max_connections_refuses_upgrades_with_503_then_admits_again(
    serve_app: Any, mode: str
) -> None:
    app = echo_app(max_connections=2)
    server = serve_app(app, mode)
    first, second = (connect(url(server), timeout=WAIT) for _ in range(2))
    with pytest.raises(HandshakeRejected) as refused:
        connect(url(server), timeout=WAIT)
    assert refused.value.status == 503
    assert ("retry-after", "1") in [(k.lower(), v) for k, v in refused.value.headers]
    assert app.metrics.handshakes[503] == 1
    first.close()
    wait_until(lambda: server.admitted == 1, WAIT)  # the slot is given back
    third = connect(url(server), timeout=WAIT)
    third.send("in")
    assert third.receive(timeout=WAIT) == "in"
    for ws in (second, third):
        ws.close()
    wait_until(lambda: server.admitted == 0, WAIT)


@pytest.mark.parametrize("mode", ["handler_class", "middleware"])
def test_max_connections_per_ip_refuses_with_429_per_address(serve_app: Any, mode: str) -> None:
    app = echo_app(max_connections_per_ip=1)
    server = serve_app(app, mode)
    held = connect(url(server), timeout=WAIT)
    with pytest.raises(HandshakeRejected) as refused:
        connect(url(server), timeout=WAIT)
    assert refused.value.status == 429
    assert answer_from(server.server_port, "127.0.0.2").startswith(b"HTTP/1.1 101 ")
    assert app.metrics.handshakes[429] == 1
    held.close()
    wait_until(lambda: server.admitted == 0, WAIT)
    connect(url(server), timeout=WAIT).close()  # 127.0.0.1 is admitted again


def test_plain_http_takes_no_websocket_slot(serve_app: Any) -> None:
    app = echo_app(max_connections=1)
    server = serve_app(app)
    held = connect(url(server), timeout=WAIT)
    sock = gevent.socket.create_connection(("127.0.0.1", server.server_port), WAIT)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        with gevent.Timeout(WAIT):
            while chunk := sock.recv(65536):
                data += chunk
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"hello from flask")
    held.close()


@pytest.mark.parametrize(
    "partial",
    [b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n", b"GET /ec"],
    ids=["headers", "request-line"],
)
def test_a_head_that_does_not_arrive_in_time_gets_408(
    serve_app: Any, raw_peer: Any, partial: bytes
) -> None:
    app = echo_app(handshake_timeout=0.5)
    server = serve_app(app)
    peer = raw_peer(server.server_port)
    started = time.monotonic()
    peer.sock.sendall(partial)  # and nothing more: a slowloris
    reply = peer.read_until_eof(timeout=WAIT)
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert 0.4 < time.monotonic() - started < 3.0
    assert app.metrics.handshakes[408] == 1
    ws = connect(url(server), timeout=WAIT)  # the server keeps serving
    ws.close()


def test_the_deadline_covers_each_head_of_a_keep_alive_connection(
    serve_app: Any, raw_peer: Any
) -> None:
    app = echo_app(handshake_timeout=0.5)
    server = serve_app(app)
    peer = raw_peer(server.server_port)
    peer.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert peer.read_head().startswith(b"HTTP/1.1 200 ")
    peer.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the second head stalls
    reply = peer.read_until_eof(timeout=WAIT)
    assert b"HTTP/1.1 408 " in reply, reply


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(
    serve_app: Any, raw_peer: Any
) -> None:
    app = echo_app(handshake_timeout=0.5)
    server = serve_app(app)
    started = time.monotonic()
    peer = raw_peer(server.server_port)
    assert peer.read_until_eof(timeout=WAIT) == b""  # nothing came: nothing to answer
    assert 0.4 < time.monotonic() - started < 3.0
    assert app.metrics.handshakes[408] == 1
