"""permessage-deflate through ``Connection``, both sides, every scenario at any split.

Battery rows (reliability-battery.md §4.2): HS-10 (through the handshake), PD-01 bombs,
PD-02 exact boundaries, PD-03 RSV1 misuse, PD-04 corrupt streams and BFINAL, PD-05 memory
per connection and after close. Interop, handshake included: python-websockets' sans-I/O
``ClientProtocol``/``ServerProtocol`` with their permessage-deflate (0 B, 1 B, 1 KiB, 1 MiB).
"""

from __future__ import annotations

import os
import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from wsflask.protocol import (
    BinaryMessage,
    Closed,
    CompressionError,
    Connection,
    InvalidHandshakeResponse,
    Limits,
    MessageTooBig,
    Opened,
    Ping,
    Side,
    State,
    TextMessage,
    encode_frame,
)
from wsflask.protocol.deflate import DeflateSettings, PerMessageDeflate, shared_frame
from wsflask.protocol.events import Event
from wsflask.protocol.frames import FrameDecoder

from .conftest import KEY, MASK, feed, fixed_mask
from .test_deflate import zero_bomb

ON = DeflateSettings(compress_threshold=0)
PMD = "permessage-deflate"


def deflate_pair(
    server_settings: DeflateSettings | None = ON,
    client_settings: DeflateSettings | None = ON,
    limits: Limits | None = None,
) -> tuple[Connection, Connection]:
    """A client and a server, handshake done (deflate negotiated if both agree)."""
    client = Connection(Side.CLIENT, limits=limits, mask_source=fixed_mask, deflate=client_settings)
    server = Connection(Side.SERVER, limits=limits, deflate=server_settings)
    client.connect("example.com", "/chat", key=KEY)
    server.receive_data(client.data_to_send())
    (request,) = server.events_received()
    server.accept(request)  # type: ignore[arg-type]
    client.receive_data(server.data_to_send())
    assert isinstance(client.events_received()[0], Opened)
    assert isinstance(server.events_received()[0], Opened)
    return client, server


def deflate_side(side: Side, limits: Limits | None = None) -> tuple[Connection, Connection]:
    client, server = deflate_pair(limits=limits)
    return (server, client) if side is Side.SERVER else (client, server)


def peer_frame(
    side: Side, opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0
) -> bytes:
    return encode_frame(
        opcode, payload, fin=fin, rsv=rsv, mask=MASK if side is Side.SERVER else None
    )


def sent_frames(conn: Connection, side: Side) -> list[tuple[bool, int, int, bytes]]:
    decoder = FrameDecoder(expect_mask=side is Side.CLIENT, max_payload=1 << 30, allowed_rsv=0x70)
    return list(decoder.feed(conn.data_to_send()))


def closed_with(events: list[Event], code: int) -> Closed:
    closed = events[-1]
    assert isinstance(closed, Closed) and closed.code == code, events[-3:]
    return closed


def compressed(payload: bytes, fragments: int = 1) -> list[bytes]:
    """``payload`` compressed by a fresh peer, cut into ``fragments`` pieces."""
    wire = PerMessageDeflate().encode(payload)
    size = -(-len(wire) // fragments) or 1
    return [wire[i : i + size] for i in range(0, len(wire), size)] or [b""]


def message_frames(side: Side, opcode: int, pieces: list[bytes]) -> bytes:
    last = len(pieces) - 1
    return b"".join(
        peer_frame(side, opcode if i == 0 else 0, p, fin=i == last, rsv=0x40 if i == 0 else 0)
        for i, p in enumerate(pieces)
    )


# --------------------------------------------------------------------- handshake


def test_negotiated_header_in_101_and_opened() -> None:
    client = Connection(Side.CLIENT, mask_source=fixed_mask, deflate=DeflateSettings())
    server = Connection(Side.SERVER, deflate=DeflateSettings(server_no_context_takeover=True))
    client.connect("example.com", "/", key=KEY)
    request = client.data_to_send()
    assert (
        b"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" in request
    )
    server.receive_data(request)
    server.accept(server.events_received()[0])  # type: ignore[arg-type]
    response = server.data_to_send()
    answer = f"{PMD}; server_no_context_takeover"
    assert f"\r\nSec-WebSocket-Extensions: {answer}\r\n".encode() in response
    client.receive_data(response)
    assert client.events_received()[0].extensions == answer  # type: ignore[union-attr]
    assert server.events_received() == [Opened(None, answer)]
    assert client.deflate is not None and client.deflate.remote_no_context_takeover
    assert server.deflate is not None and server.deflate.share_key is not None


@pytest.mark.parametrize(
    "offer",
    [
        f"{PMD}; server_max_window_bits=8",
        f"{PMD}; server_max_window_bits=08",
        f"{PMD}; server_max_window_bits=16",
        f"{PMD}; server_no_context_takeover; server_no_context_takeover",
        f"{PMD}; foo=bar",
        "constructor",
        ", ".join([f"{PMD}; foo"] * 10_000),
    ],
)
def test_bad_offers_are_declined_never_refused_hs10(offer: str) -> None:
    big_heads = Limits(max_header_bytes=1 << 20)  # 10 000 offers are 250 KB: over 16 KiB
    server = Connection(Side.SERVER, limits=big_heads, deflate=DeflateSettings())
    server.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: " + offer.encode() + b"\r\n\r\n"
    )
    server.accept(server.events_received()[0])  # type: ignore[arg-type]
    response = server.data_to_send()
    assert response.startswith(b"HTTP/1.1 101 ") and b"Extensions" not in response
    assert server.deflate is None and server.events_received() == [Opened(None, "")]


