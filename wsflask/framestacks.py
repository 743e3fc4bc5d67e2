"""Reuse of the interpreter frame stacks that ended greenlets leave behind.

Since CPython 3.11 a thread's interpreter frames live in 16 KiB "data stack" chunks, and
greenlet gives each greenlet its own: a server that runs a greenlet per connection maps a
fresh chunk (``mmap``), faults its first page in and unmaps it (``munmap``) for every
connection, about 8 us of the 9.6 us a greenlet costs from start to end on the development
machine. ``keep(capacity)`` has the compiled ``wsflask._framestacks`` keep up to
``capacity`` freed chunks (16 KiB each) for the next greenlets; every other allocation goes
on as before. ``Server.start()`` and ``App.notify_started()`` call it with
``Config.frame_stack_cache`` (64 chunks, 1 MiB, by default; ``0`` keeps none).

Without the extension (no compiler at install, ``WSFLASK_NO_EXTENSIONS``, or a Python before
3.11) ``keep()`` is the pure-Python twin: it keeps nothing and returns False, and the process
works the same, paying the kernel calls. This module only chooses and reports; it allocates
nothing of its own and knows nothing of connections.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from .protocol import speedups

__all__ = ["FrameStacks", "keep", "stats"]

#: The most chunks ``keep()`` accepts (16 MiB); ``Config.frame_stack_cache`` has the same bound.
MAX_CAPACITY = 1024


@dataclass(frozen=True, slots=True)
class FrameStacks:
    """What the cache did so far in this process (``stats()``)."""

    #: the allocator wrapper is in place (the compiled path, from the first ``keep()`` on)
    installed: bool
    #: freed chunks kept at most
    capacity: int
    #: freed chunks kept now (``capacity * 16 KiB`` of memory at most)
    held: int
    #: chunks handed out again instead of mapped
    reused: int
    #: chunks mapped because none was kept
    mapped: int
    #: chunks unmapped because the cache was full (or shrunk)
    unmapped: int


def _load() -> ModuleType | None:
    if speedups.compiled is None:  # WSFLASK_NO_EXTENSIONS, or no compiler at install
        return None
    try:
        return importlib.import_module("._framestacks", __package__)
    except ImportError:
        return None


#: The compiled module in use, or None on the pure-Python path.
compiled = _load()


def keep(capacity: int) -> bool:
    """Keep up to ``capacity`` freed 16 KiB frame-stack chunks for the next greenlets.

    Returns True when the compiled cache is in place (it stays for the process; a later
    call changes its capacity, and a lower one gives the surplus back at once); False on
    the pure-Python path, where nothing is kept.

    Raises:
        ValueError: ``capacity`` is outside ``0..MAX_CAPACITY``.
    """
    if not 0 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be 0..{MAX_CAPACITY} chunks, not {capacity}")
    if compiled is None:
        return False
    return bool(compiled.keep(capacity))


def stats() -> FrameStacks:
    """The cache's capacity, contents and counts (all zero on the pure-Python path)."""
    if compiled is None:
        return FrameStacks(False, 0, 0, 0, 0, 0)
    raw = compiled.stats()
    return FrameStacks(
        bool(raw["installed"]),
        raw["capacity"],
        raw["held"],
        raw["reused"],
        raw["mapped"],
        raw["unmapped"],
    )
