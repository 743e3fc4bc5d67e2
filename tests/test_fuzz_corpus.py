"""Battery FZ-01: replay the saved fuzz corpus (tests/fuzz/<target>/), then mutate it.

Four targets, each with its never-raise invariants: ``frames`` (client bytes into a server
``Connection`` after an accepted handshake), ``handshake`` (request bytes into a server
``Connection(http=True)``, ``HeadReader`` and ``parse_request``, then ``accept`` with
permessage-deflate), ``deflate`` (client bytes into a server with permessage-deflate
negotiated) and ``json`` (``envelopes.decode`` and ``dispatch_envelope``; the corpus also
through a running ``json=True`` route). Every file is replayed whole and one byte at a time;
then hypothesis mutates corpus files (overwrite, insert, delete, duplicate, splice, bit
flips, split points) for ``WSFLASK_FUZZ_EXAMPLES`` examples per target (default 500, about 5 s).
Long run (about 10 minutes nice'd on a shared machine, ~350 examples/s)::

    WSFLASK_FUZZ_EXAMPLES=50000 nice .venv/bin/python -m pytest \
        tests/test_fuzz_corpus.py -p no:timeout

Add a case with ``.venv/bin/python tests/fuzz/seed.py`` (it rewrites the seed files).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsflask import App, WebSocket
from wsflask.config import Config
from wsflask.dispatch import dispatch_envelope
from wsflask.envelopes import decode, encode
from wsflask.protocol import (
    BinaryMessage,
    Closed,
    Connection,
    DeflateSettings,
    HandshakeError,
    Limits,
    Request,
    Side,
    TextMessage,
)
from wsflask.protocol.events import Event
from wsflask.protocol.frames import FrameDecoder
from wsflask.protocol.handshake import HeadReader, parse_request

CORPUS = Path(__file__).resolve().parent / "fuzz"
TARGETS = ("frames", "handshake", "deflate", "json")
EXAMPLES = int(os.environ.get("WSFLASK_FUZZ_EXAMPLES", "500"))
#: the fuzz profile: small limits so that every boundary fits in a small file
LIMITS = Limits(max_message_size=1024, fragment_overhead=16, max_header_bytes=2048, max_headers=20)
DEFLATE = DeflateSettings(
    server_max_window_bits=12, client_max_window_bits=12, mem_level=5, compress_threshold=0
)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x37\xfa\x21\x3d"
#: codes the core may fail a connection with (RFC 6455 §7.4.1)
FAIL_CODES = {1002, 1003, 1007, 1008, 1009, 1010, 1011}
#: codes that never travel in a Close frame (RFC 6455 §7.4.1-7.4.2)
NEVER_ON_WIRE = {1005, 1006, 1015}
#: statuses a refused handshake may get (protocol/errors.py)
STATUSES = {400, 403, 404, 405, 426, 429, 414, 431, 503}
#: the longest error reply the dispatcher may send for any input (envelopes.error is bounded;
#: an ack carries what the handler returned and the client's own id, so it is not)
MAX_ERROR = 512


def corpus(target: str) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every ``*.bin`` file of ``target``, sorted by name."""
    return [(path.name, path.read_bytes()) for path in sorted((CORPUS / target).glob("*.bin"))]


def fixed_mask(n: int) -> bytes:
    return (MASK * (n // 4 + 1))[:n]


def open_server(deflate: bool) -> tuple[Connection, Connection]:
    """(client, server) with the handshake done; permessage-deflate negotiated if asked."""
    settings_ = DEFLATE if deflate else None
    client = Connection(Side.CLIENT, limits=LIMITS, mask_source=fixed_mask, deflate=settings_)
    server = Connection(Side.SERVER, limits=LIMITS, deflate=settings_)
    client.connect("example.com", "/chat", key=KEY)
    server.receive_data(client.data_to_send())
    (request,) = server.events_received()
    assert isinstance(request, Request)
    server.accept(request)
    client.receive_data(server.data_to_send())
    client.events_received()
    server.events_received()
    assert (server.deflate is not None) is deflate
    return client, server


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    """``data`` split at ``points`` (taken modulo its length)."""
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)] or [b""]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- frames and deflate: the core never raises, fails with a Close code from the RFC set ------