@pytest.mark.parametrize(
    "answer", ["x-foo", f"{PMD}; client_max_window_bits", f"{PMD}; foo", f"{PMD}, {PMD}"]
)
def test_client_fails_on_a_response_the_offer_did_not_allow(answer: str) -> None:
    client = Connection(Side.CLIENT, deflate=DeflateSettings())
    client.connect("example.com", "/", key=KEY)
    client.data_to_send()
    client.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Extensions: " + answer.encode() + b"\r\n\r\n"
    )
    closed = closed_with(client.events_received(), 1006)
    assert isinstance(closed.cause, InvalidHandshakeResponse)


def test_no_deflate_unless_both_want_it() -> None:
    for server_settings, client_settings in ((None, ON), (ON, None), (ON, DeflateSettings(False))):
        client, server = deflate_pair(server_settings, client_settings)
        assert client.deflate is None and server.deflate is None


# --------------------------------------------------------------------- messages


RFC_VECTORS = {  # RFC 7692 §7.2.3: each message's frames as (opcode, payload hex, fin, rsv)
    "7.2.3.1 one frame": [(0x1, "f248cdc9c90700", True, 0x40)],
    "7.2.3.1 fragmented": [(0x1, "f248cd", False, 0x40), (0x0, "c9c90700", True, 0)],
    "7.2.3.3 stored block": [(0x1, "000500faff48656c6c6f00", True, 0x40)],
    "7.2.3.4 BFINAL": [(0x1, "f348cdc9c9070000", True, 0x40)],
    "7.2.3.5 two blocks": [(0x1, "f248050000" + "00ffffcac9c90700", True, 0x40)],
    "uncompressed": [(0x1, "48656c6c6f", True, 0)],
}
#: §7.2.3.2: "Hello" again, referring to the first (context takeover). After a BFINAL or an
#: uncompressed message there is nothing to refer to: a new "Hello" follows instead.
FOLLOW_UP = {"7.2.3.4 BFINAL": "f248cdc9c90700", "uncompressed": "f248cdc9c90700"}


@pytest.mark.parametrize("name", sorted(RFC_VECTORS))
def test_rfc_vectors_any_split(side: Side, mode: str, name: str) -> None:
    conn, _ = deflate_side(side)
    frames = [*RFC_VECTORS[name], (0x1, FOLLOW_UP.get(name, "f200110000"), True, 0x40)]
    stream = b"".join(
        peer_frame(side, op, bytes.fromhex(data), fin=fin, rsv=rsv) for op, data, fin, rsv in frames
    )
    assert feed(conn, stream, mode) == [TextMessage("Hello"), TextMessage("Hello")]


def test_server_frames_byte_exact() -> None:
    _, server = deflate_pair()
    server.send_text("Hello")
    server.send_text("Hello")
    assert server.data_to_send().hex() == "c107f248cdc9c90700" + "c105f200110000"


