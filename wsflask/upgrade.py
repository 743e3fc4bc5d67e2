"""The server side of the opening handshake, decided once for ``Server`` and the WSGI handler.

``read_request``/``accept``/``reject``/``respond`` drive a ``WebSocket``'s core through its
public driver API, and ``answer()`` acts on a ``Resolver``'s decision (``Upgrade``: 101,
``HTTPResponse``: a plain page, ``HandshakeError``: a refusal). No accept loop, no routing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import Reject
from .protocol import CloseCode, HandshakeError, Request

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = [
    "HTTPResponse", "HandshakeCounter", "Resolver", "Upgrade", "accept", "answer", "going_away",
    "read_request", "reject", "respond",
]  # fmt: skip

logger = logging.getLogger("wsflask")


@dataclass
class Upgrade:
    """A resolver's answer: accept the WebSocket and run ``handler(ws)``.

    Attributes:
        handler: runs in the connection's greenlet; the connection closes when it returns.
        subprotocol: the one to announce (from the client's offers), or ``None``.
        headers: extra headers for the 101 response.
        session: copied into ``ws.session`` (e.g. what ``before_upgrade`` hooks returned).
        path_params: copied into ``ws.path_params``.
    """

    handler: Callable[[WebSocket], None]
    subprotocol: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    session: dict[str, Any] = field(default_factory=dict)
    path_params: dict[str, str] = field(default_factory=dict)


@dataclass
class HTTPResponse:
    """A resolver's answer: a plain HTTP response (then the connection closes)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Resolver = Callable[[Request, tuple[str, int]], Upgrade | HTTPResponse]


class HandshakeCounter(Protocol):
    """What ``answer()`` reports each final status to (``Metrics`` fits)."""

    def handshake(self, status: int) -> None: ...


def read_request(ws: WebSocket) -> Request | HandshakeError | None:
    """Read until the request head is complete.

    Returns:
        the ``Request`` (next: ``answer()``, or ``accept``/``reject``/``respond``); the
        ``HandshakeError`` the core already answered (400/405/426/431; the connection is
        closed); or ``None`` when the peer went away.
    """
    ws.read_handshake()
    if ws.request is not None:
        return ws.request
    return ws.close_cause if isinstance(ws.close_cause, HandshakeError) else None


def accept(ws: WebSocket, request: Request, *, subprotocol: str | None = None,
           headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answer ``request`` with 101. Next: ``ws.run(handler)``."""
    ws.connection.accept(request, subprotocol=subprotocol, headers=headers)
    ws.flush()


def reject(ws: WebSocket, status: int, message: str = "", *,
           headers: Iterable[tuple[str, str]] = ()) -> None:
    """Refuse the handshake with ``status``; returns once the socket is closed.

    Raises:
        ValueError: ``build_response`` refuses the status or a header.
    """
    ws.connection.reject(status, message, headers=headers)
    ws.flush()


def respond(ws: WebSocket, response: HTTPResponse) -> None:
    """Answer a plain HTTP request; returns once the socket is closed.

    Raises:
        ValueError: ``build_response`` refuses the status, body or a header.
    """
    ws.connection.respond(response.status, response.body, content_type=response.content_type,
                          headers=response.headers)
    ws.flush()


def answer(ws: WebSocket, request: Request, resolve: Resolver, *, stopping: bool,
           metrics: HandshakeCounter | None) -> Upgrade | None:
    """Ask ``resolve`` and answer: 101 (returns the ``Upgrade``), a page, or a refusal.

    A ``HandshakeError`` (``Reject``...) is answered with its status, headers and message;
    any other exception with 500, logged. ``stopping`` refuses with 503. Each final status
    is counted on ``metrics``. Returns ``None`` when the connection is over.
    """
    try:
        if stopping:  # RFC 9110 §15.6.4, with Retry-After
            raise Reject(503, "server shutting down", (("Retry-After", "1"),))
        result = resolve(request, ws.remote_address or ("", 0))
        if isinstance(result, HTTPResponse):
            _count(metrics, result.status)
            respond(ws, result)
            return None
        if not request.key:  # a plain GET for a WebSocket route (RFC 9110 §15.5.22)
            raise Reject(426, "this resource needs a WebSocket upgrade",
                         (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")))
    except HandshakeError as exc:
        _refuse(ws, exc.status, str(exc), exc.headers, metrics)
        return None
    except Exception:
        logger.exception("resolver failed for %s", request.path)
        _refuse(ws, 500, "internal server error", (), metrics)
        return None
    ws.session.update(result.session)
    ws.path_params.update(result.path_params)
    _count(metrics, 101)
    accept(ws, request, subprotocol=result.subprotocol, headers=result.headers)
    return result


def going_away(ws: WebSocket) -> None:
    """The handler of a connection accepted while the server began to stop: 1001."""
    ws.close(CloseCode.GOING_AWAY, "going away")


def _refuse(ws: WebSocket, status: int, message: str, headers: Iterable[tuple[str, str]],
            metrics: HandshakeCounter | None) -> None:
    _count(metrics, status)
    reject(ws, status, message, headers=headers)


def _count(metrics: HandshakeCounter | None, status: int) -> None:
    if metrics is not None:
        metrics.handshake(status)
