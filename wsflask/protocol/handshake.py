"""The HTTP/1.1 opening handshake of RFC 6455 (§4, §9.1, §11.3), both sides, without I/O.

``HeadReader`` collects a head (bounded: 414/431); ``parse_request`` validates a client's (§4.2.1,
raising the ``HandshakeError`` to answer with), ``build_accept``/``build_response`` answer it;
``build_request``/``parse_response`` are the client side (§4.1); ``error_token`` names a refusal
for the opt-in ``X-WebSocket-Error`` header. Extension parameters, Origin
policy (§10.2), routing, sockets and timers live elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence

from .errors import (
    HandshakeError,
    HandshakeRejected,
    HeadersTooLarge,
    InvalidHandshakeResponse,
    InvalidState,
    MethodNotAllowed,
    UpgradeRequired,
    URITooLong,
)
from .events import Request
from .extensions import Extension, parse_extensions
from .speedups import compiled

__all__ = [
    "GUID", "HeadReader", "accept_key", "build_accept", "build_request", "build_response",
    "error_token", "make_key", "parse_extensions", "parse_request", "parse_response",
    "parse_response_head", "select_subprotocol",
]  # fmt: skip

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Headers = Iterable[tuple[str, str]]
Index = dict[str, list[str]]
Negotiated = tuple[str | None, str]

# RFC 7230 §3.2.6 token; every pattern below is a single character class or has disjoint
# alternatives, so matching is linear (no backtracking).
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(f"[{_TCHAR}]+")
_TOKEN_B = re.compile(f"[{_TCHAR}]+".encode())
_CTL_B = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB (RFC 7230 field-vchar)
#: one ``name:value CRLF`` field line, and a block of them (the fast path of ``_parse_head``):
#: the value class excludes CR and LF, so each line has one parse and matching is linear
_FIELD = f"([{_TCHAR}]+):([^\\x00-\\x08\\x0a-\\x1f\\x7f]*)\r\n".encode()
_FIELD_B = re.compile(_FIELD)
_FIELDS_B = re.compile(b"(?:" + _FIELD + b")*")
#: Common header names and values, shared by every request: a Request lives as long as its
#: connection, so one string per connection for "upgrade" or "websocket" adds up.
_SHARED = {
    text.encode(): text
    for text in (
        "host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
        "sec-websocket-protocol", "sec-websocket-extensions", "origin", "user-agent", "accept",
        "accept-encoding", "accept-language", "cache-control", "pragma", "cookie",
        "websocket", "Upgrade", "upgrade", "keep-alive, Upgrade", "13", "no-cache",
        "permessage-deflate; client_max_window_bits", "gzip, deflate, br", "gzip, deflate",
        "GET",
    )
}  # fmt: skip
#: the same strings by themselves, for lookups after decoding (``head_fields``)
_SHARED_TEXT = {text: text for text in _SHARED.values()}
#: Fields seen before -> the same tuple: Host, Upgrade, Connection, the version, the
#: browser's User-Agent... repeat on every connection, and each open one keeps its
#: ``Request``. Bounded: ``_CACHED`` names only, names of at most 32 and values of at most
#: 64 characters (a long line is never even hashed for it), ``SEEN_FIELDS_MAX`` fields, then
#: it starts over (odd lines cannot keep common ones out). The compiled scan keeps the same.
_SEEN_FIELDS: dict[tuple[str, str], tuple[str, str]] = {}
SEEN_FIELDS_MAX = 256  # the compiled scan's SEEN_FIELDS_MAX
_SEEN_TARGETS: dict[bytes, str] = {}  # the same for request targets (bounded alike)
#: the header names whose lines are cached: common ones, never keys, cookies or credentials
_CACHED = frozenset(
    (
        "host", "upgrade", "connection", "sec-websocket-version", "sec-websocket-protocol",
        "sec-websocket-extensions", "origin", "user-agent", "accept", "accept-encoding",
        "accept-language", "cache-control", "pragma",
    )
)  # fmt: skip
_TARGET_B = re.compile(rb"[\x21-\x22\x24-\x7e]+")  # visible ASCII except "#"
_VERSION_B = re.compile(rb"HTTP/([0-9])\.([0-9])")
#: a whole valid request line in one match: no part may hold a space, so it matches exactly
#: when the line splits into three parts that each match their own pattern above
_REQUEST_LINE_B = re.compile(
    f"([{_TCHAR}]+) ([\\x21-\\x22\\x24-\\x7e]+) HTTP/([0-9])\\.([0-9])".encode()
)
_STATUS_B = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
_ABSOLUTE = re.compile(r"(?:https?|wss?)://[^/?]+", re.IGNORECASE)
_ONCE = ("Host", "Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version")
_UPGRADE, _CONNECTION = ("Upgrade", "websocket"), ("Connection", "Upgrade")
_VERSION = ("Sec-WebSocket-Version", "13")
TEXT_PLAIN = "text/plain; charset=utf-8"
_sha1 = hashlib.sha1
#: A canonical ``Sec-WebSocket-Key``: 24 base64 characters that decode to 16 bytes, so the
#: 22nd carries 2 data bits and 4 zero bits (one of A, Q, g, w), then "==" (§4.2.1 item 5).
#: Exactly the keys that decode strictly to 16 bytes and re-encode to themselves.
_KEY = re.compile(r"[A-Za-z0-9+/]{21}[AQgw]==")
#: The 101 without a subprotocol, extension or extra header: only the accept value varies.
_ACCEPT_HEAD = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"

REASONS = {
    101: "Switching Protocols", 200: "OK", 204: "No Content", 301: "Moved Permanently",
    302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 414: "URI Too Long", 426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
}  # fmt: skip


def accept_key(key: str) -> str:
    """Return ``base64(sha1(key + GUID))`` for the key string as sent, not decoded (§4.2.2)."""
    return binascii.b2a_base64(_sha1((key + GUID).encode("ascii")).digest(), newline=False).decode()


def make_key(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """Return a fresh ``Sec-WebSocket-Key``: base64 of 16 random bytes (§4.1 item 7)."""
    return base64.b64encode(random_bytes(16)).decode()


class HeadReader:
    """Accumulates bytes until the empty line (``b"\\r\\n\\r\\n"``) that ends an HTTP head.

    Each byte is searched once for LF (each LF must follow a CR: a bare LF is a 400 at once),
    so the total work is linear however the head is split; ``scanned`` counts it.
    Call ``feed()`` with each chunk until it returns ``(head, rest)``; a reader is used once.
    """

    def __init__(self, max_bytes: int = 16384, max_headers: int = 100) -> None:
        self.max_bytes = max_bytes  #: limit on the head, final CRLFCRLF included (431 above)
        self.max_headers = max_headers  #: limit on header lines (431 above)
        self.scanned = 0  #: bytes examined so far, for tests of linearity
        self._buf = bytearray()
        self._scan = 0  # where the next CRLF search starts
        self._line_start = 0  # where the current line starts
        self._lines = 0  # complete lines, request line included
        self._head_start = 0  # 2 after an ignored leading CRLF
        self._done = False

    @property
    def buffered(self) -> int:
        """How many bytes are held right now."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Add ``data``; return ``(head, rest)`` once the head is complete, else ``None``.

        ``head`` excludes the final CRLFCRLF (pass it to ``parse_request()`` or
        ``parse_response()``); ``rest`` is every byte after it, as received.

        Raises:
            HeadersTooLarge: over ``max_bytes`` or ``max_headers``, as soon as that is known.
            URITooLong: over ``max_bytes`` before the request line ended (414).
            HandshakeError: a bare LF (400).
            InvalidState: the head was already returned.
        """
        if self._done:
            raise InvalidState("HeadReader.feed() called after the head was complete")
        if not self._scan and type(data) is bytes and (whole := self._whole(data)) is not None:
            return whole
        buf = self._buf
        buf += data
        limit = min(len(buf), self.max_bytes)  # a CRLF past the limit ends a too-large head
        while (lf := buf.find(b"\n", self._scan, limit)) >= 0:
            self.scanned += lf + 1 - self._scan
            if lf == 0 or buf[lf - 1] != 0x0D:  # refused at once, not a 408 later
                raise HandshakeError("Bare LF in the head: lines end with CRLF (RFC 7230 §3.5)")
            end = lf - 1
            self._line_start, start = lf + 1, self._line_start
            self._scan = lf + 1
            if end == start == 0:  # RFC 7230 §3.5: SHOULD ignore one CRLF before the start line
                self._head_start = 2
            elif end == start:
                self._done = True
                head, rest = bytes(buf[self._head_start : end - 2]), bytes(buf[lf + 1 :])
                self._buf = bytearray()
                return head, rest
            else:
                self._lines += 1
                if self._lines - 1 > self.max_headers:
                    raise HeadersTooLarge(f"More than {self.max_headers} header fields")
        self.scanned += max(limit - self._scan, 0)
        self._scan = max(self._scan, limit)
        if len(buf) > self.max_bytes:
            if not self._lines:  # RFC 9110 §15.5.15: the request line alone is too long
                raise URITooLong(f"Request line longer than {self.max_bytes} bytes")
            raise HeadersTooLarge(f"Request head larger than {self.max_bytes} bytes")
        return None

    def _whole(self, data: bytes) -> tuple[bytes, bytes] | None:
        """The usual case, a whole head in the first chunk, in a few C-level scans; None
        when anything is unusual (the line loop then gives the exact answer)."""
        end = data.find(b"\r\n\r\n", 0, self.max_bytes)
        if end <= 0 or data.startswith(b"\r\n"):
            return None
        size = end + 4
        lines = data.count(b"\n", 0, size)
        if lines != data.count(b"\r\n", 0, size) or lines - 2 > self.max_headers:
            return None  # a bare LF, or too many fields
        self.scanned += size
        self._done = True
        return data[:end], data[size:]


def _parse_head(head: bytes) -> tuple[bytes, tuple[tuple[str, str], ...], Index]:
    """Return the start line, the RFC 7230 §3.2 fields (names lower-cased, values trimmed
    of SP/HTAB) and an index of values by name. A trailing CRLFCRLF is ignored."""
    start, sep, block = head.removesuffix(b"\r\n\r\n").partition(b"\r\n")
    if not sep:
        return start, (), {}
    block += b"\r\n"
    found = _head_fields(block, _SHARED_TEXT, _SEEN_FIELDS, _CACHED)  # all valid: one scan
    if found is not None:
        return start, *found
    return start, *_collect(_checked_lines(block))


def head_fields_python(
    block: bytes,
    shared: dict[str, str],
    seen: dict[tuple[str, str], tuple[str, str]],
    cached: frozenset[str],
) -> tuple[tuple[tuple[str, str], ...], Index] | None:
    """The fields and index of ``block`` (``name:value CRLF`` lines) when every line is
    valid, strings found in ``shared`` taken from it, fields found in ``seen`` too (short
    fields named in ``cached`` are added, as ``_collect`` does); None when any line is
    unusual.

    The definition of the compiled ``_speedups.head_fields``, which ``_parse_head`` uses
    when it is built."""
    if not _FIELDS_B.fullmatch(block):
        return None
    return _collect(_FIELD_B.findall(block), shared, seen, cached)


def _checked_lines(block: bytes) -> list[tuple[bytes, bytes]]:
    """Line by line, with the precise error for a bad line (``_parse_head``'s slow path)."""
    pairs = []
    for line in block.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            # RFC 7230 §3.2.4: obs-fold is rejected with 400 outside message/http
            raise HandshakeError("Obsolete line folding in header")
        name, colon, value = line.partition(b":")
        if not colon:
            raise HandshakeError("Malformed header line (no colon)")
        if not _TOKEN_B.fullmatch(name):
            # also catches whitespace before the colon, which RFC 7230 §3.2.4 rejects
            raise HandshakeError("Invalid header name")
        if _CTL_B.search(value):
            raise HandshakeError("Invalid character in header value")
        pairs.append((name, value))
    return pairs


def _collect(
    pairs: Iterable[tuple[bytes, bytes]],
    shared: dict[str, str] = _SHARED_TEXT,
    seen: dict[tuple[str, str], tuple[str, str]] = _SEEN_FIELDS,
    cached: frozenset[str] = _CACHED,
) -> tuple[tuple[tuple[str, str], ...], Index]:
    """Valid raw ``(name, value)`` pairs as fields (lower-cased name, trimmed value, common
    strings shared) and their index by name. A field line seen before is the same tuple
    (``_SEEN_FIELDS``): every open connection keeps its ``Request``."""
    fields: list[tuple[str, str]] = []
    index: Index = {}
    for raw_name, raw_value in pairs:
        name = raw_name.lower().decode("ascii")
        value = raw_value.strip(b" \t").decode("latin-1")
        field = (shared.get(name, name), shared.get(value, value))
        if len(name) <= 32 and len(value) <= 64:  # never hash a long line for it
            same = seen.get(field)
            if same is not None:
                field = same
            elif name in cached:
                if len(seen) >= SEEN_FIELDS_MAX:
                    seen.clear()  # full (odd lines, or junk sent on purpose): learn again
                seen[field] = field
        fields.append(field)
        index.setdefault(field[0], []).append(field[1])
    return tuple(fields), index


def _comma_list(values: Iterable[str]) -> list[str]:
    """Split ``#rule`` lists, trimming, dropping empty elements (RFC 7230 §7)."""
    return [item for value in values for item in (x.strip(" \t") for x in value.split(",")) if item]


def _split_target(target: str) -> tuple[str, str, str]:
    """Return ``(target, path, query)``; absolute-form is reduced to origin-form."""
    # 4.2.1 item 1: "a "Request-URI" ... (or an absolute HTTP/HTTPS URI containing the
    # /resource name/)": we accept http(s)/ws(s) absolute-form and keep its path and query.
    if not target.startswith("/") and (match := _ABSOLUTE.match(target)):
        target = target[match.end() :]
        target = target if target.startswith("/") else "/" + target
    if not target.startswith("/"):
        raise HandshakeError('Request target must start with "/"')
    path, _, query = target.partition("?")
    return target, path, query


def _parse_request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    if match := _REQUEST_LINE_B.fullmatch(line):  # the usual case: one C-level match
        method, target, major, minor = match.groups()
        return _SHARED.get(method) or method.decode(), _target(target), (int(major), int(minor))
    return _split_request_line(line)


def _split_request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    """``_parse_request_line`` part by part: the definition its one match must agree with."""
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HandshakeError("Malformed request line")
    method, target, version = parts
    match = _VERSION_B.fullmatch(version)
    if not _TOKEN_B.fullmatch(method) or not _TARGET_B.fullmatch(target) or not match:
        raise HandshakeError("Malformed request line")
    return (
        _SHARED.get(method) or method.decode(),
        _target(target),
        (int(match[1]), int(match[2])),
    )


def _target(raw: bytes) -> str:
    """The request target as text; a short one seen before is the same string (the routes'
    paths repeat on every connection, and each open one keeps its ``Request``)."""
    if len(raw) > 64:  # not cached, nor hashed to look
        return raw.decode()
    target = _SEEN_TARGETS.get(raw)
    if target is None:
        target = raw.decode()
        if len(_SEEN_TARGETS) >= SEEN_FIELDS_MAX:
            _SEEN_TARGETS.clear()
        _SEEN_TARGETS[raw] = target
    return target


def parse_request(head: bytes, *, http: bool = False, remote_addr: str | None = None) -> Request:
    """Parse and validate a client's opening handshake (RFC 6455 §4.2.1).

    ``head`` comes from ``HeadReader.feed()`` (a trailing CRLFCRLF is allowed). With
    ``http=True`` a request without any ``Upgrade`` header is returned as plain HTTP (any
    method and version, ``key=""``, no WebSocket checks). ``remote_addr`` is copied into the
    result. Next: ``build_accept()`` or ``build_response()``.

    Raises:
        HandshakeError: 400, or its subclasses ``MethodNotAllowed`` (405) and
            ``UpgradeRequired`` (426).
    """
    start, fields, index = _parse_head(head)
    method, raw_target, version = _parse_request_line(start)
    target, path, query = _split_target(raw_target)
    if http and "upgrade" not in index:
        return Request(method, target, path, query, fields, key="", remote_addr=remote_addr)
    # 4.1 item 2: "The method of the request MUST be GET" (case-sensitive, RFC 7230 §3.1.1)
    if method != "GET":
        raise MethodNotAllowed(f"Method {method} not allowed for WebSocket upgrade")
    # 4.2.1 item 1: "An HTTP/1.1 or higher GET request"
    if version < (1, 1):
        raise HandshakeError("HTTP/1.1 or higher is required")
    _check_upgrade(index)
    return Request(
        method, target, path, query, fields,
        key=_check_key(index),
        subprotocols=_parse_subprotocols(index.get("sec-websocket-protocol", [])),
        extensions=_parse_extensions(index.get("sec-websocket-extensions", [])),
        remote_addr=remote_addr,
    )  # fmt: skip


def _check_upgrade(index: Index) -> None:
    """Check items 2, 3, 4 and 6 of RFC 6455 §4.2.1 and the §11.3 single-header rules."""
    if not _plain_upgrade(index):
        _upgrade_checks(index)


def _upgrade_checks(index: Index) -> None:
    """Every check of ``_check_upgrade`` in RFC order, each with its precise error."""
    for name in _ONCE:
        # 11.3.1/11.3.5: "... MUST NOT appear more than once in an HTTP request"
        # (and RFC 7230 §5.4 for Host)
        if len(index.get(name.lower(), ())) > 1:
            raise HandshakeError(f"Duplicate {name} header")
    # 4.2.1 item 2: "A |Host| header field containing the server's authority."
    if not index.get("host", [""])[0]:
        raise HandshakeError("Missing Host header")
    # 4.2.1 item 4: "A |Connection| header field that includes the token "Upgrade""
    if "connection" not in index:
        raise HandshakeError("Missing Connection header")
    if "upgrade" not in (t.lower() for t in _comma_list(index["connection"])):
        raise HandshakeError('Connection header must contain "Upgrade"')
    # 4.2.1 item 3: "An |Upgrade| header field containing the value "websocket", treated
    # as an ASCII case-insensitive value."
    if "upgrade" not in index:
        raise HandshakeError("Missing Upgrade header")
    if "websocket" not in (t.lower() for t in _comma_list(index["upgrade"])):
        raise HandshakeError('Upgrade header must be "websocket"')
    # 4.2.1 item 6: "A |Sec-WebSocket-Version| header field, with a value of 13."
    if "sec-websocket-version" not in index:
        raise HandshakeError("Missing Sec-WebSocket-Version header")
    if index["sec-websocket-version"][0] != "13":
        # 4.4: the server sends back "a |Sec-WebSocket-Version| header field indicating the
        # version(s) the server is capable of understanding" (426 per UpgradeRequired)
        raise UpgradeRequired("Unsupported WebSocket version")


def _plain_upgrade(index: Index) -> bool:
    """True for the usual head, which passes every check of ``_check_upgrade``: one Host,
    ``Connection: Upgrade``, ``Upgrade: websocket``, version 13 and at most one key. Any
    other head (False) gets the full checks and their precise errors."""
    host = index.get("host")
    return (
        host is not None
        and len(host) == 1
        and host[0] != ""
        and index.get("connection") in _PLAIN_CONNECTION
        and index.get("upgrade") in _PLAIN_UPGRADE
        and index.get("sec-websocket-version") == _PLAIN_VERSION
        and len(index.get("sec-websocket-key", ())) <= 1
    )


_PLAIN_CONNECTION = (["Upgrade"], ["upgrade"])
_PLAIN_UPGRADE = (["websocket"],)
_PLAIN_VERSION = ["13"]


def _check_key(index: Index) -> str:
    # 4.2.1 item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded ... value
    # that, when decoded, is 16 bytes in length."
    if "sec-websocket-key" not in index:
        raise HandshakeError("Missing Sec-WebSocket-Key header")
    key = index["sec-websocket-key"][0]
    # one match for the usual key; the decoding check defines the answer for the rest
    if not _KEY.fullmatch(key) and not _is_canonical_key(key):
        raise HandshakeError("Invalid Sec-WebSocket-Key format")
    return key


def _is_canonical_key(key: str) -> bool:
    """24 characters that decode to 16 bytes and re-encode to themselves exactly."""
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:
        raw = b""
    return len(key) == 24 and len(raw) == 16 and base64.b64encode(raw).decode() == key


def _parse_subprotocols(values: list[str]) -> tuple[str, ...]:
    # 11.3.4: several headers are "logically the same as a single ... header field"
    if not values:
        return ()
    offers = [_comma_list([value]) for value in values]
    if not all(items and all(_TOKEN.fullmatch(item) for item in items) for items in offers):
        raise HandshakeError("Invalid Sec-WebSocket-Protocol header")
    return tuple(item for items in offers for item in items)


def _parse_extensions(values: list[str]) -> tuple[Extension, ...]:
    # 9.1: several headers are "exactly equivalent" to one comma-joined header
    if not values:
        return ()
    try:
        return tuple(ext for value in values for ext in parse_extensions(value))
    except ValueError as exc:
        raise HandshakeError(str(exc)) from None


def select_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """Return the first client offer (exact match) that the server supports, or None.

    None means no ``Sec-WebSocket-Protocol`` in the 101 (§4.2.2: "the server ... MUST NOT
    send back a |Sec-WebSocket-Protocol| header field" when it agrees to none).
    """
    wanted = set(supported)
    return next((offer for offer in offered if offer in wanted), None)


def _encode_head(start_line: str, fields: Headers) -> bytes:
    """Join a start line and header fields, refusing anything that could split the head."""
    lines = [start_line]
    for name, value in fields:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"Invalid header name: {name!r}")
        if _CTL_B.search(value.encode("latin-1", "replace")):
            raise ValueError(f"Invalid character (CR, LF or other control) in {name} header")
        lines.append(f"{name}: {value}")
    lines += ["", ""]
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("Header values must be latin-1 text") from None


