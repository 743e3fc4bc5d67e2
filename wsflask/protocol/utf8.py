"""Incremental UTF-8 validation for text messages (RFC 6455 §5.6, §8.1).

§8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte stream
is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket Connection_."
Validation is the standard library's C decoder: a whole message in one frame is decoded in
one call (ASCII first, at memory speed); a fragmented message goes through an incremental
decoder, which raises at the first fragment where a sequence is known to be invalid (fail
fast; the one prefix CPython holds back, a surrogate's ``ED A0``, is checked here) and
holds back a code point split across fragments until the next one arrives. The
decoded ``str`` is what the application receives, so validation and decoding are one pass.
This module does no I/O.
"""

from __future__ import annotations

import codecs

from .errors import InvalidPayloadData

__all__ = ["TextAssembler", "decode_text"]

_IncrementalDecoder = codecs.getincrementaldecoder("utf-8")


def decode_text(data: bytes) -> str:
    """Return ``data`` decoded as strict UTF-8, or raise ``InvalidPayloadData`` (1007)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayloadData(f"invalid UTF-8 at byte {exc.start}") from None


class TextAssembler:
    """Decodes the fragments of one text message as they arrive.

    Call ``feed(fragment)`` for each fragment and ``finish()`` at FIN; both raise
    ``InvalidPayloadData`` as soon as the bytes seen so far cannot be valid UTF-8.
    """

    __slots__ = ("_decoder", "_parts")

    def __init__(self) -> None:
        self._decoder = _IncrementalDecoder("strict")
        self._parts: list[str] = []

    def feed(self, fragment: bytes, *, final: bool = False) -> None:
        """Validate and keep ``fragment``; ``final`` marks the message's last fragment."""
        try:
            text = self._decoder.decode(fragment, final)
        except UnicodeDecodeError as exc:
            raise InvalidPayloadData(f"invalid UTF-8 at byte {exc.start}") from None
        if text:
            self._parts.append(text)
        if not final:
            # CPython holds "ED A0" back although no third byte can make it valid (it would
            # be a UTF-16 surrogate); every other known-invalid prefix it rejects at once.
            pending = self._decoder.getstate()[0]
            if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                raise InvalidPayloadData("invalid UTF-8: surrogate code point")

    def finish(self) -> str:
        """Return the whole message once its final fragment was fed."""
        return "".join(self._parts)
