"""permessage-deflate (RFC 7692): negotiation truth tables, the codec, interop, properties.

Battery rows (reliability-battery.md §4.2): HS-10 here; PD-01..PD-05 through ``Connection``
in test_deflate_connection.py. Interop: the python-websockets library's own
permessage-deflate (test-only), driven sans-I/O with its ``Frame`` objects.
"""

from __future__ import annotations

import os
import random
import tracemalloc
import zlib
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate as TheirDeflate
from websockets.frames import Frame, Opcode

from wsflask.protocol import CompressionError, InvalidHandshakeResponse, MessageTooBig
from wsflask.protocol.deflate import (
    DeflateSettings,
    PerMessageDeflate,
    accept_response,
    client_offer,
    deflate_memory,
    inflate_memory,
    negotiate,
)
from wsflask.protocol.extensions import parse_extensions

D = DeflateSettings()
PMD = "permessage-deflate"
_SMWB, _CMWB = "server_max_window_bits", "client_max_window_bits"

# --------------------------------------------------------------------- server negotiation

# (offer header, settings, expected response header or None for "declined")
NEGOTIATION = {
    "plain": (PMD, D, PMD),
    "cmwb no value": (f"{PMD}; client_max_window_bits", D, PMD),
    "cmwb 10": (f"{PMD}; client_max_window_bits=10", D, f"{PMD}; client_max_window_bits=10"),
    "cmwb 15": (f"{PMD}; client_max_window_bits=15", D, PMD),
    "cmwb 8 (we can inflate 8)": (
        f"{PMD}; client_max_window_bits=8",
        D,
        f"{PMD}; client_max_window_bits=8",
    ),
    "cmwb no value, C=12": (
        f"{PMD}; client_max_window_bits",
        DeflateSettings(client_max_window_bits=12),
        f"{PMD}; client_max_window_bits=12",
    ),
    "cmwb 10, C=12": (
        f"{PMD}; client_max_window_bits=10",
        DeflateSettings(client_max_window_bits=12),
        f"{PMD}; client_max_window_bits=10",
    ),
    "no cmwb, C=12: declined (budget)": (PMD, DeflateSettings(client_max_window_bits=12), None),
    "smwb 10": (f"{PMD}; server_max_window_bits=10", D, f"{PMD}; server_max_window_bits=10"),
    "smwb 15 is echoed (MUST)": (
        f"{PMD}; server_max_window_bits=15",
        D,
        f"{PMD}; server_max_window_bits=15",
    ),
    "smwb 12, S=10": (
        f"{PMD}; server_max_window_bits=12",
        DeflateSettings(server_max_window_bits=10),
        f"{PMD}; server_max_window_bits=10",
    ),
    "no smwb, S=10": (
        PMD,
        DeflateSettings(server_max_window_bits=10),
        f"{PMD}; server_max_window_bits=10",
    ),
    "smwb 8: declined (zlib)": (f"{PMD}; server_max_window_bits=8", D, None),
    "smwb 9": (f"{PMD}; server_max_window_bits=9", D, f"{PMD}; server_max_window_bits=9"),
    "smwb 08": (f"{PMD}; server_max_window_bits=08", D, None),
    "smwb 16": (f"{PMD}; server_max_window_bits=16", D, None),
    "smwb 7": (f"{PMD}; server_max_window_bits=7", D, None),
    "smwb no value": (f"{PMD}; server_max_window_bits", D, None),
    "smwb abc": (f"{PMD}; server_max_window_bits=abc", D, None),
    "smwb quoted": (f'{PMD}; server_max_window_bits="11"', D, f"{PMD}; server_max_window_bits=11"),
    "cmwb 16": (f"{PMD}; client_max_window_bits=16", D, None),
    "cmwb 010": (f"{PMD}; client_max_window_bits=010", D, None),
    "snct": (f"{PMD}; server_no_context_takeover", D, f"{PMD}; server_no_context_takeover"),
    "snct by settings": (
        PMD,
        DeflateSettings(server_no_context_takeover=True),
        f"{PMD}; server_no_context_takeover",
    ),
    "snct with a value": (f"{PMD}; server_no_context_takeover=1", D, None),
    "cnct": (f"{PMD}; client_no_context_takeover", D, f"{PMD}; client_no_context_takeover"),
    "cnct by settings": (
        PMD,
        DeflateSettings(client_no_context_takeover=True),
        f"{PMD}; client_no_context_takeover",
    ),
    "cnct with a value": (f"{PMD}; client_no_context_takeover=true", D, None),
    "duplicate snct": (f"{PMD}; server_no_context_takeover; server_no_context_takeover", D, None),
    "duplicate cnct": (f"{PMD}; client_no_context_takeover; client_no_context_takeover", D, None),
    "duplicate smwb": (f"{PMD}; server_max_window_bits=10; server_max_window_bits=10", D, None),
    "duplicate cmwb": (f"{PMD}; client_max_window_bits; client_max_window_bits=9", D, None),
    "unknown parameter": (f"{PMD}; foo=bar", D, None),
    "parameter names are exact": (f"{PMD}; Server_No_Context_Takeover", D, None),
    "other extension": ("x-webkit-deflate-frame", D, None),
    "constructor": ("constructor", D, None),
    "every parameter": (
        f"{PMD}; client_max_window_bits=9; server_max_window_bits=9; "
        "client_no_context_takeover; server_no_context_takeover",
        D,
        f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=9; client_max_window_bits=9",
    ),
    "first acceptable wins": (
        f"{PMD}; server_max_window_bits=8, {PMD}; foo, {PMD}; server_max_window_bits=11, {PMD}",
        D,
        f"{PMD}; server_max_window_bits=11",
    ),
    "other extensions skipped": (f"x-foo, {PMD}; client_max_window_bits", D, PMD),
    "disabled": (PMD, DeflateSettings(enabled=False), None),
}


