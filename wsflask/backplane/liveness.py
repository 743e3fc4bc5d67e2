"""Node liveness: every node beats on the bus; a node whose beat lapses is dead, at once.

Each node renews its beat (``Backplane.beat``, a Redis key's TTL) with its presence every
``interval``, for ``interval + grace(interval)`` seconds. ``NodeWatch`` (one per node) reads
every node's time left and looks again just after the earliest would lapse, so a node that
missed one interval plus the grace is declared lost within a few milliseconds of that:
``on_lost(node, memberships)`` gets its last memberships (stored three intervals: they
outlive the beat on purpose). Each surviving node acts for its OWN local members only (its
members get ``_left``; nothing is coordinated cluster-wide: no election, nothing missed when
a second node dies); cluster presence leaves a lapsed node out by itself. A node seen alive
again (a stall, a partition) comes back through ``on_back``. A clean stop clears beat and
presence together: no notice. No finer failure detection, no fencing of a lost node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic

import gevent

from .base import Backplane, BackplaneDown

__all__ = ["NodeWatch", "grace"]

logger = logging.getLogger("wsflask.backplane")

#: the quickest two checks follow each other (several beats lapsing together)
MIN_CHECK = 0.02
#: how long after a beat should lapse the watch looks (the key's expiry is exact in Redis)
AFTER = 0.005

#: ``on_lost(node, memberships)`` / ``on_back(node, memberships)``
NodeHook = Callable[[str, dict[str, list[str]]], None]


def grace(interval: float) -> float:
    """Seconds a beat outlives its interval: a late renewal (debounce, a slow round trip, a
    busy hub) is not a death. Members of a dead node leave within ``interval + grace``."""
    return 0.1 + interval / 4


class NodeWatch:
    """Declares the other nodes of ``bus`` lost (or back) for node ``node``.

    Args:
        bus: the backplane (``liveness()``, ``presence_of()``).
        node: this node's id (never watched).
        interval: the bridge's ``backplane_interval``.
        is_up: True while this node's own session is up (no checks otherwise).
        on_lost: called once per lost node with its last memberships.
        on_back: called when a node declared lost beats again, with its memberships.

    ``run()`` is the greenlet body (the bridge spawns and kills it). ``lost`` holds the
    nodes declared lost and still stored on the bus.
    """

    def __init__(
        self,
        bus: Backplane,
        node: str,
        interval: float,
        *,
        is_up: Callable[[], bool],
        on_lost: NodeHook,
        on_back: NodeHook,
    ) -> None:
        self.bus, self.node, self.interval = bus, node, interval
        self.is_up, self.on_lost, self.on_back = is_up, on_lost, on_back
        #: nodes seen beating, and nodes declared lost (forgotten once gone from the bus)
        self.alive: set[str] = set()
        self.lost: set[str] = set()

    def run(self) -> None:
        """Check, then sleep until the next beat could lapse; forever (killed on stop)."""
        while True:
            delay = self.interval
            if self.is_up():
                try:
                    delay = self.check()
                except BackplaneDown as exc:
                    logger.debug("backplane liveness check failed: %s", exc)
                except Exception:  # a bug must not end failure detection for good
                    logger.exception("backplane liveness check failed")
            gevent.sleep(delay)

    def check(self) -> float:
        """One look at every node's beat; returns the seconds until the next look."""
        started = monotonic()
        left = self.bus.liveness()
        left.pop(self.node, None)
        delay = self.interval
        for node, seconds in left.items():
            if seconds > 0:
                delay = min(delay, seconds + AFTER)
                if node in self.lost:
                    self.lost.discard(node)
                    logger.warning("backplane: node %s beats again", node)
                    self.on_back(node, self.bus.presence_of(node))
                self.alive.add(node)
            elif node in self.alive:
                memberships = self.bus.presence_of(node)  # first: a failure retries it all
                self.alive.discard(node)
                self.lost.add(node)
                self._lose(node, memberships)
        for node in (self.alive | self.lost) - left.keys():
            self.alive.discard(node)  # left cleanly (or its entries expired): nothing owed
            self.lost.discard(node)
        return max(MIN_CHECK, delay - (monotonic() - started))

    def _lose(self, node: str, memberships: dict[str, list[str]]) -> None:
        logger.warning(
            "backplane: node %s lost (no beat for %.2f s); its members in %d rooms left",
            node,
            self.interval + grace(self.interval),
            len(memberships),
        )
        self.on_lost(node, memberships)
