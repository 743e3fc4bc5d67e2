"""``for message in ws``: the compiled iterator (``wsflask._iterator.Messages``) and its
pure-Python twin (``wsflask.websocket.MessagesPython``) behave alike, over real sockets.

Every test runs with each iterator in turn. Both call ``ws._step()`` per pass and wait on the
socket it hands back; the compiled one waits in C, so an idle connection's greenlet keeps no
second interpreter frame (``test_idle_memory.py`` bounds what that saves). The hypothesis
test sends the same random traffic (messages, pings, chunking) to one connection per
iterator and expects the same messages, in order, and the same close.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import pytest
from conftest import RawPeer
from helpers import in_ci, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wsflask.websocket as websocket_module
from wsflask.protocol import CloseCode, encode_frame
from wsflask.protocol import speedups as speedups_module
from wsflask.websocket import MessagesPython, WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

MASK = b"\x01\x02\x03\x04"


def _compiled() -> Any:
    try:
        from wsflask._iterator import Messages
    except ImportError:
        return None
    return Messages


COMPILED = _compiled()
KINDS = ["compiled", "python"]


def _require_compiled() -> Any:
    """The compiled iterator; without it a skip, except under CI (``CI=true``), which builds
    it (the editable install compiles both extensions): there it is a failure."""
    if COMPILED is None:
        if in_ci():
            pytest.fail("wsflask._iterator was not built (CI installs with a compiler)")
        pytest.skip("wsflask._iterator is not built (no compiler at install)")
    return COMPILED


@pytest.fixture(params=KINDS)
def iterator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``for message in ws`` uses this kind of iterator for the test."""
    if request.param == "compiled":
        monkeypatch.setattr(websocket_module, "Messages", _require_compiled())
    else:
        monkeypatch.setattr(websocket_module, "Messages", MessagesPython)
    yield request.param


def frame(text: str, opcode: int = 0x1, fin: bool = True) -> bytes:
    return encode_frame(opcode, text.encode(), fin=fin, mask=MASK)


def open_peer(
    serve: Callable[..., Any], raw_peer: Callable[..., RawPeer], handler: Callable[..., None]
) -> RawPeer:
    server = serve(handler)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    return peer


def test_the_active_iterator_is_the_compiled_one_when_built() -> None:
    if COMPILED is not None and speedups_module.compiled is not None:
        assert websocket_module.Messages is COMPILED
    else:
        assert websocket_module.Messages is MessagesPython
    ws = WebSocket.__new__(WebSocket)
    assert type(iter(ws)) is websocket_module.Messages


