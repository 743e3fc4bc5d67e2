"""Route registration: Flask-style path patterns and the ``Route`` that holds a path's handlers.

``PathPattern`` compiles ``/chat/<room>``-style paths once, at registration, and matches the
percent-decoded path (``canonical_path``); ``Route`` collects a WebSocket path's handlers;
``setupmethod`` guards registration once the app serves. Running a route is ``dispatch.py``'s
job; no I/O here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from functools import update_wrapper
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar
from urllib.parse import unquote

from .errors import SetupError

__all__ = ["LIFECYCLE", "PathPattern", "Route", "SetupGuard", "canonical_path", "setupmethod"]

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="SetupGuard")

#: events the framework runs itself: several handlers may stack, clients may not send them
#: ("error" is also a reply a client sends to ``ws.call``; ``calls.REPLY_EVENTS``)
LIFECYCLE = ("connect", "disconnect", "error")

_PART = re.compile(r"<(?:(?P<conv>[a-zA-Z_][a-zA-Z0-9_]*):)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")

#: converter -> (regex, conversion of the percent-decoded text)
CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "string": (r"[^/]+", str),
    "int": (r"[0-9]+", int),  # not \d: decoded paths may hold other scripts' digits
    "float": (r"[0-9]+\.[0-9]+", float),
    "path": (r"[^/].*?", str),
    "uuid": (
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        uuid.UUID,
    ),
}


def canonical_path(path: str) -> str | None:
    """The form routes match: ``path`` percent-decoded (RFC 3986 §6.2.2.2), segment by segment.

    ``/%65cho`` is ``/echo`` and ``/caf%C3%A9`` is ``/café``. Only ``%`` and a ``/`` decoded
    from ``%2F`` stay encoded (as ``%25`` and ``%2F``), so an encoded slash stays inside its
    segment (one ``<string>`` parameter) and nothing is decoded twice. None when a segment
    is not UTF-8 once decoded.
    """
    if "%" not in path:
        return path
    try:
        return "/".join(
            unquote(segment, errors="strict").replace("%", "%25").replace("/", "%2F")
            for segment in path.split("/")
        )
    except UnicodeDecodeError:
        return None


class SetupGuard(Protocol):
    """What ``setupmethod`` needs from the object it guards (``App``, ``Route``)."""

    def _check_setup_finished(self, f_name: str) -> None: ...


def setupmethod(f: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Make registration method ``f`` raise ``SetupError`` once the app started serving.

    Flask's pattern: the guard is written once, here, instead of in every ``add_*`` method.
    """
    f_name = f.__name__

    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._check_setup_finished(f_name)
        return f(self, *args, **kwargs)

    return update_wrapper(wrapper, f)


class PathPattern:
    """One compiled path pattern.

    Args:
        path: the pattern, starting with ``/``.

    Raises:
        ValueError: a malformed pattern, an unknown converter or a repeated name.
    """

    __slots__ = ("canonical", "converters", "names", "path", "regex")

    def __init__(self, path: str) -> None:
        if not path.startswith("/"):
            raise ValueError(f"route path {path!r} must start with '/'")
        self.path = path
        self.names: list[str] = []
        self.converters: dict[str, Callable[[str], Any]] = {}
        regex, pos = [], 0
        for part in _PART.finditer(path):
            regex.append(_literal(path[pos : part.start()]))
            conv, name = part["conv"] or "string", part["name"]
            if conv not in CONVERTERS:
                raise ValueError(
                    f"route {path!r}: unknown converter {conv!r} (known: {', '.join(CONVERTERS)})"
                )
            if name in self.converters:
                raise ValueError(f"route {path!r}: parameter {name!r} appears twice")
            pattern, convert = CONVERTERS[conv]
            regex.append(f"(?P<{name}>{pattern})")
            self.names.append(name)
            self.converters[name] = convert
            pos = part.end()
        rest = path[pos:]
        if "<" in rest or ">" in rest:
            raise ValueError(f"route {path!r}: malformed parameter near {rest!r}")
        regex.append(_literal(rest))
        self.regex = re.compile("".join(regex))
        #: the key of a parameterless pattern in a dict of canonical paths
        self.canonical = path.replace("%", "%25")

    @property
    def is_static(self) -> bool:
        """True when the pattern has no parameters (matched by a dict lookup)."""
        return not self.names

    def match(self, path: str) -> dict[str, Any] | None:
        """The converted parameters when ``path`` matches the whole pattern, else None.

        ``path`` is in the form ``canonical_path()`` returns; parameters come out decoded.
        """
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        params: dict[str, Any] = {}
        for name, raw in found.groupdict().items():
            try:
                params[name] = self.converters[name](unquote(raw))
            except ValueError:
                return None
        return params


