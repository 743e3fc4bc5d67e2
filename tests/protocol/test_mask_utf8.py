"""Masking against its reference (RFC 6455 §5.3) and incremental UTF-8 (§8.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsflask.protocol import InvalidPayloadData
from wsflask.protocol.mask import (
    apply_mask,
    apply_mask_int,
    apply_mask_reference,
    apply_mask_translate,
)
from wsflask.protocol.utf8 import TextAssembler, decode_text

FAST = [apply_mask_int, apply_mask_translate]


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 511, 512, 513, 514, 4099, 65536, 65537])
def test_fast_masks_match_reference(fast: object, size: int) -> None:
    data = bytes((i * 7 + 3) & 0xFF for i in range(size))
    mask = b"\x37\xfa\x21\x3d"
    assert fast(data, mask) == apply_mask_reference(data, mask)  # type: ignore[operator]


@given(st.binary(max_size=3000), st.binary(min_size=4, max_size=4))
def test_mask_property(data: bytes, mask: bytes) -> None:
    masked = apply_mask(data, mask)
    assert masked == apply_mask_reference(data, mask)
    assert apply_mask(masked, mask) == data


def test_rfc_example_mask() -> None:
    assert apply_mask(b"Hello", bytes.fromhex("37fa213d")).hex() == "7f9f4d5158"


@pytest.mark.parametrize(
    "bad", ["c0af", "eda080", "f4908080", "ff", "cebae1bdb9cf83cebcceb5eda080656469746564"]
)
def test_invalid_utf8_whole(bad: str) -> None:
    with pytest.raises(InvalidPayloadData) as info:
        decode_text(bytes.fromhex(bad))
    assert info.value.close_code == 1007


@pytest.mark.parametrize(
    ("fragments", "fails_at"),
    [
        (
            ["ceba", "e1bd", "b9cf83", "cebcceb5", "eda080", "656469746564"],
            4,
        ),  # Autobahn 6.4.1-like
        (["f4", "90", "8080"], 1),  # F4 90 is known invalid at the 2nd fragment
        (["c0", "af"], 0),
        (["ff"], 0),
        (["ed", "a0", "80"], 1),
    ],
)
def test_invalid_utf8_fails_fast(fragments: list[str], fails_at: int) -> None:
    assembler = TextAssembler()
    for i, fragment in enumerate(fragments):
        if i == fails_at:
            with pytest.raises(InvalidPayloadData):
                assembler.feed(bytes.fromhex(fragment), final=i == len(fragments) - 1)
            return
        assembler.feed(bytes.fromhex(fragment), final=i == len(fragments) - 1)
    raise AssertionError("no failure")


@pytest.mark.parametrize("split", [[1, 3], [1, 1, 1, 1], [2, 2], [3, 1]])
def test_code_point_split_across_fragments(split: list[int]) -> None:
    data = "a𝄞b".encode()  # F0 9D 84 9E inside
    assembler, pos = TextAssembler(), 1
    assembler.feed(data[:1])
    for size in split:
        assembler.feed(data[pos : pos + size])
        pos += size
    assembler.feed(data[pos:], final=True)
    assert assembler.finish() == "a𝄞b"


def test_truncated_at_fin_is_1007() -> None:  # UT-02
    assembler = TextAssembler()
    assembler.feed(b"ok\xf0\x9d")
    with pytest.raises(InvalidPayloadData):
        assembler.feed(b"\x84", final=True)


@given(st.text(max_size=200), st.lists(st.integers(min_value=0, max_value=800), max_size=6))
def test_utf8_any_split(text: str, cuts: list[int]) -> None:
    data = text.encode()
    points = sorted({min(c, len(data)) for c in cuts})
    assembler, last = TextAssembler(), 0
    for point in points:
        assembler.feed(data[last:point])
        last = point
    assembler.feed(data[last:], final=True)
    assert assembler.finish() == text
