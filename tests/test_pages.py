"""pages.py: plain-HTTP pages next to WebSocket routes, and /metrics, /healthz, /readyz."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wsflask import App, HandshakeError, HTTPResponse, Request, Upgrade
from wsflask.protocol import MethodNotAllowed, NotFound


def request(
    path: str,
    *,
    headers: tuple[tuple[str, str], ...] = (("host", "h:1"),),
    subprotocols: tuple[str, ...] = (),
    key: str = "dGhlIHNhbXBsZSBub25jZQ==",
    method: str = "GET",
) -> Request:
    return Request(method, path, path, "", headers, key, subprotocols)


def test_plain_get_gets_pages_builtin_ones_and_426_for_websocket_routes() -> None:
    app = App()
    app.route("/ws")

    @app.get("/page/<int:n>")
    def page(req: Request, n: int) -> str:
        return f"<p>{n}</p>"

    plain = request("/page/3", key="")
    assert app.resolve(plain, ("127.0.0.1", 1)) == HTTPResponse(
        200, b"<p>3</p>", content_type="text/html; charset=utf-8"
    )
    assert isinstance(app.resolve(request("/ws", key=""), ("127.0.0.1", 1)), Upgrade)
    health = app.resolve(request("/healthz", key=""), ("127.0.0.1", 1))
    assert isinstance(health, HTTPResponse) and health.body == b"ok"
    ready = app.resolve(request("/readyz", key=""), ("127.0.0.1", 1))
    assert isinstance(ready, HTTPResponse) and ready.status == 503  # no server yet
    with pytest.raises(NotFound):
        app.resolve(request("/missing", key=""), ("127.0.0.1", 1))


def test_page_crash_is_a_500_without_detail_and_post_is_405() -> None:
    app = App()

    @app.get("/broken")
    def broken(req: Request) -> str:
        raise RuntimeError("secret detail")

    @app.get("/wrong")
    def wrong(req: Request) -> int:
        return 3

    for path in ("/broken", "/wrong"):
        with pytest.raises(HandshakeError) as refused:
            app.resolve(request(path, key=""), ("127.0.0.1", 1))
        assert refused.value.status == 500 and "secret" not in str(refused.value)
    with pytest.raises(MethodNotAllowed):
        app.resolve(request("/healthz", key="", method="POST"), ("127.0.0.1", 1))


def test_pages_metrics_health_ready(app_factory: Callable[..., App]) -> None:
    app = app_factory()
    app.route("/ws")

    @app.get("/")
    def index(req: Request) -> str:
        return "<h1>chat</h1>"

    @app.get("/teapot")
    def teapot(req: Request) -> HTTPResponse:
        return HTTPResponse(418, b"short and stout")

    with app.test_client() as client:
        client.connect("/ws")
        page = client.get("/")
        assert page.status == 200 and page.text == "<h1>chat</h1>"
        assert page.headers["content-type"].startswith("text/html")
        assert client.get("/teapot").status == 418
        assert client.get("/healthz").text == "ok"
        assert client.get("/readyz").status == 200
        metrics = client.get("/metrics")
        assert metrics.status == 200
        for name in (
            "websocket_connections_total",
            "websocket_message_rate_per_second",
            "websocket_frame_parsing_duration_ms",
        ):
            assert name in metrics.text
        assert 'websocket_handshakes_total{status="101"}' in metrics.text
        assert client.get("/nowhere").status == 404
        assert client.get("/ws").status == 426