@pytest.mark.parametrize("snct", [False, True])
@pytest.mark.parametrize("cnct", [False, True])
def test_round_trips_through_connections(snct: bool, cnct: bool) -> None:
    both = DeflateSettings(
        server_no_context_takeover=snct, client_no_context_takeover=cnct, compress_threshold=100
    )
    client, server = deflate_pair(both, both)
    messages: list[str | bytes] = ["", "x", "é" * 300, os.urandom(5000), bytes(100_000), "a" * 99]
    for sender, receiver, side in ((server, client, Side.CLIENT), (client, server, Side.SERVER)):
        for message in messages:
            # mypy cannot tie the method picked to the isinstance check
            (sender.send_text if isinstance(message, str) else sender.send_binary)(message)  # type: ignore[arg-type]
            data = sender.data_to_send()
            (frame,) = FrameDecoder(
                expect_mask=side is Side.SERVER, max_payload=1 << 30, allowed_rsv=0x40
            ).feed(data)
            assert bool(frame[2]) is (
                len(message) >= 100 if isinstance(message, bytes) else len(message.encode()) >= 100
            )
            receiver.receive_data(data)
            (event,) = receiver.events_received()
            assert event.data == message  # type: ignore[union-attr]


def test_compress_flag_and_fragmented_compressed_send(side: Side) -> None:
    conn, peer = deflate_side(side)
    conn.send_binary(b"x" * 500, compress=False)
    conn.send_binary(b"y", compress=True)
    conn.send_text("frag" * 200, fin=False, compress=True)
    conn.send_continuation(b"ment" * 200, fin=False)
    conn.send_continuation(b"!", fin=True)
    data = conn.data_to_send()
    decoder = FrameDecoder(expect_mask=side is Side.CLIENT, max_payload=1 << 20, allowed_rsv=0x40)
    assert [(f[1], f[2]) for f in decoder.feed(data)] == [
        (2, 0),
        (2, 0x40),
        (1, 0x40),
        (0, 0),
        (0, 0),
    ]
    text = "frag" * 200 + "ment" * 200 + "!"
    assert feed(peer, data, "bytes") == [
        BinaryMessage(b"x" * 500), BinaryMessage(b"y"), TextMessage(text)
    ]  # fmt: skip


def test_fragmented_compressed_messages_any_split(side: Side, mode: str) -> None:
    conn, _ = deflate_side(side)
    text = "".join(f'{{"id": {i}, "name": "κόσμε {i}"}}' for i in range(400))
    stream = message_frames(side, 0x1, compressed(text.encode(), 7))
    stream += message_frames(side, 0x2, compressed(os.urandom(3000), 3))
    stream += message_frames(side, 0x1, compressed(b"", 1))
    stream += message_frames(side, 0x1, [b"\x00"])
    events = feed(conn, stream, mode)
    assert events[0] == TextMessage(text) and len(events) == 4
    assert events[2:] == [TextMessage(""), TextMessage("")]


def test_utf8_checked_after_inflation_fails_fast(side: Side) -> None:
    conn, _ = deflate_side(side)
    assert feed(conn, message_frames(side, 0x1, compressed(b"\xff")))[-1] == Closed(
        1007, "invalid UTF-8 at byte 0"
    )
    conn, _ = deflate_side(side)
    sender = PerMessageDeflate()
    first = sender.encode(b"ok" * 1000 + b"\xc0", fin=False)
    events = feed(conn, peer_frame(side, 0x1, first, fin=False, rsv=0x40))
    assert closed_with(events, 1007), "before the rest of the message arrives"


# --------------------------------------------------------------------- limits


def _receive_traced(conn: Connection, stream: bytes) -> int:
    """Feed ``stream``; return the heap peak (bytes) while doing it."""
    tracemalloc.start()
    try:
        conn.receive_data(stream)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("mebibytes", [20, 1000])
def test_bomb_in_one_frame_stops_at_the_budget_pd01(side: Side, mebibytes: int) -> None:
    bomb = zero_bomb(mebibytes)  # 20 MiB in ~20 KB (DEFLATE's ratio tops out near 1032:1)
    plain, _ = deflate_side(side, Limits(max_message_size=2 << 20))
    baseline = _receive_traced(plain, peer_frame(side, 0x2, bomb))  # unmasking, no inflating
    conn, _ = deflate_side(side)
    stream = message_frames(side, 0x2, [bomb])
    peak = _receive_traced(conn, stream)
    assert isinstance(closed_with(conn.events_received(), 1009).cause, MessageTooBig)
    assert sent_frames(conn, side)[-1][1] == 0x8
    # Inflating holds the payload, the 1 MiB budget and one chunk, never the whole bomb.
    assert peak <= max(baseline, len(bomb) + (1 << 20) + (256 << 10)), (peak, baseline)


