"""Property tests and the fuzz invariant: a client/server pair driven without sockets.

Invariant (STYLE.md rule 2): whatever bytes arrive, ``receive_data`` never raises; events
are messages, pings, pongs and at most one ``Closed``, which is last. The example counts
are bounded so CI stays fast; raise ``WSFLASK_FUZZ_EXAMPLES`` for a longer run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsflask.protocol import (
    BinaryMessage,
    Closed,
    Connection,
    Limits,
    Side,
    State,
    TextMessage,
    encode_frame,
)
from wsflask.protocol.events import Event

from .conftest import MASK, open_pair

EXAMPLES = int(os.environ.get("WSFLASK_FUZZ_EXAMPLES", "300"))
messages = st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8)


def _check_invariant(events: list[Event]) -> None:
    closed = [i for i, e in enumerate(events) if isinstance(e, Closed)]
    assert len(closed) <= 1
    if closed:
        assert closed[0] == len(events) - 1


def _deliver(src: Connection, dst: Connection, cuts: list[int]) -> list[Event]:
    data = src.data_to_send()
    events: list[Event] = []
    last = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        dst.receive_data(data[last:cut])
        last = cut
        events += dst.events_received()
    return events


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages, st.lists(st.integers(min_value=0, max_value=10_000), max_size=10), st.integers(1, 50)
)
def test_round_trip_with_random_fragmentation(
    msgs: list[str | bytes], cuts: list[int], frag: int
) -> None:
    client, server = open_pair()
    for msg in msgs:
        data = msg.encode() if isinstance(msg, str) else msg
        pieces = [data[i : i + frag] for i in range(0, len(data), frag)] or [b""]
        for i, piece in enumerate(pieces):
            fin = i == len(pieces) - 1
            if i:
                client.send_continuation(piece, fin=fin)
            elif isinstance(msg, str):
                # A fragment may end inside a code point: send the raw bytes as text frames.
                client.send_frame_bytes(encode_frame(0x1, piece, fin=fin, mask=MASK))
            else:
                client.send_binary(piece, fin=fin)
    events = _deliver(client, server, cuts)
    expected = [TextMessage(m) if isinstance(m, str) else BinaryMessage(m) for m in msgs]
    assert events == expected
    # and back, server to client, unfragmented
    for msg in msgs:
        server.send_text(msg) if isinstance(msg, str) else server.send_binary(msg)
    assert _deliver(server, client, cuts) == expected


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=2000), st.sampled_from([Side.SERVER, Side.CLIENT]))
def test_fuzz_random_bytes_after_handshake(data: bytes, side: Side) -> None:
    client, server = open_pair(Limits(max_message_size=4096))
    conn = server if side is Side.SERVER else client
    events: list[Event] = []
    for i in range(0, len(data), 7):
        conn.receive_data(data[i : i + 7])
        events += conn.events_received()
    conn.receive_eof()
    events += conn.events_received()
    _check_invariant(events)
    assert conn.state is State.CLOSED
    assert isinstance(events[-1], Closed)


def _valid_stream() -> bytes:
    return b"".join(
        [
            encode_frame(0x1, "héllo".encode(), fin=False, mask=MASK),
            encode_frame(0x9, b"ping", mask=MASK),
            encode_frame(0x0, b" world", mask=MASK),
            encode_frame(0x2, bytes(300), mask=MASK),
            encode_frame(0x8, b"\x03\xe8bye", mask=MASK),
        ]
    )


@settings(max_examples=EXAMPLES)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_mutated_valid_stream(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(_valid_stream())
    for pos, value in mutations:
        data[pos % len(data)] = value
    _, server = open_pair(Limits(max_message_size=4096))
    events: list[Event] = []
    for i in range(len(data)):
        server.receive_data(bytes(data[i : i + 1]))
        events += server.events_received()
    _check_invariant(events)


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=600))
def test_fuzz_handshake_bytes_never_raise(data: bytes) -> None:
    conn = Connection(Side.SERVER, http=True)
    conn.receive_data(b"GET / HTTP/1.1\r\n" + data)
    conn.receive_data(b"\r\n\r\n")
    conn.receive_eof()
    _check_invariant(conn.events_received())
