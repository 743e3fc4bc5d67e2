"""Types of the compiled speedups (``_speedups.c``); each has a pure-Python twin."""

from _typeshed import ReadableBuffer as Buffer
from _typeshed import WriteableBuffer

from .events import BinaryMessage, TextMessage

def apply_mask(data: Buffer, mask: Buffer, /) -> bytes: ...
def apply_mask_inplace(buffer: WriteableBuffer, mask: Buffer, /) -> None: ...
def encode_frame(
    opcode: int,
    payload: Buffer = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: Buffer | None = None,
) -> bytes: ...
def scan_frames(
    buf: Buffer,
    pos: int,
    expect_mask: bool,
    max_payload: int,
    max_compressed: int,
    allowed_rsv: int,
    /,
) -> tuple[list[tuple[bool, int, int, bytes]], int, int, bool | str]: ...
def scan_messages(
    buf: Buffer,
    expect_mask: bool,
    max_payload: int,
    text_type: type[TextMessage],
    binary_type: type[BinaryMessage],
    /,
) -> tuple[list[TextMessage | BinaryMessage], int]: ...
