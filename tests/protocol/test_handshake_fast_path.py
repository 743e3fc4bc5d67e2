"""The handshake head's fast paths give exactly what the line-by-line code gives.

``HeadReader.feed`` takes a whole head in one chunk with a few C-level scans, and
``_parse_head`` validates a block of field lines with one regular expression; anything
unusual falls back to the line loops, which define the behaviour (results and errors).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wsflask.protocol import handshake
from wsflask.protocol.errors import HandshakeError

# bytes a field line is made of, hostile ones included: CR, LF, NUL, DEL, HTAB, SP, ":"
_ALPHABET = st.sampled_from(
    [b"a", b"Z", b"-", b"!", b":", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x7f", b"\xff", b"="]
)
_LINE = st.lists(_ALPHABET, max_size=12).map(b"".join)
_GOOD_LINE = st.sampled_from(
    [b"Host: x", b"Upgrade: websocket", b"A:", b"B:  v  ", b"X-Y:\tz\t", b"Cookie: a=b; c"]
)


def _outcome(fn: object, *args: object) -> object:
    try:
        return ("ok", fn(*args))  # type: ignore[operator]
    except HandshakeError as exc:
        return ("error", type(exc).__name__, str(exc), exc.status)


def _slow_parse_head(head: bytes) -> object:
    start, sep, block = head.removesuffix(b"\r\n\r\n").partition(b"\r\n")
    if not sep:
        return start, (), {}
    return start, *handshake._collect(handshake._checked_lines(block + b"\r\n"))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_LINE, _GOOD_LINE), max_size=6), st.booleans())
def test_parse_head_fast_path_equals_the_line_loop(lines: list[bytes], crlfcrlf: bool) -> None:
    head = b"\r\n".join([b"GET / HTTP/1.1", *lines]) + (b"\r\n\r\n" if crlfcrlf else b"")
    assert _outcome(handshake._parse_head, head) == _outcome(_slow_parse_head, head)


def _bytewise(data: bytes, max_bytes: int, max_headers: int) -> object:
    reader = handshake.HeadReader(max_bytes, max_headers)
    try:
        for i in range(len(data)):
            if (done := reader.feed(data[i : i + 1])) is not None:
                return ("ok", (done[0], done[1] + data[i + 1 :]))  # the rest, fed or not
    except HandshakeError as exc:
        return ("error", type(exc).__name__, str(exc), exc.status)
    return ("ok", None)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(_LINE, _GOOD_LINE), max_size=8),
    st.sampled_from([b"", b"\r\n\r\n", b"\r\n\r\nrest", b"\n\n", b"\r\n"]),
    st.booleans(),
    st.integers(min_value=16, max_value=120),
    st.integers(min_value=0, max_value=6),
)
def test_head_reader_whole_chunk_equals_bytewise(
    lines: list[bytes], tail: bytes, leading: bool, max_bytes: int, max_headers: int
) -> None:
    data = (b"\r\n" if leading else b"") + b"\r\n".join([b"GET / HTTP/1.1", *lines]) + tail
    whole = _outcome(handshake.HeadReader(max_bytes, max_headers).feed, data)
    assert whole == _bytewise(data, max_bytes, max_headers)


def test_the_fast_path_is_taken_for_a_usual_head() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
    reader = handshake.HeadReader()
    assert reader.feed(head + b"\x81") == (head[:-4], b"\x81")
    assert reader.scanned == len(head)  # one pass, counted once
    assert handshake._FIELDS_B.fullmatch(b"Host: x\r\nUpgrade: websocket\r\n")
