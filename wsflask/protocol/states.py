"""Which side a connection plays, its states, and what a peer may make it hold (RFC 6455 §4, §7).

Used by ``connection.py``, which re-exports them. This module does no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Limits", "Side", "State"]


class Side(enum.Enum):
    """Which end of the connection this object plays."""

    SERVER = "server"
    CLIENT = "client"


class State(enum.IntEnum):
    """Connection states (RFC 6455 §4, §7)."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class Limits:
    """What a peer may make this connection hold (battery rows HS-05, FR-05, FG-02, FG-03).

    Attributes:
        max_message_size: bytes of one message, and so of one frame; over -> close 1009.
        fragment_overhead: bytes charged per continuation frame against the message budget.
        max_header_bytes: bytes of the HTTP head; over -> 431.
        max_headers: header lines of the HTTP head; over -> 431.
    """

    max_message_size: int = 1 << 20
    fragment_overhead: int = 256
    max_header_bytes: int = 16384
    max_headers: int = 100
