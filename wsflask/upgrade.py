"""The server side of the opening handshake, decided once for ``Server`` and the WSGI handler.

``read_request``/``accept``/``reject``/``respond`` drive a ``WebSocket``'s core through its
public driver API; ``answer()`` acts on a ``Resolver``'s decision (101, page or refusal). A
page or refusal is written within ``handshake_timeout`` (the HTTP exchange's deadline; then
TCP is dropped), its close within ``close_timeout``. No accept loop, no routing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import Reject
from .protocol import CloseCode, HandshakeError, Request
from .violations import error_token, reporter

if TYPE_CHECKING:
    from .replay import KeyReplayCache
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
    path_params: dict[str, Any] = field(default_factory=dict)


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


def read_request(ws: WebSocket, timeout: float | None = None) -> Request | HandshakeError | None:
    """Read until the request head is complete, within ``timeout`` seconds if given.

    Returns:
        the ``Request`` (next: ``answer()``, or ``accept``/``reject``/``respond``); the
        ``HandshakeError`` the core already answered (400/405/426/431; the connection is
        closed); or ``None`` when the peer went away.

    Raises:
        TimeoutError: ``timeout`` passed first (``ws.request_started`` tells whether any
            byte came: a partial request is answered 408, HS-06).
    """
    if ws.config.handshake_error_header:  # the core's refusals say why too (opt-in)
        ws.connection.error_header = True
    if not ws.read_handshake(timeout):
        raise TimeoutError(f"no complete request within {timeout} s")
    if ws.request is not None:
        return ws.request
    return ws.close_cause if isinstance(ws.close_cause, HandshakeError) else None


def accept(
    ws: WebSocket,
    request: Request,
    *,
    subprotocol: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Answer ``request`` with 101. Next: ``ws.run(handler)``."""
    ws.connection.accept(request, subprotocol=subprotocol, headers=headers)
    ws.flush()


def reject(
    ws: WebSocket, status: int, message: str = "", *, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Refuse the handshake with ``status``; returns once the socket is closed.

    Raises:
        ValueError: ``build_response`` refuses the status or a header (nothing was sent).
    """
    ws.connection.reject(status, message, headers=headers)
    ws.flush(ws.config.handshake_timeout)


def respond(ws: WebSocket, response: HTTPResponse) -> None:
    """Answer a plain HTTP request; returns once the socket is closed.

    Raises:
        ValueError: ``build_response`` refuses the status, body or a header (nothing sent).
    """
    ws.connection.respond(
        response.status, response.body, content_type=response.content_type, headers=response.headers
    )
    ws.flush(ws.config.handshake_timeout)


def answer(
    ws: WebSocket,
    request: Request,
    resolve: Resolver,
    *,
    stopping: bool,
    metrics: HandshakeCounter | None,
    replay: KeyReplayCache | None = None,
) -> Upgrade | None:
    """Ask ``resolve`` and answer: 101 (returns the ``Upgrade``), a page, or a refusal.

    A ``HandshakeError`` (``Reject``...) is answered with its status, headers and message;
    any other exception, or an answer ``build_response`` refuses, with 500, logged.
    ``stopping`` refuses with 503; a key ``replay`` remembers with a generic 400. Each final
    status is counted on ``metrics`` before it is written, each refusal logged
    (``violations.reporter``). Returns ``None`` when the connection is over.
    """
    outcome: Upgrade | HTTPResponse | HandshakeError
    if replay is not None and request.key and replay.seen(request.key):  # HS-17
        outcome = Reject(400, "bad request")
    else:
        outcome = _decide(request, resolve, ws.remote_address, stopping)
    try:
        status = _queue(ws, request, outcome)
    except ValueError as exc:  # nothing was queued: the core refused the answer itself
        logger.error("the answer to %s cannot be sent (%s); answering 500", request.path, exc)
        outcome = Reject(500, "internal server error")
        status = _queue(ws, request, outcome)
    _count(metrics, status)
    if isinstance(outcome, HandshakeError):
        reporter.refusal(ws.remote_address, status, str(outcome))
    if isinstance(outcome, Upgrade):
        ws.flush()
        return outcome
    ws.flush(ws.config.handshake_timeout)
    return None


def _decide(
    request: Request, resolve: Resolver, address: tuple[str, int] | None, stopping: bool
) -> Upgrade | HTTPResponse | HandshakeError:
    if stopping:  # RFC 9110 §15.6.4, with Retry-After
        return Reject(503, "server shutting down", (("Retry-After", "1"),))
    try:
        result = resolve(request, address or ("", 0))
    except HandshakeError as exc:
        return exc
    except Exception:
        logger.exception("resolver failed for %s", request.path)
        return Reject(500, "internal server error")
    if isinstance(result, Upgrade) and not request.key:  # a plain GET (RFC 9110 §15.5.22)
        return Reject(
            426,
            "this resource needs a WebSocket upgrade",
            (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")),
        )
    return result


def _queue(
    ws: WebSocket, request: Request, outcome: Upgrade | HTTPResponse | HandshakeError
) -> int:
    """Issue the core command for ``outcome`` (no I/O yet); return the status it answers."""
    conn = ws.connection
    if isinstance(outcome, Upgrade):
        conn.accept(request, subprotocol=outcome.subprotocol, headers=outcome.headers)
        if outcome.session:  # else nothing: the connection makes its dicts on first use
            ws.session.update(outcome.session)
        if outcome.path_params:
            ws.path_params.update(outcome.path_params)
        return 101
    if isinstance(outcome, HTTPResponse):
        conn.respond(
            outcome.status, outcome.body, content_type=outcome.content_type, headers=outcome.headers
        )
        return outcome.status
    headers = outcome.headers
    if ws.config.handshake_error_header:  # a debugging aid: say why, as a token
        headers = (*headers, ("X-WebSocket-Error", error_token(str(outcome))))
    conn.reject(outcome.status, str(outcome), headers=headers)
    return outcome.status


def going_away(ws: WebSocket) -> None:
    """The handler of a connection accepted while the server began to stop: 1001."""
    ws.close(CloseCode.GOING_AWAY, "going away")


def _count(metrics: HandshakeCounter | None, status: int) -> None:
    if metrics is not None:
        metrics.handshake(status)
