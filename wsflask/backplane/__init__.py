"""Backplanes: how rooms span processes and machines (``App(backplane="redis://...")``).

Re-exports the ``Backplane`` protocol, ``BackplaneDown``, ``open_backplane``, the in-process
``MemoryBackplane``, the ``Bridge`` that makes an App a node, and the ``Emitter`` for
processes without a server. Importing it imports neither ``redis`` nor the network: the Redis
backplane (``wsflask.backplane.redis``) is imported when a ``redis://`` URL is opened.
"""

from __future__ import annotations

from .base import READY as READY
from .base import Backplane as Backplane
from .base import BackplaneDown as BackplaneDown
from .bridge import Bridge as Bridge
from .bridge import default_gap_message as default_gap_message
from .emitter import Emitter as Emitter
from .factory import open_backplane as open_backplane
from .memory import MemoryBackplane as MemoryBackplane
from .wire import Envelope as Envelope

__all__ = [
    "READY",
    "Backplane",
    "BackplaneDown",
    "Bridge",
    "Emitter",
    "Envelope",
    "MemoryBackplane",
    "default_gap_message",
    "open_backplane",
]
