"""JSON event envelopes: decode one, call its handler, answer with an ack or an error envelope.

What it does: ``dispatch()`` handles one message of a ``json=True`` route: parses
``{"event": name, "data": ..., "id": ...}``, calls the route's handler for ``name`` (or its
``"*"`` catch-all), and sends ``{"event": "ack", "data": result, "id": id}`` when the message
had an ``id``; malformed JSON, a non-object, a missing or reserved event name, or an unknown
event get an ``{"event": "error", ...}`` envelope and the connection stays open; a binary
message closes with 1003. ``envelope()`` encodes ``{"event", "data"[, "id"]}`` compactly
(``App.emit()`` uses it too).

What it does not do: no routing, no handler registration, no connect/disconnect lifecycle, no
exception handling (``app.py`` does all of that), no socket I/O beyond ``ws.send``/``ws.close``.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["LIFECYCLE", "decode", "dispatch", "encode", "envelope"]

#: events a client may not send: the framework runs them itself
LIFECYCLE = ("connect", "disconnect")


def encode(event: str, data: Any = None, id: Any = None) -> str:
    """Encode the event envelope ``{"event", "data"[, "id"]}`` compactly, as a text message.

    The one encoder of the JSON event format: ``App``, ``WebSocket``, the backplane emitter
    and bridge, ``TestClient`` and ``wsflask.locust`` all call it.
    """
    body: dict[str, Any] = {"event": event, "data": data}
    if id is not None:
        body["id"] = id
    return jsonlib.dumps(body, separators=(",", ":"))


def decode(message: str | bytes) -> dict[str, Any] | None:
    """The envelope in ``message``, or ``None`` when it is not an event envelope.

    An envelope is a JSON object with a string ``"event"``; ``"data"`` and ``"id"`` are
    optional. Never raises on bad input (malformed or deeply nested JSON gives ``None``).
    """
    try:
        decoded = jsonlib.loads(message)
    except (ValueError, RecursionError):
        return None
    if isinstance(decoded, dict) and isinstance(decoded.get("event"), str):
        return decoded
    return None


def envelope(event: str, data: Any, msg_id: Any = None) -> str:
    """Encode ``{"event", "data"[, "id"]}`` compactly; send the result as a text message."""
    body: dict[str, Any] = {"event": event, "data": data}
    if msg_id is not None:
        body["id"] = msg_id
    return jsonlib.dumps(body, separators=(",", ":"))


def dispatch(
    ws: WebSocket,
    message: str | bytes,
    handlers: dict[str, list[Callable[..., Any]]],
    params: dict[str, Any],
) -> None:
    """Decode one envelope, call its handler, send the ack or an error envelope.

    Args:
        ws: the connection the message came from (acks and errors go back to it).
        message: the message as ``ws.receive()`` returned it.
        handlers: the route's event name -> handlers table (``Route.handlers``).
        params: the route's path parameters, passed to the handler as keywords.

    Handler exceptions propagate to the caller (``Route.serve`` hands them to
    ``App.handle_exception``); read the next message after this returns.
    """
    if isinstance(message, bytes):
        ws.close(1003, "binary messages are not accepted on this route")
        return
    try:
        decoded = jsonlib.loads(message)
    except ValueError:
        ws.send(envelope("error", {"message": "malformed JSON"}))
        return
    event = decoded.get("event") if isinstance(decoded, dict) else None
    if not isinstance(event, str) or event in LIFECYCLE:
        ws.send(
            envelope(
                "error",
                {"message": 'expected {"event": name, "data": ...}'},
                decoded.get("id") if isinstance(decoded, dict) else None,
            )
        )
        return
    data, msg_id = decoded.get("data"), decoded.get("id")
    found = handlers.get(event)
    if found:
        result = found[0](ws, data, **params)
    elif "*" in handlers:
        result = handlers["*"][0](ws, event, data, **params)
    else:
        ws.send(envelope("error", {"message": f"unknown event {event!r}"}, msg_id))
        return
    if msg_id is not None:
        ws.send(envelope("ack", result, msg_id))
