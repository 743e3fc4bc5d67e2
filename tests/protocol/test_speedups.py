"""Every compiled speedup against its pure-Python twin (ARCHITECTURE.md §3 rule 6).

Both get the same inputs and must give the same outputs, exceptions and close codes. The
compiled module is imported directly, so these tests run even under
``WSFLASK_NO_EXTENSIONS=1``. Without the extension they skip with the install hint, and
fail under ``CI=true``, where a missing build is a broken build.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from itertools import pairwise
from types import ModuleType
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsflask.protocol import CloseCode, Opcode, ProtocolError, TextMessage, frame_info, speedups
from wsflask.protocol import connection as connection_module
from wsflask.protocol.errors import FRAME_DUMP_BYTES
from wsflask.protocol.events import BinaryMessage
from wsflask.protocol.frames import Frame, FrameDecoder, encode_frame_python
from wsflask.protocol.mask import (
    apply_mask_inplace_python,
    apply_mask_int,
    apply_mask_reference,
)
from wsflask.protocol.messages import scan_messages_python
from wsflask.protocol.states import Limits

from .conftest import bytes_kept, feed, open_pair, splits


def outcome(fn: object, *args: object, **kwargs: object) -> tuple[str, object]:
    """("ok", result) or ("raise", exception type): what both twins must agree on."""
    try:
        return "ok", fn(*args, **kwargs)  # type: ignore[operator]
    except Exception as exc:
        return "raise", type(exc)


def test_selection_follows_the_environment(c: ModuleType) -> None:
    forced = os.environ.get(speedups.NO_EXTENSIONS_ENV, "") not in ("", "0")
    assert speedups.speedups_active() is not forced
    assert (speedups.compiled is c) is not forced


# ------------------------------------------------------------------ (a) masking

LENGTHS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 31, 32, 33, 63, 64, 65, 125, 126, 4099, 65537]


@pytest.mark.parametrize("size", LENGTHS)
@pytest.mark.parametrize("offset", range(8))
def test_mask_every_alignment_and_length(c: ModuleType, size: int, offset: int) -> None:
    backing = bytes((i * 7 + 3) & 0xFF for i in range(size + 8))
    data = memoryview(backing)[offset : offset + size]  # unaligned source
    key = b"\x37\xfa\x21\x3d"
    expected = apply_mask_reference(bytes(data), key)
    assert c.apply_mask(data, key) == apply_mask_int(data, key) == expected
    target = bytearray(backing)
    c.apply_mask_inplace(memoryview(target)[offset : offset + size], key)
    assert target[offset : offset + size] == expected
    assert target[:offset] == backing[:offset]  # nothing written outside the view
    assert target[offset + size :] == backing[offset + size :]


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4), st.integers(0, 7))
def test_mask_matches_twin(c: ModuleType, data: bytes, key: bytes, offset: int) -> None:
    view = memoryview(bytes(offset) + data)[offset:]
    assert c.apply_mask(view, key) == apply_mask_int(view, key)
    assert type(c.apply_mask(view, key)) is bytes
    mine, theirs = bytearray(data), bytearray(data)
    c.apply_mask_inplace(mine, key)
    apply_mask_inplace_python(theirs, key)
    assert mine == theirs


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b"abc", b"\x01\x02\x03"),  # short key
        (b"abc", b"\x01\x02\x03\x04\x05"),  # long key
        (b"", b""),
        ("text", b"\x01\x02\x03\x04"),  # not a buffer
        (b"abc", None),
        (12, b"\x01\x02\x03\x04"),
    ],
)
def test_mask_rejects_what_the_twin_rejects(c: ModuleType, data: object, key: object) -> None:
    theirs = outcome(apply_mask_int, data, key)
    assert theirs[0] == "raise"
    assert outcome(c.apply_mask, data, key) == theirs


def test_mask_inplace_refuses_read_only_buffers(c: ModuleType) -> None:
    with pytest.raises(TypeError):
        c.apply_mask_inplace(b"immutable", b"\x01\x02\x03\x04")
    with pytest.raises(TypeError):
        apply_mask_inplace_python(b"immutable", b"\x01\x02\x03\x04")  # type: ignore[arg-type]


# ------------------------------------------------------------------ (c) encoding

BOUNDARIES = [0, 1, 2, 3, 4, 5, 125, 126, 127, 65535, 65536, 65537]
KEYS = [None, b"\x37\xfa\x21\x3d", bytearray(b"\x00\x00\x00\x00")]


@pytest.mark.parametrize("size", BOUNDARIES)
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    ("opcode", "fin", "rsv"),
    [(0x1, True, 0), (0x0, False, 0x40), (0x2, False, 0x70), (0xA, True, 0)],
)
def test_encode_every_length_boundary(
    c: ModuleType, size: int, key: bytes | None, opcode: int, fin: bool, rsv: int
) -> None:
    payload = bytes(i & 0xFF for i in range(size))
    frame = c.encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=key)
    assert frame == encode_frame_python(opcode, payload, fin=fin, rsv=rsv, mask=key)
    info = frame_info(frame)
    assert (info.fin, info.opcode, info.payload_length, info.masked) == (
        fin,
        opcode,
        size,
        key is not None,
    )
    assert frame[:1] == bytes(((0x80 if fin else 0) | rsv | opcode,))


@given(
    st.integers(0, 15),
    st.binary(max_size=400) | st.sampled_from([b"x" * 125, b"y" * 126, b"z" * 65536]),
    st.booleans(),
    st.sampled_from([0, 0x10, 0x20, 0x40, 0x70]),
    st.none() | st.binary(min_size=4, max_size=4),
    st.sampled_from([bytes, bytearray, memoryview]),
)
def test_encode_matches_twin(
    c: ModuleType,
    opcode: int,
    payload: bytes,
    fin: bool,
    rsv: int,
    key: bytes | None,
    kind: type,
) -> None:
    data = kind(payload)
    mine = c.encode_frame(opcode, data, fin=fin, rsv=rsv, mask=key)
    assert type(mine) is bytes
    assert mine == encode_frame_python(opcode, data, fin=fin, rsv=rsv, mask=key)


def test_encode_defaults_and_keywords(c: ModuleType) -> None:
    assert c.encode_frame(0x9) == encode_frame_python(0x9) == b"\x89\x00"
    assert c.encode_frame(opcode=Opcode.TEXT, payload=b"hi") == b"\x81\x02hi"
    assert c.encode_frame(0x1, b"hi", mask=None) == b"\x81\x02hi"
    assert c.encode_frame(0x1, b"Hello", mask=bytes.fromhex("37fa213d")) == bytes.fromhex(
        "818537fa213d7f9f4d5158"  # RFC 6455 §5.7
    )


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((300, b""), {}),  # first byte out of range
        ((-1, b""), {}),
        ((0x1, b""), {"rsv": 2**70}),
        ((0x1, b""), {"rsv": -(2**70)}),
        (("1", b""), {}),
        ((1.0, b""), {}),
        ((0x1, "text"), {}),  # payload that has a len() but is not bytes
        ((0x1, 12), {}),
        ((0x1, b"abc"), {"mask": b"\x01\x02\x03"}),
        ((0x1, b"abc"), {"mask": "abcd"}),
        ((0x1, "text"), {"mask": b"\x01\x02\x03"}),
        ((300, "text"), {}),
        ((0x1, 12), {"rsv": "x"}),
        ((0x1, b"", True), {}),  # fin is keyword-only
        ((0x1, b""), {"final": True}),
        ((), {"payload": b""}),
    ],
)
def test_encode_rejects_what_the_twin_rejects(
    c: ModuleType, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    theirs = outcome(encode_frame_python, *args, **kwargs)
    assert theirs[0] == "raise"
    assert outcome(c.encode_frame, *args, **kwargs) == theirs


# ------------------------------------------------------------------ (b) frame scanning

PATTERN = bytes(range(256)) * 257  # payload source: 65,792 bytes


Spec = tuple[int, int, int, bool, str, bytes]


def raw_frame(spec: Spec, expect_mask: bool) -> bytes:
    """One frame with any header, hostile ones included (non-minimal or top-bit lengths)."""
    fin_rsv, opcode, size, flip, encoding, key = spec
    masked = expect_mask is not flip
    b0 = fin_rsv | opcode
    if encoding == "16" and size < 65536:
        head = bytes((b0, 126)) + size.to_bytes(2, "big")
    elif encoding == "64":
        head = bytes((b0, 127)) + size.to_bytes(8, "big")
    elif encoding == "top":  # a 64-bit length with its most significant bit set
        head = bytes((b0, 127)) + (size | 1 << 63).to_bytes(8, "big")
    else:
        head = encode_frame_python(0, PATTERN[:size])[: -size or None]
        head = bytes((b0,)) + head[1:]
    payload = PATTERN[:size]
    if not masked:
        return head + payload
    return head[:1] + bytes((head[1] | 0x80,)) + head[2:] + key + apply_mask_int(payload, key)


# Mostly valid frames, so that a stream gets past its first header; then every kind of
# hostile one: reserved opcodes and RSV bits, the wrong mask bit, non-minimal lengths.
frame_specs = st.tuples(
    st.sampled_from([0x80] * 4 + [0x00, 0xC0, 0x40, 0x90, 0xA0, 0xF0]),  # FIN and RSV bits
    st.sampled_from([0x0, 0x1, 0x1, 0x2, 0x2, 0x8, 0x9, 0xA]) | st.integers(0, 15),
    st.sampled_from([0, 1, 2, 5, 20, 63, 64, 65, 124, 125, 126, 127, 4096, 4097, 65535, 65536])
    | st.integers(0, 300),
    st.sampled_from([False] * 9 + [True]),  # the wrong mask bit for this side
    st.sampled_from(["minimal"] * 8 + ["16", "64", "top"]),
    st.binary(min_size=4, max_size=4),
)


def budget_owner(decoder: FrameDecoder, limit: int) -> Callable[[Frame], None]:
    """Lower and restore ``max_payload`` between frames, as ``MessageAssembler`` does."""

    def after(frame: Frame) -> None:
        fin, opcode, _, payload = frame
        if opcode >= 0x8:
            return
        if not fin:
            decoder.max_payload = max(0, decoder.max_payload - len(payload) - 8)
        elif opcode == 0:
            decoder.max_payload = limit

    return after


def run(
    decoder: FrameDecoder,
    feed: Callable[[bytes], Iterable[Frame]],
    chunks: list[bytes],
    owner: bool,
    limit: int,
) -> list[object]:
    """Everything a decoder says, chunk by chunk, until its first error."""
    after = budget_owner(decoder, limit)
    seen: list[object] = []
    for chunk in chunks:
        try:
            for frame in feed(chunk):
                seen.append(frame)
                if owner:
                    after(frame)
        except ProtocolError as exc:  # the violation code and kept bytes must agree too
            seen.append((type(exc), str(exc), exc.close_code, exc.code, exc.frame))
            return seen
        seen.append(("buffered", decoder.buffered))
    return seen


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({p % (len(stream) + 1) for p in points} | {0, len(stream)})
    return [stream[a:b] for a, b in pairwise(edges)] or [b""]


def both(
    chunks: list[bytes], expect_mask: bool, limit: int, rsv: int, slack: int, owner: bool
) -> tuple[list[object], list[object]]:
    results = []
    for compiled in (False, True):
        decoder = FrameDecoder(expect_mask=expect_mask, max_payload=limit, allowed_rsv=rsv)
        decoder.compressed_slack = slack
        feed = decoder.feed_compiled if compiled else decoder.feed_python
        results.append(run(decoder, feed, chunks, owner, limit))
    return results[0], results[1]


LIMITS = st.sampled_from([0, 1, 125, 126, 4096, 65535, 65536, 1 << 20, 1 << 70, -1])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(frame_specs, max_size=8),
    st.lists(st.integers(0, 1 << 20), max_size=12),
    st.booleans(),
    LIMITS,
    st.sampled_from([0, 0x40, 0x70]),
    st.sampled_from([0, 64]),
    st.booleans(),
    st.integers(0, 3),
)
def test_decoder_matches_twin_on_any_stream(
    c: ModuleType,
    specs: list[Spec],
    points: list[int],
    expect_mask: bool,
    limit: int,
    rsv: int,
    slack: int,
    owner: bool,
    trim: int,
) -> None:
    stream = b"".join(raw_frame(spec, expect_mask) for spec in specs)
    stream = stream[: len(stream) - trim]  # a stream may end inside a frame
    python, compiled = both(cut(stream, points), expect_mask, limit, rsv, slack, owner)
    assert compiled == python
    scan_agrees(c, stream, expect_mask, limit, rsv, slack)


def scan_agrees(
    c: ModuleType, stream: bytes, expect_mask: bool, limit: int, rsv: int, slack: int
) -> None:
    """``scan_frames`` itself, not only ``feed_compiled``, whose error path is the twin's:
    its own verdict on a bad header is the violation code the twin raises with."""
    frames, pos, need, bad = c.scan_frames(stream, 0, expect_mask, limit, limit + slack, rsv)
    decoder = FrameDecoder(expect_mask=expect_mask, max_payload=limit, allowed_rsv=rsv)
    decoder.compressed_slack = slack
    expected: list[Frame] = []
    code: str | bool = False
    try:
        expected.extend(decoder.feed_python(stream))
    except ProtocolError as exc:
        code = exc.code
        assert exc.frame == stream[pos : pos + FRAME_DUMP_BYTES]  # the bad header's bytes
    assert frames == expected
    assert bad == code
    if not code:
        assert decoder.buffered == len(stream) - pos
        assert need == 0 or need > len(stream)


@settings(max_examples=300)
@given(
    st.binary(max_size=200),
    st.lists(st.integers(0, 200), max_size=8),
    st.booleans(),
    LIMITS,
    st.sampled_from([0, 0x40]),
)
def test_decoder_matches_twin_on_noise(
    c: ModuleType, stream: bytes, points: list[int], expect_mask: bool, limit: int, rsv: int
) -> None:
    python, compiled = both(cut(stream, points), expect_mask, limit, rsv, 0, True)
    assert compiled == python
    scan_agrees(c, stream, expect_mask, limit, rsv, 0)


@pytest.mark.parametrize("size", BOUNDARIES)
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("mode", ["whole", "bytes", "random"])
def test_decoder_every_length_boundary(c: ModuleType, size: int, masked: bool, mode: str) -> None:
    key = b"\x37\xfa\x21\x3d" if masked else None
    control = PATTERN[: min(size, 125)]
    stream = b"".join(
        encode_frame_python(op, PATTERN[:size], mask=key) for op in (0x1, 0x2)
    ) + encode_frame_python(0x9, control, mask=key)
    if mode == "bytes" and size > 4096:
        mode = "random"  # one byte at a time through 130 KiB adds time, not coverage
    python, compiled = both(list(splits(stream, mode)), masked, 1 << 20, 0, 0, False)
    assert compiled == python
    frames = [x for x in compiled if isinstance(x, tuple) and x[0] != "buffered"]
    assert frames == [
        (True, 0x1, 0, PATTERN[:size]),
        (True, 0x2, 0, PATTERN[:size]),
        (True, 0x9, 0, control),
    ]
    assert compiled[-1] == ("buffered", 0)


@pytest.mark.parametrize(
    ("header", "code", "violation"),
    [
        # non-minimal 16-bit length, non-minimal 64-bit length, 64-bit top bit set
        (b"\x81\x7e\x00\x7d", CloseCode.PROTOCOL_ERROR, "bad_length"),
        (b"\x81\x7f" + (125).to_bytes(8, "big"), CloseCode.PROTOCOL_ERROR, "bad_length"),
        (b"\x81\x7f" + (1 << 63).to_bytes(8, "big"), CloseCode.PROTOCOL_ERROR, "bad_length"),
        (b"\x83\x00", CloseCode.PROTOCOL_ERROR, "reserved_opcode"),
        (b"\x09\x00", CloseCode.PROTOCOL_ERROR, "fragmented_control"),  # a fragmented ping
        (b"\x89\x7e\x00\x7e", CloseCode.PROTOCOL_ERROR, "control_too_long"),
        (b"\xc9\x00", CloseCode.PROTOCOL_ERROR, "reserved_bits"),  # RSV1 on a control frame
        (b"\xa1\x00", CloseCode.PROTOCOL_ERROR, "reserved_bits"),  # RSV2: no extension has it
        (b"\x81\x80\x00\x00\x00\x00", CloseCode.PROTOCOL_ERROR, "masked_server_frame"),
        # too big: before buffering; 256 > 200; compressed: 265 > 200 + 64
        (b"\x82\x7f" + (1 << 62).to_bytes(8, "big"), CloseCode.TOO_BIG, "too_big"),
        (b"\x82\x7e\x01\x00", CloseCode.TOO_BIG, "too_big"),
        (b"\xc2\x7e\x01\x09", CloseCode.TOO_BIG, "too_big"),
    ],
)
def test_hostile_headers_fail_alike(
    c: ModuleType, header: bytes, code: CloseCode, violation: str
) -> None:
    python, compiled = both([b"\x81\x02ok" + header], False, 200, 0x40, 64, False)
    assert compiled == python
    scan_agrees(c, b"\x81\x02ok" + header, False, 200, 0x40, 64)
    assert compiled[0] == (True, 0x1, 0, b"ok")  # the frame before the bad one is kept
    assert isinstance(compiled[-1], tuple) and compiled[-1][2:] == (code, violation, header)


def test_compressed_frames_get_the_slack(c: ModuleType) -> None:
    stream = encode_frame_python(0x2, b"z" * 264, rsv=0x40) + encode_frame_python(0x2, b"z" * 201)
    python, compiled = both([stream], False, 200, 0x40, 64, False)
    assert compiled == python
    assert compiled[0] == (True, 0x2, 0x40, b"z" * 264)
    assert compiled[1][2] == CloseCode.TOO_BIG  # type: ignore[index]
    scan_agrees(c, stream, False, 200, 0x40, 64)


def test_scan_reports_where_it_stopped(c: ModuleType) -> None:
    stream = encode_frame_python(0x2, b"ab") + encode_frame_python(0x2, b"x" * 5000)[:100]
    frames, pos, need, bad = c.scan_frames(stream, 0, False, 1 << 20, 1 << 20, 0)
    assert frames == [(True, 0x2, 0, b"ab")]
    assert (pos, need, bad) == (4, 4 + 4 + 5000, False)
    frames, pos, need, bad = c.scan_frames(b"\x81", 0, False, 10, 10, 0)
    assert (frames, pos, need, bad) == ([], 0, 0, False)
    with pytest.raises(ValueError):
        c.scan_frames(b"\x81\x00", 3, False, 10, 10, 0)


# ------------------------------------------------------------------ (c) whole messages


def messages_agree(c: ModuleType, stream: bytes, expect_mask: bool, limit: int) -> int:
    """``scan_messages`` and its twin give the same events and stop at the same frame;
    returns that end."""
    python = scan_messages_python(stream, expect_mask, limit, TextMessage, BinaryMessage)
    compiled = c.scan_messages(stream, expect_mask, limit, TextMessage, BinaryMessage)
    assert compiled == python
    assert [type(e) for e in compiled[0]] == [type(e) for e in python[0]]
    return int(compiled[1])


# Text payloads with invalid UTF-8 among them (a lone continuation byte, a surrogate, a
# truncated sequence); frame_specs' payloads are PATTERN, which is invalid UTF-8 past 0x7F.
TEXTS = st.sampled_from(
    [b"", b"ok", "héllo".encode(), b"\x80", b"\xed\xa0\x80", b"\xe2\x82", b"a" * 600]
)


def spec_stream(specs: list[Spec | tuple[str, bytes]], expect_mask: bool) -> bytes:
    """The frames of ``specs``: ``frame_specs`` ones, and ("text", payload) text frames."""
    key = b"\x37\xfa\x21\x3d" if expect_mask else None
    return b"".join(
        encode_frame_python(0x1, spec[1], mask=key)
        if spec[0] == "text"
        else raw_frame(spec, expect_mask)  # type: ignore[arg-type]
        for spec in specs
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(frame_specs | st.tuples(st.just("text"), TEXTS), max_size=8),
    st.booleans(),
    LIMITS,
    st.integers(0, 3),
)
def test_whole_messages_match_twin_on_any_stream(
    c: ModuleType, specs: list[Spec | tuple[str, bytes]], expect_mask: bool, limit: int, trim: int
) -> None:
    stream = spec_stream(specs, expect_mask)
    stream = stream[: len(stream) - trim]
    end = messages_agree(c, stream, expect_mask, limit)
    # What they take is exactly what the frame decoder would deliver as whole messages, and
    # the frame at ``end`` is one the decoder must judge (or is incomplete).
    decoder = FrameDecoder(expect_mask=expect_mask, max_payload=limit)
    try:
        frames = list(decoder.feed_python(stream[:end]))
    except ProtocolError as exc:  # pragma: no cover - a failure message, not a branch
        raise AssertionError(f"took a frame the decoder refuses: {exc}") from None
    assert decoder.buffered == 0 and all(f[0] and not f[2] and f[1] in (1, 2) for f in frames)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans(), LIMITS)
def test_whole_messages_match_twin_on_noise(
    c: ModuleType, stream: bytes, expect_mask: bool, limit: int
) -> None:
    messages_agree(c, stream, expect_mask, limit)


@pytest.mark.parametrize("size", BOUNDARIES)
@pytest.mark.parametrize("masked", [True, False])
def test_whole_messages_every_length_boundary(c: ModuleType, size: int, masked: bool) -> None:
    key = b"\x37\xfa\x21\x3d" if masked else None
    frame = encode_frame_python(0x2, PATTERN[:size], mask=key)
    text = encode_frame_python(0x1, b"t" * size, mask=key)
    for limit in (size - 1, size):
        end = messages_agree(c, frame + text, masked, limit)
        assert end == (len(frame) + len(text) if limit >= size else 0)
    assert messages_agree(c, frame + text[:-1], masked, size) == len(frame)


def test_whole_messages_are_the_event_types_the_core_makes(c: ModuleType) -> None:
    """The compiled scan makes the events without calling their __init__: that is exact
    only while ``data`` is each type's one field and nothing runs after it is set."""
    for kind in (TextMessage, BinaryMessage):
        assert [f.name for f in dataclasses.fields(kind)] == ["data"]
        assert not hasattr(kind, "__post_init__") and "__slots__" in vars(kind)
    events, end = c.scan_messages(
        encode_frame_python(0x1, b"hi") + encode_frame_python(0x2, b"yo"),
        False,
        10,
        TextMessage,
        BinaryMessage,
    )
    assert events == [TextMessage("hi"), BinaryMessage(b"yo")] and end == 8
    with pytest.raises(TypeError):
        c.scan_messages(b"", False, 10, "not a type", BinaryMessage)
    with pytest.raises(TypeError):
        c.scan_messages(b"", False, 10)