def build_accept(
    key: str, *, subprotocol: str | None = None, extensions: str = "", headers: Headers = ()
) -> bytes:
    """Return the 101 for ``key`` (§4.2.2 step 5); after it, every byte is a frame.

    ``Sec-WebSocket-Protocol``/``-Extensions`` appear only when non-empty. Raises ValueError
    for a header name that is not a token or a value with CR, LF or other controls.
    """
    if not subprotocol and not extensions and type(headers) is tuple and not headers:
        # the usual 101: fixed text around a base64 value (nothing there can split a head)
        return f"{_ACCEPT_HEAD}Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode("ascii")
    return _build_accept_head(key, subprotocol, extensions, headers)


def _build_accept_head(
    key: str, subprotocol: str | None, extensions: str, headers: Headers
) -> bytes:
    """``build_accept`` field by field, every field checked (the general case)."""
    fields = [_UPGRADE, _CONNECTION, ("Sec-WebSocket-Accept", accept_key(key))]
    if subprotocol:
        if not _TOKEN.fullmatch(subprotocol):
            raise ValueError(f"Invalid subprotocol: {subprotocol!r}")
        fields.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions:
        fields.append(("Sec-WebSocket-Extensions", extensions))
    fields.extend(headers)
    return _encode_head("HTTP/1.1 101 Switching Protocols", fields)


