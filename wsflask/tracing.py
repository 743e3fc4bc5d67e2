"""The state tracer: each connection's transitions, logged at DEBUG, illegal ones flagged.

``tracer`` (one per process) is told of CONNECTING -> OPEN -> CLOSING -> CLOSED by the driver,
a few times per connection lifetime, never per message. Off (``enabled = False``) it only
logs at DEBUG; on, it keeps bounded history and checks each step. No I/O, no timers.
"""

from __future__ import annotations

import logging
from collections import deque

from .protocol import State

__all__ = ["LEGAL_TRANSITIONS", "StateTracer", "tracer"]

logger = logging.getLogger("wsflask.diagnostics")

#: The transitions RFC 6455 allows a connection's state (ARCHITECTURE.md §4).
LEGAL_TRANSITIONS = frozenset(
    {
        (State.CONNECTING, State.OPEN),
        (State.CONNECTING, State.CLOSED),
        (State.OPEN, State.CLOSING),
        (State.OPEN, State.CLOSED),
        (State.CLOSING, State.CLOSED),
    }
)


class StateTracer:
    """Records state transitions of connections; flags the illegal ones.

    The driver reports each transition (``record``: a few per connection lifetime, never per
    message). At DEBUG each is logged with id and trigger. While ``enabled`` (off by default:
    it keeps one state per live connection) transitions are also kept, checked against
    ``LEGAL_TRANSITIONS``, and an illegal one is logged at ERROR and kept in ``illegal``.
    Memory: the last ``history`` transitions and one state per live connection.
    """

    def __init__(self, history: int = 1000, *, enabled: bool = False) -> None:
        self.enabled = enabled
        self.transitions: deque[tuple[str, State, State, str]] = deque(maxlen=history)
        self.illegal: deque[tuple[str, State, State, str]] = deque(maxlen=history)
        self._state: dict[str, State] = {}

    def record(self, conn_id: str, new: State, trigger: str) -> None:
        """Connection ``conn_id`` entered ``new`` because of ``trigger``."""
        if not self.enabled:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s: -> %s (%s)", conn_id, new.name, trigger,
                             extra={"id": conn_id, "to": new.name, "trigger": trigger})  # fmt: skip
            return
        old = self._state.pop(conn_id, State.CONNECTING)
        if new is not State.CLOSED:
            self._state[conn_id] = new
        item = (conn_id, old, new, trigger)
        self.transitions.append(item)
        fields = {"id": conn_id, "from": old.name, "to": new.name, "trigger": trigger}
        if (old, new) not in LEGAL_TRANSITIONS:
            self.illegal.append(item)
            logger.error("illegal state transition %s -> %s on %s (%s)", old.name, new.name,
                         conn_id, trigger, extra=fields)  # fmt: skip
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s -> %s (%s)", conn_id, old.name, new.name, trigger, extra=fields)


#: The process's tracer; the driver reports to it.
tracer = StateTracer()
