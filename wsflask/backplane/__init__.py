"""Backplanes: how rooms span processes and machines (``App(backplane="redis://...")``).

What it does: re-exports the ``Backplane`` protocol, ``BackplaneDown``, ``open_backplane``, the
in-process ``MemoryBackplane`` and the ``Bridge`` that joins an App's rooms to a bus. The Redis
backplane lives in ``wsflask.backplane.redis`` and is imported only when a ``redis://`` URL is
opened (``pip install wsflask[redis]``); ``wsflask.emitter.Emitter`` publishes to rooms from
processes that run no server.

What it does not do: importing this package imports neither ``redis`` nor anything that
touches the network.
"""

from __future__ import annotations

from .base import READY as READY
from .base import Backplane as Backplane
from .base import BackplaneDown as BackplaneDown
from .base import open_backplane as open_backplane
from .bridge import Bridge as Bridge
from .bridge import default_gap_message as default_gap_message
from .envelope import Envelope as Envelope
from .memory import MemoryBackplane as MemoryBackplane

__all__ = [
    "READY",
    "Backplane",
    "BackplaneDown",
    "Bridge",
    "Envelope",
    "MemoryBackplane",
    "default_gap_message",
    "open_backplane",
]
