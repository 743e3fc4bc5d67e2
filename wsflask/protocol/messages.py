"""Reassembly of fragmented messages under a budget (RFC 6455 §5.4, §10.4).

A ``MessageAssembler`` takes the data frames of one direction that are not whole messages
(``Connection`` delivers those itself, on its hot path) and returns the message once its
final fragment arrives:

* §5.4: "the fragments of one message MUST NOT be interleaved between the fragments of
  another message": a TEXT or BINARY frame inside a message, or a continuation without
  one, fails with 1002;
* §8.1: text is validated fragment by fragment, failing at the first invalid one (1007);
* §10.4: the message budget is ``max_message_size``; each continuation frame is charged
  ``fragment_overhead`` more, so floods of tiny or empty fragments end in 1009; the frame
  decoder's ``max_payload`` is lowered to what is left, so an oversized fragment is refused
  from its header, before any of it is kept.

This module does no I/O.
"""

from __future__ import annotations

from .errors import MessageTooBig, ProtocolError
from .events import BinaryMessage, TextMessage
from .frames import FrameDecoder
from .utf8 import TextAssembler

__all__ = ["MessageAssembler"]


class MessageAssembler:
    """The fragmented message in progress on one connection, if any."""

    __slots__ = ("_decoder", "_limit", "_opcode", "_overhead", "_parts", "_text", "_used")

    def __init__(
        self, decoder: FrameDecoder, max_message_size: int, fragment_overhead: int
    ) -> None:
        self._decoder = decoder
        self._limit = max_message_size
        self._overhead = fragment_overhead
        #: Opcode of the message in progress; 0 when none (the state is IDLE).
        self._opcode = 0
        self._parts: list[bytes] = []
        self._text: TextAssembler | None = None
        #: Budget spent so far: payload bytes plus the charge per continuation.
        self._used = 0

    @property
    def in_progress(self) -> bool:
        """True between a message's first fragment and its last."""
        return self._opcode != 0

    def add(self, fin: bool, opcode: int, payload: bytes) -> TextMessage | BinaryMessage | None:
        """Take one data frame; return the message when ``fin`` completes it.

        Raises:
            ProtocolError: a frame out of sequence (1002), invalid UTF-8 (1007) or a message
                over budget (1009).
        """
        if opcode:  # TEXT or BINARY starts a message
            if self._opcode:
                raise ProtocolError("new data frame inside a fragmented message")  # §5.4
            self._opcode = opcode
            if opcode == 1:
                self._text = TextAssembler()
        elif not self._opcode:
            raise ProtocolError("continuation frame without a message to continue")  # §5.4
        else:
            self._used += self._overhead
        self._used += len(payload)
        if self._used > self._limit:
            raise MessageTooBig(f"message over the limit of {self._limit} bytes")
        text = self._text
        if text is not None:
            text.feed(payload, final=fin)  # §8.1 fail fast, fragment by fragment
        elif payload:
            self._parts.append(payload)
        if not fin:
            # The next fragment may only use what is left, its own charge included (§10.4).
            self._decoder.max_payload = max(0, self._limit - self._used - self._overhead)
            return None
        message = (
            TextMessage(text.finish()) if text is not None else BinaryMessage(b"".join(self._parts))
        )
        self.reset()
        return message

    def reset(self) -> None:
        """Forget the message in progress (completed, failed or closed)."""
        self._opcode = self._used = 0
        self._parts = []
        self._text = None
        self._decoder.max_payload = self._limit
