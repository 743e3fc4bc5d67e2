"""Messages from data frames: plain whole ones straight off the buffer, and the reassembly of
fragmented and compressed ones under a budget (RFC 6455 §5.4, §10.4).

``scan_messages`` turns the plain whole messages at the start of a receive buffer into events
in one call (compiled when the speedups are; ``scan_messages_python`` is its twin and
defines it), leaving the first other frame to the ``FrameDecoder``. ``MessageAssembler``
takes the data frames that are not plain whole messages and returns each message once its
final fragment arrived; its class docstring lists the RFC rules it enforces. This module
does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from .compression import PerMessageDeflate
from .errors import MessageTooBig, ProtocolError
from .events import BinaryMessage, TextMessage
from .frames import FrameDecoder
from .mask import apply_mask
from .speedups import compiled
from .utf8 import TextAssembler, decode_text

__all__ = ["MessageAssembler", "compressed_slack", "scan_messages", "scan_messages_python"]

Message = TextMessage | BinaryMessage

_WHOLE = (0x81, 0x82)  # FIN, no RSV bit, text or binary: a plain whole message


def scan_messages_python(
    buf: bytes,
    expect_mask: bool,
    max_payload: int,
    text_type: type[TextMessage],
    binary_type: type[BinaryMessage],
    /,
) -> tuple[list[Message], int]:
    """The plain whole messages at the start of ``buf`` as events, and where they end.

    A plain whole message is one frame with FIN set, no RSV bit, opcode text or binary,
    masked exactly when ``expect_mask`` (§5.1), a minimal length (§5.2) of at most
    ``max_payload``, complete in ``buf``, and for text valid UTF-8 (§8.1). It stops at the
    first other frame without judging it: the caller hands the rest to the ``FrameDecoder``,
    which decides (control frames, fragments, compression, errors and their close codes).
    The caller must know that no fragmented message is in progress and nothing is kept.
    """
    events: list[Message] = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        first, second = buf[pos], buf[pos + 1]
        if first not in _WHOLE or bool(second & 0x80) != expect_mask:
            break
        length, head = second & 0x7F, 2
        if length >= 126:
            head = 4 if length == 126 else 10
            if end - pos < head:
                break
            length = int.from_bytes(buf[pos + 2 : pos + head], "big")
            if length < (126 if head == 4 else 65536) or length >> 63:
                break
        if length > max_payload:
            break
        start = pos + head + (4 if expect_mask else 0)
        if start + length > end:
            break
        payload = buf[start : start + length]
        if expect_mask:
            payload = apply_mask(payload, buf[start - 4 : start])
        if first == 0x81:
            try:
                events.append(text_type(payload.decode("utf-8")))
            except UnicodeDecodeError:
                break
        else:
            events.append(binary_type(payload))
        pos = start + length
    return events, pos


#: ``scan_messages``: the compiled twin when the speedups are active, else None (the core then
#: takes every frame through the ``FrameDecoder``, as the twin's callers would after it).
scan_messages: (
    Callable[[bytes, bool, int, type[TextMessage], type[BinaryMessage]], tuple[list[Message], int]]
    | None
) = None if compiled is None else compiled.scan_messages


def compressed_slack(max_message_size: int) -> int:
    """Bytes a compressed message may exceed ``max_message_size`` by on the wire.

    zlib's worst case is about 0.03% + 13 bytes (deflateBound); other compressors use stored
    blocks of 64 KiB at 5 bytes each. 1/1024 + 64 covers them with room to spare.
    """
    return (max_message_size >> 10) + 64


@lru_cache(maxsize=8)
def _wire_limit(max_message_size: int) -> int:
    """``max_message_size`` plus its slack: one int shared by every connection, not one each."""
    return max_message_size + compressed_slack(max_message_size)


class MessageAssembler:
    """The fragmented (or compressed) message in progress on one connection, if any.

    Rules enforced:

    * §5.4: "the fragments of one message MUST NOT be interleaved between the fragments of
      another message": a TEXT or BINARY frame inside a message, or a continuation without
      one, fails with 1002;
    * §8.1: text is validated fragment by fragment, failing at the first invalid one (1007);
    * §10.4: the message budget is ``max_message_size``; each continuation frame is charged
      ``fragment_overhead`` more, so floods of tiny or empty fragments end in 1009; the frame
      decoder's ``max_payload`` is lowered to what is left, so an oversized fragment is refused
      from its header, before any of it is kept;
    * RFC 7692 §6: RSV1 on a message's first frame marks it compressed (per message); RSV1 "of
      control frames and non-first fragments of a data message" fails with 1002. A compressed
      message is inflated fragment by fragment as it arrives, under the same budget counted in
      inflated bytes (1009 at the first byte over); its compressed bytes are limited too, to the
      budget plus ``compressed_slack()`` for DEFLATE's expansion of incompressible data.
    """

    __slots__ = (
        "_compressed", "_decoder", "_limit", "_opcode", "_overhead", "_parts", "_text",
        "_used", "_wire", "_wire_limit", "codec",
    )  # fmt: skip

    def __init__(
        self, decoder: FrameDecoder, max_message_size: int, fragment_overhead: int
    ) -> None:
        self._decoder = decoder
        self._limit = max_message_size
        self._overhead = fragment_overhead
        #: Opcode of the message in progress; 0 when none (the state is IDLE).
        self._opcode = 0
        #: Binary fragments so far; None until the first (no list kept while idle).
        self._parts: list[bytes] | None = None
        self._text: TextAssembler | None = None
        #: Budget spent so far: payload bytes (inflated) plus the charge per continuation.
        self._used = 0
        #: The permessage-deflate codec once negotiated (``enable_compression()``).
        self.codec: PerMessageDeflate | None = None
        #: True while the message in progress is compressed (RSV1 on its first frame).
        self._compressed = False
        #: Compressed bytes of the message in progress, plus the charge per continuation.
        self._wire = 0
        self._wire_limit = _wire_limit(max_message_size)

    @property
    def in_progress(self) -> bool:
        """True between a message's first fragment and its last."""
        return self._opcode != 0

    def enable_compression(self, codec: PerMessageDeflate) -> None:
        """permessage-deflate was negotiated: accept RSV1 on first frames (RFC 7692 §6)."""
        self.codec = codec
        self._decoder.allowed_rsv = 0x40
        self._decoder.compressed_slack = self._wire_limit - self._limit

    def add(self, fin: bool, opcode: int, payload: bytes, rsv: int = 0) -> Message | None:
        """Take one data frame; return the message when ``fin`` completes it.

        Raises:
            ProtocolError: a frame out of sequence or RSV1 where RFC 7692 §6.1 forbids it
                (1002), invalid UTF-8 (1007), corrupt compressed data (``CompressionError``,
                1007) or a message over budget (1009).
        """
        if opcode:  # TEXT or BINARY starts a message
            if self._opcode:  # §5.4
                raise ProtocolError(
                    "new data frame inside a fragmented message", code="bad_continuation"
                )
            if rsv and fin:
                return self._inflate_whole(opcode, payload)
            self._opcode = opcode
            self._compressed = bool(rsv)
            if opcode == 1:
                self._text = TextAssembler()
        elif not self._opcode:  # §5.4
            raise ProtocolError(
                "continuation frame without a message to continue", code="bad_continuation"
            )
        elif rsv:
            # RFC 7692 §6.1: "An endpoint MUST NOT set the "Per-Message Compressed" bit of
            # ... non-first fragments of a data message."
            raise ProtocolError("RSV1 set on a continuation frame", code="reserved_bits")
        else:
            self._used += self._overhead
            self._wire += self._overhead
        if self._compressed:
            return self._add_compressed(fin, payload)
        self._used += len(payload)
        if self._used > self._limit:
            raise MessageTooBig(f"message over the limit of {self._limit} bytes")
        self._keep(payload, fin)
        return self._next(fin, self._limit - self._used)

    def _keep(self, data: bytes, final: bool) -> None:
        text = self._text
        if text is not None:
            text.feed(data, final=final)  # §8.1 fail fast, fragment by fragment
        elif data:
            if self._parts is None:
                self._parts = [data]
            else:
                self._parts.append(data)

    def _next(self, fin: bool, left: int) -> Message | None:
        if not fin:
            # The next fragment may only use what is left, its own charge included (§10.4).
            self._decoder.max_payload = max(0, left - self._overhead)
            return None
        text = self._text
        parts = self._parts or ()
        message = TextMessage(text.finish()) if text is not None else BinaryMessage(b"".join(parts))
        self.reset()
        return message

    def _codec(self) -> PerMessageDeflate:
        if self.codec is None:  # the frame decoder refuses RSV1 until enable_compression()
            raise ProtocolError("RSV1 set without permessage-deflate", code="reserved_bits")
        return self.codec

    def _inflate_whole(self, opcode: int, payload: bytes) -> Message:
        """A compressed message in one frame, the common case: no state kept."""
        chunks = self._codec().decompress(payload, self._limit, final=True)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return TextMessage(decode_text(data)) if opcode == 1 else BinaryMessage(data)

    def _add_compressed(self, fin: bool, payload: bytes) -> Message | None:
        self._wire += len(payload)
        if self._wire > self._wire_limit or self._used > self._limit:
            raise MessageTooBig(f"message over the limit of {self._limit} bytes")
        for chunk in self._codec().decompress(payload, self._limit - self._used, final=fin):
            self._used += len(chunk)
            self._keep(chunk, False)
        if fin and self._text is not None:
            self._text.feed(b"", final=True)  # a code point cut at the end is invalid
        return self._next(fin, self._wire_limit - self._wire)

    def set_budget(self, max_message_size: int, fragment_overhead: int) -> None:
        """Adopt new limits while open (a live reload): the next frame header is judged by
        them; a message in progress keeps what it used and gets what the new budget leaves."""
        self._limit, self._overhead = max_message_size, fragment_overhead
        self._wire_limit = _wire_limit(max_message_size)
        if self.codec is not None:
            self._decoder.compressed_slack = self._wire_limit - self._limit
        if not self._opcode:
            self._decoder.max_payload = max_message_size
            return
        left = self._wire_limit - self._wire if self._compressed else self._limit - self._used
        self._decoder.max_payload = max(0, left - self._overhead)

    def reset(self) -> None:
        """Forget the message in progress (completed, failed or closed)."""
        self._opcode = self._used = self._wire = 0
        self._compressed = False
        self._parts = None
        self._text = None
        self._decoder.max_payload = self._limit
