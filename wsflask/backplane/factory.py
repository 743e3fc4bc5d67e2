"""``open_backplane(url)``: the backplane implementation for a URL scheme.

Imports ``redis`` only for ``redis://`` and ``unix://`` URLs. Its own module so that the
package, the bridge and the emitter can all import it without a cycle. No I/O: the bus
connects on first use.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Backplane
from .memory import MemoryBackplane

__all__ = ["SCHEMES", "open_backplane"]

#: URL schemes ``open_backplane`` understands.
SCHEMES = ("memory://", "redis://", "unix://")


def open_backplane(url: str, *, cooperative: bool = True) -> Backplane:
    """Build the backplane for ``url``: ``memory://[name]`` or ``redis://host:port/db``.

    Args:
        url: the bus address (``Config.backplane``, ``WSFLASK_BACKPLANE``).
        cooperative: Redis only: use gevent sockets (True, inside a server) or plain ones
            (False, for an ``Emitter`` in a process without gevent).

    Raises:
        ConfigError: an unknown scheme, or ``redis`` is not installed (with the install hint).
    """
    scheme, _, rest = url.partition("://")
    if "cluster" in scheme or "cluster=" in rest.partition("?")[2]:
        raise ConfigError(
            f"backplane={url!r}: Redis Cluster is not supported; use one Redis primary "
            "(with replicas behind a failover address: a failover is a restart to wsflask)"
        )
    if url.startswith("memory://"):
        return MemoryBackplane(url[len("memory://") :] or "default")
    if url.startswith(("redis://", "unix://")):
        from .redis import RedisBackplane  # the optional dependency, only when asked for

        return RedisBackplane(url, cooperative=cooperative)
    raise ConfigError(
        f"backplane={url!r} is invalid: expected a URL starting with {', '.join(SCHEMES)}"
    )
