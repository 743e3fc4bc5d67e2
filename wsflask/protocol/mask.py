"""XOR masking of frame payloads (RFC 6455 §5.3), fast and plain.

``apply_mask`` is what the frame codec calls; ``apply_mask_reference`` is the byte-by-byte
definition from §5.3 ("octet i of the transformed data is the XOR of octet i of the original
data with octet at index i modulo 4 of the masking key") that the fast versions are tested
against. Masking is its own inverse, so the same function masks and unmasks.

Two fast methods, both C loops inside the standard library (``loadtests/micro.py`` measures
them): ``apply_mask_int`` turns the payload into one big integer and XORs it with the key
repeated (the repeated key is ``key * 0x00000001_00000001...``, a cached multiplier, so it
costs one multiplication); ``apply_mask_translate`` XORs the four byte lanes with
``bytes.translate`` tables. The integer method wins at every size measured here, so it is
the pure-Python twin of the compiled ``_speedups.apply_mask`` (8 bytes at a time in C):
``apply_mask`` is the compiled one when ``speedups.py`` loaded it, else ``apply_mask_int``.
``apply_mask_inplace`` masks a bytearray or writable memoryview without a new object.
This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from .speedups import compiled

__all__ = [
    "apply_mask",
    "apply_mask_inplace",
    "apply_mask_inplace_python",
    "apply_mask_int",
    "apply_mask_reference",
    "apply_mask_translate",
]

#: Below this size, building the repeated key by ``bytes`` repetition is cheaper than the
#: cached multiplier.
_SMALL = 512
#: Multipliers ``0x...0000000100000001`` by payload word count; bounded so that odd sizes
#: cannot grow it without limit.
_REPEAT: dict[int, int] = {}
_REPEAT_MAX_ENTRIES = 64
_TABLES = [bytes(i ^ k for i in range(256)) for k in range(256)]


def apply_mask_reference(data: bytes, mask: bytes) -> bytes:
    """Mask ``data`` with the 4-byte ``mask`` one octet at a time (RFC 6455 §5.3)."""
    return bytes(b ^ mask[i & 3] for i, b in enumerate(data))


def _repeat_multiplier(words: int) -> int:
    multiplier = _REPEAT.get(words)
    if multiplier is None:
        multiplier = int.from_bytes(b"\x01\x00\x00\x00" * words, "little")
        if len(_REPEAT) >= _REPEAT_MAX_ENTRIES:
            _REPEAT.clear()
        _REPEAT[words] = multiplier
    return multiplier


def apply_mask_int(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """Mask ``data`` with ``mask`` through one big-integer XOR (``mask``: 4 bytes)."""
    if len(mask) != 4:
        raise ValueError("the masking key must be 4 bytes")
    n = len(data)
    if n <= _SMALL:
        words, rest = divmod(n, 4)
        key = int.from_bytes(mask * words + mask[:rest], "little")
    else:
        key = int.from_bytes(mask, "little") * _repeat_multiplier((n + 3) >> 2)
        if n & 3:
            key &= (1 << (n << 3)) - 1
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


def apply_mask_translate(data: bytes, mask: bytes) -> bytes:
    """Mask ``data`` with ``mask`` lane by lane with ``bytes.translate``."""
    out = bytearray(len(data))
    for lane in range(4):
        out[lane::4] = data[lane::4].translate(_TABLES[mask[lane]])
    return bytes(out)


def apply_mask_inplace_python(buffer: bytearray | memoryview, mask: bytes) -> None:
    """Mask a bytearray or writable memoryview in place (the twin of the compiled one)."""
    buffer[:] = apply_mask_int(buffer, mask)


Buffer = bytes | bytearray | memoryview

apply_mask: Callable[[Buffer, bytes], bytes] = (
    apply_mask_int if compiled is None else compiled.apply_mask
)
apply_mask_inplace: Callable[[bytearray | memoryview, bytes], None] = (
    apply_mask_inplace_python if compiled is None else compiled.apply_mask_inplace
)
