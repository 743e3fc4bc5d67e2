"""Close frame bodies: which codes may travel, parsing and building (RFC 6455 §5.5.1, §7.4).

A body is a 2-byte code then a UTF-8 reason, 125 bytes at most (§5.5); 1005, 1006 and 1015
"MUST NOT be set as a status code in a Close control frame" (§7.4.1); 1016-2999 are
reserved, 3000-4999 belong to libraries and applications. This module does no I/O.
"""

from __future__ import annotations

from .errors import InvalidPayloadData, ProtocolError
from .frames import CloseCode

__all__ = ["check_close_code", "close_code_valid", "close_payload", "parse_close"]


def close_code_valid(code: int) -> bool:
    """True for the codes that may appear in a Close frame on the wire."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def check_close_code(code: int) -> None:
    """Raise ``ValueError`` for a code this endpoint must not send (caller's mistake)."""
    if not close_code_valid(code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 §7.4)")


def close_payload(code: int, reason: str) -> bytes:
    """Return a Close body; ``CloseCode.NO_STATUS`` gives the empty body (an empty echo)."""
    if code == CloseCode.NO_STATUS:
        return b""
    check_close_code(code)
    data = code.to_bytes(2, "big") + reason.encode("utf-8")
    if len(data) > 125:
        raise ValueError("close reason longer than 123 bytes (RFC 6455 §5.5)")
    return data


def parse_close(payload: bytes) -> tuple[int, str]:
    """Return ``(code, reason)`` of a received Close body; ``(1005, "")`` when empty.

    Raises:
        ProtocolError: a 1-byte body or a code that may not travel (1002).
        InvalidPayloadData: a reason that is not UTF-8 (1007).
    """
    if not payload:
        return CloseCode.NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload", code="invalid_close")
    code = int.from_bytes(payload[:2], "big")
    if not close_code_valid(code):
        raise ProtocolError(f"invalid close code {code}", code="invalid_close")
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPayloadData("close reason is not UTF-8", code="invalid_close") from None
