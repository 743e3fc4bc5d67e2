"""Frame encoding and incremental decoding (RFC 6455 §5.2-§5.5).

``encode_frame()`` is pure: the same bytes can go to every member of a room. A
``FrameDecoder`` turns a byte stream, split anywhere, into ``(fin, opcode, rsv, payload)``
tuples and enforces every frame-level rule before it buffers a payload:

* §5.2 "the minimal number of bytes MUST be used to encode the length" -> 1002;
* §5.2 a 64-bit length's "most significant bit MUST be 0" -> 1002;
* §5.2 RSV1-3 "MUST be 0 unless an extension is negotiated that defines meanings" -> 1002;
* §5.2 reserved opcodes: "If an unknown opcode is received, the receiving endpoint MUST
  _Fail the WebSocket Connection_" -> 1002;
* §5.1 a server "MUST close the connection upon receiving a frame that is not masked", a
  client "MUST close a connection if it detects a masked frame" -> 1002;
* §5.5 "All control frames MUST have a payload length of 125 bytes or less and MUST NOT be
  fragmented" -> 1002;
* §10.4 a data frame longer than ``max_payload`` -> 1009, decided from the header, before a
  single payload byte is kept; a frame with RSV1 (a compressed message, RFC 7692 §6) may be
  ``compressed_slack`` bytes longer, as DEFLATE expands incompressible data a little.

With the compiled speedups (``speedups.py``), ``encode_frame`` and the decoder's scan of a
receive buffer run in C; ``encode_frame_python`` and ``FrameDecoder.feed_python`` are their
pure-Python twins, which define the behaviour (tests/protocol/test_speedups.py).
Message reassembly, UTF-8 and close codes are ``connection.py``'s; this module does no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from operator import length_hint
from typing import NamedTuple, NoReturn, Protocol

from .errors import FRAME_DUMP_BYTES, MessageTooBig, ProtocolError
from .mask import apply_mask_int
from .speedups import built, compiled

__all__ = [
    "CloseCode",
    "Frame",
    "FrameDecoder",
    "FrameInfo",
    "Opcode",
    "encode_frame",
    "encode_frame_python",
    "frame_dump",
    "frame_info",
    "payload_length",
]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2, §11.8)."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 §7.4.1, IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


class FrameInfo(NamedTuple):
    """What the header of one complete encoded frame says (``frame_info()``)."""

    fin: bool
    opcode: int
    compressed: bool  # RSV1: a permessage-deflate message (RFC 7692 §6)
    masked: bool
    header_length: int  # bytes before the payload, masking key included
    payload_length: int


def payload_length(frame: bytes) -> int:
    """The payload length of one complete encoded frame: ``frame_info()``'s fast path, for
    per-member metrics in a fan-out (no tuple built)."""
    size = frame[1] & 0x7F
    if size < 126:
        return size
    return int.from_bytes(frame[2:4] if size == 126 else frame[2:10], "big")


def frame_info(frame: bytes) -> FrameInfo:
    """Read the header of one complete frame made by ``encode_frame``/``shared_frame``.

    For drivers and rooms that hold encoded frames: payload sizes for metrics, whether a
    shared frame was compressed. Decoding a byte stream is ``FrameDecoder``'s job.
    """
    first, second = frame[0], frame[1]
    size = second & 0x7F
    head = 2
    if size == 126:
        size, head = int.from_bytes(frame[2:4], "big"), 4
    elif size == 127:
        size, head = int.from_bytes(frame[2:10], "big"), 10
    masked = bool(second & 0x80)
    return FrameInfo(
        bool(first & 0x80),
        first & 0x0F,
        bool(first & 0x40),
        masked,
        head + 4 if masked else head,
        size,
    )


def frame_dump(fin: bool, opcode: int, rsv: int, payload: bytes) -> bytes:
    """The first ``FRAME_DUMP_BYTES`` of a decoded frame, re-encoded without a mask.

    For a DEBUG hex dump of a frame refused for what it carries (``ProtocolError.frame``):
    the header says what the peer sent (FIN, RSV, opcode, the full length), the payload is
    unmasked. Called on the error path only.
    """
    size = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    if size < 126:
        head = bytes((first, size))
    elif size < 65536:
        head = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + size.to_bytes(8, "big")
    return (head + payload[:FRAME_DUMP_BYTES])[:FRAME_DUMP_BYTES]


#: A decoded frame: (fin, opcode, rsv bits as 0x70-masked int, unmasked payload).
Frame = tuple[bool, int, int, bytes]

_DATA_OPCODES = frozenset((0x0, 0x1, 0x2))
_CONTROL_OPCODES = frozenset((0x8, 0x9, 0xA))


class _Encoder(Protocol):
    def __call__(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv: int = 0,
        mask: bytes | None = None,
    ) -> bytes: ...


def encode_frame_python(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
) -> bytes:
    """Return one complete frame (``encode_frame``; this is its pure-Python twin).

    Args:
        opcode: an ``Opcode``.
        payload: the application data (already compressed when ``rsv`` has RSV1).
        fin: False for every fragment but the last.
        rsv: RSV bits as they sit in the first byte (``0x40`` is RSV1).
        mask: a 4-byte masking key: clients MUST mask every frame (§5.3), servers never do.

    Returns:
        The frame's bytes, ready for a socket; pure, so one frame serves many sockets.
    """
    length = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 65536:
        head = bytes((first, mask_bit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + length.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + apply_mask_int(payload, mask)


#: Encode one frame: the compiled twin when built, else ``encode_frame_python``.
encode_frame: _Encoder = encode_frame_python if compiled is None else compiled.encode_frame

_ScanResult = tuple[list[Frame], int, int, bool | str]  # bad: False or a violation code


def _not_built(*args: object) -> NoReturn:
    raise RuntimeError("wsflask.protocol._speedups is not built")


#: ``_speedups.scan_frames``: (buf, pos, expect_mask, max_payload, max_compressed, allowed_rsv).
_scan: Callable[[bytes, int, bool, int, int, int], _ScanResult] = (
    _not_built if built is None else built.scan_frames
)


class FrameDecoder:
    """Incremental frame parser for one direction of one connection.

    Call ``feed(data)`` with every chunk received and iterate the frames it yields. The
    owner may lower ``max_payload`` between frames (the message budget); it is read when
    each header is parsed. A ``ProtocolError`` raised from the iterator ends the stream.
    """

    __slots__ = (
        "_buf", "_need", "_parts", "_pending",
        "allowed_rsv", "compressed_slack", "expect_mask", "max_payload",
    )  # fmt: skip

    def __init__(self, *, expect_mask: bool, max_payload: int, allowed_rsv: int = 0) -> None:
        #: True on the server side: every client frame must be masked (§5.1).
        self.expect_mask = expect_mask
        #: The largest data-frame payload accepted now (the rest of the message budget).
        self.max_payload = max_payload
        #: RSV bits a negotiated extension defines (``0x40`` for permessage-deflate).
        self.allowed_rsv = allowed_rsv
        #: Extra bytes allowed over ``max_payload`` for a frame with RSV1 (compressed).
        self.compressed_slack = 0
        #: Bytes of an incomplete frame: the only state kept between chunks.
        self._buf = b""
        #: Chunks received while waiting for a long payload, joined once it is complete,
        #: so a large frame arriving in many reads costs linear time (None between them).
        self._parts: list[bytes] | None = None
        self._pending = 0
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes held for the incomplete frame at the end of the stream."""
        return len(self._buf) + self._pending

    @property
    def missing(self) -> int:
        """Bytes a long frame, whose header was accepted, still needs (0 when none is
        awaited): a reader may take that many at once."""
        return self._need - self._pending

    def _take(self, data: bytes) -> bytes | None:
        """The bytes to scan: ``data`` after the kept incomplete frame; None while short."""
        if self._need:
            parts = self._parts
            assert parts is not None  # made by _wait_for with _need
            parts.append(data)
            self._pending += len(data)
            if self._pending < self._need:
                return None
            data = b"".join(parts)
            self._parts = None
            self._pending = self._need = 0
        buf = self._buf + data if self._buf else data
        self._buf = b""
        return buf

    def feed_compiled(self, data: bytes) -> Iterable[Frame]:
        """``feed`` through the compiled scan: every complete frame of the buffer in one call.

        The scan is given ``max_payload`` as it is now; if the owner changes it after a
        frame, the rest of the buffer is scanned again from that frame's end, so every
        header is judged with the limit of its time, as in ``feed_python``. The buffer is
        scanned at once (not when iteration starts); a lone whole frame comes back as the
        scan's list, without a generator (nothing follows it that a new limit could judge).
        """
        if self._need or self._buf:
            buf = self._take(data)
            if buf is None:
                return ()
        else:  # nothing kept: the common case, without a call
            buf = data
        limit = self.max_payload
        scanned = _scan(
            buf, 0, self.expect_mask, limit, limit + self.compressed_slack, self.allowed_rsv
        )
        if len(scanned[0]) < 2 and scanned[1] == len(buf) and not scanned[2] and not scanned[3]:
            return scanned[0]  # whole frames only, nothing left over, nothing bad
        return self._frames_of(buf, scanned, limit)

    def _frames_of(self, buf: bytes, scanned: _ScanResult, limit: int) -> Iterator[Frame]:
        """The frames of ``scanned`` (``buf`` scanned from 0 with ``limit``), rescanning
        after a frame that changed ``max_payload``; then keeps what is left of ``buf``."""
        frames, end, need, bad = scanned
        pos = 0
        while True:
            rest = iter(frames)
            for frame in rest:
                yield frame
                if self.max_payload != limit:
                    break
            else:
                break
            pos = self._end_of(frames, len(frames) - length_hint(rest), pos)
            limit = self.max_payload
            frames, end, need, bad = _scan(
                buf, pos, self.expect_mask, limit, limit + self.compressed_slack, self.allowed_rsv
            )
        if bad:  # the twin raises the exact error and close code of the header at ``end``
            self._buf = buf[end:]
            yield from self.feed_python(b"")
        elif need:
            self._wait_for(buf, end, need)
        elif end < len(buf):
            self._buf = buf[end:]

    def _end_of(self, frames: list[Frame], count: int, pos: int) -> int:
        """Where the first ``count`` frames, decoded from ``pos``, end (lengths are minimal)."""
        extra = 6 if self.expect_mask else 2
        for frame in frames[:count]:
            n = len(frame[3])
            pos += n + extra + (0 if n < 126 else 2 if n < 65536 else 8)
        return pos

    def feed_python(self, data: bytes) -> Iterator[Frame]:
        """``feed`` in pure Python: the twin that defines what the compiled scan does."""
        if self._need or self._buf:
            buf = self._take(data)
            if buf is None:
                return
        else:
            buf = data
        pos, end_of_data = 0, len(buf)
        fast_mask = 0x80 if self.expect_mask else 0
        max_small = 125 if self.max_payload >= 125 else self.max_payload
        while end_of_data - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            # Fast path: a whole small masked/unmasked text or binary frame, the common case.
            # It applies only what _parse_head would accept: FIN, no RSV, known opcode,
            # the right mask bit, a 7-bit length within the budget.
            if (b0 == 0x81 or b0 == 0x82) and b1 & 0x80 == fast_mask and (b1 & 0x7F) <= max_small:
                start = pos + (6 if fast_mask else 2)
                end = start + (b1 & 0x7F)
                if end <= end_of_data:
                    payload = buf[start:end]
                    if fast_mask and payload:
                        n = end - start
                        key = buf[start - 4 : start]
                        payload = (
                            int.from_bytes(payload, "little")
                            ^ int.from_bytes(key * (n >> 2) + key[: n & 3], "little")
                        ).to_bytes(n, "little")
                    pos = end
                    yield True, b0 & 0x0F, 0, payload
                    max_small = 125 if self.max_payload >= 125 else self.max_payload
                    continue
            try:
                head = self._parse_head(buf, pos, end_of_data)
            except ProtocolError as exc:  # the error path only: keep the offending bytes
                exc.frame = buf[pos : pos + FRAME_DUMP_BYTES]
                raise
            if head is None:
                break
            fin_op, rsv, start, length, masked = head
            end = start + length
            if end > end_of_data:
                self._wait_for(buf, pos, end)
                return
            payload = buf[start:end]
            if masked:
                payload = apply_mask_int(payload, buf[start - 4 : start])
            pos = end
            yield fin_op >= 0x80, fin_op & 0x0F, rsv, payload
            max_small = 125 if self.max_payload >= 125 else self.max_payload
        if pos < end_of_data:
            self._buf = buf[pos:]

    #: Yield every complete frame in the stream so far; keep the incomplete rest.
    feed = feed_python if compiled is None else feed_compiled

    def _wait_for(self, buf: bytes, pos: int, end: int) -> None:
        rest = buf[pos:]
        if end - pos > 4096:
            self._parts = [rest]
            self._pending = len(rest)
            self._need = end - pos
        else:
            self._buf = rest

    def _parse_head(
        self, buf: bytes, pos: int, limit: int
    ) -> tuple[int, int, int, int, bool] | None:
        """Check one frame header; return (fin|opcode, rsv, payload start, length, masked)."""
        b0, b1 = buf[pos], buf[pos + 1]
        opcode, rsv = b0 & 0x0F, b0 & 0x70
        if opcode in _CONTROL_OPCODES:
            # §5.5: control frames are unfragmented, 125 bytes at most
            if not b0 & 0x80:
                raise ProtocolError("fragmented control frame", code="fragmented_control")
            if (b1 & 0x7F) > 125:
                raise ProtocolError("control frame payload over 125 bytes", code="control_too_long")
            if rsv:  # §5.2, RFC 7692 §6.1
                raise ProtocolError("RSV bits set on a control frame", code="reserved_bits")
        elif opcode not in _DATA_OPCODES:
            raise ProtocolError(f"reserved opcode {opcode:#x}", code="reserved_opcode")  # §5.2
        if rsv & ~self.allowed_rsv:  # §5.2
            raise ProtocolError("RSV bits set without a negotiated extension", code="reserved_bits")
        masked = bool(b1 & 0x80)
        if masked is not self.expect_mask:  # §5.1
            if self.expect_mask:
                raise ProtocolError("unmasked client frame", code="unmasked")
            raise ProtocolError("masked server frame", code="masked_server_frame")
        length, start = b1 & 0x7F, pos + 2
        if length == 126:
            if limit - pos < 4:
                return None
            length, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            if length < 126:
                raise ProtocolError("non-minimal 16-bit length", code="bad_length")  # §5.2
        elif length == 127:
            if limit - pos < 10:
                return None
            length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if length >> 63:  # §5.2
                raise ProtocolError("64-bit length with the top bit set", code="bad_length")
            if length < 65536:
                raise ProtocolError("non-minimal 64-bit length", code="bad_length")  # §5.2
        allowed = self.max_payload + self.compressed_slack if rsv else self.max_payload
        if length > allowed and opcode < 0x8:
            raise MessageTooBig(f"frame of {length} bytes, {allowed} left in the budget")
        if masked:
            start += 4
            if start > limit:
                return None
        return b0 & 0x8F, rsv, start, length, masked
