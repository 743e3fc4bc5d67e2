"""The JSON event-envelope codec: ``{"event": name, "data": ..., "id": ...}`` as text messages.

``encode`` and ``decode`` are the one place the format is written and read (``App``, the
emitter, the bridge, ``TestClient`` and ``wsflask.locust`` use them). No dispatch, no
handlers, no I/O: running events is ``dispatch.py``'s job.
"""

from __future__ import annotations

import json as jsonlib
from typing import Any

__all__ = ["decode", "encode"]


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
