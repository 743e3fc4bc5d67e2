"""The public error tree: wsflask's own errors, and the protocol core's re-exported.

Each carries its wire mapping (STYLE.md rule 3); the core's tree (``ProtocolError`` with close
codes, ``HandshakeError`` with statuses, ``InvalidHandshakeResponse`` and ``HandshakeRejected``)
is drawn in ``protocol/errors.py``. Defined here: ``WsflaskError`` (``ConnectionClosed``,
``ConfigError``, ``SetupError``) and ``Reject``, a ``HandshakeError`` with any status.
"""

from __future__ import annotations

from collections.abc import Iterable

from .protocol.errors import (
    CompressionError,
    Forbidden,
    HandshakeError,
    HandshakeRejected,
    HeadersTooLarge,
    InvalidHandshakeResponse,
    InvalidPayloadData,
    InvalidState,
    MessageTooBig,
    MethodNotAllowed,
    NotFound,
    PolicyViolation,
    ProtocolError,
    ServiceUnavailable,
    TooManyRequests,
    UpgradeRequired,
    URITooLong,
)
from .protocol.frames import CloseCode

__all__ = [
    "CompressionError",
    "ConfigError",
    "ConnectionClosed",
    "Forbidden",
    "HandshakeError",
    "HandshakeRejected",
    "HeadersTooLarge",
    "InvalidHandshakeResponse",
    "InvalidPayloadData",
    "InvalidState",
    "MessageTooBig",
    "MethodNotAllowed",
    "NotFound",
    "PolicyViolation",
    "ProtocolError",
    "Reject",
    "ServiceUnavailable",
    "SetupError",
    "TooManyRequests",
    "URITooLong",
    "UpgradeRequired",
    "WsflaskError",
]


class WsflaskError(Exception):
    """Base class of the errors wsflask itself defines."""


class ConnectionClosed(WsflaskError):
    """``send()`` or ``receive()`` was called on a connection that is closed or closing.

    Attributes:
        code: the close code that ended the connection (1006 when the transport died).
        reason: the close reason that goes with ``code``.
    """

    def __init__(self, code: int = CloseCode.ABNORMAL, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class Reject(HandshakeError):
    """Refuse an opening handshake with any status, e.g. ``raise Reject(401, "login first")``.

    Raised by ``before_upgrade`` hooks or a resolver; the server answers with ``status``,
    ``headers`` and ``message`` as the plain-text body.
    """

    def __init__(
        self, status: int, message: str = "", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)


class ConfigError(WsflaskError, ValueError):
    """A configuration value is invalid; the message names the key, the value and the range."""


class SetupError(WsflaskError, RuntimeError):
    """The app was changed at a time it cannot be, e.g. a route registered after ``run()``."""