def _literal(text: str) -> str:
    """The regex of a pattern's literal part, in canonical form (a ``%`` is a percent)."""
    return re.escape(text.replace("%", "%25"))


class Route:
    """One WebSocket endpoint: a compiled path plus its handlers.

    Made by ``app.route(path)``. Use it as a decorator for a straight-line handler
    (``@app.route("/echo")``), or keep it and register events with ``@route.on(...)``.

    Args:
        app: the owner whose setup phase guards registration (an ``App``).
        path: the pattern (see ``PathPattern``).
        json: opt in to JSON event envelopes.
        subprotocols: the subprotocols this route speaks.
    """

    def __init__(
        self, app: SetupGuard, path: str, *, json: bool = False, subprotocols: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.pattern = PathPattern(path)
        self.json = json
        self.subprotocols = tuple(subprotocols)
        #: the straight-line handler, if any: ``handler(ws, **path_params)``
        self.handler: Callable[..., Any] | None = None
        #: event name -> handlers (several only for connect/disconnect)
        self.handlers: dict[str, list[Callable[..., Any]]] = {}

    @property
    def path(self) -> str:
        """The pattern this route was registered with, e.g. ``/chat/<room>``."""
        return self.pattern.path

    def __repr__(self) -> str:
        return f"<Route {self.path!r} json={self.json}>"

    def _check_setup_finished(self, f_name: str) -> None:
        self.app._check_setup_finished(f_name)

    def __call__(self, func: F) -> F:
        """Register ``func(ws, **path_params)`` as this route's straight-line handler."""
        self.set_handler(func)
        return func

    def on(self, event: str) -> Callable[[F], F]:
        """Register a handler for ``event``: "connect", "message", "disconnect", "error", a
        JSON event name or "*" (JSON catch-all, called as ``f(ws, event, data, **path_params)``).

        "error" handlers are called as ``f(ws, exc, **path_params)`` when the peer broke the
        protocol (``exc`` is the core's ``ProtocolError``: ``exc.code`` names the violation,
        ``ws.close_code`` is the code the connection was failed with) and when one of this
        route's handlers raised (then instead of the app's ``errorhandler``s). They run once
        the connection is closed for a violation, before the disconnect handlers; never for
        a normal close.
        """

        def decorator(func: F) -> F:
            self.add_handler(event, func)
            return func

        return decorator

    @setupmethod
    def add_handler(self, event: str, func: Callable[..., Any]) -> None:
        """Register ``func`` for ``event`` (see ``on()``); raises ``SetupError`` on conflicts."""
        if self.handler is not None:
            raise SetupError(
                f"route {self.path!r} has a straight-line handler; use either it "
                "or @route.on(...) handlers, not both"
            )
        current = self.handlers.setdefault(event, [])
        if current and event not in LIFECYCLE:
            raise SetupError(
                f"route {self.path!r} already has a {event!r} handler "
                f"({current[0].__qualname__}); register one per event"
            )
        current.append(func)

    @setupmethod
    def set_handler(self, func: Callable[..., Any]) -> None:
        """Make ``func`` the straight-line handler; it must be the route's only handler."""
        if self.handlers or (self.handler is not None and self.handler is not func):
            raise SetupError(
                f"route {self.path!r} already has handlers; a straight-line "
                "handler must be the only one"
            )
        self.handler = func

    def choose_subprotocol(self, offers: Iterable[str]) -> str | None:
        """The first of the client's ``offers`` this route supports, else None (AMB-27)."""
        for offer in offers:
            if offer in self.subprotocols:
                return offer
        return None