def build_response(
    status: int,
    body: bytes = b"",
    *,
    content_type: str = TEXT_PLAIN,
    headers: Headers = (),
    head_only: bool = False,
) -> bytes:
    """Return a complete HTTP/1.1 response with ``Connection: close``.

    For rejections (``build_response(exc.status, msg, headers=exc.headers)``) and plain
    pages; 204/304 carry no body, Content-Type or Content-Length. Raises ValueError for a
    status outside 200-599, a 204/304 body, CR/LF or controls in a header (response
    splitting), or an extra Content-Length/Connection. ``head_only`` (the answer to HEAD)
    keeps the headers, Content-Length included, and leaves the body out (RFC 9110 §9.3.2).
    """
    if not 200 <= status <= 599:
        raise ValueError(f"Invalid status for a final response: {status}")
    extra = list(headers)
    if any(name.lower() in ("content-length", "connection") for name, _ in extra):
        raise ValueError("Content-Length and Connection are set by build_response()")
    fields: list[tuple[str, str]] = []
    if status in (204, 304):
        if body:
            raise ValueError(f"A {status} response has no body")
    else:
        fields += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    fields += [("Connection", "close"), *extra]
    reason = REASONS.get(status, "Unknown")
    head = _encode_head(f"HTTP/1.1 {status} {reason}", fields)
    return head if head_only else head + body