def test_one_gibibyte_bomb_in_100_fragments_pd01(side: Side) -> None:
    conn, _ = deflate_side(side)
    bomb = zero_bomb(1024)
    size = -(-len(bomb) // 100)
    pieces = [bomb[i : i + size] for i in range(0, len(bomb), size)]
    assert len(pieces) == 100
    stream = message_frames(side, 0x2, pieces)
    peak = _receive_traced(conn, stream)
    assert isinstance(closed_with(conn.events_received(), 1009).cause, MessageTooBig)
    assert peak <= len(stream) + 2 * size + (1 << 20) + (256 << 10), peak


@pytest.mark.parametrize(("extra", "code"), [(0, None), (1, 1009), (2, 1009), (32768, 1009)])
@pytest.mark.parametrize("fragments", [1, 5])
def test_exact_inflated_boundary_pd02(
    side: Side, extra: int, code: int | None, fragments: int
) -> None:
    limit = 100_000
    conn, _ = deflate_side(side, Limits(max_message_size=limit, fragment_overhead=0))
    data = (b"0123456789abcdef" * (limit // 16 + 3000))[: limit + extra]
    events = feed(conn, message_frames(side, 0x2, compressed(data, fragments)))
    if code is None:
        assert events == [BinaryMessage(data)]
    else:
        assert closed_with(events, code) and not any(isinstance(e, BinaryMessage) for e in events)


def test_incompressible_message_of_the_exact_limit_passes() -> None:
    for side in (Side.SERVER, Side.CLIENT):
        conn, _ = deflate_side(side)
        data = os.urandom(1 << 20)
        pieces = compressed(data)
        assert len(pieces[0]) > 1 << 20, "DEFLATE expands random data"
        assert feed(conn, message_frames(side, 0x2, pieces)) == [BinaryMessage(data)]


def test_compressed_fragments_are_charged_too(side: Side) -> None:
    conn, _ = deflate_side(side, Limits(max_message_size=10_000, fragment_overhead=256))
    conn.receive_data(peer_frame(side, 0x2, b"", fin=False, rsv=0x40))
    empty_stored = b"\x00\x00\x00\xff\xff"  # inflates to nothing
    # Compressed bytes are charged 256 + 5 per continuation against 10 000 + 73 (slack):
    # the 39th is refused from its header (the inflated budget alone would allow 39).
    for _ in range(38):
        conn.receive_data(peer_frame(side, 0x0, empty_stored, fin=False))
    assert conn.state is State.OPEN
    conn.receive_data(peer_frame(side, 0x0, empty_stored, fin=False))
    assert closed_with(conn.events_received(), 1009)


# --------------------------------------------------------------------- violations


RSV_VIOLATIONS = {
    "RSV1 on ping": [(0x9, b"p", True, 0x40)],
    "RSV1 on pong": [(0xA, b"p", True, 0x40)],
    "RSV1 on close": [(0x8, b"\x03\xe8", True, 0x40)],
    "RSV1 on a compressed message's continuation": [
        (0x1, bytes.fromhex("f248cd"), False, 0x40), (0x0, bytes.fromhex("c9c90700"), True, 0x40)
    ],
    "RSV1 on a plain message's continuation": [(0x1, b"He", False, 0), (0x0, b"llo", True, 0x40)],
    "RSV2": [(0x1, b"Hello", True, 0x20)],
    "RSV3": [(0x1, bytes.fromhex("f248cdc9c90700"), True, 0x50)],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RSV_VIOLATIONS))
def test_rsv_misuse_is_1002_pd03(side: Side, mode: str, name: str) -> None:
    conn, _ = deflate_side(side)
    stream = b"".join(
        peer_frame(side, op, data, fin=fin, rsv=rsv) for op, data, fin, rsv in RSV_VIOLATIONS[name]
    )
    events = feed(conn, stream + peer_frame(side, 0x1, b"after"), mode)
    closed_with(events, 1002)
    assert not any(isinstance(e, Ping) for e in events)


def test_rsv1_without_deflate_is_1002_pd03(side: Side) -> None:
    client, server = deflate_pair(None, None)
    conn = server if side is Side.SERVER else client
    frame = peer_frame(side, 0x1, bytes.fromhex("f248cdc9c90700"), rsv=0x40)
    closed_with(feed(conn, frame), 1002)


def test_corrupt_stream_is_1007_pd04(side: Side) -> None:
    conn, _ = deflate_side(side)
    events = feed(conn, peer_frame(side, 0x2, b"\xff\xfe\xfd\xfc\xfb", rsv=0x40))
    assert isinstance(closed_with(events, 1007).cause, CompressionError)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300), st.sampled_from([Side.SERVER, Side.CLIENT]), st.booleans())
