"""The permessage-deflate codec (RFC 7692 §6, §7.2): bounded inflate, pooled deflate, zlib only.

``PerMessageDeflate.encode()`` compresses a message with ``Z_SYNC_FLUSH`` and removes the
trailing ``00 00 ff ff`` (§7.2.1); ``decompress()`` appends it again (§7.2.2) and inflates
fragment by fragment, 64 KiB of input and of output per zlib call, so the message
budget applies to inflated bytes while they are produced: a bomb stops at the first byte over
it (``MessageTooBig``, 1009) and never allocates more than the budget plus one chunk. Data
that does not inflate is ``CompressionError`` (1007, the documented choice). A block with
BFINAL set (§7.2.3.4) ends the peer's DEFLATE stream; what follows, in the same message or
the next, starts a new stream with an empty window (at most 16 final blocks a message).

Context takeover (§7.1.1). With it, a compressor or decompressor lives as long as the
connection (created on first use). Without it, the decompressor lives for one message and
the compressor is borrowed from a process-wide pool and ends each message with
``Z_FULL_FLUSH``, which leaves it as a fresh one would be (tested byte for byte), so nothing
is kept per connection and no history crosses messages (§8, CRIME). ``shared_frame()``
uses the same pool to compress a broadcast once for every such connection.

Window bits. zlib refuses to compress with a 256-byte raw window (``wbits=-8``,
madler/zlib#171); a codec told to use 8 compresses with 9: zlib never emits a distance over
``w_size - MIN_LOOKAHEAD`` (512 - 262 = 250 bytes), which a 256-byte window holds (tested).
Inflating with 8 bits works.

Memory (zlib's zconf.h): deflate ``(1 << (windowBits + 2)) + (1 << (memLevel + 9))`` plus
about 6 KiB of state; inflate ``1 << windowBits`` plus about 7 KiB. See ``memory_estimate()``.
This module does no I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import NamedTuple

from .errors import CompressionError, MessageTooBig
from .frames import encode_frame

__all__ = ["PerMessageDeflate", "ShareKey", "deflate_memory", "inflate_memory", "shared_frame"]

_TAIL = b"\x00\x00\xff\xff"  # §7.2.1/§7.2.2: the empty stored block a sync flush ends with
_CHUNK = 65536  # inflate output per zlib call, so a bomb is noticed within 64 KiB
_MAX_STREAMS = 16  # final blocks (BFINAL=1) per message; more -> 1007
_POOL_SIZE = 4  # idle pooled compressors kept per (bits, memLevel, level)
_DEFLATE_STATE = 6 * 1024  # sizeof(deflate_state) and friends, zlib 1.2.13, 64-bit
_INFLATE_STATE = 7 * 1024  # sizeof(inflate_state), zlib 1.2.13, 64-bit


class ShareKey(NamedTuple):
    """How ``shared_frame()`` compresses; equal keys mean one compression serves both."""

    window_bits: int
    mem_level: int
    level: int
    threshold: int


def deflate_memory(window_bits: int, mem_level: int) -> int:
    """zlib's documented deflate memory in bytes (zconf.h), state included."""
    return (1 << (window_bits + 2)) + (1 << (mem_level + 9)) + _DEFLATE_STATE


def inflate_memory(window_bits: int) -> int:
    """zlib's documented inflate memory in bytes (zconf.h), state included."""
    return (1 << window_bits) + _INFLATE_STATE


_POOL: dict[tuple[int, int, int], list[zlib._Compress]] = {}


def _new_deflater(key: tuple[int, int, int]) -> zlib._Compress:
    bits, mem_level, level = key
    return zlib.compressobj(level, zlib.DEFLATED, -bits, mem_level)


def _borrow(key: tuple[int, int, int]) -> zlib._Compress:
    try:
        return _POOL[key].pop()  # list.pop/append are atomic: safe across greenlets/threads
    except (KeyError, IndexError):
        return _new_deflater(key)


def _give_back(key: tuple[int, int, int], deflater: zlib._Compress) -> None:
    pool = _POOL.setdefault(key, [])
    if len(pool) < _POOL_SIZE:
        pool.append(deflater)


