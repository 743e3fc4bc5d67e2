"""Every compiled speedup against its pure-Python twin (ARCHITECTURE.md §3 rule 6).

Both get the same inputs and must give the same outputs, exceptions and close codes. The
compiled module is imported directly, so these tests run even under
``WSFLASK_NO_EXTENSIONS=1``. Without the extension they skip with the install hint, and
fail under ``CI=true``, where a missing build is a broken build.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsflask.protocol import Opcode, frame_info, speedups
from wsflask.protocol.frames import encode_frame_python
from wsflask.protocol.mask import (
    apply_mask_inplace_python,
    apply_mask_int,
    apply_mask_reference,
)

HINT = (
    "wsflask.protocol._speedups is not built: run `.venv/bin/pip install -e .` (or "
    "`.venv/bin/python setup.py build_ext --inplace`) with a C compiler and Python headers"
)


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("wsflask.protocol._speedups")
    except ImportError:
        return None


_C = _load()


@pytest.fixture(scope="module")
def c() -> ModuleType:
    """The compiled module; a missing build skips locally and fails in CI."""
    if _C is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(HINT)
        pytest.skip(HINT)
    return _C


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
@pytest.mark.parametrize(("opcode", "fin", "rsv"), [(0x1, True, 0), (0x0, False, 0x40),
                                                     (0x2, False, 0x70), (0xA, True, 0)])
def test_encode_every_length_boundary(
    c: ModuleType, size: int, key: bytes | None, opcode: int, fin: bool, rsv: int
) -> None:
    payload = bytes(i & 0xFF for i in range(size))
    frame = c.encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=key)
    assert frame == encode_frame_python(opcode, payload, fin=fin, rsv=rsv, mask=key)
    info = frame_info(frame)
    assert (info.fin, info.opcode, info.payload_length, info.masked) == (
        fin, opcode, size, key is not None
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
    c: ModuleType, opcode: int, payload: bytes, fin: bool, rsv: int, key: bytes | None,
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
