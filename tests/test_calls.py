"""Server-to-client calls with acks (issue 15) over real sockets: ``ws.call``/``call_async``,
replies by id, timeouts, errors, failure at close, the per-connection bound, and the clients
that answer (``TestClient``, ``wsflask.client``, the locust user)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import AsyncResult

from wsflask import App
from wsflask.calls import CallError, TooManyPendingCalls
from wsflask.client import connect
from wsflask.envelopes import encode
from wsflask.errors import ConnectionClosed
from wsflask.protocol import CloseCode

WAIT = 5.0


def test_call_from_connect_handler_gets_the_test_clients_ack(
    app_factory: Callable[..., App],
) -> None:
    app = app_factory()
    api = app.route("/api", json=True)

    @api.on("connect")
    def connected(ws: Any) -> None:
        ws.emit("sum", ws.call("add", [2, 3], timeout=WAIT))

    with app.test_client() as client:
        seen: list[Any] = []

        @client.on("add")
        def add(data: Any) -> Any:
            seen.append(data)
            return sum(data)

        ws = client.connect("/api")
        assert client.receive_json(ws) == {"event": "sum", "data": 5}
        assert seen == [[2, 3]]


def test_call_wire_format_and_ids_per_connection(app_factory: Callable[..., App]) -> None:
    app = app_factory()
    api = app.route("/api", json=True)

    @api.on("connect")
    def connected(ws: Any) -> None:
        first = ws.call_async("a", 1, timeout=WAIT)
        second = ws.call_async("b", None, timeout=WAIT)
        third = ws.call("c", timeout=WAIT)  # reads: the earlier replies are taken meanwhile
        ws.emit("got", [first.get(timeout=0), second.get(timeout=0), third])

    with app.test_client() as client:
        for _ in range(2):  # ids count per connection: each starts at s1
            ws = connect(client.url("/api"), timeout=WAIT)
            try:
                calls = [json.loads(str(ws.receive(timeout=WAIT))) for _ in range(3)]
                assert calls == [
                    {"event": "a", "data": 1, "id": "s1"},
                    {"event": "b", "data": None, "id": "s2"},
                    {"event": "c", "data": None, "id": "s3"},
                ]
                ws.send(encode("ack", "B", "s2"))  # out of order: matched by id
                ws.send(encode("ack", "A", "s1"))
                ws.send(encode("ack", "C", "s3"))
                assert json.loads(str(ws.receive(timeout=WAIT))) == {
                    "event": "got",
                    "data": ["A", "B", "C"],
                }
            finally:
                ws.close()


def test_call_from_another_greenlet_while_the_route_reads(app_factory: Callable[..., App]) -> None:
    app = app_factory()
    api = app.route("/api", json=True)
    tasks: list[gevent.Greenlet] = []

    def ask(ws: Any) -> None:
        ws.emit("answer", ws.call("question", "6x7", timeout=WAIT))

    @api.on("start")
    def start(ws: Any, data: Any) -> str:
        tasks.append(gevent.spawn(ask, ws))
        return "started"

    with app.test_client() as client:
        client.on("question")(lambda data: 42)
        ws = client.connect("/api")
        client.emit(ws, "start", id=1)
        assert client.receive_json(ws) == {"event": "ack", "data": "started", "id": 1}
        assert client.receive_json(ws) == {"event": "answer", "data": 42}
        gevent.joinall(tasks, timeout=WAIT)
        assert all(task.successful() for task in tasks)


def test_error_reply_and_unknown_event_raise_call_error(app_factory: Callable[..., App]) -> None:
    app = app_factory()
    api = app.route("/api", json=True)
    outcomes: list[tuple[str, str]] = []

    @api.on("connect")
    def connected(ws: Any) -> None:
        for event in ("fails", "nobody"):
            try:
                ws.call(event, timeout=WAIT)
            except CallError as exc:
                outcomes.append((exc.type, exc.message))
        ws.emit("done")

    with app.test_client() as client:

        @client.on("fails")
        def fails(data: Any) -> Any:
            raise ValueError("no way")

        ws = client.connect("/api")
        assert client.receive_json(ws) == {"event": "done", "data": None}
    assert outcomes == [("ValueError", "no way"), ("UnknownEvent", "unknown event 'nobody'")]


def test_call_times_out_when_the_peer_stays_silent(app_factory: Callable[..., App]) -> None:
    app = app_factory()
    api = app.route("/api", json=True)

    @api.on("connect")
    def connected(ws: Any) -> None:
        started = time.monotonic()
        try:
            ws.call("silent", timeout=0.2)
        except TimeoutError:
            ws.emit("timeout", round(time.monotonic() - started, 1) >= 0.2)

    with app.test_client() as client:
        ws = connect(client.url("/api"), timeout=WAIT)  # answers nothing
        try:
            assert json.loads(str(ws.receive(timeout=WAIT)))["id"] == "s1"
            assert json.loads(str(ws.receive(timeout=WAIT))) == {"event": "timeout", "data": True}
        finally:
            ws.close()


def test_close_fails_pending_calls_at_once(app_factory: Callable[..., App]) -> None:
    app = app_factory()
    api = app.route("/api", json=True)
    failed: AsyncResult = AsyncResult()
    tasks: list[gevent.Greenlet] = []

    def ask(ws: Any) -> None:
        started = time.monotonic()
        try:
            ws.call("never", timeout=60)
        except ConnectionClosed as exc:
            failed.set((exc.code, time.monotonic() - started))

    @api.on("start")
    def start(ws: Any, data: Any) -> None:
        tasks.append(gevent.spawn(ask, ws))

    with app.test_client() as client:
        ws = connect(client.url("/api"), timeout=WAIT)
        ws.send(encode("start"))
        assert json.loads(str(ws.receive(timeout=WAIT)))["event"] == "never"
        ws.close(CloseCode.GOING_AWAY)
        code, waited = failed.get(timeout=WAIT)
        assert code == CloseCode.GOING_AWAY
        assert waited < WAIT  # not the 60 s timeout
        gevent.joinall(tasks, timeout=WAIT)


def test_pending_calls_are_bounded_and_counted(app_factory: Callable[..., App]) -> None:
    app = app_factory(max_pending_calls=2)
    api = app.route("/api", json=True)
    refused: list[str] = []

    @api.on("connect")
    def connected(ws: Any) -> None:
        ws.call_async("one", timeout=WAIT)
        ws.call_async("two", timeout=WAIT)
        try:
            ws.call_async("three", timeout=WAIT)
        except TooManyPendingCalls as exc:
            refused.append(str(exc))
        ws.emit("refused", len(refused))

    with app.test_client() as client:
        ws = connect(client.url("/api"), timeout=WAIT)
        try:
            events = [json.loads(str(ws.receive(timeout=WAIT)))["event"] for _ in range(3)]
            assert events == ["one", "two", "refused"]
        finally:
            ws.close()
    assert refused == ["2 calls already wait for a reply"]
    assert app.metrics.drops["pending_calls"] == 1


def test_late_or_foreign_replies_are_dropped_counted_and_never_answered(
    app_factory: Callable[..., App],
) -> None:
    app = app_factory()
    api = app.route("/api", json=True)
    api.on("ping")(lambda ws, data: "pong")

    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "ack", 1, id="s9")  # no call s9 is pending
        client.emit(ws, "error", {"type": "X", "message": "y"}, id=7)
        client.emit(ws, "ping", id=2)
        # the next message is the ping's ack: the replies got no error envelope back
        assert client.receive_json(ws) == {"event": "ack", "data": "pong", "id": 2}
    assert app.metrics.drops["late_reply"] == 2


def test_plain_route_call_consumes_the_ack_not_the_handler(app_factory: Callable[..., App]) -> None:
    app = app_factory()

    @app.route("/plain")
    def plain(ws: Any) -> None:
        ws.send(f"answer {ws.call('ask', timeout=WAIT)}")
        for message in ws:  # the ack never shows up here
            ws.send(f"echo {message}")

    with app.test_client() as client:
        client.on("ask")(lambda data: 1)
        ws = client.connect("/plain")
        assert client.receive(ws) == "answer 1"
        ws.send("hi")
        assert client.receive(ws) == "echo hi"
        ws.send(encode("ack", 5, "s1"))  # a late ack on a plain route: just a message
        assert client.receive(ws) == 'echo {"event":"ack","data":5,"id":"s1"}'


def test_wsflask_client_answers_with_on_call(app_factory: Callable[..., App]) -> None:
    app = app_factory()
    api = app.route("/api", json=True)

    @api.on("connect")
    def connected(ws: Any) -> None:
        ws.emit("upper", ws.call("upper", "abc", timeout=WAIT))

    with app.test_client() as client:
        ws = connect(client.url("/api"), timeout=WAIT)
        try:
            ws.on_call("upper", lambda data: data.upper())
            assert json.loads(str(ws.receive(timeout=WAIT))) == {"event": "upper", "data": "ABC"}
        finally:
            ws.close()


def test_locust_client_answers_calls(app_factory: Callable[..., App]) -> None:
    pytest.importorskip("locust")
    from locust.env import Environment

    from wsflask.locust import WebSocketClient

    app = app_factory()
    api = app.route("/api", json=True)

    @api.on("connect")
    def connected(ws: Any) -> None:
        ws.emit("twice", ws.call("twice", 21, timeout=WAIT))

    with app.test_client() as client:
        user = WebSocketClient(Environment(), client.url("/api"), timeout=WAIT)
        user.on_call("twice", lambda data: data * 2)
        assert user.connect()
        try:
            assert json.loads(str(user.receive(timeout=WAIT))) == {"event": "twice", "data": 42}
        finally:
            user.close()


def test_a_call_from_the_reader_stops_reading_past_its_read_ahead(
    app_factory: Callable[..., App],
) -> None:
    from wsflask.websocket import CALL_READ_AHEAD

    app = app_factory()
    got: list[Any] = []

    @app.route("/plain")
    def plain(ws: Any) -> None:
        try:
            ws.call("slow", timeout=0.5)
        except TimeoutError:
            got.append("timeout")
        got.extend(ws)  # everything that was sent, in order, once we read again

    with app.test_client() as client:
        ws = connect(client.url("/plain"), timeout=WAIT)
        try:
            assert json.loads(str(ws.receive(timeout=WAIT)))["id"] == "s1"
            for n in range(CALL_READ_AHEAD + 50):  # 1 KB each: more than one read of 64 KiB
                ws.send(f"m{n}".ljust(1000))
            ws.send(encode("ack", "late", "s1"))  # behind the flood: never read in time
            ws.send("last")
        finally:
            ws.close()
        with gevent.Timeout(WAIT):
            while not got or got[-1] != "last":
                gevent.sleep(0.01)
    assert got[0] == "timeout"
    assert got[1 : CALL_READ_AHEAD + 51] == [
        f"m{n}".ljust(1000) for n in range(CALL_READ_AHEAD + 50)
    ]
    assert got[-2:] == ['{"event":"ack","data":"late","id":"s1"}', "last"]


def test_a_reloaded_max_pending_calls_reaches_a_connection_that_called_before(
    app_factory: Callable[..., App],
) -> None:
    """Reload (``WebSocket.apply_config``) after the connection's first call: the next call
    is judged by the new limit, the pending one stays."""
    app = app_factory(max_pending_calls=4, call_timeout=5.0)
    ready: AsyncResult = AsyncResult()

    @app.route("/c")
    def handler(ws: Any) -> None:
        ready.set(ws)
        for _ in ws:
            pass

    client = app.test_client(timeout=10)
    peer = client.connect("/c")
    ws = ready.get(timeout=5)
    first = ws.call_async("slow", 1)  # the peer never answers: it stays pending
    ws.apply_config(app.config.replace(max_pending_calls=1))
    with pytest.raises(TooManyPendingCalls, match="1 calls already wait"):
        ws.call_async("slow", 2)
    assert not first.ready()
    peer.close()