def feed_server(chunks: Iterable[bytes], deflate: bool) -> tuple[list[Event], bytes]:
    """Feed client bytes to a fresh server, then EOF; its events and everything it sent."""
    _, server = open_server(deflate)
    events: list[Event] = []
    for chunk in chunks:
        server.receive_data(chunk)  # must not raise, whatever the bytes
        events += server.events_received()
    out = server.data_to_send()
    server.receive_eof()
    return events + server.events_received(), out


def sent_close_codes(out: bytes) -> list[int | None]:
    """Close codes in the server's output; every frame must be a valid unmasked frame."""
    decoder = FrameDecoder(expect_mask=False, max_payload=1 << 20, allowed_rsv=0x40)
    frames = list(decoder.feed(out))
    assert decoder.buffered == 0, "the server sent a partial frame"
    return [
        int.from_bytes(payload[:2], "big") if payload else None
        for _, opcode, _, payload in frames
        if opcode == 0x8
    ]


def check_frames(events: list[Event], out: bytes) -> None:
    """One ``Closed``, last; messages within the limit; a failure sent its RFC code."""
    closed = [i for i, event in enumerate(events) if isinstance(event, Closed)]
    assert closed == [len(events) - 1], f"Closed must be the one last event: {events[-3:]}"
    for event in events:
        if isinstance(event, TextMessage):
            assert len(event.data.encode("utf-8")) <= LIMITS.max_message_size
        elif isinstance(event, BinaryMessage):
            assert len(event.data) <= LIMITS.max_message_size
    final = events[-1]
    assert isinstance(final, Closed)
    codes = sent_close_codes(out)
    assert len(codes) <= 1, f"more than one Close frame sent: {codes}"
    assert not NEVER_ON_WIRE & set(codes), f"sent a code that may not travel: {codes}"
    if final.cause is not None:  # we failed the connection: with a Close carrying the code
        assert final.code in FAIL_CODES, f"failed with {final.code}: {final.cause!r}"
        assert codes == [final.code], f"failed with {final.code} but sent {codes}"
    elif final.code == 1006:  # EOF without a closing handshake
        assert not final.clean


def check_any_split(data: bytes, chunks: list[bytes], deflate: bool) -> None:
    """The invariants hold, and splitting the input changes nothing (FR-07)."""
    whole = feed_server([data], deflate)
    check_frames(*whole)
    split = feed_server(chunks, deflate)
    check_frames(*split)
    assert split == whole, "the outcome depends on how the bytes were split"


@pytest.mark.parametrize(
    "name,data", corpus("frames"), ids=lambda v: v if isinstance(v, str) else ""
)
def test_frames_corpus(name: str, data: bytes) -> None:
    check_any_split(data, bytewise(data), deflate=False)


@pytest.mark.parametrize(
    "name,data", corpus("deflate"), ids=lambda v: v if isinstance(v, str) else ""
)
def test_deflate_corpus(name: str, data: bytes) -> None:
    check_any_split(data, bytewise(data), deflate=True)


# -- handshake: a request, or a refusal with an HTTP status ---------------------------------------


def feed_handshake(chunks: Iterable[bytes]) -> tuple[list[Event], bytes]:
    """Feed request bytes to a server (deflate on); accept an upgrade request (HS-10)."""
    conn = Connection(Side.SERVER, http=True, limits=LIMITS, deflate=DEFLATE)
    events: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        for event in conn.events_received():
            events.append(event)
            if isinstance(event, Request) and event.is_websocket:
                conn.accept(event)  # negotiation never raises, whatever was offered
                events += conn.events_received()
    out = conn.data_to_send()
    conn.receive_eof()
    return events + conn.events_received(), out


