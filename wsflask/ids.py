"""Connection and node ids: unguessable, assigned once, and what a personal room looks like.

A connection id is 16 random hex digits (64 bits from ``os.urandom``, the source
``secrets`` reads; drawn 512 ids per read, not one system call per connection, and
forgotten in a forked child so that workers never share one), prefixed with its node's
12-hex id and a dot when a backplane is configured (``<node>.<token>``), so ``to=ws.id``
works cluster-wide. Each connection's personal room is named by its id; ``Rooms`` refuses
to let any other connection join a name of that form. No I/O here.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

__all__ = ["is_connection_id", "new_id", "new_node_id", "node_of"]

_CONNECTION_ID = re.compile(r"(?:[0-9a-f]{12}\.)?[0-9a-f]{16}")
#: tokens drawn per ``os.urandom`` read
TOKENS_PER_READ = 512


def _tokens() -> Iterator[str]:
    """A fresh batch of 16-hex-digit tokens from one read of the OS's random source."""
    text = os.urandom(8 * TOKENS_PER_READ).hex()
    return iter([text[i : i + 16] for i in range(0, len(text), 16)])


_batch: Iterator[str] = iter(())


def _forget_batch() -> None:
    """In a forked child: never hand out the parent's remaining tokens."""
    global _batch
    _batch = iter(())


os.register_at_fork(after_in_child=_forget_batch)


def new_node_id() -> str:
    """A fresh node id: 12 random hex digits (one per process and backplane session)."""
    return secrets.token_hex(6)


def new_id(node: str = "") -> str:
    """A fresh connection id: ``<token>``, or ``<node>.<token>`` on a node of a cluster."""
    global _batch
    token = next(_batch, None)  # one C-level step: no two greenlets or threads share one
    if token is None:
        _batch = _tokens()
        token = next(_batch)
    return f"{node}.{token}" if node else token


def is_connection_id(name: str) -> bool:
    """True when ``name`` has the form of a connection id: a reserved, personal room name."""
    return _CONNECTION_ID.fullmatch(name) is not None


def node_of(connection_id: str) -> str | None:
    """The node part of a node-prefixed connection id, else ``None``."""
    node, dot, _ = connection_id.partition(".")
    return node if dot and is_connection_id(connection_id) else None