def test_echoes_messages_that_arrive_while_it_waits_and_ends_on_close(
    iterator: str, serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    seen: list[str | bytes] = []
    done = gevent.event.Event()

    def echo(ws: WebSocket) -> None:
        for message in ws:
            seen.append(message)
            ws.send(message)
        done.set()

    peer = open_peer(serve, raw_peer, echo)
    for text in ("one", "two", "three"):
        gevent.sleep(0.02)  # the handler is idle, waiting, when each one arrives
        peer.sock.sendall(frame(text))
        assert peer.read_frame() == (0x1, text.encode())
    peer.sock.sendall(frame("a") + frame("b") + encode_frame(0x2, b"\x00c", mask=MASK))
    assert [peer.read_frame() for _ in range(3)] == [(0x1, b"a"), (0x1, b"b"), (0x2, b"\x00c")]
    peer.send_frame(0x8, CloseCode.NORMAL.to_bytes(2, "big"))
    assert peer.read_frame()[0] == 0x8
    assert done.wait(5)
    assert seen == ["one", "two", "three", "a", "b", b"\x00c"]


def test_a_socket_closed_under_the_waiting_iterator_ends_the_loop_quietly(
    iterator: str, serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    ended: list[Any] = []
    conns: list[WebSocket] = []

    def handler(ws: WebSocket) -> None:
        conns.append(ws)
        try:
            ended.append(list(ws))
        except BaseException as exc:  # pragma: no cover - the failure this test looks for
            ended.append(exc)
            raise

    peer = open_peer(serve, raw_peer, handler)
    wait_until(lambda: conns and conns[0]._reading)  # waiting for input
    conns[0]._sock.close()  # gevent throws into the waiting greenlet (cancel_wait)
    wait_until(lambda: ended)
    assert ended == [[]]
    assert conns[0].close_code == CloseCode.ABNORMAL
    assert not conns[0]._reading
    peer.close()


def test_a_kill_while_waiting_propagates_and_leaves_the_connection_unclaimed(
    iterator: str, serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    conns: list[WebSocket] = []
    caught: list[BaseException] = []
    started = gevent.event.Event()

    def handler(ws: WebSocket) -> None:
        conns.append(ws)
        started.set()
        gevent.sleep(5)

    peer = open_peer(serve, raw_peer, handler)
    assert started.wait(5)
    ws = conns[0]

    def reader() -> None:
        try:
            for _ in ws:
                pass
        except BaseException as exc:
            caught.append(exc)
            raise

    g = gevent.spawn(reader)
    wait_until(lambda: ws._reading)
    g.kill(block=True, timeout=5)
    assert len(caught) == 1 and isinstance(caught[0], gevent.GreenletExit)
    assert not ws._reading  # another reader may take over
    peer.sock.sendall(frame("after"))
    assert ws.receive(timeout=5) == "after"
    peer.close()


def test_a_timeout_while_waiting_propagates_and_the_next_message_still_arrives(
    iterator: str, serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    results: list[Any] = []

    def handler(ws: WebSocket) -> None:
        try:
            with gevent.Timeout(0.1):
                for message in ws:
                    results.append(message)
        except gevent.Timeout:
            results.append("timeout")
        results.append(next(iter(ws)))

    peer = open_peer(serve, raw_peer, handler)
    wait_until(lambda: results == ["timeout"])
    peer.sock.sendall(frame("later"))
    wait_until(lambda: len(results) == 2)
    assert results == ["timeout", "later"]
    peer.close()


def test_a_closed_connection_iterates_nothing_again_and_again(
    iterator: str, serve: Callable[..., Any], raw_peer: Callable[..., RawPeer]
) -> None:
    rounds: list[list[str | bytes]] = []

    def handler(ws: WebSocket) -> None:
        messages = iter(ws)
        rounds.append(list(messages))
        rounds.append(list(messages))  # exhausted: stays exhausted
        rounds.append(list(ws))  # a new iterator on a closed connection: nothing

    peer = open_peer(serve, raw_peer, handler)
    peer.sock.sendall(frame("x") + encode_frame(0x8, b"\x03\xe8", mask=MASK))
    wait_until(lambda: len(rounds) == 3)
    assert rounds == [["x"], [], []]
    peer.close()


# -- the twins side by side: the same traffic, the same messages and close ----------------

#: one step of the peer's traffic: a text message (fragmented into 1-3 frames), a ping, or a
#: pause that lets the handler go idle (so the wait path runs, not only buffered messages)
STEP = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=40), st.integers(1, 3)),
    st.tuples(st.just("ping"), st.binary(max_size=8), st.just(1)),
    st.tuples(st.just("pause"), st.just(""), st.just(1)),
)


def _traffic(steps: list[tuple[str, Any, int]]) -> list[bytes]:
    """The peer's sends: a pause splits the traffic into separate ``sendall`` calls."""
    sends, chunk = [], b""
    for kind, value, parts in steps:
        if kind == "pause":
            sends.append(chunk)
            chunk = b""
        elif kind == "ping":
            chunk += encode_frame(0x9, value, mask=MASK)
        else:
            data = value.encode()
            cuts = [len(data) * i // parts for i in range(parts + 1)]
            for i in range(parts):
                opcode = 0x1 if i == 0 else 0x0
                chunk += encode_frame(
                    opcode, data[cuts[i] : cuts[i + 1]], fin=i == parts - 1, mask=MASK
                )
    sends.append(chunk + encode_frame(0x8, b"\x03\xe8", mask=MASK))
    return sends


def _run_traffic(kind: Any, sends: list[bytes], serve: Callable[..., Any], raw: Any) -> Any:
    outcome: dict[str, Any] = {}

    def handler(ws: WebSocket) -> None:
        outcome["messages"] = list(ws)
        outcome["close"] = (ws.close_code, ws.close_reason)

    old = websocket_module.Messages
    websocket_module.Messages = kind
    try:
        peer = open_peer(serve, raw, handler)
        for data in sends:
            if data:
                peer.sock.sendall(data)
            gevent.sleep(0.002)
        wait_until(lambda: "close" in outcome)
        peer.close()
    finally:
        websocket_module.Messages = old
    return outcome


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(STEP, max_size=12))
def test_both_iterators_yield_the_same_messages_and_close(
    steps: list[tuple[str, Any, int]],
    serve: Callable[..., Any],
    raw_peer: Callable[..., RawPeer],
) -> None:
    sends = _traffic(steps)
    expected = [value for kind, value, _ in steps if kind == "text"]
    compiled = _run_traffic(_require_compiled(), sends, serve, raw_peer)
    python = _run_traffic(MessagesPython, sends, serve, raw_peer)
    assert compiled == python
    assert compiled["messages"] == expected
    assert compiled["close"] == (CloseCode.NORMAL, "")


def test_the_compiled_iterator_takes_exactly_one_argument() -> None:
    compiled = _require_compiled()
    with pytest.raises(TypeError):
        compiled()
    with pytest.raises(TypeError):
        compiled(1, 2)
    with pytest.raises(TypeError):
        compiled(ws=1)
    target = object()
    held = sys.getrefcount(target)
    it = compiled(target)
    assert iter(it) is it
    assert sys.getrefcount(target) == held + 1  # the iterator holds its connection
    with pytest.raises(AttributeError):  # no _step: the error comes out, nothing crashes
        next(it)
    del it
    assert sys.getrefcount(target) == held  # and lets it go
