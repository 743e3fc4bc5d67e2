"""Corking over real sockets: a handler's answers to one batch of received messages leave in
one send; held data never waits on anything but the handler's own next step.

A server's reader corks its transport whenever it hands the handler a message; what is held
leaves when the handler waits again, at the end of the hub's turn (``WebSocket._step``). A
client corks only when one receive brought several messages, and uncorks before it reads
again. ``test_transport.py`` covers the transport's side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import pytest
from conftest import RawPeer
from helpers import wait_until
from test_transport import CountingSocket

from wsflask.protocol import encode_frame
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

MASK = b"\x01\x02\x03\x04"


def frames(*texts: str) -> bytes:
    """Client text frames, back to back: one ``sendall``, so one receive gets them all."""
    return b"".join(encode_frame(0x1, t.encode(), mask=MASK) for t in texts)


def counting(ws: WebSocket) -> CountingSocket:
    """Count the OS-level sends of ``ws`` from now on (plain TCP)."""
    transport = ws._transport
    counter = CountingSocket(transport._raw)
    transport._raw = counter
    return counter


def test_answers_to_a_pipelined_batch_leave_in_one_send(
    serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    counters: list[CountingSocket] = []

    def echo(ws: WebSocket) -> None:
        counters.append(counting(ws))
        for message in ws:
            ws.send(message)

    server = serve(echo)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    texts = [f"m{i}" for i in range(8)]
    peer.sock.sendall(frames(*texts))
    assert [peer.read_frame() for _ in texts] == [(0x1, t.encode()) for t in texts]
    assert counters[0].sends == [8 * 4]  # eight 4-byte frames, one system call
    peer.sock.sendall(frames("alone"))  # a lone message: its answer leaves when the handler waits
    assert peer.read_frame() == (0x1, b"alone")
    assert counters[0].sends == [32, 7]


def test_a_handler_waiting_on_something_else_has_sent_its_answer(
    serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    """The first answer is held by the cork while the handler waits for the peer to have
    read it: only the hub callback can hand it on (a deadlock otherwise)."""
    answered = gevent.event.Event()

    def handler(ws: WebSocket) -> None:
        for message in ws:
            ws.send(message)
            if message == "first":
                assert answered.wait(5), "the answer stayed corked"

    server = serve(handler)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    peer.sock.sendall(frames("first", "second"))
    assert peer.read_frame() == (0x1, b"first")
    answered.set()
    assert peer.read_frame() == (0x1, b"second")


def test_close_after_corked_answers_sends_them_first(
    serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    def handler(ws: WebSocket) -> None:
        for message in ws:
            ws.send(message)
            if message == "last":
                ws.close(1000, "done")

    server = serve(handler)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    peer.sock.sendall(frames("a", "b", "last"))
    assert [peer.read_frame() for _ in range(3)] == [(1, b"a"), (1, b"b"), (1, b"last")]
    assert peer.read_frame() == (0x8, (1000).to_bytes(2, "big") + b"done")


def test_a_fan_out_during_a_batch_keeps_the_handlers_order(
    serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    """``send_prepared`` (fan-out code) while the handler's answers are corked: they go
    first, then the prepared frame, as the handler wrote them."""
    notice = encode_frame(0x1, b"notice")

    def handler(ws: WebSocket) -> None:
        for message in ws:
            ws.send(message)
            if message == "b":
                assert ws.send_prepared(notice)

    server = serve(handler)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    peer.sock.sendall(frames("a", "b", "c"))
    got = [peer.read_frame() for _ in range(4)]
    assert got == [(1, b"a"), (1, b"b"), (1, b"notice"), (1, b"c")]


def test_a_members_deliveries_of_one_turn_leave_in_one_send(
    serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    """Five broadcasts in one turn of the hub loop: each member gets them in one send, in
    order (``send_prepared`` holds them to the end of the turn)."""
    from wsflask.rooms import Rooms

    rooms: Rooms[WebSocket] = Rooms()
    members: list[tuple[WebSocket, CountingSocket]] = []

    def member(ws: WebSocket) -> None:
        members.append((ws, counting(ws)))
        rooms.join("r", ws)
        for _ in ws:
            pass

    server = serve(member)
    peers = [raw_peer(server.server_port) for _ in range(3)]
    for peer in peers:
        assert peer.request("/").startswith(b"HTTP/1.1 101")
    wait_until(lambda: rooms.count("r") == 3, 5)
    for i in range(5):
        assert rooms.broadcast("r", f"b{i}").sent == 3
    for peer in peers:
        assert [peer.read_frame() for _ in range(5)] == [(1, f"b{i}".encode()) for i in range(5)]
    assert [counter.sends for _, counter in members] == [[5 * 4]] * 3


def test_the_answer_to_one_message_leaves_when_the_handler_waits_again(
    serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    seen: list[tuple[str | bytes, list[int], int]] = []

    def echo(ws: WebSocket) -> None:
        counter = counting(ws)
        for message in ws:
            ws.send(message)
            # held in the cork, counted as buffered, until this greenlet yields to the hub
            seen.append((message, list(counter.sends), ws.buffered_amount))

    server = serve(echo)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    peer.sock.sendall(frames("one"))
    assert peer.read_frame() == (0x1, b"one")
    peer.sock.sendall(frames("two"))
    assert peer.read_frame() == (0x1, b"two")
    assert seen == [("one", [], 5), ("two", [5], 5)]


def test_a_client_answers_a_lone_message_at_once(
    serve: Callable[..., Any],
) -> None:
    from wsflask.client import connect

    def greet(ws: WebSocket) -> None:
        ws.send("hello")
        assert ws.receive(timeout=5) == "back"
        ws.send("done")
        gevent.sleep(1)

    server = serve(greet)
    client = connect(f"ws://127.0.0.1:{server.server_port}/")
    try:
        assert client.receive(timeout=5) == "hello"
        client.send("back")
        assert client.buffered_amount == 0  # not held: the kernel has it already
        assert client.receive(timeout=5) == "done"
    finally:
        client.close()
