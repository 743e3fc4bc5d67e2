"""``Sec-WebSocket-Extensions`` syntax (RFC 6455 §9.1), nothing more.

Parses a header value by the §9.1 ABNF into ``(name, ((param, value_or_None), ...))``
offers, in order. What an extension's parameters mean (permessage-deflate's window bits,
say) is the extension's own module's business. This module does no I/O.
"""

from __future__ import annotations

import re

__all__ = ["Extension", "parse_extensions"]

#: One offer or answer: the extension name and its parameters, in order.
Extension = tuple[str, tuple[tuple[str, str | None], ...]]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OWS = re.compile(r"[ \t]*")
_QUOTED = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*)"')
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def parse_extensions(value: str) -> list[Extension]:
    """Parse one ``Sec-WebSocket-Extensions`` value by the §9.1 ABNF, or raise ValueError.

    ``1#( token *( ";" token [ "=" ( token | quoted-string ) ] ) )``, whitespace allowed
    around separators (the "implied *LWS rule"); a quoted value must unescape to a token.
    """
    # 9.1: "If a value is received ... that does not conform to the ABNF below, the
    # recipient of such malformed data MUST immediately _Fail the WebSocket Connection_."
    result: list[Extension] = []
    pos, size = _ows(value, 0), len(value)
    while pos < size:
        if value[pos] != ",":  # empty list elements are skipped (RFC 7230 §7)
            name, pos = _token(value, pos)
            params: list[tuple[str, str | None]] = []
            while (pos := _ows(value, pos)) < size and value[pos] == ";":
                param, pos = _token(value, _ows(value, pos + 1))
                argument: str | None = None
                if (pos := _ows(value, pos)) < size and value[pos] == "=":
                    argument, pos = _param_value(value, _ows(value, pos + 1))
                params.append((param, argument))
            result.append((name, tuple(params)))
            if pos < size and value[pos] != ",":
                raise ValueError(f"Invalid Sec-WebSocket-Extensions header at position {pos}")
        pos = _ows(value, pos + 1)
    if not result:
        raise ValueError("Empty Sec-WebSocket-Extensions header")
    return result


def _ows(value: str, pos: int) -> int:
    match = _OWS.match(value, pos)
    return match.end() if match else pos


def _token(value: str, pos: int) -> tuple[str, int]:
    match = _TOKEN.match(value, pos)
    if not match:
        raise ValueError(f"Invalid Sec-WebSocket-Extensions header at position {pos}")
    return match[0], match.end()


def _param_value(value: str, pos: int) -> tuple[str, int]:
    match = _QUOTED.match(value, pos)
    if not match:
        return _token(value, pos)
    # 9.1: "the value after quoted-string unescaping MUST conform to the 'token' ABNF"
    unquoted = _QUOTED_PAIR.sub(r"\1", match[1])
    if not _TOKEN.fullmatch(unquoted):
        raise ValueError(f"Quoted extension parameter is not a token at position {pos}")
    return unquoted, match.end()