@pytest.mark.parametrize("name", sorted(NEGOTIATION))
def test_negotiation_truth_table_hs10(name: str) -> None:
    offer, settings_, expected = NEGOTIATION[name]
    result = negotiate(parse_extensions(offer), settings_)
    assert (result and result[0]) == expected


def test_negotiated_codec_follows_the_response() -> None:
    offer = f"{PMD}; server_no_context_takeover; client_max_window_bits=10"
    result = negotiate(parse_extensions(offer), DeflateSettings(server_max_window_bits=12))
    assert result is not None
    codec = result[1]
    assert codec.is_server and codec.local_no_context_takeover
    assert not codec.remote_no_context_takeover
    assert (codec.local_max_window_bits, codec.remote_max_window_bits) == (12, 10)


def test_ten_thousand_bad_offers_then_a_good_one_hs10() -> None:
    offers = parse_extensions(", ".join([f"{PMD}; foo"] * 10_000 + [PMD]))
    result = negotiate(offers, D)
    assert result is not None and result[0] == PMD


PARAM = st.sampled_from(
    ["server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits",
     "client_max_window_bits", "foo"]
)  # fmt: skip
VALUE = st.one_of(st.none(), st.sampled_from(["8", "9", "10", "15", "16", "08", "x"]))
OFFER = st.lists(st.tuples(PARAM, VALUE), max_size=5)


@settings(max_examples=300)
@given(st.lists(OFFER, min_size=1, max_size=4), st.integers(9, 15), st.integers(9, 15))
def test_response_only_holds_what_the_offer_allows(
    offers: list[list[tuple[str, str | None]]], server_bits: int, client_bits: int
) -> None:
    s = DeflateSettings(server_max_window_bits=server_bits, client_max_window_bits=client_bits)
    result = negotiate([(PMD, tuple(o)) for o in offers], s)
    if result is None:
        return
    ((name, params),) = parse_extensions(result[0])
    answered = dict(params)
    offer = dict(next(o for o in offers if negotiate([(PMD, tuple(o))], s)))  # the first
    assert name == PMD and len(answered) == len(params)
    if "server_no_context_takeover" in offer:
        assert "server_no_context_takeover" in answered
    if "client_max_window_bits" not in offer:
        assert "client_max_window_bits" not in answered
    if offer.get("server_max_window_bits"):
        assert int(answered["server_max_window_bits"] or 0) <= int(
            cast(str, offer["server_max_window_bits"])
        )
    assert answered.get("server_max_window_bits") is None or 9 <= int(answered[_SMWB] or 0) <= 15
    assert answered.get("client_max_window_bits") is None or 8 <= int(answered[_CMWB] or 0) <= 15


# --------------------------------------------------------------------- client negotiation