def check_handshake(events: list[Event], out: bytes) -> None:
    """A Request (an upgrade is answered 101), or a refusal with a status in STATUSES."""
    closed = [i for i, event in enumerate(events) if isinstance(event, Closed)]
    assert closed == [len(events) - 1], f"Closed must be the one last event: {events[-3:]}"
    requests = [event for event in events if isinstance(event, Request)]
    final = events[-1]
    assert isinstance(final, Closed)
    if requests:
        assert len(requests) == 1
        if requests[0].is_websocket:
            assert out.startswith(b"HTTP/1.1 101 "), out[:40]
        else:  # plain HTTP: the app answers it, the core sent nothing
            assert out == b""
        return
    if isinstance(final.cause, HandshakeError):
        status = final.cause.status
        assert status in STATUSES, f"refused with {status}"
        assert out.startswith(f"HTTP/1.1 {status} ".encode()), out[:40]
    else:  # the head never completed: nothing was answered
        assert out == b"" and final.code == 1006


def check_head_parsers(data: bytes) -> None:
    """``HeadReader`` and ``parse_request`` raise nothing but ``HandshakeError``s."""
    reader = HeadReader(LIMITS.max_header_bytes, LIMITS.max_headers)
    try:
        done = reader.feed(data)
    except HandshakeError as exc:  # too large (431), a request line too long (414), bare LF
        assert exc.status in (400, 414, 431)
        return
    assert reader.buffered <= LIMITS.max_header_bytes
    if done is not None:
        for http in (False, True):
            try:
                parse_request(done[0], http=http)
            except HandshakeError as exc:
                assert exc.status in STATUSES


def check_handshake_split(data: bytes, chunks: list[bytes]) -> None:
    whole = feed_handshake([data])
    check_handshake(*whole)
    split = feed_handshake(chunks)
    check_handshake(*split)
    assert (split[1], _summary(split[0])) == (whole[1], _summary(whole[0]))
    check_head_parsers(data)


def _summary(events: list[Event]) -> list[Any]:
    return [event.target if isinstance(event, Request) else event for event in events]


@pytest.mark.parametrize(
    "name,data", corpus("handshake"), ids=lambda v: v if isinstance(v, str) else ""
)
def test_handshake_corpus(name: str, data: bytes) -> None:
    check_handshake_split(data, bytewise(data))


# -- json: decode never raises; the dispatcher answers an error envelope and keeps the line ------


