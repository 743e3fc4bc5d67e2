"""Tests for wsflask.protocol.handshake: byte-exact vectors, every rejection, limits, replay."""

from __future__ import annotations

import base64
import contextlib
import random
from collections.abc import Callable, Sequence
from typing import cast

import pytest
from helpers import cpu_ratio
from hypothesis import given, settings
from hypothesis import strategies as st

from wsflask.protocol.errors import (
    HandshakeError,
    HeadersTooLarge,
    InvalidHandshakeResponse,
    InvalidState,
    MethodNotAllowed,
    UpgradeRequired,
)
from wsflask.protocol.handshake import (
    GUID,
    HeadReader,
    accept_key,
    build_accept,
    build_request,
    build_response,
    make_key,
    parse_extensions,
    parse_request,
    parse_response,
    select_subprotocol,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

BASE = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", RFC_KEY),
    ("Sec-WebSocket-Version", "13"),
]


def make_head(
    fields: list[tuple[str, str]] = BASE,
    *,
    line: str = "GET /chat HTTP/1.1",
    drop: str = "",
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A request head with CRLFCRLF; ``drop`` removes a header, ``extra`` appends some."""
    lines = [line] + [f"{k}: {v}" for k, v in fields if k != drop] + [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def replace(name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == name else v) for k, v in BASE]


def feed_all(data: bytes, sizes: list[int] | None = None) -> tuple[bytes, bytes]:
    """Feed ``data`` to a fresh reader in chunks of ``sizes`` (default 1 byte)."""
    reader = HeadReader()
    pos, result, i = 0, None, 0
    while result is None:
        size = sizes[i % len(sizes)] if sizes else 1
        result = reader.feed(data[pos : pos + size])
        pos, i = pos + size, i + 1
        assert pos <= len(data) + size, "head never completed"
    head, rest = result
    return head, rest + data[pos:]


# -- accept key and the 101 (HS-01, checklist HS-28..HS-30) -----------------------------------


def test_accept_key_rfc_vector() -> None:
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_build_accept_exact_bytes_without_optional_headers() -> None:
    assert build_accept(RFC_KEY) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )
    # an empty subprotocol or extensions value is "not negotiated"
    assert build_accept(RFC_KEY, subprotocol="", extensions="") == build_accept(RFC_KEY)


def test_build_accept_with_negotiated_headers_and_extras() -> None:
    response = build_accept(
        RFC_KEY,
        subprotocol="chat",
        extensions="permessage-deflate",
        headers=[("X-Server", "wsflask")],
    )
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"X-Server: wsflask\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subprotocol": "a b"},
        {"extensions": "x\r\nSet-Cookie: a=b"},
        {"headers": [("X-A", "1\r\n2")]},
        {"headers": [("X A", "1")]},
    ],
)
def test_build_accept_refuses_injection(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_accept(RFC_KEY, **kwargs)  # type: ignore[arg-type]


# -- parse_request: the valid request -----------------------------------------------------------


RFC_REQUEST = (
    b"GET /chat?room=1&x=%20 HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def test_parse_request_rfc_example() -> None:
    request = parse_request(RFC_REQUEST)
    assert request.method == "GET"
    assert request.target == "/chat?room=1&x=%20"
    assert (request.path, request.query) == ("/chat", "room=1&x=%20")
    assert request.key == RFC_KEY
    assert request.subprotocols == ("chat", "superchat")
    assert request.extensions == ()
    assert request.origin == "http://example.com"
    assert request.host == "server.example.com"
    assert request.headers[0] == ("host", "server.example.com")
    assert len(request.headers) == 7
    # with or without the final CRLFCRLF, the same request
    assert parse_request(RFC_REQUEST[:-4]) == request


def test_header_values_trimmed_and_names_lowercased() -> None:
    head = make_head(replace("Upgrade", "websocket \t"), extra=[("X-Thing", " \tv a l\t ")])
    request = parse_request(head)
    assert request.header("x-thing") == "v a l"
    assert request.header("X-THING") == "v a l"
    assert ("upgrade", "websocket") in request.headers


def test_other_duplicate_headers_are_kept_in_order() -> None:
    request = parse_request(make_head(extra=[("Cookie", "a=1"), ("Cookie", "b=2")]))
    assert [v for k, v in request.headers if k == "cookie"] == ["a=1", "b=2"]


def test_latin1_header_value_accepted() -> None:
    head = make_head().replace(b"\r\n\r\n", b"\r\nX-Name: caf\xe9\r\n\r\n")
    assert parse_request(head).header("x-name") == "caf\xe9"


# HS-04: the Firefox form and mixed case.
@pytest.mark.parametrize(
    "fields",
    [
        replace("Connection", "keep-alive, Upgrade"),
        replace("Upgrade", "WebSocket"),
        [("host", "h"), ("upgrade", "WebSocket"), ("connection", "keep-alive, Upgrade"),
         ("sec-websocket-key", RFC_KEY), ("sec-websocket-version", "13")],
        replace("Connection", "upgrade,keep-alive"),
        replace("Connection", "  UPGRADE  "),
    ],
)  # fmt: skip
def test_accepted_variants(fields: list[tuple[str, str]]) -> None:
    assert parse_request(make_head(fields)).key == RFC_KEY


def test_connection_token_across_two_headers() -> None:
    fields = [*replace("Connection", "keep-alive"), ("Connection", "Upgrade")]
    assert parse_request(make_head(fields)).key == RFC_KEY


def test_absolute_form_target_is_reduced_to_path() -> None:
    request = parse_request(make_head(line="GET http://example.com:80/chat?x=1 HTTP/1.1"))
    assert (request.target, request.path, request.query) == ("/chat?x=1", "/chat", "x=1")
    request = parse_request(make_head(line="GET wss://example.com HTTP/1.1"))
    assert (request.target, request.path) == ("/", "/")


def test_http_2_0_version_accepted() -> None:
    assert parse_request(make_head(line="GET / HTTP/2.0")).path == "/"


# -- parse_request: every rejection (HS-02, HS-03) ------------------------------------------


def _b64(n: int) -> str:
    return base64.b64encode(bytes(range(n))).decode()


BAD_400 = {
    "missing host": (make_head(drop="Host"), "Missing Host header"),
    "empty host": (make_head(replace("Host", "")), "Missing Host header"),
    "missing upgrade": (make_head(drop="Upgrade"), "Missing Upgrade header"),
    "upgrade h2c": (make_head(replace("Upgrade", "h2c")), 'Upgrade header must be "websocket"'),
    "missing connection": (make_head(drop="Connection"), "Missing Connection header"),
    "connection no token": (
        make_head(replace("Connection", "keep-alive")),
        'Connection header must contain "Upgrade"',
    ),
    "connection substring": (
        make_head(replace("Connection", "upgrades")),
        'Connection header must contain "Upgrade"',
    ),
    "missing key": (make_head(drop="Sec-WebSocket-Key"), "Missing Sec-WebSocket-Key header"),
    "key 15 bytes": (
        make_head(replace("Sec-WebSocket-Key", _b64(15))),
        "Invalid Sec-WebSocket-Key",
    ),
    "key 17 bytes": (
        make_head(replace("Sec-WebSocket-Key", _b64(17))),
        "Invalid Sec-WebSocket-Key",
    ),
    "key not base64": (
        make_head(replace("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ!=")),
        "Invalid Sec-WebSocket-Key",
    ),
    "key url-safe alphabet": (
        make_head(replace("Sec-WebSocket-Key", "-_-_-_-_-_-_-_-_-_-_-w==")),
        "Invalid Sec-WebSocket-Key",
    ),
    "key non-canonical": (
        make_head(replace("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZR==")),
        "Invalid Sec-WebSocket-Key",
    ),
    "key no padding": (
        make_head(replace("Sec-WebSocket-Key", RFC_KEY.rstrip("="))),
        "Invalid Sec-WebSocket-Key",
    ),
    "two keys": (
        make_head(extra=[("Sec-WebSocket-Key", RFC_KEY)]),
        "Duplicate Sec-WebSocket-Key header",
    ),
    "two versions": (make_head(extra=[("Sec-WebSocket-Version", "13")]), "Duplicate"),
    "two upgrades": (make_head(extra=[("Upgrade", "websocket")]), "Duplicate"),
    "two hosts": (make_head(extra=[("Host", "evil")]), "Duplicate"),
    "missing version": (
        make_head(drop="Sec-WebSocket-Version"),
        "Missing Sec-WebSocket-Version header",
    ),
    "http/1.0": (make_head(line="GET /chat HTTP/1.0"), "HTTP/1.1 or higher"),
    "http/0.9 line": (b"GET /chat\r\n\r\n", "Malformed request line"),
    "lowercase http": (make_head(line="GET /chat http/1.1"), "Malformed request line"),
    "double space": (make_head(line="GET  /chat HTTP/1.1"), "Malformed request line"),
    "target space": (make_head(line="GET /a b HTTP/1.1"), "Malformed request line"),
    "target fragment": (make_head(line="GET /a#b HTTP/1.1"), "Malformed request line"),
    "target no slash": (make_head(line="GET chat HTTP/1.1"), 'must start with "/"'),
    "target star": (make_head(line="GET * HTTP/1.1"), 'must start with "/"'),
    "target ftp": (make_head(line="GET ftp://x/ HTTP/1.1"), 'must start with "/"'),
    "non-ascii target": (
        make_head().replace(b"/chat", b"/ch\xe4t"),
        "Malformed request line",
    ),
    "bad method token": (make_head(line="G(T /chat HTTP/1.1"), "Malformed request line"),
    "no colon": (make_head(extra=[("X", "y")]).replace(b"X: y", b"X y"), "no colon"),
    "space before colon": (make_head(extra=[("X", "y")]).replace(b"X: y", b"X : y"), "name"),
    "obs-fold": (make_head(extra=[("X", "y")]).replace(b"X: y", b"X: y\r\n z"), "folding"),
    "utf-8 name": (
        make_head(extra=[("X", "y")]).replace(b"X: y", "Ñame: y".encode()),
        "Invalid header name",
    ),
    "latin-1 name": (
        make_head(extra=[("X", "y")]).replace(b"X: y", b"N\xe4me: y"),
        "Invalid header name",
    ),
    "empty name": (make_head(extra=[("X", "y")]).replace(b"X: y", b": y"), "Invalid header name"),
    "nul in value": (make_head(extra=[("X", "a\x00b")]), "Invalid character"),
    "bare cr in value": (make_head(extra=[("X", "a\rb")]), "Invalid character"),
    "bare lf in value": (make_head(extra=[("X", "a\nb")]), "Invalid character"),
    "empty head": (b"\r\n\r\n", "Malformed request line"),
    "protocol not token": (
        make_head(extra=[("Sec-WebSocket-Protocol", "chat, su per")]),
        "Sec-WebSocket-Protocol",
    ),
    "protocol empty": (make_head(extra=[("Sec-WebSocket-Protocol", " , ")]), "Protocol"),
    "protocol separator": (make_head(extra=[("Sec-WebSocket-Protocol", "a/b")]), "Protocol"),
    "extension broken": (
        make_head(extra=[("Sec-WebSocket-Extensions", "permessage-deflate;")]),
        "Sec-WebSocket-Extensions",
    ),
}


@pytest.mark.parametrize("head, message", BAD_400.values(), ids=list(BAD_400))
def test_rejected_with_400(head: bytes, message: str | None) -> None:
    with pytest.raises(HandshakeError) as info:
        parse_request(head)
    assert type(info.value) is HandshakeError
    assert info.value.status == 400
    assert info.value.headers == ()
    if message:
        assert message in str(info.value)


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "get", "OPTIONS"])
def test_non_get_is_405_with_allow(method: str) -> None:
    with pytest.raises(MethodNotAllowed) as info:
        parse_request(make_head(line=f"{method} /chat HTTP/1.1"))
    assert info.value.status == 405
    assert info.value.headers == (("Allow", "GET"),)


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", "013"])
def test_other_version_is_426_with_version_header(version: str) -> None:
    with pytest.raises(UpgradeRequired) as info:
        parse_request(make_head(replace("Sec-WebSocket-Version", version)))
    assert info.value.status == 426
    assert info.value.headers == (("Sec-WebSocket-Version", "13"),)
    assert "Unsupported WebSocket version" in str(info.value)


def test_rejection_response_bytes() -> None:
    with pytest.raises(UpgradeRequired) as info:
        parse_request(make_head(replace("Sec-WebSocket-Version", "8")))
    exc = info.value
    assert build_response(exc.status, str(exc).encode(), headers=exc.headers) == (
        b"HTTP/1.1 426 Upgrade Required\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 29\r\n"
        b"Connection: close\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n"
        b"Unsupported WebSocket version"
    )


# -- plain HTTP requests (http=True) ------------------------------------------------------------


def test_plain_http_request_when_enabled() -> None:
    head = b"POST /metrics?x=1 HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
    request = parse_request(head, http=True)
    assert (request.method, request.path, request.query, request.key) == (
        "POST", "/metrics", "x=1", "",
    )  # fmt: skip
    assert request.headers == (("content-length", "0"),)
    with pytest.raises(MethodNotAllowed):
        parse_request(head)
    with pytest.raises(HandshakeError, match="Missing Upgrade header"):
        parse_request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n\r\n")


def test_plain_http_still_validates_syntax_and_upgrades() -> None:
    with pytest.raises(HandshakeError, match="no colon"):
        parse_request(b"GET / HTTP/1.1\r\nHost h\r\n\r\n", http=True)
    # an Upgrade header makes it an upgrade: all WebSocket checks apply
    with pytest.raises(HandshakeError, match='must be "websocket"'):
        parse_request(make_head(replace("Upgrade", "h2c")), http=True)
    assert parse_request(make_head(), http=True).key == RFC_KEY


# -- subprotocols (RFC 6455 §4.2.2; HS-07 for the size cases) ---------------------------------


def test_subprotocols_across_headers_in_order() -> None:
    head = make_head(
        extra=[("Sec-WebSocket-Protocol", "a, b ,,c"), ("Sec-WebSocket-Protocol", "\td")]
    )
    assert parse_request(head).subprotocols == ("a", "b", "c", "d")


@pytest.mark.parametrize(
    "offered, supported, expected",
    [
        (["chat", "superchat"], ["superchat", "chat"], "chat"),
        (["x", "superchat"], ["superchat", "chat"], "superchat"),
        (["x", "y"], ["chat"], None),
        ([], ["chat"], None),
        (["chat"], [], None),
        (["Chat"], ["chat"], None),
    ],
)
def test_select_subprotocol(offered: list[str], supported: list[str], expected: str | None) -> None:
    assert select_subprotocol(offered, supported) == expected


def test_no_match_means_no_protocol_header() -> None:
    request = parse_request(RFC_REQUEST)
    chosen = select_subprotocol(request.subprotocols, ["mqtt"])
    assert chosen is None
    assert b"Sec-WebSocket-Protocol" not in build_accept(request.key, subprotocol=chosen)


def _answer(head: bytes, server: Sequence[str]) -> Callable[[], None]:
    """Work for ``cpu_ratio``: read ``head`` and pick a subprotocol (or fail: 431...)."""

    def work() -> None:
        with contextlib.suppress(HandshakeError):
            done = HeadReader(max_bytes=1 << 20).feed(head)
            assert done is not None
            select_subprotocol(parse_request(done[0]).subprotocols, server)

    return work


def test_many_subprotocol_offers_parse_linearly() -> None:
    # HS-07: 5 000 comma-separated tokens
    offers = ", ".join(f"p{i}" for i in range(5000))
    request = parse_request(make_head(extra=[("Sec-WebSocket-Protocol", offers)]))
    assert len(request.subprotocols) == 5000
    assert select_subprotocol(request.subprotocols, ["p4999"]) == "p4999"
    # CPU time, as a ratio: 2x the tokens costs at most 2.2x (no quadratic split or match)
    half = make_head(extra=[("Sec-WebSocket-Protocol", ", ".join(f"p{i}" for i in range(2500)))])
    full = make_head(extra=[("Sec-WebSocket-Protocol", offers)])
    bound = 2.2 * (len(full) / len(half)) / 2
    ratio = cpu_ratio(_answer(half, ["zz"]), _answer(full, ["zz"]), within=bound)
    assert ratio <= bound, f"{ratio:.2f}x CPU for 2x tokens"


def test_sixty_thousand_spaces_in_one_offer_hs07() -> None:
    value = "b" + " " * 60_000 + "x"
    head = make_head(extra=[("Sec-WebSocket-Protocol", value)])
    with pytest.raises(HeadersTooLarge):  # 431 by size under the default 16 KiB limit
        HeadReader().feed(head)
    with pytest.raises(HandshakeError) as info:  # with no size limit: a precise 400
        parse_request(head)
    assert info.value.status == 400
    # linear in the spaces: 2x the spaces costs at most 2.2x the CPU time
    half = make_head(extra=[("Sec-WebSocket-Protocol", "b" + " " * 30_000 + "x")])
    bound = 2.2 * (len(head) / len(half)) / 2
    ratio = cpu_ratio(_answer(half, ["b", "x"]), _answer(head, ["b", "x"]), within=bound)
    assert ratio <= bound, f"{ratio:.2f}x CPU for 2x spaces"


# -- extensions (RFC 6455 §9.1) -------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("permessage-deflate", [("permessage-deflate", ())]),
        (
            "permessage-deflate; client_max_window_bits",
            [("permessage-deflate", (("client_max_window_bits", None),))],
        ),
        (
            'permessage-deflate ; server_max_window_bits = "10" ;client_no_context_takeover',
            [
                (
                    "permessage-deflate",
                    (("server_max_window_bits", "10"), ("client_no_context_takeover", None)),
                )
            ],
        ),
        ('x; a="b\\c"', [("x", (("a", "bc"),))]),
        ("foo, bar; baz=2", [("foo", ()), ("bar", (("baz", "2"),))]),
        ("a,,b,", [("a", ()), ("b", ())]),
        # HS-10: syntactically valid even if semantically refused later
        ("permessage-deflate; server_max_window_bits=08", [
            ("permessage-deflate", (("server_max_window_bits", "08"),))]),
        ("permessage-deflate; foo=bar", [("permessage-deflate", (("foo", "bar"),))]),
        ("constructor", [("constructor", ())]),
    ],
)  # fmt: skip
def test_parse_extensions(value: str, expected: list[object]) -> None:
    assert parse_extensions(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " , ",
        "a;",
        "a; =1",
        "a; b=",
        "a b",
        "a; b=c d",
        "a; b=1=2",
        'a; b="c d"',  # quoted value must unescape to a token
        'a; b=""',
        'a; b="unterminated',
        "a; b=c/d",
        ";a",
        "a;;b",
        "a=1",
        "d\u00e9flate",
    ],
)
def test_parse_extensions_broken(value: str) -> None:
    with pytest.raises(ValueError):
        parse_extensions(value)


def test_extensions_across_headers_and_broken_header_is_400() -> None:
    head = make_head(
        extra=[
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
            ("Sec-WebSocket-Extensions", 'x-foo; a="1", permessage-deflate'),
        ]
    )
    assert parse_request(head).extensions == (
        ("permessage-deflate", (("client_max_window_bits", None),)),
        ("x-foo", (("a", "1"),)),
        ("permessage-deflate", ()),
    )
    with pytest.raises(HandshakeError) as info:
        parse_request(make_head(extra=[("Sec-WebSocket-Extensions", 'a; b="c')]))
    assert info.value.status == 400


def test_ten_thousand_extension_offers() -> None:
    value = ", ".join(["permessage-deflate; server_max_window_bits=8"] * 10000)
    assert len(parse_extensions(value)) == 10000


# -- HeadReader (HS-05, checklist HS-02/HS-03) ------------------------------------------------


FRAME = bytes.fromhex("818537fa213d7f9f4d5158")  # masked "Hello" (RFC 6455 §5.7)


def test_rest_after_head_is_returned_exactly() -> None:
    reader = HeadReader()
    assert reader.feed(RFC_REQUEST + FRAME + b"\r\n\r\n") == (RFC_REQUEST[:-4], FRAME + b"\r\n\r\n")
    with pytest.raises(InvalidState):
        reader.feed(b"x")


@pytest.mark.parametrize("split", range(1, len(RFC_REQUEST) + len(FRAME)))
def test_two_chunks_at_every_split_point(split: int) -> None:
    data = RFC_REQUEST + FRAME
    reader = HeadReader()
    first = reader.feed(data[:split])
    if split >= len(RFC_REQUEST):
        assert first == (RFC_REQUEST[:-4], data[len(RFC_REQUEST) : split])
        return
    assert first is None
    assert reader.feed(data[split:]) == (RFC_REQUEST[:-4], FRAME)


VALID_HEADS = [
    RFC_REQUEST,
    make_head(),
    make_head(replace("Connection", "keep-alive, Upgrade")),
    make_head(extra=[("Sec-WebSocket-Extensions", 'permessage-deflate; a="1"')]),
    b"\r\n\r\n",
]


@pytest.mark.parametrize("data", VALID_HEADS)
def test_one_byte_and_random_chunks_give_the_same_result(data: bytes) -> None:
    stream = data + FRAME
    expected = HeadReader().feed(stream)
    assert expected is not None
    assert feed_all(stream) == expected
    rng = random.Random(1234)
    for _ in range(50):
        sizes = [rng.randint(1, 40) for _ in range(20)]
        assert feed_all(stream, sizes) == expected
    if expected[0]:
        assert parse_request(feed_all(stream)[0]) == parse_request(expected[0])


def test_20mb_header_in_64k_chunks_stops_early() -> None:
    chunk = 64 * 1024
    data = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (20 * 1024 * 1024)
    reader = HeadReader()
    fed = 0
    with pytest.raises(HeadersTooLarge) as info:
        for pos in range(0, len(data), chunk):
            reader.feed(data[pos : pos + chunk])
            fed += 1
    assert info.value.status == 431
    assert fed == 0  # the very first 64 KiB chunk is already over 16 KiB
    assert reader.buffered <= reader.max_bytes + chunk
    assert reader.scanned <= reader.max_bytes  # never searched past the limit


def test_20mb_header_in_one_write() -> None:
    reader = HeadReader()
    with pytest.raises(HeadersTooLarge):
        reader.feed(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (20 * 1024 * 1024) + b"\r\n\r\n")
    assert reader.scanned <= reader.max_bytes


def test_head_exactly_at_limit_and_one_over() -> None:
    head = make_head()
    pad = b"X: " + b"a" * (1000 - len(head) - 5) + b"\r\n"
    exact = head[:-2] + pad + b"\r\n"
    assert len(exact) == 1000
    assert HeadReader(max_bytes=1000).feed(exact + FRAME) == (exact[:-4], FRAME)
    over = head[:-2] + b"X: a" + pad[3:] + b"\r\n"
    with pytest.raises(HeadersTooLarge):
        HeadReader(max_bytes=1000).feed(over)


def _headers(n: int, width: int = 0) -> bytes:
    lines = [f"X-H{i}: {'v' * width}" for i in range(n)]
    return ("GET / HTTP/1.1\r\n" + "".join(f"{x}\r\n" for x in lines) + "\r\n").encode()


def test_14k_of_headers_one_byte_at_a_time_is_linear() -> None:
    data = _headers(100, 135)
    assert 14 * 1024 <= len(data) <= 16 * 1024
    reader = HeadReader()
    for i in range(len(data)):
        result = reader.feed(data[i : i + 1])
        assert (result is None) == (i < len(data) - 1)
    # each byte is searched at most twice: work counts bytes, not time
    assert reader.scanned <= 2 * len(data)
    half = HeadReader()
    small = _headers(50, 135)
    for i in range(len(small)):
        half.feed(small[i : i + 1])
    assert reader.scanned <= 2.2 * half.scanned


def test_header_count_limit() -> None:
    assert HeadReader().feed(_headers(100)) is not None
    with pytest.raises(HeadersTooLarge, match="More than 100 header fields"):
        HeadReader().feed(_headers(101))
    reader = HeadReader(max_headers=3)
    with pytest.raises(HeadersTooLarge):
        for i in range(len(_headers(4))):
            reader.feed(_headers(4)[i : i + 1])


# -- build_response ---------------------------------------------------------------------------


def test_build_response_exact_bytes() -> None:
    assert build_response(405, b"no", headers=[("Allow", "GET")]) == (
        b"HTTP/1.1 405 Method Not Allowed\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 2\r\n"
        b"Connection: close\r\n"
        b"Allow: GET\r\n"
        b"\r\n"
        b"no"
    )
    assert build_response(204) == b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    assert build_response(200, b"{}", content_type="application/json").startswith(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    )


@pytest.mark.parametrize(
    "status", [200, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 413, 426, 429, 431, 500,
               501, 503],
)  # fmt: skip
def test_build_response_reason_table(status: int) -> None:
    line = build_response(status).split(b"\r\n", 1)[0]
    assert line.startswith(f"HTTP/1.1 {status} ".encode())
    assert not line.endswith(b"Unknown")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"headers": [("X-A", "1\r\nSet-Cookie: evil=1")]},
        {"headers": [("X-A", "1\nx")]},
        {"headers": [("X-A", "1\rx")]},
        {"headers": [("X-A\r\nSet-Cookie", "1")]},
        {"headers": [("X-A", "\u2603")]},
        {"headers": [("Content-Length", "5")]},
        {"headers": [("connection", "keep-alive")]},
        {"content_type": "text/html\r\nSet-Cookie: evil=1"},
    ],
)
def test_build_response_refuses_response_splitting(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_response(400, b"x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("status, body", [(101, b""), (99, b""), (600, b""), (204, b"x")])
def test_build_response_refuses_bad_status(status: int, body: bytes) -> None:
    with pytest.raises(ValueError):
        build_response(status, body)


# -- client side ------------------------------------------------------------------------------


def test_make_key_injectable() -> None:
    assert make_key(lambda n: bytes(n)) == "AAAAAAAAAAAAAAAAAAAAAA=="
    assert make_key(lambda n: b"the sample nonce"[:n]) == RFC_KEY
    assert len(base64.b64decode(make_key(), validate=True)) == 16


def test_build_request_exact_bytes() -> None:
    assert build_request(
        "server.example.com", "/chat", RFC_KEY, subprotocols=["chat", "superchat"],
        extensions="permessage-deflate", headers=[("Origin", "http://example.com")],
    ) == (
        b"GET /chat HTTP/1.1\r\n"
        b"Host: server.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Origin: http://example.com\r\n"
        b"\r\n"
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("h", "chat", RFC_KEY), {}),
        (("h", "/a b", RFC_KEY), {}),
        (("h\r\nX: y", "/", RFC_KEY), {}),
        (("h", "/", RFC_KEY), {"subprotocols": ["a b"]}),
        (("h", "/", RFC_KEY), {"headers": [("X", "\n")]}),
    ],
)
def test_build_request_refuses_bad_input(
    args: tuple[str, str, str], kwargs: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        build_request(*args, **kwargs)  # type: ignore[arg-type]


def test_round_trip_client_server_client() -> None:
    key = make_key()
    wire = build_request("example.com", "/ws?a=1", key, subprotocols=["v2", "v1"])
    head, rest = feed_all(wire)
    assert rest == b""
    request = parse_request(head)
    assert (request.path, request.query, request.subprotocols) == ("/ws", "a=1", ("v2", "v1"))
    chosen = select_subprotocol(request.subprotocols, ["v1"])
    response = build_accept(request.key, subprotocol=chosen, extensions="permessage-deflate")
    reader = HeadReader()
    result = reader.feed(response + FRAME)
    assert result is not None
    assert result[1] == FRAME
    subprotocol, extensions, headers = parse_response(result[0], key, subprotocols=["v2", "v1"])
    assert (subprotocol, extensions) == ("v1", "permessage-deflate")
    assert ("sec-websocket-accept", accept_key(key)) in headers


def test_parse_response_without_negotiation() -> None:
    assert parse_response(build_accept(RFC_KEY), RFC_KEY)[:2] == (None, "")


def _response(*lines: str, status: str = "HTTP/1.1 101 Switching Protocols") -> bytes:
    return ("\r\n".join([status, *lines]) + "\r\n\r\n").encode("latin-1")


GOOD = ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Accept: {RFC_ACCEPT}"]

BAD_RESPONSES = {
    "wrong accept": (
        _response("Upgrade: websocket", "Connection: Upgrade",
                  "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        "Sec-WebSocket-Accept",
    ),
    "missing accept": (_response("Upgrade: websocket", "Connection: Upgrade"), "Accept"),
    "two accepts": (_response(*GOOD, f"Sec-WebSocket-Accept: {RFC_ACCEPT}"), "Accept"),
    "missing upgrade": (_response(*GOOD[1:]), "Upgrade header"),
    "upgrade h2c": (_response("Upgrade: h2c", *GOOD[1:]), "Upgrade header"),
    "missing connection": (_response(GOOD[0], GOOD[2]), "Connection header"),
    "unoffered protocol": (_response(*GOOD, "Sec-WebSocket-Protocol: chat"), "not offered"),
    "two protocols": (
        _response(*GOOD, "Sec-WebSocket-Protocol: v1", "Sec-WebSocket-Protocol: v1"),
        "not offered",
    ),
    "broken extensions": (_response(*GOOD, "Sec-WebSocket-Extensions: a;"), "Extensions"),
    "two extensions": (
        _response(*GOOD, "Sec-WebSocket-Extensions: a", "Sec-WebSocket-Extensions: b"),
        "Duplicate",
    ),
    "malformed header": (_response(*GOOD, "Broken"), "Malformed"),
    "malformed status": (_response(*GOOD, status="HTTP/1.1 1O1 Switching"), "status line"),
    "404": (_response("Content-Length: 0", status="HTTP/1.1 404 Not Found"), "status 404"),
    "426": (_response("Sec-WebSocket-Version: 13", status="HTTP/1.1 426 Upgrade Required"),
            "status 426"),
    "200 garbage headers": (_response("@@@", status="HTTP/1.1 200 OK"), "status 200"),
    "empty": (b"", "status line"),
}  # fmt: skip


@pytest.mark.parametrize("head, message", BAD_RESPONSES.values(), ids=list(BAD_RESPONSES))
def test_parse_response_rejects(head: bytes, message: str) -> None:
    with pytest.raises(InvalidHandshakeResponse, match=message):
        parse_response(head, RFC_KEY, subprotocols=["v1"])


def test_parse_response_is_case_insensitive_and_trims() -> None:
    head = _response(
        "UPGRADE:  WebSocket ", "connection: keep-alive, upgrade",
        f"sec-websocket-accept:\t{RFC_ACCEPT} ", "Sec-WebSocket-Protocol: v1",
        status="HTTP/1.1 101 OK",
    )  # fmt: skip
    assert parse_response(head, RFC_KEY, subprotocols=["v1"])[0] == "v1"


# -- fuzz invariants (STYLE rule 2) -----------------------------------------------------------


def _read_and_parse(chunks: list[bytes]) -> None:
    reader = HeadReader(max_bytes=2048, max_headers=20)
    for chunk in chunks:
        result = reader.feed(chunk)
        if result is not None:
            parse_request(result[0], http=True)
            parse_request(result[0])
            return


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes_only_raise_handshake_errors(chunks: list[bytes]) -> None:
    with contextlib.suppress(HandshakeError):
        _read_and_parse(chunks)


ALPHABET = b'GET /HTTP1.\r\n:;,= \t"\\\x00\xff' + b"websocketupgradehostsec-key13"


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, len(RFC_REQUEST)),
    st.lists(st.sampled_from([bytes([b]) for b in ALPHABET]), max_size=30),
    st.integers(0, len(RFC_REQUEST)),
)
def test_mutated_requests_only_raise_handshake_errors(
    start: int, insert: list[bytes], cut: int
) -> None:
    data = RFC_REQUEST[:start] + b"".join(insert) + RFC_REQUEST[start + cut // 10 :]
    with contextlib.suppress(HandshakeError):
        _read_and_parse([data, b"\r\n\r\n"])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_responses_only_raise_invalid_handshake_response(data: bytes) -> None:
    with contextlib.suppress(InvalidHandshakeResponse):
        parse_response(data, RFC_KEY, subprotocols=["v1"])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=' \t,;="\\abc\u00e9', max_size=40))
def test_extension_parser_only_raises_value_error(value: str) -> None:
    try:
        result = parse_extensions(value)
    except ValueError:
        return
    assert all(name for name, _ in result)


# -- request-head suspicions (defects-2.md): leading CRLF, bare LF, long target ---------------


def test_one_leading_crlf_before_the_request_line_is_ignored() -> None:
    """RFC 7230 §3.5: a server SHOULD ignore at least one empty line before the request-line."""
    reader = HeadReader()
    result = reader.feed(b"\r\n" + make_head() + FRAME)
    assert result is not None and result[1] == FRAME
    assert parse_request(result[0]) == parse_request(
        cast(tuple[bytes, bytes], HeadReader().feed(make_head()))[0]
    )


def test_bare_lf_in_a_head_is_refused_at_once_with_400() -> None:
    """A bare LF gets a prompt 400 instead of waiting for a CRLF that never comes (408)."""
    head = make_head().replace(b"\r\n", b"\n")
    with pytest.raises(HandshakeError) as info:
        HeadReader().feed(head[:40])  # refused before the head is complete
    assert info.value.status == 400 and "LF" in str(info.value)


def test_an_oversized_request_target_gets_414_not_431() -> None:
    """RFC 9110 §15.5.15: 414 when the target is longer than the server will interpret."""
    with pytest.raises(HandshakeError) as info:
        HeadReader(max_bytes=1000).feed(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n")
    assert info.value.status == 414
    with pytest.raises(HeadersTooLarge):  # a long header field is still 431
        HeadReader(max_bytes=1000).feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000)
