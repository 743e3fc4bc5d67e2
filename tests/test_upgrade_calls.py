"""The step-by-step handshake API of ``wsflask.upgrade`` over real sockets.

``read_request`` then ``accept``/``reject``/``respond`` (what an embedding loop without
``Server`` calls), and ``going_away`` (the handler of a connection accepted while the server
stops). Each case runs a one-connection gevent server on 127.0.0.1 and a real client; the
exact status, headers and close code are asserted. Keeps ``upgrade.py`` at 100 % of lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import pytest
from gevent.server import StreamServer

from wsflask.client import connect
from wsflask.config import Config
from wsflask.errors import HandshakeRejected
from wsflask.protocol import Connection, Request, Side
from wsflask.upgrade import HTTPResponse, accept, going_away, read_request, reject, respond
from wsflask.websocket import WebSocket

CONFIG = Config(port=0, close_timeout=0.5, handshake_timeout=2.0)


@pytest.fixture
def one_shot() -> Iterator[Callable[[Callable[[WebSocket, Request], None]], int]]:
    """``one_shot(step)`` -> port: each connection's request is read, then ``step(ws, request)``
    answers it. The servers are stopped after the test."""
    servers: list[StreamServer] = []

    def start(step: Callable[[WebSocket, Request], None]) -> int:
        def handle(sock: Any, address: Any) -> None:
            conn = Connection(Side.SERVER, limits=CONFIG.limits(), http=True)
            ws = WebSocket(sock, conn, config=CONFIG, remote_address=address)
            request = read_request(ws)
            assert isinstance(request, Request)
            step(ws, request)

        server = StreamServer(("127.0.0.1", 0), handle)
        server.start()
        servers.append(server)
        return int(server.server_port)

    yield start
    for server in servers:
        server.stop(timeout=1)


def test_accept_then_run_echoes(one_shot: Any) -> None:
    def step(ws: WebSocket, request: Request) -> None:
        accept(ws, request, headers=(("X-Accepted", "yes"),))
        ws.run(lambda w: w.send(str(w.receive(timeout=5))))

    ws = connect(f"ws://127.0.0.1:{one_shot(step)}/")
    ws.send("accepted")
    assert ws.receive(timeout=5) == "accepted"
    assert ws.receive(timeout=5) is None and ws.close_code == 1000


def test_reject_answers_its_status_and_headers(one_shot: Any) -> None:
    def step(ws: WebSocket, request: Request) -> None:
        reject(ws, 403, "not you", headers=(("X-Why", "origin"),))

    with pytest.raises(HandshakeRejected) as info:
        connect(f"ws://127.0.0.1:{one_shot(step)}/")
    assert info.value.status == 403 and ("x-why", "origin") in info.value.headers


def test_respond_sends_a_page(one_shot: Any, raw_peer: Any) -> None:
    def step(ws: WebSocket, request: Request) -> None:
        respond(ws, HTTPResponse(200, b"a page", headers=(("X-Page", "1"),)))

    peer = raw_peer(one_shot(step))
    peer.sock.sendall(b"GET /p HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = peer.read_until_eof()
    assert answer.startswith(b"HTTP/1.1 200 ") and b"X-Page: 1\r\n" in answer
    assert answer.endswith(b"\r\n\r\na page")


def test_going_away_closes_an_accepted_connection_with_1001(one_shot: Any) -> None:
    done = gevent.event.Event()

    def step(ws: WebSocket, request: Request) -> None:
        accept(ws, request)
        ws.run(going_away)
        done.set()

    ws = connect(f"ws://127.0.0.1:{one_shot(step)}/")
    assert ws.receive(timeout=5) is None
    assert (ws.close_code, ws.close_reason) == (1001, "going away")
    assert done.wait(5)
