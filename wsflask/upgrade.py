"""The handshake decision: a resolver's answer to one HTTP request, and its types.

``Upgrade`` accepts the WebSocket and names the handler, ``HTTPResponse`` answers plain HTTP,
and a ``Resolver`` maps a ``Request`` to one of them (or raises ``HandshakeError``). Both the
``Server`` and the pywsgi handler act on the same decision. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .protocol import Request

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["HTTPResponse", "Resolver", "Upgrade"]


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
