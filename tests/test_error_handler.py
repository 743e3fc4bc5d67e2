"""``@route.on("error")`` over real sockets (seed-audit-2 item 29, CM-24).

A route's error handlers are called with ``(ws, exc, **path_params)`` when the peer breaks
the protocol (``exc`` is the core's ``ProtocolError`` with its violation code, before the
disconnect handlers, never for a normal close) and when one of the route's own handlers
raises (in place of the app's ``errorhandler``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from helpers import wait_until

from wsflask.app import App
from wsflask.protocol import CloseCode, ProtocolError
from wsflask.routing import Route
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")

Seen = list[tuple[str, Any]]


def recording_route(app: App, path: str, seen: Seen, *, json: bool = False) -> Route:
    """A route whose error and disconnect handlers append to ``seen``."""
    route = app.route(path, json=json)

    @route.on("error")
    def on_error(ws: WebSocket, exc: Exception, **params: Any) -> None:
        seen.append(("error", (exc, ws.close_code, params)))

    @route.on("disconnect")
    def on_disconnect(ws: WebSocket, **params: Any) -> None:
        seen.append(("disconnect", ws.close_code))

    return route


def test_on_error_receives_protocol_failures(
    app_factory: Callable[..., App], raw_peer: Callable[..., Any]
) -> None:
    app, seen = app_factory(), Seen()
    recording_route(app, "/room/<int:n>", seen)
    with app.test_client() as client:
        peer = raw_peer(client.port)
        assert peer.request("/room/7").startswith(b"HTTP/1.1 101 ")
        peer.sock.sendall(b"\x81\x05hello")  # unmasked client frame (RFC 6455 §5.1)
        opcode, payload = peer.read_frame()
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == CloseCode.PROTOCOL_ERROR
        wait_until(lambda: len(seen) == 2)
    (kind, (exc, close_code, params)), after = seen
    assert kind == "error" and after == ("disconnect", CloseCode.PROTOCOL_ERROR)
    assert isinstance(exc, ProtocolError) and exc.code == "unmasked"
    assert close_code == CloseCode.PROTOCOL_ERROR and params == {"n": 7}


def test_on_error_is_not_called_for_a_normal_close(app_factory: Callable[..., App]) -> None:
    app, seen = app_factory(), Seen()
    recording_route(app, "/", seen)
    with app.test_client() as client:
        ws = client.connect("/")
        ws.close()
        wait_until(lambda: seen == [("disconnect", CloseCode.NORMAL)])


def test_route_error_handler_takes_a_handler_exception_before_the_app(
    app_factory: Callable[..., App],
) -> None:
    app, seen = app_factory(), Seen()
    app_level: list[Exception] = []
    app.errorhandler(ValueError)(lambda ws, exc: app_level.append(exc))
    route = recording_route(app, "/", seen)

    @route.on("message")
    def crash(ws: WebSocket, message: str | bytes) -> None:
        raise ValueError("boom")

    with app.test_client() as client:
        ws = client.connect("/")
        ws.send("x")
        client.assert_closed(ws, CloseCode.INTERNAL_ERROR)
        wait_until(lambda: len(seen) == 2)
    (kind, (exc, _, _)), after = seen
    assert kind == "error" and isinstance(exc, ValueError) and str(exc) == "boom"
    assert after == ("disconnect", CloseCode.INTERNAL_ERROR)
    assert app_level == []  # the route's handler took it


def test_json_route_error_handler_then_error_envelope(app_factory: Callable[..., App]) -> None:
    app, seen = app_factory(), Seen()
    route = recording_route(app, "/", seen, json=True)

    @route.on("explode")
    def explode(ws: WebSocket, data: Any) -> None:
        raise KeyError(data)

    with app.test_client() as client:
        ws = client.connect("/")
        client.emit(ws, "explode", "k", id=1)
        reply = client.receive_json(ws)
        assert reply["event"] == "error" and reply["data"]["type"] == "KeyError"
        assert ws.is_open  # a JSON route stays open
        ((kind, (exc, close_code, _)),) = seen
        assert kind == "error" and isinstance(exc, KeyError) and close_code is None


def test_a_failing_error_handler_is_logged_and_disconnect_still_runs(
    app_factory: Callable[..., App],
    raw_peer: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, seen = app_factory(), Seen()
    route = app.route("/")

    @route.on("error")
    def broken(ws: WebSocket, exc: Exception) -> None:
        raise RuntimeError("error handler bug")

    @route.on("disconnect")
    def on_disconnect(ws: WebSocket) -> None:
        seen.append(("disconnect", ws.close_code))

    with app.test_client() as client:
        peer = raw_peer(client.port)
        assert peer.request("/").startswith(b"HTTP/1.1 101 ")
        peer.send_frame(0x1, b"\xff")  # invalid UTF-8 (RFC 6455 §8.1)
        opcode, payload = peer.read_frame()
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == CloseCode.INVALID_DATA
        wait_until(lambda: seen == [("disconnect", CloseCode.INVALID_DATA)])
    failures = [r for r in caplog.records if r.getMessage().startswith("error handler")]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