def test_client_offers() -> None:
    assert client_offer(D) == f"{PMD}; client_max_window_bits"
    every = DeflateSettings(
        server_max_window_bits=10, client_max_window_bits=12,
        server_no_context_takeover=True, client_no_context_takeover=True,
    )  # fmt: skip
    assert client_offer(every) == (
        f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=10; client_max_window_bits=12"
    )


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (PMD, (False, False, 15, 15)),
        (f"{PMD}; server_no_context_takeover", (False, True, 15, 15)),
        (f"{PMD}; client_no_context_takeover", (True, False, 15, 15)),
        (f"{PMD}; server_max_window_bits=8", (False, False, 15, 8)),
        (f"{PMD}; client_max_window_bits=10", (False, False, 10, 15)),
        (f"{PMD}; client_max_window_bits=8", (False, False, 8, 15)),
    ],
)
def test_client_accepts(response: str, expected: tuple[bool, bool, int, int]) -> None:
    codec = accept_response(response, D)
    assert not codec.is_server
    assert (
        codec.local_no_context_takeover,
        codec.remote_no_context_takeover,
        codec.local_max_window_bits,
        codec.remote_max_window_bits,
    ) == expected


@pytest.mark.parametrize(
    ("response", "settings_"),
    [
        ("x-foo", D),
        (f"{PMD}, {PMD}", D),
        (f"{PMD}, x-foo", D),
        (f"{PMD}; foo", D),
        (f"{PMD}; client_max_window_bits", D),  # a response MUST carry a value
        (f"{PMD}; server_max_window_bits", D),
        (f"{PMD}; server_max_window_bits=16", D),
        (f"{PMD}; client_max_window_bits=08", D),
        (f"{PMD}; server_no_context_takeover; server_no_context_takeover", D),
        (f"{PMD};", D),
        (PMD, DeflateSettings(server_no_context_takeover=True)),  # offered, not answered
        (PMD, DeflateSettings(server_max_window_bits=10)),  # offered, not answered
        (f"{PMD}; server_max_window_bits=12", DeflateSettings(server_max_window_bits=10)),
    ],
)
def test_client_refuses_what_the_offer_did_not_allow(
    response: str, settings_: DeflateSettings
) -> None:
    with pytest.raises(InvalidHandshakeResponse):
        accept_response(response, settings_)


