"""upgrade.py: the server-side handshake decision, driven over a real loopback socket pair."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest

from wsflask.config import Config
from wsflask.errors import NotFound, Reject
from wsflask.protocol import Connection, Request, Side
from wsflask.upgrade import HTTPResponse, Upgrade, answer, read_request
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

PACKAGE = Path(__file__).resolve().parent.parent / "wsflask"
UPGRADE = (
    b"GET /chat?token=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
PLAIN_GET = b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n"
CONFIG = Config(close_timeout=0.5, handshake_timeout=1.0)


class Statuses:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    def handshake(self, status: int) -> None:
        self.statuses.append(status)


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    """A connected (server side, client side) pair of gevent TCP sockets on 127.0.0.1."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gevent.socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield server, client
    client.close()
    server.close()


def read_all(sock: Any) -> bytes:
    data = b""
    with gevent.Timeout(5):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def decide(
    pair: tuple[Any, Any], head: bytes, resolve: Any, *, stopping: bool = False
) -> tuple[Upgrade | None, bytes, list[int], WebSocket]:
    server, client = pair
    ws = WebSocket(
        server,
        Connection(Side.SERVER, http=True),
        config=CONFIG,
        remote_address=("127.0.0.1", 1234),
        initial=head,
    )
    request = read_request(ws)
    assert isinstance(request, Request)
    statuses = Statuses()
    result = answer(ws, request, resolve, stopping=stopping, metrics=statuses)
    answered = b"" if result is not None else read_all(client)
    return result, answered, statuses.statuses, ws


def test_upgrade_answers_101_and_copies_session_and_params(pair: Any) -> None:
    seen: list[Any] = []

    def resolve(request: Request, address: tuple[str, int]) -> Upgrade:
        seen.append((request.path, address))
        return Upgrade(lambda ws: None, session={"user": "u"}, path_params={"room": "r"})

    result, _, statuses, ws = decide(pair, UPGRADE, resolve)
    assert result is not None and statuses == [101]
    assert seen == [("/chat", ("127.0.0.1", 1234))]
    assert ws.session == {"user": "u"} and ws.path_params == {"room": "r"} and ws.is_open
    head = pair[1].recv(65536)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    ws.abort()


def test_http_response_is_sent_and_counted(pair: Any) -> None:
    result, answered, statuses, _ = decide(
        pair, PLAIN_GET, lambda r, a: HTTPResponse(200, b"a page", headers=(("X-A", "1"),))
    )
    assert result is None and statuses == [200]
    assert answered.startswith(b"HTTP/1.1 200 OK\r\n") and answered.endswith(b"\r\n\r\na page")
    assert b"X-A: 1\r\n" in answered


def test_handshake_error_answers_its_status_and_headers(pair: Any) -> None:
    def resolve(request: Request, address: Any) -> Upgrade:
        raise Reject(401, "login first", headers=(("WWW-Authenticate", "Bearer"),))

    result, answered, statuses, _ = decide(pair, UPGRADE, resolve)
    assert result is None and statuses == [401]
    assert answered.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"WWW-Authenticate: Bearer\r\n" in answered and answered.endswith(b"login first")


def test_not_found_subclass_answers_404(pair: Any) -> None:
    def resolve(request: Request, address: Any) -> Upgrade:
        raise NotFound("no such route")

    _, answered, statuses, _ = decide(pair, UPGRADE, resolve)
    assert statuses == [404] and answered.startswith(b"HTTP/1.1 404 Not Found\r\n")


def test_resolver_bug_answers_500_and_logs(pair: Any, caplog: Any) -> None:
    def resolve(request: Request, address: Any) -> Upgrade:
        raise RuntimeError("resolver bug")

    with caplog.at_level(logging.ERROR, logger="wsflask"):
        _, answered, statuses, _ = decide(pair, UPGRADE, resolve)
    assert statuses == [500] and answered.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert "resolver failed for /chat" in caplog.text


def test_stopping_answers_503_with_retry_after_without_resolving(pair: Any) -> None:
    def resolve(request: Request, address: Any) -> Upgrade:
        raise AssertionError("not asked while stopping")

    _, answered, statuses, _ = decide(pair, UPGRADE, resolve, stopping=True)
    assert statuses == [503] and answered.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1\r\n" in answered


def test_plain_get_for_a_websocket_route_answers_426(pair: Any) -> None:
    _, answered, statuses, _ = decide(pair, PLAIN_GET, lambda r, a: Upgrade(lambda ws: None))
    assert statuses == [426] and answered.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Upgrade: websocket\r\n" in answered


REFUSED_BY_BUILD_RESPONSE = {
    "status 999": lambda r, a: (_ for _ in ()).throw(Reject(999, "odd")),
    "reject sets Content-Length": lambda r, a: (_ for _ in ()).throw(
        Reject(401, "x", headers=(("Content-Length", "0"),))
    ),
    "CRLF in a header": lambda r, a: (_ for _ in ()).throw(
        Reject(302, "x", headers=(("Location", "/a\r\nSet-Cookie: s=1"),))
    ),
    "204 with a body": lambda r, a: HTTPResponse(204, b"x"),
}


@pytest.mark.parametrize(
    "resolve", REFUSED_BY_BUILD_RESPONSE.values(), ids=list(REFUSED_BY_BUILD_RESPONSE)
)
def test_defect7_an_answer_build_response_refuses_becomes_500_and_a_log_line(
    pair: Any, caplog: Any, resolve: Any
) -> None:
    with caplog.at_level(logging.ERROR, logger="wsflask"):
        result, answered, statuses, _ = decide(pair, UPGRADE, resolve)
    assert result is None and statuses == [500]
    assert answered.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"Set-Cookie" not in answered
    assert "cannot be sent" in caplog.text


def test_defect13_head_response_has_the_get_headers_and_no_body(pair: Any) -> None:
    """RFC 9110 §9.3.2: the server MUST NOT send content in the response to HEAD."""
    head = b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    result, answered, statuses, _ = decide(pair, head, lambda r, a: HTTPResponse(200, b"ok"))
    assert result is None and statuses == [200]
    assert answered.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 2\r\n" in answered
    assert answered.endswith(b"\r\n\r\n")
