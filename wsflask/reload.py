"""Live reload: re-read the settings on SIGHUP and apply what can change without a restart.

``reload(app, load)`` builds the new ``Config`` with ``load()`` (the CLI's file, environment
and flags, read again); an invalid one is logged and the old settings stay. Settings in
``RESTART_REQUIRED`` are reported, not applied; the rest go to ``App.apply_live``. No file
watching, no connection is closed. TLS certificates: see ``TLS_HOOK``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gevent

from .config import Config
from .errors import ConfigError

if TYPE_CHECKING:
    from .app import App

__all__ = ["RESTART_REQUIRED", "TLS_HOOK", "Outcome", "install", "reload"]

logger = logging.getLogger("wsflask.reload")

#: Settings a running server cannot adopt: the socket, capacity, TLS, codec and backplane.
RESTART_REQUIRED = frozenset(
    {
        "host", "port", "max_connections", "certfile", "keyfile", "read_size", "backplane",
        "backplane_interval", "backplane_backoff_max", "backplane_queue", "compression",
        "deflate_window_bits", "deflate_mem_level", "deflate_no_context_takeover", "log_queue",
        "backplane_secret", "pressure_threshold",  # read once, by the bridge and the degrader
    }
)  # fmt: skip

#: Called with ``(app, new_config)`` after a reload applied, when set: where reloading the
#: TLS certificate files (``certfile``/``keyfile``, today in RESTART_REQUIRED) plugs in.
TLS_HOOK: list[Callable[[App, Config], None]] = []


@dataclass
class Outcome:
    """What a reload did: ``applied`` and ``restart_required`` setting names, or ``error``."""

    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    error: str | None = None


def reload(app: App, load: Callable[[], Config]) -> Outcome:
    """Re-read the settings with ``load()`` and apply the reloadable changes to ``app``."""
    try:
        new = load()
    except (ConfigError, OSError, ValueError) as exc:
        logger.error("reload failed, the old settings stay: %s", exc)
        return Outcome(error=str(exc))
    old = app.config
    changed = [f.name for f in dataclasses.fields(Config) if getattr(old, f.name) != getattr(
        new, f.name)]  # fmt: skip
    outcome = Outcome(
        applied=[n for n in changed if n not in RESTART_REQUIRED],
        restart_required=[n for n in changed if n in RESTART_REQUIRED],
    )
    if outcome.restart_required:
        logger.warning("restart required to change: %s", ", ".join(outcome.restart_required))
        keep = {name: getattr(old, name) for name in outcome.restart_required}
        new = new.replace(**keep)
    app.apply_live(new)
    for hook in TLS_HOOK:
        hook(app, new)
    logger.info("settings reloaded; changed: %s", ", ".join(outcome.applied) or "nothing")
    return outcome


def install(app: App, load: Callable[[], Config]) -> None:
    """On SIGHUP, ``reload(app, load)`` in a new greenlet (POSIX only)."""
    if hasattr(signal, "SIGHUP"):
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(reload, app, load))