def error_token(reason: str) -> str:
    """``reason`` as an ``X-WebSocket-Error`` token: lower case, words joined by ``-``.

    The opt-in reason header on a refusal (a debugging aid, not RFC 6455): at most 64
    characters of ``[a-z0-9-]``, so it is a valid header value whatever the reason says.
    """
    words = "".join(c if c.isascii() and c.isalnum() else " " for c in reason.lower()).split()
    return "-".join(words)[:64] or "refused"


def build_request(
    host: str, target: str, key: str, *,
    subprotocols: Sequence[str] = (), extensions: str = "", headers: Headers = (),
) -> bytes:  # fmt: skip
    """Return the client's opening handshake (§4.1), version 13.

    Next: read the answer with ``HeadReader``, check it with ``parse_response()``. Raises
    ValueError for a target not in origin-form, a non-token subprotocol or a bad header.
    """
    if not target.startswith("/") or not _TARGET_B.fullmatch(target.encode("latin-1", "replace")):
        raise ValueError(f"Invalid request target: {target!r}")
    fields = [("Host", host), _UPGRADE, _CONNECTION, ("Sec-WebSocket-Key", key), _VERSION]
    if subprotocols:
        if not all(_TOKEN.fullmatch(proto) for proto in subprotocols):
            raise ValueError(f"Invalid subprotocols: {list(subprotocols)!r}")
        fields.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    if extensions:
        fields.append(("Sec-WebSocket-Extensions", extensions))
    fields.extend(headers)
    return _encode_head(f"GET {target} HTTP/1.1", fields)


