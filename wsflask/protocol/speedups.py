"""Chooses between the compiled speedups and their pure-Python twins, once, at import.

``compiled`` is the C module ``_speedups`` (masking, frame encoding, frame scanning) when it
was built and ``WSFLASK_NO_EXTENSIONS`` is unset, empty or ``0``; else ``None``, and
``mask.py``/``frames.py`` use their Python twins, which define the behaviour. This module
only decides; it does no I/O and is not the place for the functions themselves.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["NO_EXTENSIONS_ENV", "built", "compiled", "speedups_active"]

#: Set to anything but ``""`` or ``"0"`` to force the pure-Python path.
NO_EXTENSIONS_ENV = "WSFLASK_NO_EXTENSIONS"


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("._speedups", __package__)
    except ImportError:
        return None


#: The C module whenever it was built (``feed_compiled`` and the tests use it directly).
built = _load()
#: The C module when the protocol core uses it: built and not switched off.
compiled = None if os.environ.get(NO_EXTENSIONS_ENV, "") not in ("", "0") else built


def speedups_active() -> bool:
    """True when the compiled speedups are in use, False on the pure-Python path."""
    return compiled is not None
