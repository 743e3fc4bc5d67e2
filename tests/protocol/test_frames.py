"""Byte-exact frame vectors (RFC 6455 §5.7) in both directions, and header rules (§5.2)."""

from __future__ import annotations

import pytest

from wsflask.protocol import MessageTooBig, ProtocolError, encode_frame
from wsflask.protocol.frames import FrameDecoder

MASK = bytes.fromhex("37fa213d")

# RFC 6455 §5.7 examples: (description, opcode, payload, fin, mask, wire hex)
VECTORS = [
    ("unmasked text Hello", 0x1, b"Hello", True, None, "810548656c6c6f"),
    ("masked text Hello", 0x1, b"Hello", True, MASK, "818537fa213d7f9f4d5158"),
    ("first fragment Hel", 0x1, b"Hel", False, None, "010348656c"),
    ("last fragment lo", 0x0, b"lo", True, None, "80026c6f"),
    ("unmasked ping Hello", 0x9, b"Hello", True, None, "890548656c6c6f"),
    ("masked pong Hello", 0xA, b"Hello", True, MASK, "8a8537fa213d7f9f4d5158"),
]


@pytest.mark.parametrize(("name", "opcode", "payload", "fin", "mask", "wire"), VECTORS)
def test_encode_vectors(
    name: str, opcode: int, payload: bytes, fin: bool, mask: bytes | None, wire: str
) -> None:
    assert encode_frame(opcode, payload, fin=fin, mask=mask).hex() == wire


@pytest.mark.parametrize(("name", "opcode", "payload", "fin", "mask", "wire"), VECTORS)
def test_decode_vectors_whole_and_byte_by_byte(
    name: str, opcode: int, payload: bytes, fin: bool, mask: bytes | None, wire: str
) -> None:
    data = bytes.fromhex(wire)
    expected = [(fin, opcode, 0, payload)]
    assert (
        list(FrameDecoder(expect_mask=mask is not None, max_payload=1 << 20).feed(data)) == expected
    )
    decoder = FrameDecoder(expect_mask=mask is not None, max_payload=1 << 20)
    frames = [frame for i in range(len(data)) for frame in decoder.feed(data[i : i + 1])]
    assert frames == expected


def test_length_forms_exact() -> None:
    # §5.7: 256 bytes binary in one unmasked frame: 0x82 0x7E 0x0100; 64 KiB: 0x82 0x7F 0x...010000
    assert encode_frame(0x2, bytes(256))[:4].hex() == "827e0100"
    assert encode_frame(0x2, bytes(65536))[:10].hex() == "827f0000000000010000"
    assert encode_frame(0x2, bytes(125))[:2].hex() == "827d"
    assert encode_frame(0x2, bytes(126))[:4].hex() == "827e007e"
    assert encode_frame(0x2, bytes(65535))[:4].hex() == "827effff"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_round_trip_sizes_split_everywhere(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wire = encode_frame(0x2, payload, mask=MASK) * 2
    decoder = FrameDecoder(expect_mask=True, max_payload=1 << 20)
    step = max(1, len(wire) // 97)
    frames = [f for i in range(0, len(wire), step) for f in decoder.feed(wire[i : i + step])]
    assert frames == [(True, 0x2, 0, payload)] * 2
    assert decoder.buffered == 0


def _decode(wire: bytes, *, expect_mask: bool = True, max_payload: int = 1 << 20) -> list[object]:
    return list(FrameDecoder(expect_mask=expect_mask, max_payload=max_payload).feed(wire))


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("81fe0005" + "37fa213d" + "0000000000", "non-minimal 16-bit"),  # FR-06: 126 form for 5
        ("81ff00000000000000c8" + "37fa213d", "non-minimal 64-bit"),  # FR-06: 127 form for 200
        ("81ff8000000000000000" + "37fa213d", "top bit"),  # FR-03: 64-bit length with MSB set
        ("81ffffffffffffffffff", "top bit"),  # 0xFFFF... never allocated
        ("83" + "80" + "37fa213d", "reserved opcode"),  # FR-02 0x3
        ("8b" + "80" + "37fa213d", "reserved opcode"),  # 0xB
        ("c1" + "80" + "37fa213d", "RSV"),  # RSV1 without extension
        ("a1" + "80" + "37fa213d", "RSV"),  # RSV2
        ("91" + "80" + "37fa213d", "RSV"),  # RSV3
        ("8100", "unmasked client frame"),  # FR-01
        ("09" + "80" + "37fa213d", "fragmented control"),  # CF-01 ping FIN=0
        ("08" + "80" + "37fa213d", "fragmented control"),  # close FIN=0
        ("89fe007e" + "37fa213d", "125"),  # CF-01: ping with 126 bytes
        ("c9" + "80" + "37fa213d", "RSV"),  # control frame with RSV1
    ],
)
def test_header_violations_are_1002(wire: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        _decode(bytes.fromhex(wire))
    assert info.value.close_code == 1002


def test_masked_frame_to_client_is_1002() -> None:
    with pytest.raises(ProtocolError, match="masked server frame"):
        _decode(encode_frame(0x1, b"x", mask=MASK), expect_mask=False)


def test_header_violation_detected_before_payload_arrives() -> None:
    # Only the two header bytes of a reserved-opcode frame: fail at once, not after waiting.
    with pytest.raises(ProtocolError):
        _decode(bytes.fromhex("83ff"))


def test_declared_length_over_limit_is_1009_before_buffering() -> None:
    # FR-04: a 64-bit length of 2**62 declared; nothing of the payload has arrived.
    wire = bytes.fromhex("82ff4000000000000000") + MASK
    with pytest.raises(MessageTooBig) as info:
        _decode(wire, max_payload=1 << 20)
    assert info.value.close_code == 1009


def test_exact_frame_limit_passes_and_one_more_fails() -> None:
    limit = 1000
    assert _decode(encode_frame(0x2, bytes(limit), mask=MASK), max_payload=limit)
    with pytest.raises(MessageTooBig):
        _decode(encode_frame(0x2, bytes(limit + 1), mask=MASK), max_payload=limit)


def test_control_frames_not_charged_to_message_budget() -> None:
    assert _decode(encode_frame(0x9, b"x" * 125, mask=MASK), max_payload=0)


def test_large_frame_in_many_reads_keeps_one_partial_copy() -> None:
    payload = bytes(300_000)
    wire = encode_frame(0x2, payload, mask=MASK)
    decoder = FrameDecoder(expect_mask=True, max_payload=1 << 20)
    frames = []
    for i in range(0, len(wire), 1000):
        frames += list(decoder.feed(wire[i : i + 1000]))
        assert decoder.buffered <= min(len(wire), i + 1000)
    assert frames == [(True, 0x2, 0, payload)]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("mask", [None, b"\x01\x02\x03\x04"])
def test_payload_length_agrees_with_frame_info(size: int, mask: bytes | None) -> None:
    from wsflask.protocol import frame_info, payload_length

    frame = encode_frame(0x2, b"x" * size, mask=mask)
    assert payload_length(frame) == frame_info(frame).payload_length == size