def connection_story(
    chunks: list[bytes], side_is_server: bool, limit: int, whole: bool
) -> list[object]:
    """Everything an open Connection reports for ``chunks``: events (a failure's cause by
    type and code), bytes to send, state; with or without the whole-message scan."""
    client, server = open_pair(Limits(max_message_size=limit))
    conn = server if side_is_server else client
    story: list[object] = []
    with pytest.MonkeyPatch.context() as patch:
        if not whole:
            patch.setattr(connection_module, "scan_messages", None)
        for chunk in chunks:
            conn.receive_data(chunk)
            for event in conn.events_received():
                cause = getattr(event, "cause", None)
                story.append((repr(event) if cause is None else type(event), type(cause)))
                if cause is not None:
                    story.append((cause.code, cause.close_code, getattr(event, "code", None)))
            story.append((conn.data_to_send(), conn.state))
    return story


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(frame_specs | st.tuples(st.just("text"), TEXTS), max_size=8),
    st.lists(st.integers(0, 1 << 20), max_size=6),
    st.booleans(),
    st.sampled_from([1, 125, 126, 4096, 65536, 1 << 20]),
)
def test_connection_same_story_with_and_without_the_whole_message_scan(
    c: ModuleType,
    specs: list[Spec | tuple[str, bytes]],
    points: list[int],
    side_is_server: bool,
    limit: int,
) -> None:
    """The fast path changes nothing a Connection reports, on any stream and any split:
    messages, pongs, failures with their close codes, what it sends, its state."""
    chunks = cut(spec_stream(specs, side_is_server), points)
    with_scan = connection_story(chunks, side_is_server, limit, True)
    assert with_scan == connection_story(chunks, side_is_server, limit, False)


