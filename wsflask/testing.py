"""A test client for users' own tests: a real server on 127.0.0.1:0 and real client sockets.

``app.test_client()`` starts the app's server on first use (``start()`` binds synchronously),
connects clients with ``wsflask.client.connect``, exchanges JSON envelopes, asserts refusals
and close codes, answers the server's calls (``ws.call``), and fetches plain pages; every
wait is bounded. No monkey-patching, no fake
transport, no pytest dependency; it never imports ``wsflask.app``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, TypeVar

import gevent
from gevent import socket as gsocket

from .client import connect
from .envelopes import encode
from .errors import HandshakeRejected
from .protocol.handshake import parse_response_head
from .server import Server
from .websocket import WebSocket

__all__ = ["HTTPResult", "ServerFactory", "TestClient"]

F = TypeVar("F", bound=Callable[[Any], Any])


class ServerFactory(Protocol):
    """What a ``TestClient`` serves: ``App`` fits."""

    def make_server(self, host: str | None = None, port: int | None = None) -> Server: ...


class HTTPResult:
    """A plain HTTP answer: ``status``, lower-cased ``headers`` and ``body``."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class TestClient:
    """Drive an app over real sockets.

    Args:
        app: the app (anything with ``make_server``).
        timeout: the default bound, in seconds, of every wait.

    Use it as a context manager; ``connect()`` starts the server if needed. Then ``send`` /
    ``receive`` / ``emit`` / ``receive_json`` / ``assert_closed`` on the returned socket.

    Every connection answers the server's calls (``ws.call``) while it is read: with the
    handlers registered by ``@client.on(event)`` (``fn(data)`` returns the ack's data), and
    with an ``error`` envelope "UnknownEvent" for any other event.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, app: ServerFactory, *, timeout: float = 5.0) -> None:
        self.app = app
        self.timeout = timeout
        self.server: Server | None = None
        self._clients: list[WebSocket] = []
        #: event -> handler answering the server's calls, shared by every connection
        self.call_handlers: dict[str, Callable[[Any], Any]] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Server:
        """Start the app's server on 127.0.0.1:0 (idempotent) and return it."""
        if self.server is None:
            server = self.app.make_server("127.0.0.1", 0)
            server.start()
            self.server = server
        return self.server

    @property
    def port(self) -> int:
        """The server's ephemeral port (starts the server)."""
        return int(self.start().server_port)

    def url(self, path: str = "/") -> str:
        """``ws://127.0.0.1:PORT/path`` for this server."""
        return f"ws://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        """Close every client this test client made, then stop the server. Idempotent."""
        clients, self._clients = self._clients, []
        for ws in clients:
            ws.close()
        server, self.server = self.server, None
        if server is not None:
            server.stop(timeout=self.timeout)

    def __enter__(self) -> TestClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- WebSocket -----------------------------------------------------------------------------

    def connect(
        self,
        path: str = "/",
        *,
        headers: Iterable[tuple[str, str]] = (),
        subprotocols: Iterable[str] = (),
        timeout: float | None = None,
    ) -> WebSocket:
        """Open a client WebSocket to ``path``; raises ``HandshakeRejected`` when refused."""
        url = self.url(path)
        limit = timeout if timeout is not None else self.timeout
        with gevent.Timeout(limit + 1.0):
            ws = connect(
                url, headers=tuple(headers), subprotocols=tuple(subprotocols), timeout=limit
            )
        ws.answer_calls(self.call_handlers)
        self._clients.append(ws)
        return ws

    def on(self, event: str) -> Callable[[F], F]:
        """Register ``fn(data)`` to answer the server's calls of ``event``: its result is
        the ack's data, an exception an ``error`` reply. Applies to every connection."""

        def decorator(func: F) -> F:
            self.call_handlers[event] = func
            return func

        return decorator

    def assert_refused(
        self,
        path: str,
        status: int,
        *,
        headers: Iterable[tuple[str, str]] = (),
        subprotocols: Iterable[str] = (),
    ) -> HandshakeRejected:
        """Assert the handshake to ``path`` is refused with ``status``; return the refusal."""
        try:
            ws = self.connect(path, headers=headers, subprotocols=subprotocols)
        except HandshakeRejected as exc:
            if exc.status != status:
                raise AssertionError(
                    f"{path}: refused with {exc.status}, expected {status}"
                ) from exc
            return exc
        ws.close()
        raise AssertionError(f"{path}: handshake accepted, expected refusal {status}")

    def receive(self, ws: WebSocket, timeout: float | None = None) -> str | bytes | None:
        """The next message on ``ws`` (None once closed); raises ``TimeoutError`` when none
        comes within ``timeout`` seconds."""
        limit = timeout if timeout is not None else self.timeout
        with gevent.Timeout(limit + 1.0):
            return ws.receive(timeout=limit)

    def emit(self, ws: WebSocket, event: str, data: Any = None, *, id: Any = None) -> None:
        """Send the JSON envelope ``{"event": event, "data": data[, "id": id]}`` on ``ws``."""
        ws.send(encode(event, data, id))

    def receive_json(self, ws: WebSocket, timeout: float | None = None) -> Any:
        """Receive one text message and decode it; raises ``AssertionError`` when closed."""
        message = self.receive(ws, timeout)
        if message is None:
            raise AssertionError(f"connection closed ({ws.close_code} {ws.close_reason!r})")
        if isinstance(message, bytes):
            raise AssertionError(f"expected a JSON text message, got bytes {message[:60]!r}")
        return json.loads(message)

    def assert_closed(
        self, ws: WebSocket, code: int | None = None, timeout: float | None = None
    ) -> int | None:
        """Wait until ``ws`` closes (discarding messages), check ``code``; return the code."""
        limit = timeout if timeout is not None else self.timeout
        with gevent.Timeout(limit, AssertionError(f"still open after {limit} s")):
            for _ in ws:
                pass
        if code is not None and ws.close_code != code:
            raise AssertionError(
                f"closed with {ws.close_code} {ws.close_reason!r}, expected {code}"
            )
        return ws.close_code

    # -- plain HTTP ----------------------------------------------------------------------------

    def get(
        self, path: str, *, headers: Iterable[tuple[str, str]] = (), timeout: float | None = None
    ) -> HTTPResult:
        """GET ``path`` over plain HTTP/1.1 (``Connection: close``) and return the answer."""
        limit = timeout if timeout is not None else self.timeout
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        with gevent.Timeout(limit), gsocket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status, fields = parse_response_head(head)
        by_name = dict(fields)
        if "content-length" in by_name:
            body = body[: int(by_name["content-length"])]
        return HTTPResult(status, by_name, body)
