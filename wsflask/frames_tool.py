"""``wsflask frames HEX...``: decode captured WebSocket frame bytes into readable fields.

Prints FIN, RSV1-3, opcode, MASK and key, length, the unmasked payload (bounded), close code
and reason, and the first RFC 6455 violation with the close code a server would answer.
Parsing is ``wsflask.protocol``'s (``FrameDecoder``, ``frame_info``, ``parse_close``).
Not done: no inflating of permessage-deflate payloads, no capture of live traffic.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from .cli_client import CLIError
from .config import Config
from .protocol import CloseCode, FrameInfo, Opcode, frame_info
from .protocol.close import parse_close
from .protocol.errors import InvalidPayloadData, MessageTooBig, ProtocolError
from .protocol.frames import FrameDecoder

__all__ = ["SHOWN_BYTES", "add_parser", "cmd_frames", "describe", "parse_hex"]

#: Payload bytes shown per frame; the rest is counted, not printed.
SHOWN_BYTES = 64
_RSV1 = 0x40
_RSV_BITS = ((1, 0x40), (2, 0x20), (3, 0x10))
#: The longest frame header: 2 bytes, a 64-bit length, a masking key (RFC 6455 §5.2).
_MAX_HEADER = 14
_SEPARATORS = re.compile(r"\s+|:|0x", re.IGNORECASE)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``wsflask frames`` on the CLI's sub-command parsers."""
    frames = commands.add_parser("frames", help="decode captured frame bytes (hex)")
    frames.add_argument("hex", nargs="+", help="frame bytes in hex (one stream); - reads stdin")
    frames.add_argument(
        "--from",
        dest="sender",
        choices=("client", "server"),
        help="who sent the bytes: clients mask every frame, servers none (default: from "
        "the first frame's MASK bit)",
    )
    frames.add_argument(
        "--deflate", action="store_true", help="permessage-deflate was negotiated (RSV1 allowed)"
    )
    frames.add_argument(
        "--max-size",
        type=_positive,
        default=Config().max_message_size,
        metavar="BYTES",
        help="largest frame or message accepted (default: the server's, 1 MiB)",
    )
    frames.set_defaults(func=cmd_frames)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of bytes")
    return int(text)


def cmd_frames(args: argparse.Namespace) -> int:
    """Print every frame of the stream; exit 1 on a violation or an incomplete frame."""
    texts = [sys.stdin.read() if text == "-" else text for text in args.hex]
    data = parse_hex(" ".join(texts))
    expect_mask = args.sender == "client" if args.sender else bool(data[1:2] and data[1] & 0x80)
    ok = True
    for line in describe(data, expect_mask, deflate=args.deflate, max_size=args.max_size):
        ok = ok and not line.startswith(("VIOLATION", "INCOMPLETE"))
        print(line)
    return 0 if ok else 1


def parse_hex(text: str) -> bytes:
    """Bytes from hex text; spaces, newlines, colons and ``0x`` prefixes are ignored.

    Raises:
        CLIError: the text is empty, not hexadecimal, or has an odd number of digits.
    """
    digits = _SEPARATORS.sub("", text)
    if not digits:
        raise CLIError("no frame bytes given")
    if len(digits) % 2:
        raise CLIError(f"odd number of hex digits ({len(digits)}): one is missing")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        bad = next(c for c in digits if c not in "0123456789abcdefABCDEF")
        raise CLIError(f"not hexadecimal: {bad!r}") from None


@dataclass
class _Message:
    """The message in progress (RFC 6455 §5.4): fragment order, size, text for UTF-8."""

    opcode: int = -1
    compressed: bool = False
    size: int = 0
    text: bytes = b""


def describe(
    data: bytes, expect_mask: bool, *, deflate: bool = False, max_size: int = 1 << 20
) -> Iterator[str]:
    """Lines describing each frame of ``data``; stops at the first violation.

    A violation line reads ``VIOLATION: <what> -> close <code> <NAME>``; a stream that ends
    inside a frame gives an ``INCOMPLETE`` line.
    """
    decoder = FrameDecoder(
        expect_mask=expect_mask, max_payload=max_size, allowed_rsv=_RSV1 if deflate else 0
    )
    frames, offset, message = iter(decoder.feed(data)), 0, _Message()
    for number in itertools.count(1):
        try:
            frame = next(frames, None)
        except ProtocolError as exc:  # the header itself breaks §5.2/§5.5 or the size limit
            if _header_complete(data[offset : offset + _MAX_HEADER]):
                info = frame_info(data[offset : offset + _MAX_HEADER])
                yield _header(number, offset, info, data, data[offset] & 0x70)
            yield _violation(exc)
            return
        if frame is None:
            break
        fin, opcode, rsv, payload = frame
        info = frame_info(data[offset : offset + _MAX_HEADER])
        yield _header(number, offset, info, data, rsv)
        offset += info.header_length + info.payload_length
        yield from _body(opcode, rsv, payload)
        try:
            _check_sequence(message, fin, opcode, rsv, payload, max_size)
            if opcode == Opcode.CLOSE:
                yield _close_line(payload)
        except ProtocolError as exc:
            yield _violation(exc)
            return
    if decoder.buffered:
        yield from _incomplete(number, offset, data)


