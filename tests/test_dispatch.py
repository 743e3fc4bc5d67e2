"""dispatch.py: running routes over real sockets: straight-line and event handlers, connect
refusal, JSON envelopes (acks, error envelopes), handler exceptions, exactly-once disconnects.

Real sockets on 127.0.0.1:0 through the test client; a gevent Timeout bounds every wait.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import pytest

from wsflask import App, Route, WebSocket


def test_event_handlers_get_path_params_and_disconnect_once(
    app_factory: Callable[..., App],
) -> None:
    app = app_factory()
    room = app.route("/r/<name>")
    calls: list[tuple[str, Any]] = []
    gone = gevent.event.Event()

    @room.on("connect")
    def connected(ws: Any, name: str) -> None:
        calls.append(("connect", name))

    @room.on("message")
    def message(ws: Any, data: str | bytes, name: str) -> None:
        calls.append(("message", data))
        ws.send(data)

    @room.on("disconnect")
    def disconnected(ws: Any, name: str) -> None:
        calls.append(("disconnect", name))
        gone.set()

    with app.test_client() as client:
        ws = client.connect("/r/x")
        ws.send(b"\x01")
        assert client.receive(ws) == b"\x01"
        ws.close()
        assert gone.wait(5)
    assert calls == [("connect", "x"), ("message", b"\x01"), ("disconnect", "x")]


def test_app_on_registers_on_the_default_route(app_factory: Callable[..., App]) -> None:
    app = app_factory()

    @app.on("message")
    def echo(ws: Any, data: str | bytes) -> None:
        ws.send(data)

    with app.test_client() as client:
        ws = client.connect("/")
        ws.send("x")
        assert client.receive(ws) == "x"


def test_connect_handler_refusal_closes_1008_without_disconnect(
    app_factory: Callable[..., App],
) -> None:
    app = app_factory()
    disconnects: list[Any] = []

    @app.on("connect")
    def refuse(ws: Any) -> bool:
        return False

    @app.on("disconnect")
    def gone(ws: Any) -> None:
        disconnects.append(ws)

    with app.test_client() as client:
        ws = client.connect("/")
        client.assert_closed(ws, 1008)
    assert disconnects == []


def json_app(app_factory: Callable[..., App]) -> tuple[App, Route]:
    app = app_factory()
    api = app.route("/api", json=True)

    @api.on("add")
    def add(ws: Any, data: list[int]) -> int:
        return sum(data)

    @api.on("note")
    def note(ws: Any, data: Any) -> None:
        ws.send("noted")

    return app, api


def test_json_envelopes_dispatch_and_ack(app_factory: Any) -> None:
    app, _ = json_app(app_factory)
    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "add", [1, 2, 3], id=7)
        assert client.receive_json(ws) == {"event": "ack", "id": 7, "data": 6}
        client.emit(ws, "note", None)  # no id: no ack
        assert client.receive(ws) == "noted"
        client.emit(ws, "add", [1], id="s")
        assert client.receive_json(ws) == {"event": "ack", "id": "s", "data": 1}


def test_json_unknown_event_and_bad_json_get_error_envelopes(app_factory: Any) -> None:
    app, _ = json_app(app_factory)
    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "nope", 1, id=3)
        reply = client.receive_json(ws)
        assert reply["event"] == "error" and reply["id"] == 3 and "nope" in reply["data"]["message"]
        for bad in ("{not json", "[1, 2]", '{"event": 5}', '{"event": "connect"}'):
            ws.send(bad)
            assert client.receive_json(ws)["event"] == "error"
        client.emit(ws, "add", [2], id=1)  # still open
        assert client.receive_json(ws)["data"] == 2
        ws.send(b"binary")
        client.assert_closed(ws, 1003)


def test_defect9_deeply_nested_json_gets_an_error_envelope_and_stays_open(
    app_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = json_app(app_factory)
    with caplog.at_level(logging.DEBUG, logger="wsflask"), app.test_client() as client:
        ws = client.connect("/api")
        ws.send("[" * 100_000 + "]" * 100_000)
        reply = client.receive_json(ws)
        assert reply["event"] == "error" and reply["data"]["type"] == "BadEnvelope"
        ws.send('{"event": "add", "data": ' + "[" * 5000 + "]" * 5000 + ', "id": 4}')
        assert client.receive_json(ws)["event"] == "error"
        client.emit(ws, "add", [1, 2], id=5)
        assert client.receive_json(ws) == {"event": "ack", "id": 5, "data": 3}
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_defect9_client_input_is_echoed_only_as_a_short_prefix(app_factory: Any) -> None:
    app, _ = json_app(app_factory)
    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "x" * 100_000, id="i" * 100_000)  # an oversized event name
        reply = client.receive(ws)
        assert isinstance(reply, str) and len(reply) < 400
        assert "x" * 65 not in reply and "i" * 65 not in reply
        assert json.loads(reply)["data"]["type"] == "BadEnvelope"  # over max_event_name
        assert "x" * 64 in reply  # a prefix is still there to debug with
        ws.send('{"event": "connect", "id": "' + "c" * 100_000 + '"}')  # a reserved one
        reply = client.receive(ws)
        assert isinstance(reply, str) and len(reply) < 400 and "c" * 65 not in reply
        client.emit(ws, "y" * 100_000, id=10**30)  # a number past 64 bits is no id
        assert json.loads(str(client.receive(ws))).get("id") is None


def test_json_catch_all(app_factory: Callable[..., App]) -> None:
    app, api = json_app(app_factory)

    @api.on("*")
    def anything(ws: Any, event: str, data: Any) -> dict[str, Any]:
        return {"event": event, "data": data}

    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "whatever", {"k": 1}, id=1)
        assert client.receive_json(ws)["data"] == {"event": "whatever", "data": {"k": 1}}
        client.emit(ws, "add", [4], id=2)  # named handlers still win
        assert client.receive_json(ws)["data"] == 4


def test_handler_exception_goes_to_errorhandler_then_1011_without_detail(
    app_factory: Callable[..., App],
) -> None:
    app = app_factory()
    handled: list[tuple[Any, BaseException]] = []

    @app.errorhandler(LookupError)
    def lookup(ws: Any, exc: BaseException) -> None:
        handled.append((ws, exc))

    @app.on("message")
    def crash(ws: Any, data: str | bytes) -> None:
        raise KeyError("secret detail")

    @app.route("/plain")
    def plain(ws: Any) -> None:
        raise ZeroDivisionError("other secret")

    with app.test_client() as client:
        ws = client.connect("/")
        ws.send("x")
        client.assert_closed(ws, 1011)
        assert ws.close_reason == ""
        assert len(handled) == 1 and isinstance(handled[0][1], KeyError)
        ws = client.connect("/plain")  # no handler for it: logged, still 1011
        client.assert_closed(ws, 1011)
        assert "secret" not in ws.close_reason


def test_json_handler_exception_answers_an_error_envelope_and_stays_open(
    app_factory: Callable[..., App],
) -> None:
    app, api = json_app(app_factory)

    @api.on("boom")
    def boom(ws: Any, data: Any) -> None:
        raise KeyError("secret detail")

    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "boom", None, id=9)
        assert client.receive_json(ws) == {
            "event": "error",
            "id": 9,
            "data": {"type": "KeyError", "message": "internal error"},
        }
        client.emit(ws, "boom", None)  # no id: the error envelope still comes
        reply = client.receive_json(ws)
        assert reply["event"] == "error" and "id" not in reply
        client.emit(ws, "add", [1], id=10)
        assert client.receive_json(ws) == {"event": "ack", "id": 10, "data": 1}


def test_json_errorhandler_runs_and_may_close_instead(app_factory: Callable[..., App]) -> None:
    app, api = json_app(app_factory)
    seen: list[BaseException] = []

    @api.on("boom")
    def boom(ws: Any, data: Any) -> None:
        raise PermissionError(data)

    @app.errorhandler(PermissionError)
    def denied(ws: Any, exc: BaseException) -> None:
        seen.append(exc)
        if exc.args[0] == "fatal":
            ws.close(4403, "denied")

    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "boom", "soft", id=1)  # handled, not closed: the envelope goes out
        assert client.receive_json(ws)["data"]["type"] == "PermissionError"
        client.emit(ws, "boom", "fatal", id=2)
        client.assert_closed(ws, 4403)
        assert ws.close_reason == "denied"
    assert [exc.args[0] for exc in seen] == ["soft", "fatal"]


def test_close_races_call_disconnect_exactly_once(app_factory: Callable[..., App]) -> None:
    app = app_factory(close_timeout=0.5)
    counts: dict[str, int] = {}
    opened: list[Any] = []
    n = 40
    all_open, all_gone = gevent.event.Event(), gevent.event.Event()

    @app.on("connect")
    def hello(ws: Any) -> None:
        opened.append(ws)
        app.rooms.join("all", ws)
        if len(opened) == n:
            all_open.set()

    @app.on("disconnect")
    def bye(ws: Any) -> None:
        counts[ws.id] = counts.get(ws.id, 0) + 1
        if len(counts) == n:
            all_gone.set()

    with app.test_client() as client:
        conns = [client.connect("/") for _ in range(n)]
        assert all_open.wait(5)
        jobs = []
        for i, (ours, theirs) in enumerate(zip(conns, opened, strict=True)):
            jobs.append(gevent.spawn(ours.close, 1000))  # peer close ...
            jobs.append(gevent.spawn(theirs.close, 1001))  # ... app close at once
            if i % 2:
                jobs.append(gevent.spawn(theirs.abort, 1011, "race"))  # ... and a failure
        with gevent.Timeout(10):
            gevent.joinall(jobs, raise_error=True)
        assert all_gone.wait(10)
        # every connection greenlet has ended: a duplicate call would have happened by now
        assert app.server is not None and app.server.wait_drained(10)
        assert app.server.pool.join(timeout=10)
    assert len(counts) == n and set(counts.values()) == {1}
    assert app.rooms.count("all") == 0


def test_shutdown_races_with_closes_still_one_disconnect(app_factory: Callable[..., App]) -> None:
    app = app_factory(shutdown_grace=1.0, close_timeout=0.5)
    counts: dict[str, int] = {}
    opened: list[Any] = []
    n = 20
    all_open = gevent.event.Event()

    @app.on("connect")
    def hello(ws: Any) -> None:
        opened.append(ws)
        if len(opened) == n:
            all_open.set()

    @app.on("disconnect")
    def bye(ws: Any) -> None:
        counts[ws.id] = counts.get(ws.id, 0) + 1

    client = app.test_client()
    conns = [client.connect("/") for _ in range(n)]
    assert all_open.wait(5)
    jobs = [gevent.spawn(ws.close) for ws in conns[::2]]
    jobs += [gevent.spawn(ws.close, 1000) for ws in opened[1::3]]
    server = client.server
    assert server is not None
    jobs.append(gevent.spawn(server.stop, 2.0))  # shutdown at the same time
    with gevent.Timeout(10):
        gevent.joinall(jobs, raise_error=True)
    client.close()
    assert len(counts) == n and set(counts.values()) == {1}


def test_results_json_cannot_hold_get_an_error_reply_and_long_ids_are_refused(
    app_factory: Callable[..., App],
) -> None:
    """An ack is strict JSON or an error; an id a reply would echo is short (bounded)."""
    app = app_factory()
    api = app.route("/api", json=True)

    @api.on("nan")
    def nan(ws: WebSocket, data: Any) -> float:
        return float("nan")

    @api.on("echo")
    def echo(ws: WebSocket, data: Any) -> Any:
        return data

    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "nan", None, id=1)
        reply = client.receive_json(ws)
        assert reply["event"] == "error" and reply["id"] == 1
        assert reply["data"]["type"] == "BadResult"
        ws.send('{"event": "echo", "data": [NaN, Infinity], "id": 2}')
        assert client.receive_json(ws)["data"]["type"] == "BadEnvelope"
        client.emit(ws, "echo", 1, id="x" * 100_000)
        reply = client.receive_json(ws)
        assert reply["event"] == "error" and "id" not in reply
        client.emit(ws, "echo", 3, id="y" * 64)  # the longest id still acked, and the
        assert client.receive_json(ws) == {"event": "ack", "data": 3, "id": "y" * 64}
        assert ws.is_open


def test_nesting_and_event_name_limits_are_settings(app_factory: Callable[..., App]) -> None:
    """``max_json_depth`` and ``max_event_name``: over them, a bounded error reply and the
    connection stays; at them, the event is served."""
    app = app_factory(max_json_depth=4, max_event_name=8)
    api = app.route("/api", json=True)

    @api.on("echo")
    def echo(ws: WebSocket, data: Any) -> Any:
        return data

    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "echo", [[["x"]]], id=1)  # depth 4 with the envelope object
        assert client.receive_json(ws) == {"event": "ack", "data": [[["x"]]], "id": 1}
        client.emit(ws, "echo", [[[["x"]]]], id=2)  # depth 5
        reply = client.receive_json(ws)
        assert reply["data"]["type"] == "BadEnvelope" and "4 levels" in reply["data"]["message"]
        client.emit(ws, "echo", "[[[[[[not nesting]]]]]]", id=3)  # brackets inside a string
        assert client.receive_json(ws)["id"] == 3
        client.emit(ws, "e" * 9, None, id=4)
        assert client.receive_json(ws)["data"]["type"] == "BadEnvelope"
        assert ws.is_open