def parse_response(
    head: bytes, key: str, *, subprotocols: Sequence[str] = ()
) -> tuple[str | None, str, tuple[tuple[str, str], ...]]:
    """Validate the answer to ``build_request()`` (§4.1), else raise InvalidHandshakeResponse.

    Returns ``(subprotocol or None, Sec-WebSocket-Extensions value or "", headers)``. The
    extensions value is syntax-checked only: the caller checks it against its offer (step 5).
    """
    status, fields, index = _parse_response_head(head)
    # 4.1 step 1: "If the status code received from the server is not 101, the client
    # handles the response per HTTP procedures": for us, the handshake failed.
    if status != 101:
        raise HandshakeRejected(status, fields)
    return (*_check_response_headers(index, key, subprotocols), fields)


def parse_response_head(head: bytes) -> tuple[int, tuple[tuple[str, str], ...]]:
    """Return the status and the fields (names lower-cased) of any HTTP/1.1 response head.

    Raises:
        InvalidHandshakeResponse: a malformed status line or header field.
    """
    status, fields, _ = _parse_response_head(head)
    return status, fields


def _parse_response_head(head: bytes) -> tuple[int, tuple[tuple[str, str], ...], Index]:
    if not (match := _STATUS_B.fullmatch(head.partition(b"\r\n")[0])):
        raise InvalidHandshakeResponse("Malformed status line in handshake response")
    try:
        _, fields, index = _parse_head(head)
    except HandshakeError as exc:
        if int(match[1]) != 101:  # a refusal with unreadable headers is still a refusal
            return int(match[1]), (), {}
        raise InvalidHandshakeResponse(f"Malformed handshake response: {exc}") from None
    return int(match[1]), fields, index


