"""Flask-style path patterns compiled once, at registration, into regular expressions.

``/chat/<room>``, ``/user/<int:id>``, ``/files/<path:name>``: each ``<converter:name>`` part
becomes a named group; ``match()`` returns the converted parameters or ``None``. Converters:
``string`` (default: one segment), ``int``, ``float``, ``path`` (slashes included), ``uuid``.
Values are percent-decoded after matching, so ``%2F`` inside a ``string`` segment stays in
that segment (Werkzeug does the same). This module does no I/O and knows nothing of apps.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

__all__ = ["PathPattern"]

_PART = re.compile(r"<(?:(?P<conv>[a-zA-Z_][a-zA-Z0-9_]*):)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")

#: converter -> (regex, conversion of the percent-decoded text)
CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "string": (r"[^/]+", str),
    "int": (r"\d+", int),
    "float": (r"\d+\.\d+", float),
    "path": (r"[^/].*?", str),
    "uuid": (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
             uuid.UUID),
}


class PathPattern:
    """One compiled path pattern.

    Args:
        path: the pattern, starting with ``/``.

    Raises:
        ValueError: a malformed pattern, an unknown converter or a repeated name.
    """

    __slots__ = ("converters", "names", "path", "regex")

    def __init__(self, path: str) -> None:
        if not path.startswith("/"):
            raise ValueError(f"route path {path!r} must start with '/'")
        self.path = path
        self.names: list[str] = []
        self.converters: dict[str, Callable[[str], Any]] = {}
        regex, pos = [], 0
        for part in _PART.finditer(path):
            regex.append(re.escape(path[pos:part.start()]))
            conv, name = part["conv"] or "string", part["name"]
            if conv not in CONVERTERS:
                raise ValueError(f"route {path!r}: unknown converter {conv!r} "
                                 f"(known: {', '.join(CONVERTERS)})")
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
        regex.append(re.escape(rest))
        self.regex = re.compile("".join(regex))

    @property
    def is_static(self) -> bool:
        """True when the pattern has no parameters (matched by a dict lookup)."""
        return not self.names

    def match(self, path: str) -> dict[str, Any] | None:
        """Return the converted parameters when ``path`` matches the whole pattern, else None."""
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
