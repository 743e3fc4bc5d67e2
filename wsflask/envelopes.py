"""The JSON event-envelope codec: ``{"event": name, "data": ..., "id": ...}`` as text messages.

``encode`` and ``decode`` are the one place the format is written and read (``App``, the
emitter, the bridge, ``TestClient`` and ``wsflask.locust`` use them); ``error`` builds a
bounded error reply. No dispatch, no handlers, no I/O: running events is ``dispatch.py``'s.
"""

from __future__ import annotations

import json as jsonlib
from typing import Any

__all__ = ["QUOTE_LIMIT", "decode", "encode", "error", "quote", "too_deep", "valid_id"]


def encode(event: str, data: Any = None, id: Any = None) -> str:
    """Encode the event envelope ``{"event", "data"[, "id"]}`` compactly, as a text message.

    The one encoder of the JSON event format: ``App``, ``WebSocket``, the backplane emitter
    and bridge, ``TestClient`` and ``wsflask.locust`` all call it.
    Raises ``ValueError`` for NaN or Infinity and ``TypeError`` for what JSON cannot hold:
    the output is always RFC 8259 JSON, which a browser's ``JSON.parse`` accepts.
    """
    body: dict[str, Any] = {"event": event, "data": data}
    if id is not None:
        body["id"] = id
    return jsonlib.dumps(body, separators=(",", ":"), allow_nan=False)


def decode(message: str | bytes) -> dict[str, Any] | None:
    """The envelope in ``message``, or ``None`` when it is not an event envelope.

    An envelope is a JSON object with a string ``"event"``; ``"data"`` and ``"id"`` are
    optional. Never raises on bad input (malformed or deeply nested JSON, or the
    ``NaN``/``Infinity`` tokens JSON does not have, give ``None``).
    """
    try:
        decoded = jsonlib.loads(message, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return None
    if isinstance(decoded, dict) and isinstance(decoded.get("event"), str):
        return decoded
    return None


def too_deep(message: str, limit: int) -> bool:
    """True when JSON ``message`` nests arrays/objects more than ``limit`` deep.

    Free for ordinary messages: the exact scan (brackets outside strings) runs only when the
    message holds more than ``limit`` opening brackets at all (two C-speed counts).
    """
    if message.count("[") + message.count("{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for char in message:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not JSON (RFC 8259)")


def valid_id(id: Any) -> bool:
    """A request id a reply may echo: a string of at most ``QUOTE_LIMIT`` characters, or an
    int of at most 64 bits. Longer ids are refused, so a reply never grows with the input."""
    if isinstance(id, str):
        return len(id) <= QUOTE_LIMIT
    return isinstance(id, int) and not isinstance(id, bool) and -(2**63) <= id < 2**63


#: the most characters of any client input (an event name, an id) an error reply carries
QUOTE_LIMIT = 64
#: a safety cap on an error reply's whole message (server text plus quoted input)
_MESSAGE_LIMIT = 4 * QUOTE_LIMIT


def quote(text: str) -> str:
    """``text`` as an error reply may show it: at most ``QUOTE_LIMIT`` characters."""
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "..."


def error(type: str, message: str, id: Any = None) -> str:
    """Encode ``{"event": "error", "data": {"type", "message"}[, "id"]}``, bounded.

    ``message`` is the server's text (quote client input in it with ``quote()``); ``id``
    is the request's id, echoed only when it is short (a str cut by ``quote()``, an int of
    at most 64 bits); anything else is left out. So a reply never grows with the input.
    """
    if isinstance(id, str):
        id = quote(id)
    elif not isinstance(id, int) or not -(2**63) <= id < 2**63:
        id = None
    return encode("error", {"type": type, "message": message[:_MESSAGE_LIMIT]}, id)