def test_settings_are_validated() -> None:
    for kwargs in (
        {"server_max_window_bits": 8}, {"client_max_window_bits": 16}, {"mem_level": 0},
        {"compress_level": 10}, {"compress_threshold": -1},
    ):  # fmt: skip
        with pytest.raises(ValueError):
            DeflateSettings(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------- codec


def pair(
    snct: bool = False, cnct: bool = False, server_bits: int = 15, client_bits: int = 15
) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """(server codec, client codec) agreeing on the parameters."""
    server = PerMessageDeflate(
        local_no_context_takeover=snct, remote_no_context_takeover=cnct,
        local_max_window_bits=server_bits, remote_max_window_bits=client_bits,
    )  # fmt: skip
    client = PerMessageDeflate(
        local_no_context_takeover=cnct, remote_no_context_takeover=snct,
        local_max_window_bits=client_bits, remote_max_window_bits=server_bits, is_server=False,
    )  # fmt: skip
    return server, client


def test_rfc7692_hello_vectors() -> None:
    server, client = pair()
    # §7.2.3.1 and §7.2.3.2: "Hello", then "Hello" again sharing the window.
    assert server.encode(b"Hello").hex() == "f248cdc9c90700"
    assert server.encode(b"Hello").hex() == "f200110000"
    assert client.decode(bytes.fromhex("f248cdc9c90700"), 5) == b"Hello"
    assert client.decode(bytes.fromhex("f200110000"), 5) == b"Hello"
    fresh = PerMessageDeflate()
    for payload in (
        "0005 00faff 48656c6c6f 00",
        "f348cdc9c90700 00",
        "f248050000 00ffff cac9c90700",
    ):
        assert fresh.decode(bytes.fromhex(payload), 100) == b"Hello"  # §7.2.3.3-7.2.3.5
    assert fresh.decode([bytes.fromhex("f248cd"), bytes.fromhex("c9c90700")], 5) == b"Hello"


@pytest.mark.parametrize("snct", [False, True])
@pytest.mark.parametrize("cnct", [False, True])
def test_round_trips_both_directions(snct: bool, cnct: bool) -> None:
    server, client = pair(snct, cnct)
    rng = random.Random(7)
    messages = [b"", b"x", b"Hello" * 300, os.urandom(70_000), b"Hello" * 300, bytes(200_000)]
    for data in messages + [rng.randbytes(n) for n in (1, 10, 5000)]:
        assert client.decode(server.encode(data), len(data)) == data
        assert server.decode(client.encode(data), len(data)) == data
    noise = rng.randbytes(1000)
    client.decode(server.encode(noise), 1000)
    repeat = server.encode(noise)
    assert client.decode(repeat, 1000) == noise
    assert (len(repeat) < 100) is not snct, "context takeover shrinks a repeated message"


def test_fragmented_encode_and_decode_at_any_split() -> None:
    server, client = pair()
    data = b"".join(f'{{"id": {i}, "text": "message {i}"}}'.encode() for i in range(3000))
    for _ in range(3):
        pieces = [server.encode(data[:1000], fin=False), server.encode(data[1000:], fin=True)]
        wire = b"".join(pieces)
        cuts = sorted(random.Random(len(wire)).sample(range(1, len(wire)), 40))
        fragments = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        assert client.decode(fragments, len(data)) == data
        assert client.decode([bytes([b]) for b in server.encode(data)], len(data)) == data


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 100_000, 3 * 65536, 1 << 20])
def test_exact_budget_boundary_pd02(size: int) -> None:
    for data in (bytes(size), os.urandom(size), b"ab" * (size // 2) + b"c" * (size % 2)):
        compressed = PerMessageDeflate().encode(data)
        assert PerMessageDeflate().decode(compressed, size) == data
        assert PerMessageDeflate().decode(compressed, size + 1) == data
        if size:
            with pytest.raises(MessageTooBig):
                PerMessageDeflate().decode(compressed, size - 1)


def test_bomb_stops_within_a_chunk_pd01() -> None:
    bomb = zero_bomb(1000)  # 1000 MiB of zeros in ~1 MB
    codec = PerMessageDeflate()
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooBig):
            codec.decompress(bomb, 1 << 20, final=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (1 << 20) + (256 << 10) + inflate_memory(15) + 65536


def zero_bomb(mebibytes: int) -> bytes:
    """DEFLATE data inflating to ``mebibytes`` MiB of zeros (~1036 bytes per MiB)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    first = deflater.compress(bytes(1 << 20)) + deflater.flush(zlib.Z_SYNC_FLUSH)
    rest = deflater.compress(bytes(1 << 20)) + deflater.flush(zlib.Z_SYNC_FLUSH)
    return (first + rest * (mebibytes - 1))[:-4]


def test_corrupt_data_and_stream_cap_pd04() -> None:
    for payload in (b"\xff\xff\xff\xff", b"\x07", bytes.fromhex("f248cdc9c90700") * 2):
        with pytest.raises(CompressionError):
            PerMessageDeflate().decode(payload, 1000)
    final_empty = b"\x03\x00"  # a fixed-Huffman final block holding nothing
    assert PerMessageDeflate().decode(final_empty * 16, 10) == b""
    with pytest.raises(CompressionError):
        PerMessageDeflate().decode(final_empty * 17, 10)


def test_bfinal_then_next_message_under_context_takeover_pd04() -> None:
    codec = PerMessageDeflate()  # remote context takeover
    assert codec.decode(bytes.fromhex("f348cdc9c9070000"), 5) == b"Hello"  # §7.2.3.4
    assert codec.decode(bytes.fromhex("f248cdc9c90700"), 5) == b"Hello"  # a new stream
    assert codec.decode(bytes.fromhex("f200110000"), 5) == b"Hello"  # refers to the last one


def test_empty_payloads() -> None:
    codec = PerMessageDeflate()
    assert codec.decode(b"", 0) == b"" and codec.decode(b"\x00", 0) == b""
    assert codec.decode(bytes.fromhex("f248cdc9c90700"), 5) == b"Hello"
    assert codec.decode(b"", 0) == b""  # did not disturb the context
    assert codec.decode(bytes.fromhex("f200110000"), 5) == b"Hello"
    assert PerMessageDeflate().encode(b"") == b"\x00"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 9))
def test_eight_bit_windows_and_pooled_compressor(data: bytes, level: int) -> None:
    eight = PerMessageDeflate(local_max_window_bits=8, compress_level=level)
    assert PerMessageDeflate(remote_max_window_bits=8).decode(eight.encode(data), 3000) == data
    pooled = PerMessageDeflate(local_no_context_takeover=True, compress_level=level)
    pooled.encode(os.urandom(100))  # leaves the pooled compressor with history
    fresh = zlib.compressobj(level, zlib.DEFLATED, -15, 8)
    assert pooled.encode(data) == (fresh.compress(data) + fresh.flush(zlib.Z_SYNC_FLUSH))[:-4]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=2000), min_size=1, max_size=6),
    st.booleans(),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_round_trip_property(
    messages: list[bytes], snct: bool, cnct: bool, rng: random.Random
) -> None:
    server, client = pair(snct, cnct, rng.randint(9, 15), rng.randint(9, 15))
    for data in messages:
        for sender, receiver in ((server, client), (client, server)):
            wire = sender.encode(data)
            cuts = sorted(rng.sample(range(len(wire) + 1), min(3, len(wire) + 1)))
            fragments = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
            assert receiver.decode(fragments, len(data)) == data


# --------------------------------------------------------------------- interop


@pytest.mark.parametrize("snct", [False, True])
@pytest.mark.parametrize("cnct", [False, True])
def test_interop_with_python_websockets(snct: bool, cnct: bool) -> None:
    ours, _ = pair(snct, cnct, 15, 12)  # we are the server
    theirs = TheirDeflate(snct, cnct, 15, 12)  # the client: remote = server = us
    for data in (b"Hello", b"Hello", os.urandom(3000), b'{"a": 1}' * 500, b""):
        frame = theirs.encode(Frame(Opcode.BINARY, data))
        assert frame.rsv1 and ours.decode(bytes(frame.data), len(data)) == data
        decoded = theirs.decode(Frame(Opcode.BINARY, ours.encode(data), rsv1=True))
        assert decoded.data == data
    data = b"fragmented " * 1000
    frames = [
        theirs.encode(Frame(Opcode.TEXT, data[:5000], fin=False)),
        theirs.encode(Frame(Opcode.CONT, data[5000:8000], fin=False)),
        theirs.encode(Frame(Opcode.CONT, data[8000:], fin=True)),
    ]
    assert ours.decode([bytes(f.data) for f in frames], len(data)) == data
    parts = [ours.encode(data[:5000], fin=False), ours.encode(data[5000:])]
    first = theirs.decode(Frame(Opcode.TEXT, parts[0], fin=False, rsv1=True))
    last = theirs.decode(Frame(Opcode.CONT, parts[1], fin=True))
    assert bytes(first.data) + bytes(last.data) == data


# --------------------------------------------------------------------- memory (PD-05)


def test_memory_estimates_pd05() -> None:
    server, _ = pair()
    assert server.memory_estimate() == deflate_memory(15, 8) + inflate_memory(15)
    assert deflate_memory(15, 8) == 262144 + 6144 and inflate_memory(15) == 32768 + 7168
    nct, _ = pair(snct=True, cnct=True)
    assert nct.memory_estimate() == 0
    assert nct.memory_estimate(peak=True) == server.memory_estimate()
    small, _ = pair(server_bits=12, client_bits=12)
    assert small.memory_estimate() == deflate_memory(12, 8) + inflate_memory(12)


@pytest.mark.parametrize("snct", [False, True])
def test_measured_memory_matches_the_estimate_pd05(snct: bool) -> None:
    server, client = pair(snct, snct)
    wire = client.encode(b"warm up " * 100)  # (the client's compressor warms the pool too)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        server.decode(wire, 800)
        server.encode(b"warm up " * 100)
        held = tracemalloc.get_traced_memory()[0] - before
        server.release()
        after = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    estimate = server.memory_estimate()
    assert abs(held - estimate) <= 4096 + estimate // 20, (held, estimate)
    assert after < 4096, "release() frees the zlib state"


def test_counters() -> None:
    server, client = pair()
    wire = server.encode(b"a" * 1000)
    client.decode(wire, 1000)
    assert (server.raw_out, server.compressed_out) == (1000, len(wire))
    assert (client.compressed_in, client.inflated_in) == (len(wire), 1000)
