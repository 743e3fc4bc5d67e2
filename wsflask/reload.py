"""Live reload: re-read the settings on SIGHUP and apply what can change without a restart.

``reload(app, load)`` builds the new ``Config`` with ``load()`` (the CLI's file, environment
and flags, read again); an invalid one, or changed TLS files that do not load, is logged and
the old settings stay. Settings in ``RESTART_REQUIRED`` (and turning TLS on or off) are
reported, not applied; the rest go to ``App.apply_live``, which open connections adopt too:
the next frame of every open connection is judged by the new limits (``Server.apply_config``).
No connection is closed by a reload, no file is watched. ``install`` hooks it to SIGHUP; with
``--workers`` each worker installs it and logs its own outcome under its label.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent

from .config import Config
from .errors import ConfigError

if TYPE_CHECKING:
    from .app import App

__all__ = ["RESTART_REQUIRED", "TLS_HOOK", "Outcome", "install", "reload"]

logger = logging.getLogger("wsflask.reload")

#: Settings a running server cannot adopt: the socket, capacity, codec and backplane.
#: ``certfile``/``keyfile`` are reloadable while TLS stays on; turning it on or off is not.
RESTART_REQUIRED = frozenset(
    {
        "host", "port", "max_connections", "read_size", "backplane",
        "backplane_interval", "backplane_backoff_max", "backplane_queue", "compression",
        "deflate_window_bits", "deflate_mem_level", "deflate_no_context_takeover", "log_queue",
        "backplane_secret", "pressure_threshold",  # read once, by the bridge and the degrader
    }
)  # fmt: skip
_TLS_SWITCH = ("certfile", "keyfile")

#: Called with ``(app, new_config)`` after a reload applied, when set (extra reload steps).
TLS_HOOK: list[Callable[[App, Config], None]] = []


@dataclass
class Outcome:
    """What a reload did: ``applied`` and ``restart_required`` setting names, or ``error``;
    ``connections``: the open connections that adopted the new settings."""

    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    error: str | None = None
    connections: int = 0


def reload(app: App, load: Callable[[], Config], label: str = "") -> Outcome:
    """Re-read the settings with ``load()`` and apply the reloadable changes to ``app``.

    ``label`` prefixes the log records (``"worker 1 (pid 4242)"`` under ``--workers``).
    """
    prefix = f"{label}: " if label else ""
    try:
        new = load()
        old = app.config
        changed = [f.name for f in dataclasses.fields(Config)
                   if getattr(old, f.name) != getattr(new, f.name)]  # fmt: skip
        restart = [name for name in changed if _needs_restart(name, old, new)]
        new = new.replace(**{name: getattr(old, name) for name in restart})
        _check_tls(old, new)
    except (ConfigError, OSError, ValueError) as exc:
        logger.error("%sreload failed, the old settings stay: %s", prefix, exc)
        return Outcome(error=str(exc))
    outcome = Outcome(applied=[n for n in changed if n not in restart], restart_required=restart)
    if restart:
        logger.warning("%srestart required to change: %s", prefix, ", ".join(restart))
    app.apply_live(new)
    for hook in TLS_HOOK:
        hook(app, new)
    outcome.connections = len(app.server.connections) if app.server is not None else 0
    logger.info(
        "%ssettings reloaded; changed: %s (open connections: %d)",
        prefix,
        ", ".join(outcome.applied) or "nothing",
        outcome.connections,
    )
    return outcome


def _needs_restart(name: str, old: Config, new: Config) -> bool:
    if name in _TLS_SWITCH:  # a new certificate is reloadable; TLS on/off is not
        return bool(old.certfile) != bool(new.certfile)
    return name in RESTART_REQUIRED


def _check_tls(old: Config, new: Config) -> None:
    """Changed TLS files must load before anything is applied (``ConfigError`` if not)."""
    from .server import _make_ssl_context, _tls_files

    if new.certfile and _tls_files(new) != _tls_files(old):
        _make_ssl_context(new)


def install(app: App, load: Callable[[], Config], label: str = "") -> Any:
    """On SIGHUP, ``reload(app, load, label)`` in a new greenlet (POSIX only); returns the
    handler (``cancel()`` removes it), or None where there is no SIGHUP."""
    if not hasattr(signal, "SIGHUP"):
        return None
    return gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(reload, app, load, label))
