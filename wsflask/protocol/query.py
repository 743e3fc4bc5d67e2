"""Parsed views of a request's query string and ``Cookie`` header, as read-only multi-dicts.

``parse_query`` percent-decodes ``a=1&b=x%20y`` (``+`` is a space, bad UTF-8 is replaced);
``parse_cookies`` splits ``Cookie: a=1; b="2"`` (RFC 6265 §5.4). Both are bounded by their
input, which the head limit (``max_header_bytes``) bounds already. ``Request.args`` and
``Request.cookies`` call them lazily. No I/O, no cookie attributes, no form bodies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import parse_qsl

__all__ = ["MultiDict", "parse_cookies", "parse_query"]


class MultiDict(Mapping[str, str]):
    """A read-only mapping of keys to their first value; ``getlist(key)`` gives them all.

    ``args["x"]`` and ``args.get("x")`` return the first value in arrival order, ``len()``
    and iteration count distinct keys, ``pairs()`` gives every pair in order.
    """

    __slots__ = ("_pairs", "_values")

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._pairs = tuple(pairs)
        self._values: dict[str, list[str]] = {}
        for key, value in self._pairs:
            self._values.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> str:
        return self._values[key][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"MultiDict({list(self._pairs)!r})"

    def getlist(self, key: str) -> list[str]:
        """Every value of ``key`` in arrival order; ``[]`` when absent."""
        return list(self._values.get(key, ()))

    def pairs(self, key: str | None = None) -> tuple[tuple[str, str], ...]:
        """Every ``(key, value)`` pair in arrival order (only ``key``'s when given)."""
        if key is None:
            return self._pairs
        return tuple(pair for pair in self._pairs if pair[0] == key)


def parse_query(query: str) -> MultiDict:
    """The query string ``query`` (without ``?``) as a ``MultiDict``, percent-decoded.

    Blank values are kept (``?flag`` gives ``{"flag": ""}``); invalid UTF-8 after decoding
    becomes U+FFFD instead of an error.
    """
    if not query:
        return _EMPTY
    return MultiDict(parse_qsl(query, keep_blank_values=True, errors="replace"))


def parse_cookies(values: Iterable[str]) -> MultiDict:
    """The cookies of the ``Cookie`` header values ``values`` (RFC 6265 §5.4), in order.

    Pairs without ``=`` or with an empty name are skipped; a value in double quotes loses
    them; no percent-decoding (cookie values are opaque).
    """
    pairs = []
    for header in values:
        for part in header.split(";"):
            name, sep, value = part.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name:
                continue
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            pairs.append((name, value))
    return MultiDict(pairs) if pairs else _EMPTY


_EMPTY = MultiDict()