def _check_response_headers(index: Index, key: str, offered: Sequence[str]) -> Negotiated:
    # 4.1 step 2: "If the response lacks an |Upgrade| header field or the |Upgrade| header
    # field contains a value that is not an ASCII case-insensitive match for "websocket"
    if [v.lower() for v in index.get("upgrade", [])] != ["websocket"]:
        raise InvalidHandshakeResponse('Upgrade header must be "websocket"')
    # 4.1 step 3: "... doesn't contain a token that is an ASCII case-insensitive match
    # for the value "Upgrade", the client MUST _Fail the WebSocket Connection_."
    if "upgrade" not in (t.lower() for t in _comma_list(index.get("connection", []))):
        raise InvalidHandshakeResponse('Connection header must contain "Upgrade"')
    # 4.1 step 4; 11.3.2-11.3.4: these three "MUST NOT appear more than once in an HTTP response"
    accepts = index.get("sec-websocket-accept", [])
    protocols = index.get("sec-websocket-protocol", [])
    extensions = index.get("sec-websocket-extensions", [""])
    if len(accepts) != 1 or accepts[0] != accept_key(key):
        raise InvalidHandshakeResponse("Missing, duplicate or wrong Sec-WebSocket-Accept")
    # 4.1 step 6: "... a subprotocol that was not present in the client's handshake ..."
    if len(protocols) > 1 or (protocols and protocols[0] not in offered):
        raise InvalidHandshakeResponse(f"Server chose a subprotocol not offered: {protocols!r}")
    if len(extensions) > 1:
        raise InvalidHandshakeResponse("Duplicate Sec-WebSocket-Extensions header")
    try:  # 9.1: "the recipient of such malformed data MUST immediately _Fail_"
        if extensions[0]:
            parse_extensions(extensions[0])
    except ValueError as exc:
        raise InvalidHandshakeResponse(str(exc)) from None
    return (protocols[0] if protocols else None), extensions[0]


#: the compiled field scan when built (and not switched off), else its twin above
_head_fields: Callable[
    [bytes, dict[str, str], dict[tuple[str, str], tuple[str, str]], frozenset[str]],
    tuple[tuple[tuple[str, str], ...], Index] | None,
] = compiled.head_fields if compiled is not None else head_fields_python
