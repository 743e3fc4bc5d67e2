"""The test client itself: lazy start, refusals, JSON helpers, HTTP pages, clean stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest

from wsflask import App
from wsflask.errors import HandshakeRejected
from wsflask.testing import TestClient


def echo_app(app_factory: Callable[..., App]) -> App:
    app = app_factory()

    @app.route("/echo")
    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    api = app.route("/api", json=True)

    @api.on("ping")
    def ping(ws: Any, data: Any) -> Any:
        return {"pong": data}

    return app


def test_server_starts_lazily_and_stops_on_exit(app_factory: Any) -> None:
    app = echo_app(app_factory)
    client = app.test_client()
    assert isinstance(client, TestClient) and client.server is None
    with client:
        ws = client.connect("/echo")
        assert client.server is not None and client.port > 0
        assert client.url("/x") == f"ws://127.0.0.1:{client.port}/x"
        ws.send("hi")
        assert client.receive(ws) == "hi"
    assert client.server is None
    assert not ws.is_open  # clients it made are closed too
    client.close()  # idempotent


def test_json_helpers(app_factory: Any) -> None:
    app = echo_app(app_factory)
    with app.test_client() as client:
        ws = client.connect("/api")
        client.emit(ws, "ping", [1], id=5)
        assert client.receive_json(ws) == {"event": "ack", "id": 5, "data": {"pong": [1]}}


def test_receive_is_bounded(app_factory: Any) -> None:
    app = echo_app(app_factory)
    with app.test_client(timeout=0.2) as client:
        ws = client.connect("/echo")
        with gevent.Timeout(3), pytest.raises(TimeoutError):
            client.receive(ws)


def test_assert_refused_checks_the_status(app_factory: Any) -> None:
    app = echo_app(app_factory)
    with app.test_client() as client:
        refusal = client.assert_refused("/missing", 404)
        assert isinstance(refusal, HandshakeRejected) and refusal.status == 404
        with pytest.raises(AssertionError, match="refused with 404, expected 403"):
            client.assert_refused("/missing", 403)
        with pytest.raises(AssertionError, match="accepted"):
            client.assert_refused("/echo", 404)


def test_assert_closed_and_receive_json_on_close(app_factory: Callable[..., App]) -> None:
    app = echo_app(app_factory)

    @app.route("/bye")
    def bye(ws: Any) -> None:
        ws.close(4000, "bye")

    with app.test_client() as client:
        ws = client.connect("/bye")
        assert client.assert_closed(ws, 4000) == 4000
        assert ws.close_reason == "bye"
        with pytest.raises(AssertionError, match="closed"):
            client.receive_json(ws)
        ws = client.connect("/echo")
        with pytest.raises(AssertionError, match="still open"):
            client.assert_closed(ws, timeout=0.2)


def test_plain_http_get(app_factory: Any) -> None:
    app = echo_app(app_factory)
    with app.test_client() as client:
        result = client.get("/healthz")
        assert (result.status, result.text) == (200, "ok")
        assert "websocket_connections_total" in client.get("/metrics").text