class StubSocket:
    """What ``dispatch_envelope`` uses of a ``WebSocket``: send, close, is_open, config."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.closed: int | None = None
        self.config = Config()  # the default JSON limits (max_json_depth, max_event_name)

    @property
    def is_open(self) -> bool:
        return self.closed is None

    def send(self, data: str | bytes) -> None:
        self.sent.append(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code


def _boom(ws: Any, data: Any) -> None:
    raise ValueError("the handler failed")


HANDLERS: dict[str, list[Any]] = {
    "echo": [lambda ws, data: data],
    "quiet": [lambda ws, data: None],
    "boom": [_boom],
}


def check_reply(text: str, replies: list[str | bytes]) -> None:
    """At most one reply: an ack only for a known event with an id, else a bounded error."""
    envelope = decode(text)
    assert envelope is None or isinstance(envelope.get("event"), str)
    assert len(replies) <= 1, replies
    for reply in replies:
        assert isinstance(reply, str), reply[:80]
        answer = decode(reply)
        assert answer is not None and answer["event"] in ("ack", "error"), reply[:80]
        if answer["event"] == "ack":
            assert envelope is not None and envelope["event"] in ("echo", "quiet")
        else:
            assert len(reply) <= MAX_ERROR, reply[:80]
    if envelope is None or envelope["event"] not in HANDLERS:
        assert replies and decode(replies[0])["event"] == "error"  # type: ignore[index]


def check_dispatch(text: str) -> None:
    ws = StubSocket()
    errors: list[Exception] = []
    dispatch_envelope(ws, text, HANDLERS, {}, lambda ws, exc: errors.append(exc))  # type: ignore[arg-type]
    assert ws.closed is None, "a text message closed the connection"
    assert all(isinstance(exc, ValueError) for exc in errors)
    check_reply(text, ws.sent)


def as_text(data: bytes) -> str:
    """A corpus file as the text message a client would send (the wire carries UTF-8)."""
    return data.decode("utf-8", "replace")


@pytest.mark.parametrize("name,data", corpus("json"), ids=lambda v: v if isinstance(v, str) else "")
def test_json_corpus(name: str, data: bytes) -> None:
    check_dispatch(as_text(data))


def test_json_corpus_through_a_running_route() -> None:
    """Every JSON seed over a real socket: the replies, then the connection still answers."""
    app = App()
    route = app.route("/j", json=True)
    route.on("echo")(lambda ws, data: data)
    route.on("quiet")(lambda ws, data: None)
    route.on("boom")(_boom)
    app.errorhandler(ValueError)(lambda ws, exc: None)  # expected: keep the log quiet
    with app.test_client(timeout=10) as client:
        ws = client.connect("/j")
        for index, (name, data) in enumerate(corpus("json")):
            text = as_text(data)
            ws.send(text)
            ws.send(encode("echo", index, id=f"sentinel-{index}"))
            check_reply(text, until_sentinel(ws, index, name))
        assert ws.is_open


def test_replies_are_strict_json() -> None:
    """NaN/Infinity are not JSON (RFC 8259): refused in, never written out."""
    ws = StubSocket()
    text = encode("echo", None, id=1).replace("null", "[NaN, Infinity]")
    dispatch_envelope(ws, text, HANDLERS, {}, lambda ws, exc: None)  # type: ignore[arg-type]
    (reply,) = ws.sent
    assert "NaN" not in str(reply) and "Infinity" not in str(reply), reply


def until_sentinel(ws: WebSocket, index: int, name: str) -> list[str | bytes]:
    replies: list[str | bytes] = []
    while True:
        reply = ws.receive(timeout=10)
        assert reply is not None, f"{name}: the connection closed ({ws.close_code})"
        answer = decode(reply)
        if answer is not None and answer.get("id") == f"sentinel-{index}":
            assert answer == {"event": "ack", "data": index, "id": f"sentinel-{index}"}
            return replies
        replies.append(reply)


# -- mutations -----------------------------------------------------------------------------------

INTERESTING = (0x00, 0x01, 0x7D, 0x7E, 0x7F, 0x80, 0x81, 0x82, 0x88, 0x89, 0x8A, 0xC1, 0xFF)


@st.composite
def mutated(draw: st.DrawFn, files: list[bytes]) -> bytes:
    """A corpus file with up to 8 mutations."""
    data = bytearray(draw(st.sampled_from(files)))
    for _ in range(draw(st.integers(0, 8))):
        op, pos = draw(st.integers(0, 6)), draw(st.integers(0, max(len(data), 1)))
        at = pos % len(data) if data else 0
        if op == 0 and data:
            data[at] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == 2:
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == 3:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        elif op == 4:
            other = draw(st.sampled_from(files))
            data[pos:] = other[draw(st.integers(0, len(other))) :]
        elif op == 5 and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 6 and data:
            data[at] = draw(st.sampled_from(INTERESTING))
    return bytes(data)


def _files(target: str) -> list[bytes]:
    return [data for _, data in corpus(target)]


SPLITS = st.lists(st.integers(0, 4096), max_size=8)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(mutated(_files("frames")), SPLITS)
def test_frames_mutations(data: bytes, points: list[int]) -> None:
    check_any_split(data, cut(data, points), deflate=False)


@FUZZ
@given(mutated(_files("deflate")), SPLITS)
def test_deflate_mutations(data: bytes, points: list[int]) -> None:
    check_any_split(data, cut(data, points), deflate=True)


@FUZZ
@given(mutated(_files("handshake")), SPLITS)
def test_handshake_mutations(data: bytes, points: list[int]) -> None:
    check_handshake_split(data, cut(data, points))


@FUZZ
@given(mutated(_files("json")))
def test_json_mutations(data: bytes) -> None:
    check_dispatch(as_text(data))


def test_every_target_has_a_seed_corpus() -> None:
    for target in TARGETS:
        assert 30 <= len(corpus(target)) <= 100, target
