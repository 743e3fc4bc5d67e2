"""Events that ``Connection.events_received()`` returns, in the order they happened.

Server side: ``Request``, then ``Opened``, messages, pings and pongs, and exactly one
``Closed``; client side: ``Opened`` (the 101 was valid), then the same. Data only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ProtocolError
from .query import MultiDict, parse_cookies, parse_query

__all__ = [
    "BinaryMessage",
    "Closed",
    "Event",
    "Opened",
    "Ping",
    "Pong",
    "Request",
    "TextMessage",
]


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed, validated opening handshake request (RFC 6455 §4.2.1).

    Attributes:
        method: the request method, always ``GET`` once validated.
        target: the request target as sent, path and query (``/chat/x?nick=a``).
        path: the path part of ``target``, not percent-decoded.
        query: the query string without ``?`` (``""`` when absent).
        headers: ``(name, value)`` pairs in arrival order, names lower-cased, values trimmed.
        key: the ``Sec-WebSocket-Key`` as sent (24 base64 characters).
        subprotocols: the client's ``Sec-WebSocket-Protocol`` offers, in order.
        extensions: the parsed ``Sec-WebSocket-Extensions`` offers (RFC 6455 §9.1), in order,
            each ``(name, ((param, value_or_None), ...))``.
        remote_addr: the peer's IP address as the server saw it (no proxy headers read),
            ``None`` when the driver did not know it (the sans-I/O core alone).

    ``args`` and ``cookies`` are parsed on first access and cached: a handshake that never
    looks pays nothing.
    """

    method: str
    target: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    key: str
    subprotocols: tuple[str, ...] = ()
    extensions: tuple[tuple[str, tuple[tuple[str, str | None], ...]], ...] = ()
    remote_addr: str | None = None
    _args: MultiDict | None = field(default=None, init=False, repr=False, compare=False)
    _cookies: MultiDict | None = field(default=None, init=False, repr=False, compare=False)

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or ``default``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default

    @property
    def args(self) -> MultiDict:
        """The query's parameters, percent-decoded: ``args.get("token")``,
        ``args.getlist("x")`` (``query`` keeps the raw string)."""
        args = self._args
        if args is None:
            args = parse_query(self.query)
            object.__setattr__(self, "_args", args)  # a cache, set once
        return args

    @property
    def cookies(self) -> MultiDict:
        """The ``Cookie`` header's cookies (every ``Cookie`` line), by name: first wins."""
        cookies = self._cookies
        if cookies is None:
            cookies = parse_cookies(value for name, value in self.headers if name == "cookie")
            object.__setattr__(self, "_cookies", cookies)
        return cookies

    @property
    def is_websocket(self) -> bool:
        """False for a plain HTTP request (no ``Upgrade``), which gets ``respond()``."""
        return bool(self.key)

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, or ``None`` for clients that send none (non-browsers)."""
        return self.header("origin")

    @property
    def host(self) -> str | None:
        """The ``Host`` header."""
        return self.header("host")


@dataclass(frozen=True, slots=True)
class Opened:
    """The handshake is complete; messages may flow.

    Attributes:
        subprotocol: the negotiated subprotocol, or ``None``.
        extensions: the negotiated ``Sec-WebSocket-Extensions`` value, or ``""``.
        headers: client side, the 101 response's headers (lower-cased names); server side, ``()``.
    """

    subprotocol: str | None = None
    extensions: str = ""
    headers: tuple[tuple[str, str], ...] = ()


# The two message events are slots dataclasses but not frozen: a frozen dataclass's __init__
# goes through object.__setattr__ and costs about 2.5x as much per message, and messages are
# the hot path (ARCHITECTURE.md §3 rule 1). Treat them as read-only.
@dataclass(slots=True)
class TextMessage:
    """A complete text message, validated as UTF-8 (RFC 6455 §5.6, §8.1)."""

    data: str


@dataclass(slots=True)
class BinaryMessage:
    """A complete binary message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping arrived; the core has already queued the pong (RFC 6455 §5.5.2)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong arrived, solicited or not (RFC 6455 §5.5.3)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket connection is closed; always the last event, reported exactly once.

    Attributes:
        code: the close code that ended the connection: the peer's when it sent a Close
            (1005 when its Close had no code), ours when we failed the connection, and 1006
            when the transport ended without a closing handshake (RFC 6455 §7.1.5).
        reason: the close reason that goes with ``code``.
        cause: the ``ProtocolError`` that made us fail the connection, else ``None``; its
            ``code`` names the violation (``errors.VIOLATION_CODES``) and its ``frame`` holds
            the first bytes of the offending frame.
        clean: True when a Close frame was both sent and received (RFC 6455 §7.1.4).
    """

    code: int
    reason: str = ""
    cause: Exception | None = field(default=None, compare=False)
    clean: bool = False

    @property
    def violation(self) -> str | None:
        """``cause.code`` when the peer broke the protocol (one of ``VIOLATION_CODES``)."""
        cause = self.cause
        return cause.code if isinstance(cause, ProtocolError) else None


Event = Request | Opened | TextMessage | BinaryMessage | Ping | Pong | Closed