def _violation(exc: ProtocolError) -> str:
    return f"VIOLATION: {exc} -> close {_code_name(exc.close_code)}"


def _header(number: int, offset: int, info: FrameInfo, data: bytes, rsv: int) -> str:
    try:
        name = Opcode(info.opcode).name
    except ValueError:
        name = "reserved"
    key = data[offset + info.header_length - 4 : offset + info.header_length]
    mask = f"MASK=1 key={key.hex()}" if info.masked else "MASK=0"
    bits = " ".join(f"RSV{i}={int(bool(rsv & bit))}" for i, bit in _RSV_BITS)
    return (
        f"frame {number} at byte {offset}: FIN={int(info.fin)} {bits} "
        f"opcode={info.opcode:#x} {name} {mask} length={info.payload_length}"
    )


def _body(opcode: int, rsv: int, payload: bytes) -> Iterator[str]:
    if not payload or opcode == Opcode.CLOSE:
        return
    if rsv & _RSV1:
        yield f"  payload (compressed, not inflated): {_shown_hex(payload)}"
        return
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and (opcode != Opcode.BINARY or text.isprintable()):
        more = len(text) - SHOWN_BYTES
        yield f"  payload (text): {text[:SHOWN_BYTES]!r}" + (
            f" ... ({more} more characters)" if more > 0 else ""
        )
    else:
        yield f"  payload (hex): {_shown_hex(payload)}"


def _shown_hex(payload: bytes) -> str:
    more = len(payload) - SHOWN_BYTES
    return payload[:SHOWN_BYTES].hex() + (f" ... ({more} more bytes)" if more > 0 else "")


def _check_sequence(
    message: _Message, fin: bool, opcode: int, rsv: int, payload: bytes, max_size: int
) -> None:
    """§5.4 fragment order, the message size, and UTF-8 of a complete text message (§8.1)."""
    if opcode >= Opcode.CLOSE:
        return
    if opcode == Opcode.CONT and message.opcode < 0:
        raise ProtocolError("continuation frame without a message to continue")  # §5.4
    if opcode != Opcode.CONT and message.opcode >= 0:
        raise ProtocolError("new data frame inside a fragmented message")  # §5.4
    if opcode != Opcode.CONT:
        message.opcode, message.compressed = opcode, bool(rsv & _RSV1)
        message.size, message.text = 0, b""
    message.size += len(payload)
    if message.size > max_size:
        raise MessageTooBig(f"message of more than {max_size} bytes")
    text = message.opcode == Opcode.TEXT and not message.compressed
    if text:
        message.text += payload
    if fin:
        message.opcode = -1
        if text:
            _check_utf8(message.text)


def _check_utf8(text: bytes) -> None:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayloadData(f"text message is not UTF-8 (byte {exc.start})") from None


def _close_line(payload: bytes) -> str:
    code, reason = parse_close(payload)  # ProtocolError/InvalidPayloadData: the violation
    if code == CloseCode.NO_STATUS:
        return "  close: no status code (reported as 1005)"
    return f"  close: code {_code_name(code)} reason {reason!r}"


def _header_complete(rest: bytes) -> bool:
    if len(rest) < 2:
        return False
    size = rest[1] & 0x7F
    need = 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if rest[1] & 0x80 else 0)
    return len(rest) >= need


def _incomplete(number: int, offset: int, data: bytes) -> Iterator[str]:
    rest = data[offset:]
    if not _header_complete(rest):
        yield f"INCOMPLETE: the stream ends inside a frame header ({len(rest)} bytes)"
        return
    info = frame_info(rest[:_MAX_HEADER])
    yield _header(number, offset, info, data, rest[0] & 0x70)
    have = len(rest) - info.header_length
    yield f"INCOMPLETE: the stream ends after {have} of {info.payload_length} payload bytes"


def _code_name(code: int) -> str:
    try:
        return f"{code} {CloseCode(code).name}"
    except ValueError:
        kind = "application" if 4000 <= code <= 4999 else "library" if code >= 3000 else ""
        return f"{code} {kind}".rstrip()
