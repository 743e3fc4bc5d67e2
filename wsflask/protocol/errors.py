"""Errors of the protocol core, each carrying its wire mapping.

Two families, and the rule that separates them (STYLE.md rules 2-3):

* a **peer** that breaks RFC 6455 never makes ``receive_data()`` raise: the core fails the
  connection with the class's ``close_code`` and reports the error as ``Closed.cause``;
* a **caller** that misuses the API gets an exception (``InvalidState``, ``ValueError``).

Every ``ProtocolError`` carries ``code``, one of ``VIOLATION_CODES`` (a fixed vocabulary: what
the peer did wrong, for logs and the ``type`` label of a violations counter), and ``frame``,
the first ``FRAME_DUMP_BYTES`` of the offending frame when the core knows them (set on the
error path only, for a DEBUG hex dump).

Handshake failures carry the HTTP ``status`` (and the extra response headers) that the
server answers with. The tree::

    Exception
    ├── ProtocolError                close_code 1002 (RFC 6455 §7.4.1)
    │   ├── InvalidPayloadData       close_code 1007 (bad UTF-8, §8.1)
    │   ├── PolicyViolation          close_code 1008
    │   ├── MessageTooBig            close_code 1009 (§10.4 limits)
    │   └── CompressionError         close_code 1007 (corrupt permessage-deflate data)
    ├── HandshakeError               status 400
    │   ├── NotFound                 status 404
    │   ├── Forbidden                status 403 (refused Origin, §10.2)
    │   ├── MethodNotAllowed         status 405 + ``Allow: GET``
    │   ├── UpgradeRequired          status 426 + ``Sec-WebSocket-Version: 13`` (§4.4)
    │   ├── HeadersTooLarge          status 431
    │   ├── URITooLong               status 414
    │   ├── TooManyRequests          status 429
    │   └── ServiceUnavailable       status 503
    ├── InvalidHandshakeResponse     client side: the server's answer is not a valid 101
    │   └── HandshakeRejected        a well-formed refusal: status, headers, body
    └── InvalidState                 a command that the connection's state does not allow
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "FRAME_DUMP_BYTES",
    "VIOLATION_CODES",
    "CompressionError",
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
    "ServiceUnavailable",
    "TooManyRequests",
    "URITooLong",
    "UpgradeRequired",
]


#: Every ``ProtocolError.code``: a closed set, so a metric labelled with it stays bounded.
VIOLATION_CODES: tuple[str, ...] = (
    "unmasked", "masked_server_frame", "reserved_opcode", "reserved_bits",
    "fragmented_control", "control_too_long", "bad_length", "too_big", "invalid_utf8",
    "invalid_close", "bad_continuation", "bad_compression", "other",
)  # fmt: skip

#: At most this many bytes of the offending frame are kept in ``ProtocolError.frame``.
FRAME_DUMP_BYTES = 64


class ProtocolError(Exception):
    """The peer broke RFC 6455; the connection fails with ``close_code``.

    Attributes:
        code: what the peer did wrong, one of ``VIOLATION_CODES`` (the class's default
            unless given: ``ProtocolError("...", code="unmasked")``).
        frame: the first ``FRAME_DUMP_BYTES`` of the offending frame, ``b""`` when unknown.
            A frame refused from its header is kept as received (masked); one refused for
            what it carries (sequence, UTF-8, close body, size, inflation) is re-encoded
            from its decoded form: the header with the MASK bit clear, the payload unmasked.

    Raises:
        ValueError: ``code`` is not one of ``VIOLATION_CODES``.
    """

    close_code: int = 1002
    code: str = "other"
    frame: bytes = b""

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            if code not in VIOLATION_CODES:
                raise ValueError(f"unknown violation code {code!r}")
            self.code = code


class InvalidPayloadData(ProtocolError):
    """Text that is not UTF-8, or a close reason that is not (RFC 6455 §8.1)."""

    close_code = 1007
    code = "invalid_utf8"


class PolicyViolation(ProtocolError):
    """The peer broke a policy of this endpoint that no other code describes."""

    close_code = 1008


class MessageTooBig(ProtocolError):
    """A frame or message exceeds the configured limit (RFC 6455 §10.4)."""

    close_code = 1009
    code = "too_big"


class CompressionError(ProtocolError):
    """Compressed data that does not inflate (documented choice: 1007, as invalid data)."""

    close_code = 1007
    code = "bad_compression"


class HandshakeError(Exception):
    """The opening handshake is refused with ``status`` and ``headers``."""

    status: int = 400
    headers: tuple[tuple[str, str], ...] = ()


class NotFound(HandshakeError):
    """No route serves the requested resource (RFC 6455 §4.2.2 step 2)."""

    status = 404


class Forbidden(HandshakeError):
    """The Origin is not one this server accepts (RFC 6455 §10.2)."""

    status = 403


class MethodNotAllowed(HandshakeError):
    """The request method is not GET (RFC 6455 §4.1: "The method of the request MUST be GET")."""

    status = 405
    headers = (("Allow", "GET"),)


class UpgradeRequired(HandshakeError):
    """An unsupported ``Sec-WebSocket-Version`` (RFC 6455 §4.4)."""

    status = 426
    headers = (("Sec-WebSocket-Version", "13"),)


class HeadersTooLarge(HandshakeError):
    """The request head exceeds the byte or header-count limit."""

    status = 431


class URITooLong(HandshakeError):
    """The request line is longer than the head limit (RFC 9110 §15.5.15)."""

    status = 414


class TooManyRequests(HandshakeError):
    """A per-client limit was reached."""

    status = 429


class ServiceUnavailable(HandshakeError):
    """The server cannot take the connection now (capacity, draining)."""

    status = 503


class InvalidHandshakeResponse(Exception):
    """Client side: the server did not answer with a valid 101 (RFC 6455 §4.1)."""


class HandshakeRejected(InvalidHandshakeResponse):
    """Client side: the server answered the opening handshake with a non-101 status.

    Attributes:
        status: the HTTP status code (e.g. 403, 429, 503).
        headers: the response headers, names lower-cased, in arrival order.
        body: the part of the response body that arrived with the head.
    """

    def __init__(
        self, status: int, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        super().__init__(f"server rejected the WebSocket handshake with status {status}")
        self.status = status
        self.headers = tuple(headers)
        self.body = body


class InvalidState(Exception):
    """The caller issued a command that the connection's state does not allow."""