class PerMessageDeflate:
    """The negotiated codec of one connection: ``encode()`` out, ``decompress()`` in.

    ``local`` is this endpoint's direction (our compressor), ``remote`` the peer's (our
    decompressor). Made by ``negotiate()`` or ``accept_response()``; ``Connection`` drives it.
    The counters (bytes in and out, compressed and not) feed metrics.
    """

    __slots__ = (
        "_deflater", "_inflater", "_key", "_mid_message", "_streams",
        "compressed_in", "compressed_out", "inflated_in", "is_server",
        "local_max_window_bits", "local_no_context_takeover", "raw_out",
        "remote_max_window_bits", "remote_no_context_takeover", "threshold", "totals",
    )  # fmt: skip

    def __init__(
        self, *, local_no_context_takeover: bool = False, remote_no_context_takeover: bool = False,
        local_max_window_bits: int = 15, remote_max_window_bits: int = 15, mem_level: int = 8,
        compress_level: int = 6, threshold: int = 0, is_server: bool = True,
    ) -> None:  # fmt: skip
        if not 8 <= local_max_window_bits <= 15 or not 8 <= remote_max_window_bits <= 15:
            raise ValueError("window bits must be 8-15 (RFC 7692 §7.1.2)")
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_max_window_bits = local_max_window_bits
        self.remote_max_window_bits = remote_max_window_bits
        self.threshold = threshold  #: messages shorter than this go uncompressed
        self.is_server = is_server
        # 8 compresses with 9: zlib's distances stay <= 250 bytes (module docstring).
        self._key = (max(local_max_window_bits, 9), mem_level, compress_level)
        self._deflater: zlib._Compress | None = None
        self._inflater: zlib._Decompress | None = None
        self._mid_message = False  #: a compressed message is being received
        self._streams = 0  #: final blocks seen in the message being received
        self.compressed_in = self.inflated_in = self.raw_out = self.compressed_out = 0
        #: where the same four counts are added as they happen (compressed in, inflated in,
        #: raw out, compressed out): a server-wide total shared by many codecs (metrics),
        #: so nobody sums every codec to read it; None: not counted anywhere else
        self.totals: list[int] | None = None

    @property
    def share_key(self) -> ShareKey | None:
        """Server side without context takeover: the key for ``shared_frame()``, else None."""
        if not (self.is_server and self.local_no_context_takeover):
            return None
        return ShareKey(*self._key, self.threshold)

    def memory_estimate(self, *, peak: bool = False) -> int:
        """zlib bytes held between messages once used (``peak``: also during one).

        Without context takeover a direction holds nothing between messages; the pooled
        compressor is shared by every such connection of the process.
        """
        total = 0
        if peak or not self.local_no_context_takeover:
            total += deflate_memory(self._key[0], self._key[1])
        if peak or not self.remote_no_context_takeover:
            total += inflate_memory(self.remote_max_window_bits)
        return total

    # ------------------------------------------------------------------ compress

    def encode(self, data: bytes, *, fin: bool = True) -> bytes:
        """Compress a message, or its next fragment with ``fin=False`` (§7.2.1).

        With context takeover the result refers to earlier messages: send it, on this
        connection, before encoding another one.
        """
        deflater = self._deflater
        if deflater is None:
            nct = self.local_no_context_takeover
            deflater = self._deflater = _borrow(self._key) if nct else _new_deflater(self._key)
        reset = fin and self.local_no_context_takeover
        out = deflater.compress(data) + deflater.flush(
            zlib.Z_FULL_FLUSH if reset else zlib.Z_SYNC_FLUSH
        )
        self.raw_out += len(data)
        if fin:
            if reset:  # the full flush left it as new: another connection may use it
                _give_back(self._key, deflater)
                self._deflater = None
            # §7.2.1: "Remove 4 octets (that are 0x00 0x00 0xff 0xff) from the tail end."
            out = out[:-4]
        self.compressed_out += len(out)
        totals = self.totals
        if totals is not None:
            totals[2] += len(data)
            totals[3] += len(out)
        return out

    # ------------------------------------------------------------------ decompress

    def decompress(self, data: bytes, budget: int, *, final: bool) -> list[bytes]:
        """Inflate one fragment of a compressed message; ``final`` for its last one.

        Returns the inflated chunks, ``budget`` bytes at most in all.

        Raises:
            MessageTooBig: the output would exceed ``budget`` (stops at the first byte over).
            CompressionError: the data does not inflate.
        """
        self.compressed_in += len(data)
        totals = self.totals
        if totals is not None:
            totals[0] += len(data)
        out: list[bytes] = []
        if final and not data and not self._mid_message:
            # An empty payload is an empty message: "00 00 ff ff" alone would leave the
            # decompressor inside a stored block (§7.2.3.6 senders use "00" instead).
            return out
        tail = final and len(data) >= 4096  # small payloads: one call, one copy
        if final and not tail:
            data += _TAIL  # §7.2.2: "Append 4 octets of 0x00 0x00 0xff 0xff"
        produced = self._inflate(data, budget, out)
        if tail:
            produced += self._inflate(_TAIL, budget - produced, out)
        self.inflated_in += produced
        if totals is not None:
            totals[1] += produced
        self._mid_message = not final
        if final:
            self._streams = 0
            if self.remote_no_context_takeover:
                self._inflater = None  # §7.1.1.2: the next message starts afresh
        return out

    def decode(self, payload: bytes | Sequence[bytes], max_size: int) -> bytes:
        """Inflate a whole message, given as its payload or its fragments' payloads."""
        fragments = [payload] if isinstance(payload, bytes) else list(payload) or [b""]
        out: list[bytes] = []
        used = 0
        for index, fragment in enumerate(fragments, 1):
            chunks = self.decompress(fragment, max_size - used, final=index == len(fragments))
            used += sum(map(len, chunks))
            out += chunks
        return b"".join(out)

    def _inflate(self, data: bytes, budget: int, out: list[bytes]) -> int:
        """Inflate ``data`` into ``out``, 64 KiB in and out at a time; return the bytes made.

        Slicing the input too keeps zlib's ``unconsumed_tail`` copies small.
        """
        if len(data) <= _CHUNK:
            return self._inflate_piece(data, budget, out)
        view, produced = memoryview(data), 0
        for start in range(0, len(data), _CHUNK):
            produced += self._inflate_piece(view[start : start + _CHUNK], budget - produced, out)
        return produced

    def _inflate_piece(self, piece: bytes | memoryview, budget: int, out: list[bytes]) -> int:
        inflater = self._inflater or self._start_stream()
        produced = 0
        while True:
            # budget + 1 at most: one byte over is enough to know, and nothing more is made.
            size = min(budget - produced + 1, _CHUNK)
            try:
                chunk = inflater.decompress(piece, size)
            except zlib.error as exc:
                raise CompressionError(f"compressed data does not inflate: {exc}") from None
            if chunk:
                produced += len(chunk)
                if produced > budget:
                    raise MessageTooBig(f"inflated message over its budget of {budget} bytes")
                out.append(chunk)
            if inflater.eof:  # a final block (BFINAL=1): RFC 1951 §3.2.3, the stream ended
                self._streams += 1
                if self._streams > _MAX_STREAMS:
                    raise CompressionError(f"over {_MAX_STREAMS} final blocks in a message")
                piece, inflater = inflater.unused_data, self._start_stream()
                continue
            piece = inflater.unconsumed_tail
            # A full chunk may leave output inside zlib (a match cut short): ask again.
            if not piece and len(chunk) < size:
                return produced

    def _start_stream(self) -> zlib._Decompress:
        inflater = self._inflater = zlib.decompressobj(wbits=-self.remote_max_window_bits)
        return inflater

    def release(self) -> None:
        """Drop the zlib objects (the connection closed): their memory is freed now."""
        self._deflater = self._inflater = None
        self._mid_message = False
        self._streams = 0


def shared_frame(data: str | bytes, key: ShareKey) -> bytes:
    """Return one unmasked server frame for ``data`` that every member with ``key`` accepts.

    Valid for the server side of connections whose ``deflate.share_key == key``: they
    negotiated server_no_context_takeover, so no frame refers to an earlier message and any
    frame compressed with that window suits them all. With context takeover, use each
    connection's ``encode_message()``; without permessage-deflate, ``encode_frame()``.
    """
    payload = data.encode() if isinstance(data, str) else data
    opcode = 0x1 if isinstance(data, str) else 0x2
    if len(payload) < key.threshold:
        return encode_frame(opcode, payload)
    deflater = _borrow(key[:3])
    compressed = deflater.compress(payload) + deflater.flush(zlib.Z_FULL_FLUSH)
    _give_back(key[:3], deflater)
    return encode_frame(opcode, compressed[:-4], rsv=0x40)