def test_random_compressed_payloads_never_raise_pd04(data: bytes, side: Side, text: bool) -> None:
    conn, _ = deflate_side(side, Limits(max_message_size=4096))
    events = feed(conn, peer_frame(side, 0x1 if text else 0x2, data, rsv=0x40) * 2)
    for event in events[:-1]:
        assert isinstance(event, TextMessage | BinaryMessage)
    if isinstance(events[-1], Closed):
        assert events[-1].code in (1007, 1009)


# --------------------------------------------------------------------- rooms and memory


def test_shared_frame_for_members_without_context_takeover() -> None:
    nct = DeflateSettings(server_no_context_takeover=True, compress_threshold=10)
    members = [deflate_pair(nct, ON) for _ in range(3)]
    keys = {server.deflate.share_key for _, server in members}  # type: ignore[union-attr]
    assert len(keys) == 1 and None not in keys
    (key,) = keys
    assert key is not None
    rng = random.Random(3)
    for round_ in range(20):
        message = f"broadcast {round_} " + "".join(rng.choices("abc", k=rng.randint(0, 300)))
        frame = shared_frame(message, key)
        for i, (client, server) in enumerate(members):
            if rng.random() < 0.5:  # this member's own traffic interleaves
                server.send_frame_bytes(server.encode_message(f"own {i} {message}"))
            server.send_frame_bytes(frame)
            client.receive_data(server.data_to_send())
            assert client.events_received()[-1] == TextMessage(message)
    assert shared_frame("tiny", key) == encode_frame(0x1, b"tiny")
    client, server = deflate_pair()
    assert server.deflate.share_key is None and client.deflate.share_key is None  # type: ignore[union-attr]


def test_encode_message(side: Side) -> None:
    conn, peer = deflate_side(side)
    frame = conn.encode_message("Hello")
    assert frame[0] == 0xC1 and bool(frame[1] & 0x80) is (side is Side.CLIENT)
    conn.send_frame_bytes(frame)
    conn.send_frame_bytes(conn.encode_message(b"\x00\x01"))
    assert feed(peer, conn.data_to_send()) == [TextMessage("Hello"), BinaryMessage(b"\x00\x01")]


@pytest.mark.parametrize("takeover", [True, False])
def test_memory_per_connection_and_after_close_pd05(takeover: bool) -> None:
    s = DeflateSettings(
        server_no_context_takeover=not takeover,
        client_no_context_takeover=not takeover,
        compress_threshold=0,
    )
    offer = Connection(Side.CLIENT, deflate=s)
    offer.connect("example.com", "/", key=KEY)
    request = offer.data_to_send()
    message = peer_frame(Side.SERVER, 0x1, PerMessageDeflate().encode(b"hello " * 50), rsv=0x40)
    key = PerMessageDeflate(local_no_context_takeover=True).share_key
    assert key is not None
    shared_frame("warm the process-wide compressor pool", key)  # not a per-connection cost
    count = 50
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        servers = [
            _served(Connection(Side.SERVER, deflate=s), request, message) for _ in range(count)
        ]
        per_connection = (tracemalloc.get_traced_memory()[0] - base) // count
        for server in servers:
            server.receive_eof()
        after_close = (tracemalloc.get_traced_memory()[0] - base) // count
    finally:
        tracemalloc.stop()
    estimate = servers[0].deflate.memory_estimate()  # type: ignore[union-attr]
    assert estimate == (308224 if takeover else 0)
    assert estimate <= per_connection <= estimate + 16384, per_connection
    assert after_close <= 16384, after_close


def _served(server: Connection, request: bytes, message: bytes) -> Connection:
    """A server connection that negotiated deflate, received a message and answered it."""
    server.receive_data(request)
    server.accept(server.events_received()[0])  # type: ignore[arg-type]
    server.receive_data(message)
    assert server.events_received()[-1] == TextMessage("hello " * 50)
    server.send_text("hello back " * 50)
    server.data_to_send()
    return server


