"""The public error tree of wsflask, with the protocol core's errors re-exported.

What it does: defines the exceptions users catch or raise, each carrying its wire mapping as
a class or instance attribute (STYLE.md rule 3). What it does not do: no lookup tables from
exceptions to codes elsewhere, no logging. The tree::

    Exception
    ├── WsflaskError
    │   ├── ConnectionClosed          send()/receive() on a closed connection; code, reason
    │   ├── ConfigError (ValueError)  a setting out of range; names key, value and range
    │   └── SetupError (RuntimeError) e.g. registering a route after run()
    ├── ProtocolError                 close_code 1002 (peer broke RFC 6455)
    │   ├── InvalidPayloadData        close_code 1007
    │   ├── PolicyViolation           close_code 1008
    │   ├── MessageTooBig             close_code 1009
    │   └── CompressionError          close_code 1007
    ├── HandshakeError                status 400 (server refuses the opening handshake)
    │   ├── NotFound 404, Forbidden 403, MethodNotAllowed 405, UpgradeRequired 426,
    │   │   HeadersTooLarge 431, TooManyRequests 429, ServiceUnavailable 503
    │   └── Reject                    any status, raised by before_upgrade hooks
    ├── InvalidHandshakeResponse      client side: the answer is not a valid 101
    │   └── HandshakeRejected         client side: a well-formed refusal; status, headers, body
    └── InvalidState                  a command the connection's state does not allow
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
)

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

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class Reject(HandshakeError):
    """Refuse an opening handshake with any status, e.g. ``raise Reject(401, "login first")``.

    Raised by ``before_upgrade`` hooks or a resolver; the server answers with ``status``,
    ``headers`` and ``message`` as the plain-text body.
    """

    def __init__(self, status: int, message: str = "",
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)


class ConfigError(WsflaskError, ValueError):
    """A configuration value is invalid; the message names the key, the value and the range."""


class SetupError(WsflaskError, RuntimeError):
    """The app was changed at a time it cannot be, e.g. a route registered after ``run()``."""
