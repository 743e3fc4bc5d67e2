"""Host-header policy: the names a request may use to reach this server (DNS rebinding).

``host_allowed()`` decides from ``Config.allowed_hosts`` and the address the server is bound
to: a loopback bind accepts only loopback names by default, as Jupyter and Vite do, so a web
page whose domain was rebound to 127.0.0.1 cannot reach a local server. It answers nothing
itself (the app refuses with 400) and knows nothing of Origin (``App.check_origin``).
"""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["host_allowed", "hostname_of", "is_loopback"]


@functools.lru_cache(maxsize=256)  # bounded: names come from clients' Host headers
def is_loopback(name: str) -> bool:
    """True for ``localhost`` (and ``*.localhost``, RFC 6761 §6.3) and loopback addresses.

    Cached: every handshake on a loopback bind asks twice (the bind and the Host), and
    ``ipaddress`` parsing was most of ``host_allowed``'s cost in a handshake profile."""
    name = name.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def hostname_of(header: str) -> str | None:
    """The lower-case name of a ``Host`` value without its port (``[::1]:80`` -> ``::1``);
    None when malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
    else:
        name, _, port = value.partition(":")
        if port and not port.isdigit():
            return None
    name = name.rstrip(".")
    return name or None


def host_allowed(header: str | None, allowed: tuple[str, ...], bound: str | None) -> bool:
    """True when a request with ``Host: header`` may be served.

    The answer depends on the three arguments alone, and a server's clients mostly send one
    or two Host values: it is remembered (the last 256; an unhashable ``allowed`` is just
    decided).

    ``allowed``: ``Config.allowed_hosts``. ``("*",)`` allows any; a name allows itself (any
    port); ``".example.com"`` allows example.com and its subdomains. ``()`` (the default)
    allows only loopback names when ``bound`` (the listening address) is a loopback
    address or ``localhost``, and any name otherwise (or when ``bound`` is unknown: None).
    """
    try:
        return _remembered(header, allowed, bound)
    except TypeError:  # a list for ``allowed``: not hashable
        return _decide(header, allowed, bound)


def _decide(header: str | None, allowed: tuple[str, ...], bound: str | None) -> bool:
    """``host_allowed`` without the memory."""
    if "*" in allowed:
        return True
    if not allowed and (bound is None or not is_loopback(bound)):
        return True
    name = hostname_of(header) if header else None
    if name is None:
        return False
    if not allowed:
        return is_loopback(name)
    for entry in allowed:
        entry = entry.lower()
        if name == entry or (entry.startswith(".") and (name == entry[1:] or name.endswith(entry))):
            return True
    return False


#: bounded: Host values come from clients
_remembered = functools.lru_cache(maxsize=256)(_decide)