def test_closing_releases_zlib_state(side: Side) -> None:
    conn, peer = deflate_side(side)
    peer.send_text("Hello" * 100)
    conn.receive_data(peer.data_to_send())
    conn.send_text("Hello" * 100)
    assert conn.deflate is not None and conn.deflate.memory_estimate() > 0
    conn.fail(1001)
    assert conn.deflate._inflater is None and conn.deflate._deflater is None


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(st.one_of(st.text(max_size=400), st.binary(max_size=400)), max_size=6),
    st.lists(st.integers(0, 5000), max_size=8),
    st.booleans(),
    st.booleans(),
)
def test_pair_round_trip_property(
    msgs: list[str | bytes], cuts: list[int], snct: bool, cnct: bool
) -> None:
    s = DeflateSettings(
        server_no_context_takeover=snct, client_no_context_takeover=cnct, compress_threshold=16
    )
    client, server = deflate_pair(s, s)
    for sender, receiver in ((client, server), (server, client)):
        for msg in msgs:
            # mypy cannot tie the method picked to the isinstance check
            (sender.send_text if isinstance(msg, str) else sender.send_binary)(msg)  # type: ignore[arg-type]
        data = sender.data_to_send()
        events: list[Event] = []
        last = 0
        for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
            receiver.receive_data(data[last:cut])
            last = cut
            events += receiver.events_received()
        assert [e.data for e in events] == msgs  # type: ignore[union-attr]


# --------------------------------------------------------------------- interop: handshake too


def _websockets_client(
    factory: ClientPerMessageDeflateFactory,
) -> tuple[ClientProtocol, Connection]:
    theirs = ClientProtocol(parse_uri("ws://example.com/chat"), extensions=[factory], max_size=None)
    ours = Connection(Side.SERVER, deflate=DeflateSettings(compress_threshold=0))
    theirs.send_request(theirs.connect())
    ours.receive_data(b"".join(theirs.data_to_send()))
    ours.accept(ours.events_received()[0])  # type: ignore[arg-type]
    theirs.receive_data(ours.data_to_send())
    response = theirs.events_received()[0]
    assert response.status_code == 101 and ours.deflate is not None  # type: ignore[union-attr]
    assert ours.events_received()[0].extensions.startswith(PMD)  # type: ignore[union-attr]
    return theirs, ours


@pytest.mark.parametrize(
    "factory",
    [
        ClientPerMessageDeflateFactory(),  # offers client_max_window_bits=True
        ClientPerMessageDeflateFactory(server_no_context_takeover=True),
        ClientPerMessageDeflateFactory(client_no_context_takeover=True, server_max_window_bits=10),
    ],
    ids=["default", "snct", "cnct+smwb"],
)
def test_interop_with_the_websockets_client(factory: ClientPerMessageDeflateFactory) -> None:
    theirs, ours = _websockets_client(factory)
    for size in (0, 1, 1024, 1 << 20):
        for text in (True, False):
            data = (b"a" * size) if text else os.urandom(size)
            (theirs.send_text if text else theirs.send_binary)(data)
            ours.receive_data(b"".join(theirs.data_to_send()))
            (event,) = ours.events_received()
            assert event.data == (data.decode() if text else data)  # type: ignore[union-attr]
            # event is a message (its data was checked above); mypy cannot tie the method to it
            (ours.send_text if text else ours.send_binary)(event.data)  # type: ignore[union-attr, arg-type]
            theirs.receive_data(ours.data_to_send())
            (frame,) = theirs.events_received()
            assert bytes(frame.data) == data  # type: ignore[union-attr]


@pytest.mark.parametrize("snct", [False, True])
def test_interop_with_the_websockets_server(snct: bool) -> None:
    factory = ServerPerMessageDeflateFactory(server_no_context_takeover=snct)
    theirs = ServerProtocol(extensions=[factory], max_size=None)
    ours = Connection(Side.CLIENT, deflate=DeflateSettings(compress_threshold=0))
    ours.connect("example.com", "/chat")
    theirs.receive_data(ours.data_to_send())
    theirs.send_response(theirs.accept(theirs.events_received()[0]))  # type: ignore[arg-type]
    ours.receive_data(b"".join(theirs.data_to_send()))
    (opened,) = ours.events_received()
    assert isinstance(opened, Opened) and opened.extensions.startswith(PMD)
    assert ours.deflate is not None and ours.deflate.remote_no_context_takeover is snct
    for data in (b"", b"x", b"hello " * 200, os.urandom(70_000)):
        theirs.send_binary(data)
        ours.receive_data(b"".join(theirs.data_to_send()))
        assert ours.events_received() == [BinaryMessage(data)]
        ours.send_binary(data)
        theirs.receive_data(ours.data_to_send())
        assert bytes(theirs.events_received()[0].data) == data  # type: ignore[union-attr]
