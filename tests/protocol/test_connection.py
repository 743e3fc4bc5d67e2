"""The connection state machine, both sides, every scenario replayed at any split.

Battery rows (reliability-battery.md §4.2): FR-05, FR-07, UT-01, UT-02, FG-01..FG-04, CF-01,
CF-03, CL-01, CL-03, CL-05.
"""

from __future__ import annotations

import pytest
from helpers import cpu_ratio

from wsflask.protocol import (
    BinaryMessage,
    Closed,
    Connection,
    InvalidState,
    Limits,
    Ping,
    Pong,
    ProtocolError,
    Side,
    State,
    TextMessage,
    encode_frame,
)
from wsflask.protocol.errors import FRAME_DUMP_BYTES, VIOLATION_CODES
from wsflask.protocol.frames import FrameDecoder, frame_dump
from wsflask.protocol.handshake import error_token

from .conftest import MASK, feed, open_pair, open_side
from .test_deflate_connection import deflate_pair


def peer_frame(side: Side, opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A frame as the peer of ``side`` sends it (clients mask, §5.3)."""
    return encode_frame(opcode, payload, fin=fin, mask=MASK if side is Side.SERVER else None)


def sent_frames(conn: Connection, side: Side) -> list[tuple[bool, int, int, bytes]]:
    """Decode what ``conn`` (playing ``side``) queued for its peer."""
    decoder = FrameDecoder(expect_mask=side is Side.CLIENT, max_payload=1 << 30)
    return list(decoder.feed(conn.data_to_send()))


def close_code_sent(conn: Connection, side: Side) -> int:
    frames = sent_frames(conn, side)
    assert frames and frames[-1][1] == 0x8, "a Close frame must precede the TCP close (CL-05)"
    return int.from_bytes(frames[-1][3][:2], "big")


# --------------------------------------------------------------------- messages


def test_messages_any_split(side: Side, mode: str) -> None:
    conn, _ = open_side(side)
    stream = (
        peer_frame(side, 0x1, "héllo".encode())
        + peer_frame(side, 0x2, b"\x00\xff")
        + peer_frame(side, 0x1, b"")
        + peer_frame(side, 0x2, bytes(70_000))
    )
    events = feed(conn, stream, mode)
    assert events == [
        TextMessage("héllo"),
        BinaryMessage(b"\x00\xff"),
        TextMessage(""),
        BinaryMessage(bytes(70_000)),
    ]
    assert conn.state is State.OPEN


def test_fragments_with_interleaved_pings_fg04(side: Side, mode: str) -> None:
    conn, _ = open_side(side)
    stream = (
        peer_frame(side, 0x1, b"frag", fin=False)
        + peer_frame(side, 0x9, b"p1")
        + peer_frame(side, 0x0, b"", fin=False)
        + peer_frame(side, 0x9, b"p2")
        + peer_frame(side, 0x0, "ment €".encode(), fin=True)
    )
    events = feed(conn, stream, mode)
    assert events == [Ping(b"p1"), Ping(b"p2"), TextMessage("fragment €")]
    assert [(f[1], f[3]) for f in sent_frames(conn, side)] == [(0xA, b"p1"), (0xA, b"p2")]


def test_pong_bytes_exact_from_server() -> None:
    conn, _ = open_side(Side.SERVER)
    conn.receive_data(peer_frame(Side.SERVER, 0x9, b"Hello"))
    assert conn.data_to_send().hex() == "8a0548656c6c6f"


def test_unsolicited_pongs_cf03(side: Side) -> None:
    conn, _ = open_side(side)
    events = feed(conn, peer_frame(side, 0xA, b"") + peer_frame(side, 0xA, b"z" * 125))
    assert events == [Pong(b""), Pong(b"z" * 125)]
    assert conn.state is State.OPEN and conn.data_to_send() == b""


def test_frame_bytes_missing_counts_down_a_long_frame(side: Side) -> None:
    """What a driver may read at once: the rest of a long frame whose header passed."""
    conn, _ = open_side(side)
    frame = peer_frame(side, 0x2, bytes(70_000))
    assert conn.frame_bytes_missing == 0
    conn.receive_data(frame[:1000])
    assert conn.frame_bytes_missing == len(frame) - 1000
    conn.receive_data(frame[1000:50_000])
    assert conn.frame_bytes_missing == len(frame) - 50_000
    conn.receive_data(frame[50_000:])
    assert conn.frame_bytes_missing == 0
    assert conn.events_received() == [BinaryMessage(bytes(70_000))]
    short = peer_frame(side, 0x2, bytes(3000))  # a short frame is kept whole: not counted
    conn.receive_data(short[:100])
    assert conn.frame_bytes_missing == 0
    too_big = peer_frame(side, 0x2, bytes(2 << 20))  # refused from its header: nothing awaited
    conn.receive_data(short[100:] + too_big[:100])
    assert conn.frame_bytes_missing == 0 and conn.state is not State.OPEN


# --------------------------------------------------------------------- limits


def test_exact_message_limit_fr05(side: Side) -> None:
    limits = Limits(max_message_size=5000)
    conn, _ = open_side(side, limits)
    assert feed(conn, peer_frame(side, 0x2, bytes(5000))) == [BinaryMessage(bytes(5000))]
    events = feed(conn, peer_frame(side, 0x2, bytes(5001)))
    assert [type(e) for e in events] == [Closed] and events[0].code == 1009  # type: ignore[union-attr]
    assert close_code_sent(conn, side) == 1009


def test_fragmented_message_limit_counts_payload(side: Side) -> None:
    limits = Limits(max_message_size=5000, fragment_overhead=0)
    conn, _ = open_side(side, limits)
    ok = peer_frame(side, 0x2, bytes(2500), fin=False) + peer_frame(side, 0x0, bytes(2500))
    assert feed(conn, ok) == [BinaryMessage(bytes(5000))]
    over = peer_frame(side, 0x2, bytes(2500), fin=False) + peer_frame(side, 0x0, bytes(2501))
    closed = feed(conn, over)[-1]
    assert isinstance(closed, Closed) and closed.code == 1009


def test_empty_fragment_flood_fg02(side: Side) -> None:
    conn, _ = open_side(side)
    conn.receive_data(peer_frame(side, 0x1, b"x", fin=False))
    empty = peer_frame(side, 0x0, b"", fin=False)
    # Budget 1 MiB, 1 byte used, 256 charged per continuation: the 4096th one crosses it.
    for _ in range(4095):
        conn.receive_data(empty)
    assert conn.state is State.OPEN and conn.events_received() == []
    conn.receive_data(empty)
    (closed,) = conn.events_received()
    assert isinstance(closed, Closed) and closed.code == 1009
    assert close_code_sent(conn, side) == 1009


def test_one_byte_fragment_flood_fg02_heap_and_cpu(side: Side) -> None:
    """1-byte continuations: closed with 1009 at the exact charge (1 + 257 per fragment over
    1 MiB), heap peak under the inbound budget (tracemalloc), CPU per frame O(1): 2x the
    frames costs at most 2.2x the CPU time."""
    import tracemalloc

    one = peer_frame(side, 0x0, b"y", fin=False)

    def flood(frames: int) -> Connection:
        conn, _ = open_side(side)
        conn.receive_data(peer_frame(side, 0x1, b"x", fin=False))
        for _ in range(frames):
            conn.receive_data(one)
        return conn

    limit = (1 << 20) // 257  # (1 byte + 256 overhead) per fragment, after the 1-byte first
    tracemalloc.start()
    try:
        conn = flood(limit)  # the 4 080th still fits; the 4 081st crosses
        assert conn.state is State.OPEN and conn.events_received() == []
        conn.receive_data(one)
        (closed,) = conn.events_received()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(closed, Closed) and closed.code == 1009
    assert peak <= (1 << 20) + 64 * 1024, f"heap peak {peak >> 10} KiB"
    ratio = cpu_ratio(lambda: flood(1500), lambda: flood(3000), within=2.2)
    assert ratio <= 2.2, f"2x frames cost {ratio:.2f}x CPU"


def test_large_fragment_flood_fg03(side: Side) -> None:
    conn, _ = open_side(side)
    first = peer_frame(side, 0x2, bytes(65536), fin=False)
    fragment = peer_frame(side, 0x0, bytes(65536), fin=False)
    conn.receive_data(first)
    count = 1
    for _ in range(199):
        conn.receive_data(fragment[:20])  # the header alone is enough to refuse a fragment
        count += 1
        if conn.state is State.CLOSED:
            break
        conn.receive_data(fragment[20:])
    assert count == 16, "closed at the 16th fragment, before its payload is buffered"
    assert close_code_sent(conn, side) == 1009


# --------------------------------------------------------------------- violations


VIOLATIONS = {
    "continuation first": ([(0x0, b"x", True)], 1002),
    "text then binary": ([(0x1, b"a", False), (0x2, b"b", True)], 1002),
    "text then text": ([(0x1, b"a", False), (0x1, b"b", True)], 1002),
    "invalid utf8 whole": ([(0x1, b"\xc0\xaf", True)], 1007),
    "surrogate": ([(0x1, b"\xed\xa0\x80", True)], 1007),
    "above U+10FFFF": ([(0x1, b"\xf4\x90\x80\x80", True)], 1007),
    "0xff": ([(0x1, b"\xff", True)], 1007),
    "truncated at fin ut02": ([(0x1, b"ok\xf0\x9d", False), (0x0, b"\x84", True)], 1007),
    "ping 126 bytes": ([(0x9, b"p" * 126, True)], 1002),
    "ping fin=0": ([(0x9, b"p", False)], 1002),
    "close fin=0": ([(0x8, b"\x03\xe8", False)], 1002),
    "reserved opcode 3": ([(0x3, b"", True)], 1002),
    "reserved opcode 0xb": ([(0xB, b"", True)], 1002),
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_violations_fail_with_close_code_cl05(side: Side, mode: str, name: str) -> None:
    frames, code = VIOLATIONS[name]
    conn, _ = open_side(side)
    stream = b"".join(peer_frame(side, op, data, fin=fin) for op, data, fin in frames)
    events = feed(conn, stream + peer_frame(side, 0x1, b"after"), mode)
    assert isinstance(events[-1], Closed) and events[-1].code == code
    assert events[-1].cause is not None and not events[-1].clean
    assert sum(isinstance(e, Closed) for e in events) == 1
    assert not any(isinstance(e, Ping | Pong) for e in events), "no pong for an invalid ping"
    assert close_code_sent(conn, side) == code
    assert conn.state is State.CLOSED


def test_utf8_fails_fast_before_later_fragments_ut01(side: Side) -> None:
    conn, _ = open_side(side)
    conn.receive_data(peer_frame(side, 0x1, "κόσμε".encode(), fin=False))
    conn.receive_data(peer_frame(side, 0x0, b"\xf4", fin=False))
    assert conn.state is State.OPEN
    conn.receive_data(peer_frame(side, 0x0, b"\x90", fin=False))
    # receive_data changed conn.state; mypy keeps the narrowing from the assert above
    assert conn.state is State.CLOSED and close_code_sent(conn, side) == 1007  # type: ignore[comparison-overlap]


def test_code_point_split_across_four_fragments(side: Side) -> None:
    conn, _ = open_side(side)
    data = "𝄞".encode()
    stream = b"".join(
        peer_frame(side, 0x1 if i == 0 else 0x0, data[i : i + 1], fin=i == 3) for i in range(4)
    )
    assert feed(conn, stream, "bytes") == [TextMessage("𝄞")]


# --------------------------------------------------------------------- close


CLOSE_BODIES = {
    "one byte": (b"\x03", 1002),
    "code 0": ((0).to_bytes(2, "big"), 1002),
    "code 999": ((999).to_bytes(2, "big"), 1002),
    "code 1004": ((1004).to_bytes(2, "big"), 1002),
    "code 1005": ((1005).to_bytes(2, "big"), 1002),
    "code 1006": ((1006).to_bytes(2, "big"), 1002),
    "code 1015": ((1015).to_bytes(2, "big"), 1002),
    "code 1016": ((1016).to_bytes(2, "big"), 1002),
    "code 2999": ((2999).to_bytes(2, "big"), 1002),
    "code 5000": ((5000).to_bytes(2, "big"), 1002),
    "code 65535": ((65535).to_bytes(2, "big"), 1002),
    "reason not utf8": (b"\x03\xe8\xff\xfe", 1007),
}


@pytest.mark.parametrize("name", sorted(CLOSE_BODIES))
def test_invalid_close_bodies_cl01(side: Side, name: str) -> None:
    body, code = CLOSE_BODIES[name]
    conn, _ = open_side(side)
    events = feed(conn, peer_frame(side, 0x8, body))
    assert events == [Closed(code, events[0].reason)]  # type: ignore[union-attr]
    assert close_code_sent(conn, side) == code


def test_close_with_126_byte_payload_is_1002(side: Side) -> None:
    conn, _ = open_side(side)
    wire = (
        bytes.fromhex("88fe007e") + MASK + bytes(126)
        if side is Side.SERVER
        else bytes.fromhex("887e007e") + bytes(126)
    )
    events = feed(conn, wire)
    assert isinstance(events[-1], Closed) and events[-1].code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
def test_valid_close_is_echoed(side: Side, mode: str, code: int) -> None:
    conn, _ = open_side(side)
    events = feed(conn, peer_frame(side, 0x8, code.to_bytes(2, "big") + b"bye"), mode)
    assert events == [Closed(code, "bye", None, True)]
    assert [(f[1], f[3]) for f in sent_frames(conn, side)] == [(0x8, code.to_bytes(2, "big"))]
    assert conn.state is State.CLOSED


def test_empty_close_reports_1005_and_echoes_empty(side: Side) -> None:
    conn, _ = open_side(side)
    assert feed(conn, peer_frame(side, 0x8)) == [Closed(1005, "", None, True)]
    assert [(f[1], f[3]) for f in sent_frames(conn, side)] == [(0x8, b"")]


def test_closing_handshake_initiated_locally(side: Side) -> None:
    conn, _ = open_side(side)
    conn.close(1001, "going")
    conn.close(1000)  # idempotent: one Close frame only (CL-03)
    assert [(f[1], f[3]) for f in sent_frames(conn, side)] == [(0x8, b"\x03\xe9going")]
    assert conn.close_expected() and conn.state is State.CLOSING
    # Data after our Close is not delivered and not answered; the peer's Close ends it.
    events = feed(
        conn,
        peer_frame(side, 0x1, b"late")
        + peer_frame(side, 0x9, b"p")
        + peer_frame(side, 0x8, b"\x03\xe9"),
    )
    assert events == [Closed(1001, "", None, True)]
    assert conn.data_to_send() == b"" and not conn.close_expected()
    with pytest.raises(InvalidState):
        conn.send_text("no")


def test_data_after_peer_close_is_ignored_cl03(side: Side) -> None:
    conn, _ = open_side(side)
    events = feed(conn, peer_frame(side, 0x8, b"\x03\xe8") + peer_frame(side, 0x1, b"after"))
    assert events == [Closed(1000, "", None, True)]
    conn.receive_data(peer_frame(side, 0x1, b"more"))
    conn.receive_eof()
    assert conn.events_received() == []


def test_eof_without_close_is_1006_once(side: Side) -> None:
    conn, _ = open_side(side)
    conn.receive_eof()
    conn.receive_eof()
    assert conn.events_received() == [Closed(1006, "connection lost")]


def test_fail_is_idempotent_and_sends_one_close(side: Side) -> None:
    conn, _ = open_side(side)
    conn.fail(1011, "boom")
    conn.fail(1002, "again")
    conn.close()
    assert close_code_sent(conn, side) == 1011
    assert conn.events_received() == [Closed(1011, "boom")]


def test_send_commands_validate(side: Side) -> None:
    conn, _ = open_side(side)
    with pytest.raises(ValueError):
        conn.send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        conn.close(1005)
    with pytest.raises(ValueError):
        conn.close(1000, "r" * 124)


def test_send_before_open_raises() -> None:
    with pytest.raises(InvalidState):
        Connection(Side.SERVER).send_text("x")
    with pytest.raises(InvalidState):
        Connection(Side.SERVER).close()


# --------------------------------------------------------------------- sending


def test_client_frames_are_masked_server_frames_not() -> None:
    client, server = open_pair()
    client.send_text("Hello")
    assert client.data_to_send().hex() == "818537fa213d7f9f4d5158"
    server.send_text("Hello")
    assert server.data_to_send().hex() == "810548656c6c6f"


def test_fragmented_send_and_prepared_frames() -> None:
    client, server = open_pair()
    server.send_text("Hel", fin=False)
    server.send_continuation(b"lo", fin=True)
    frame = encode_frame(0x2, b"shared")
    server.send_frame_bytes(frame)
    assert server.data_to_send().hex() == "010348656c" + "80026c6f" + frame.hex()
    client.receive_data(bytes.fromhex("010348656c80026c6f") + frame)
    assert client.events_received() == [TextMessage("Hello"), BinaryMessage(b"shared")]


# --------------------------------------------------------------------- handshake through Connection


def _client_request() -> bytes:
    client = Connection(Side.CLIENT)
    client.connect("example.com", "/chat", key="dGhlIHNhbXBsZSBub25jZQ==")
    return client.data_to_send()


def test_server_accept_exact_101_and_early_frames(mode: str) -> None:
    server = Connection(Side.SERVER)
    events = feed(server, _client_request() + encode_frame(0x1, b"early", mask=MASK), mode)
    assert [type(e).__name__ for e in events] == ["Request"]
    server.accept(events[0])  # type: ignore[arg-type]
    assert server.data_to_send() == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    assert [type(e).__name__ for e in server.events_received()] == ["Opened", "TextMessage"]


def test_bad_request_answered_by_core() -> None:
    server = Connection(Side.SERVER)
    server.receive_data(_client_request().replace(b"Version: 13", b"Version: 8"))
    response = server.data_to_send()
    assert response.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13\r\n" in response
    (closed,) = server.events_received()
    assert isinstance(closed, Closed) and closed.cause is not None and server.state is State.CLOSED
    server.receive_data(_client_request())  # no second response: not a tunnel (HS-03)
    assert server.data_to_send() == b"" and server.events_received() == []


def test_reject_and_plain_http_respond() -> None:
    server = Connection(Side.SERVER)
    server.receive_data(_client_request())
    server.events_received()
    server.reject(403, headers=[("X-Why", "origin")])
    assert server.data_to_send().startswith(b"HTTP/1.1 403 ")
    plain = Connection(Side.SERVER, http=True)
    plain.receive_data(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    (request,) = plain.events_received()
    assert not request.is_websocket  # type: ignore[union-attr]
    with pytest.raises(InvalidState):
        plain.accept(request)  # type: ignore[arg-type]
    plain.respond(200, b"ok")
    assert plain.data_to_send().endswith(b"\r\n\r\nok") and plain.state is State.CLOSED


def test_client_refuses_wrong_accept_and_unrequested_extension() -> None:
    for response in (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    ):
        client = Connection(Side.CLIENT)
        client.connect("example.com", "/", key="dGhlIHNhbXBsZSBub25jZQ==")
        client.data_to_send()
        client.receive_data(response)
        (closed,) = client.events_received()
        assert isinstance(closed, Closed) and closed.code == 1006 and closed.cause is not None


def test_client_refusal_is_reported_as_handshake_rejected_cause() -> None:
    from wsflask.protocol.errors import HandshakeRejected

    conn = Connection(Side.CLIENT)
    conn.connect("example.com", "/chat")
    conn.data_to_send()
    conn.receive_data(b"HTTP/1.1 403 Forbidden\r\nX-Why: origin\r\nContent-Length: 4\r\n\r\nnope")
    (closed,) = conn.events_received()
    assert isinstance(closed, Closed) and closed.code == 1006
    cause = closed.cause
    assert isinstance(cause, HandshakeRejected)
    assert (cause.status, cause.body) == (403, b"nope")
    assert ("x-why", "origin") in cause.headers and conn.state is State.CLOSED


def test_client_invalid_101_is_not_a_refusal() -> None:
    from wsflask.protocol.errors import HandshakeRejected, InvalidHandshakeResponse

    conn = Connection(Side.CLIENT)
    conn.connect("example.com", "/chat")
    conn.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    (closed,) = conn.events_received()
    assert isinstance(closed, Closed) and isinstance(closed.cause, InvalidHandshakeResponse)
    assert not isinstance(closed.cause, HandshakeRejected)


# --------------------------------------------------------------------- violation codes (item 19)


def _masked(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    return encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=MASK)


_LONG_PING = _masked(0x9, b"p" * 126)
_BAD_LENGTH = b"\x81\xfe\x00\x05" + MASK + b"hello"
_BIG = _masked(0x2, b"b" * 1100)
#: name -> (side under test, bytes its peer sends, close code, violation code, kept bytes).
#: A frame refused from its header is kept as received; one refused for what it carries is
#: re-encoded unmasked (``frame_dump``), so its payload reads in clear.
CODED = {
    "unmasked": (Side.SERVER, b"\x81\x05hello", 1002, "unmasked", b"\x81\x05hello"),
    "masked to a client": (
        Side.CLIENT, _masked(0x1, b"hi"), 1002, "masked_server_frame", _masked(0x1, b"hi"),
    ),
    "reserved opcode": (
        Side.SERVER, _masked(0x3, b""), 1002, "reserved_opcode", b"\x83\x80" + MASK,
    ),
    "rsv1 unnegotiated": (
        Side.SERVER, _masked(0x1, b"", rsv=0x40), 1002, "reserved_bits", b"\xc1\x80" + MASK,
    ),
    "fragmented ping": (
        Side.SERVER, _masked(0x9, b"", fin=False), 1002, "fragmented_control", b"\x09\x80" + MASK,
    ),
    "ping of 126": (Side.SERVER, _LONG_PING, 1002, "control_too_long", _LONG_PING[:64]),
    "non-minimal length": (Side.SERVER, _BAD_LENGTH, 1002, "bad_length", _BAD_LENGTH),
    "frame over the limit": (Side.SERVER, _BIG, 1009, "too_big", _BIG[:64]),
    "invalid utf-8": (
        Side.SERVER, _masked(0x1, b"ok\xff"), 1007, "invalid_utf8", b"\x81\x03ok\xff",
    ),
    "close code 999": (
        Side.SERVER, _masked(0x8, b"\x03\xe7"), 1002, "invalid_close", b"\x88\x02\x03\xe7",
    ),
    "close reason not utf-8": (
        Side.SERVER, _masked(0x8, b"\x03\xe8\xff"), 1007, "invalid_close", b"\x88\x03\x03\xe8\xff",
    ),
    "continuation first": (
        Side.SERVER, _masked(0x0, b"x"), 1002, "bad_continuation", b"\x80\x01x",
    ),
    "text inside text": (
        Side.SERVER,
        _masked(0x1, b"a", fin=False) + _masked(0x1, b"b"),
        1002,
        "bad_continuation",
        b"\x81\x01b",
    ),
    "message over the limit": (  # refused from the continuation's header: kept masked
        Side.SERVER,
        _masked(0x2, b"a" * 600, fin=False) + _masked(0x0, b"c" * 500),
        1009,
        "too_big",
        _masked(0x0, b"c" * 500)[:64],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CODED))
def test_closed_cause_has_a_violation_code(name: str, mode: str) -> None:
    side, data, close_code, violation, kept = CODED[name]
    conn, _ = open_side(side, Limits(max_message_size=1000))  # 256 per continuation
    closed = feed(conn, data, mode)[-1]
    assert isinstance(closed, Closed) and closed.code == close_code
    assert closed.violation == violation
    assert isinstance(closed.cause, ProtocolError) and closed.cause.code == violation
    frame = closed.cause.frame
    if mode == "whole":
        assert frame == kept
    else:  # refused from a header: only the bytes that had arrived are kept
        assert frame and kept.startswith(frame[:2]) and len(frame) <= FRAME_DUMP_BYTES


def test_corrupt_compressed_data_is_coded_bad_compression() -> None:
    _, server = deflate_pair()
    server.receive_data(_masked(0x1, b"\xff\xff\xff\xff", rsv=0x40))
    closed = server.events_received()[-1]
    assert isinstance(closed, Closed) and closed.code == 1007
    assert closed.violation == "bad_compression"
    assert closed.cause is not None and closed.cause.frame == b"\xc1\x04\xff\xff\xff\xff"  # type: ignore[attr-defined]


def test_every_code_but_other_is_produced_by_the_core() -> None:
    """The vocabulary is closed and each code names something the core really refuses."""
    produced = {case[3] for case in CODED.values()} | {"bad_compression"}
    assert produced == set(VIOLATION_CODES) - {"other"}
    with pytest.raises(ValueError, match="unknown violation code"):
        ProtocolError("x", code="made_up")
    assert ProtocolError("x").code == "other"


def test_closed_without_a_violation() -> None:
    client, server = open_pair()
    client.close()
    server.receive_data(client.data_to_send())
    closed = server.events_received()[-1]
    assert isinstance(closed, Closed) and closed.code == 1000 and closed.violation is None


def test_frame_dump_shows_the_real_length_and_is_bounded() -> None:
    assert frame_dump(True, 0x2, 0, b"") == b"\x82\x00"
    dump = frame_dump(False, 0x1, 0x40, b"x" * 70000)
    assert dump == b"\x41\x7f" + (70000).to_bytes(8, "big") + b"x" * 54
    assert len(frame_dump(True, 0x2, 0, b"y" * 300)) == FRAME_DUMP_BYTES
    assert frame_dump(True, 0x2, 0, b"y" * 300)[:4] == b"\x82\x7e\x01\x2c"


@pytest.mark.parametrize("enabled", [False, True])
def test_core_refusal_reason_header_is_opt_in(enabled: bool) -> None:
    server = Connection(Side.SERVER)
    server.error_header = enabled
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    response = server.data_to_send()
    assert response.startswith(b"HTTP/1.1 400 ")
    header = b"\r\nX-WebSocket-Error: missing-connection-header\r\n"
    assert (header in response) is enabled
    (closed,) = server.events_received()
    assert isinstance(closed, Closed) and closed.violation is None  # a refusal, not a violation


def test_error_token_is_a_bounded_header_token() -> None:
    assert error_token('Connection header must contain "Upgrade"') == (
        "connection-header-must-contain-upgrade"
    )
    assert error_token("") == error_token("«»") == "refused"
    long = error_token("word " * 40)
    assert len(long) == 64 and set(long) <= set("word-")