def test_connection_on_both_paths(c: ModuleType) -> None:
    """A server Connection gives the same events whichever scan its decoder uses."""
    client, server = open_pair()
    client.send_text("héllo " * 50, fin=False)
    client.send_continuation(b"end", fin=True)
    client.send_binary(b"\x00" * 70000)
    client.send_ping(b"p")
    stream = client.data_to_send()
    decoder = server._decoder
    assert decoder.feed == (
        decoder.feed_python if speedups.compiled is None else decoder.feed_compiled
    )
    events = feed(server, stream, "random")
    assert [type(e).__name__ for e in events] == ["TextMessage", "BinaryMessage", "Ping"]
    assert cast(TextMessage, events[0]).data == "héllo " * 50 + "end"


def test_no_leak_on_any_path(c: ModuleType) -> None:
    """Error and success paths free what they allocate (ASan does not track refcounts)."""
    key = b"\x37\xfa\x21\x3d"
    good = encode_frame_python(0x1, b"ok", mask=key) + encode_frame_python(
        0x2, b"x" * 300, mask=key
    )
    streams = [good, good[:-3], good + b"\x83\x80", good + b"\x81\xfe\x00\x01" + key]

    def churn() -> None:
        for _ in range(500):
            for stream in streams:
                c.scan_frames(stream, 0, True, 200, 264, 0x40)
            c.encode_frame(0x1, b"payload", mask=key)
            for stream in [*streams, encode_frame_python(0x1, b"\xff" * 600, mask=key)]:
                c.scan_messages(stream, True, 200, TextMessage, BinaryMessage)
            for args, kwargs in (
                ((300, b"x"), {}),
                ((1, "text"), {"mask": b"abc"}),
                ((1, b"x"), {"fin": True, "bogus": 1}),
                ((1, 12), {}),
            ):
                outcome(c.encode_frame, *args, **kwargs)
            outcome(c.apply_mask, b"data", b"abc")
            outcome(c.apply_mask_inplace, b"read-only", key)

    grown = bytes_kept(churn)
    assert grown < 4096, f"{grown} bytes kept after 500 rounds"
