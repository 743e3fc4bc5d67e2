"""The compiled handshake field scan against its pure-Python twin (ARCHITECTURE.md §3 rule 6).

``_speedups.head_fields`` and ``handshake.head_fields_python`` get the same blocks, hostile
bytes included, and must give the same fields and index, or both ``None`` (the line loop
then answers with the precise error). The compiled module is imported directly, so this
runs under ``WSFLASK_NO_EXTENSIONS=1`` too; without the build it skips (fails in CI).
"""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsflask.protocol import handshake

from .conftest import bytes_kept

SHARED = handshake._SHARED_TEXT
# the bytes field lines are made of, hostile ones included: every CTL class, DEL, obs-text
_BYTE = st.sampled_from(
    [b"a", b"Z", b"-", b"!", b"~", b":", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x08", b"\x1f",
     b"\x7f", b"\x80", b"\xe9", b"\xff", b"=", b",", b"\"", b"(", b"@", b"13", b"websocket"]
)  # fmt: skip
_GOOD = st.sampled_from(
    [b"Host: x", b"Upgrade: websocket", b"CONNECTION:Upgrade", b"A:", b"B:  v  ", b"X-Y:\tz\t",
     b"Cookie: a=b; c", b"Sec-WebSocket-Version: 13", b"V: \xe9t\xe9", b"K:\t \t"]
)  # fmt: skip
_LINE = st.one_of(st.lists(_BYTE, max_size=10).map(b"".join), _GOOD)


CACHED = handshake._CACHED
Seen = dict[tuple[str, str], tuple[str, str]]


def _same(c: ModuleType, block: bytes, seen: Seen | None = None) -> object:
    """Both scans of ``block``, each with its own copy of ``seen``: equal results, and equal
    caches after (``seen`` itself is then the compiled scan's)."""
    seen = {} if seen is None else seen
    twin_seen = dict(seen)
    compiled = c.head_fields(block, SHARED, seen, CACHED)
    assert compiled == handshake.head_fields_python(block, SHARED, twin_seen, CACHED)
    assert seen == twin_seen
    return compiled


@settings(max_examples=1500, deadline=None)
@given(st.lists(_LINE, max_size=8), st.sampled_from([b"\r\n", b"\n", b"\r", b""]))
@example([b"Host: x", b"Upgrade: websocket"], b"\r\n")
@example([b"Host : x"], b"\r\n")  # whitespace before the colon: unusual
@example([b" Host: x"], b"\r\n")  # obs-fold: unusual
def test_head_fields_equal_their_twin(c: ModuleType, lines: list[bytes], end: bytes) -> None:
    _same(c, b"".join(line + end for line in lines))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_head_fields_equal_their_twin_on_any_bytes(c: ModuleType, block: bytes) -> None:
    _same(c, block)


def test_common_strings_are_shared_and_the_rest_are_fresh(c: ModuleType) -> None:
    found = _same(c, b"Upgrade: websocket\r\nX-Custom: Value \r\nx-custom:2\r\n")
    assert isinstance(found, tuple)
    fields, index = found
    assert fields == (("upgrade", "websocket"), ("x-custom", "Value"), ("x-custom", "2"))
    assert index == {"upgrade": ["websocket"], "x-custom": ["Value", "2"]}
    assert fields[0][0] is SHARED["upgrade"] and fields[0][1] is SHARED["websocket"]


def test_seen_fields_are_one_tuple_and_the_cache_is_bounded(c: ModuleType) -> None:
    seen: Seen = {}
    block = b"Host: a.example\r\nSec-WebSocket-Key: k1==\r\nOrigin: " + b"o" * 65 + b"\r\n"
    first = _same(c, block, seen)
    again = _same(c, block, seen)
    assert isinstance(first, tuple) and isinstance(again, tuple)
    assert again[0][0] is first[0][0]  # Host: one tuple for both requests
    assert again[0][1] is not first[0][1]  # never a key (nor a cookie or credential)
    assert list(seen) == [("host", "a.example")]  # and never a value over 64 characters
    for i in range(300):  # 300 different Hosts: full at 256, then it starts over
        _same(c, f"Host: h{i}\r\nUpgrade: websocket\r\n".encode(), seen)
        assert len(seen) <= handshake.SEEN_FIELDS_MAX
    assert ("host", "h299") in seen and ("host", "h0") not in seen


def test_unusual_blocks_are_left_to_the_line_loop(c: ModuleType) -> None:
    for block in (b"Host x\r\n", b"Host: x\n", b"Host: x", b"Ho st: x\r\n", b"A: \x00\r\n",
                  b":x\r\n", b"A: b\rc\r\n", b"A: \x7f\r\n"):  # fmt: skip
        assert _same(c, block) is None
    assert _same(c, b"") == ((), {})


def test_arguments_are_checked(c: ModuleType) -> None:
    with pytest.raises(TypeError):
        c.head_fields(bytearray(b"A: b\r\n"), SHARED, {}, CACHED)
    with pytest.raises(TypeError):
        c.head_fields(b"A: b\r\n", [], {}, CACHED)
    with pytest.raises(TypeError):
        c.head_fields(b"A: b\r\n", SHARED, [], CACHED)
    with pytest.raises(TypeError):
        c.head_fields(b"A: b\r\n", SHARED, {}, ["host"])
    with pytest.raises(TypeError):
        c.head_fields(b"A: b\r\n")


def test_no_leak_on_any_path(c: ModuleType) -> None:
    """Success, unusual and sharing paths free what they allocate (ASan does not track
    reference counts)."""
    blocks = [b"Host: x\r\nUpgrade: websocket\r\nX-A: fresh value\r\nX-A: 2\r\n",
              b"Host: x\r\nBad line\r\n", b"A: \x00\r\n", b""]  # fmt: skip

    def churn() -> None:
        for _ in range(500):
            for block in blocks:
                c.head_fields(block, SHARED, seen, CACHED)

    seen: Seen = {}
    grown = bytes_kept(churn)
    assert grown < 4096, f"{grown} bytes kept after 500 rounds"
