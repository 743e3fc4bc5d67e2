"""``Request.args``, ``Request.cookies`` and ``Request.remote_addr`` (issue 15): parsed
lazily and cached, over the built-in server and the pywsgi handler on real sockets."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gevent import pywsgi

from wsflask import App
from wsflask.client import connect
from wsflask.protocol import Request
from wsflask.protocol.query import MultiDict, parse_cookies, parse_query
from wsflask.wsgi import WSGIServer

WAIT = 5.0


def _request(query: str = "", headers: tuple[tuple[str, str], ...] = ()) -> Request:
    target = f"/x?{query}" if query else "/x"
    return Request("GET", target, "/x", query, headers, "k" * 24)


def test_args_are_percent_decoded_multi_valued_and_keep_blanks() -> None:
    args = _request("token=a%2Fb&x=1&x=2&name=J%C3%BCrgen+M&flag&bad=%FF").args
    assert args.get("token") == "a/b"
    assert args["x"] == "1" and args.getlist("x") == ["1", "2"]
    assert args["name"] == "Jürgen M"
    assert args["flag"] == ""
    assert args["bad"] == "\ufffd"
    assert args.get("missing") is None and args.getlist("missing") == []
    assert list(args) == ["token", "x", "name", "flag", "bad"] and len(args) == 5


def test_query_keeps_the_raw_string_and_parsing_is_lazy_and_cached() -> None:
    request = _request("a=%20")
    assert request.query == "a=%20"
    assert request._args is None and request._cookies is None  # nothing parsed yet
    first = request.args
    assert first is request.args  # cached
    assert request.args["a"] == " "


def test_cookies_from_every_cookie_header_first_wins() -> None:
    request = _request(headers=(("cookie", 'sid=abc; theme="dark"; junk; =x'), ("cookie", "sid=2")))
    assert request.cookies["sid"] == "abc"
    assert request.cookies.getlist("sid") == ["abc", "2"]
    assert request.cookies["theme"] == "dark"
    assert "junk" not in request.cookies and len(request.cookies) == 2
    assert request.cookies is request.cookies
    assert _request().cookies == {}


def test_parsers_on_empty_input() -> None:
    assert parse_query("") == {} and parse_cookies([]) == {}
    assert isinstance(parse_query("a=1"), MultiDict)
    assert parse_query("a=1&b=2&a=3").pairs() == (("a", "1"), ("b", "2"), ("a", "3"))


def _record_app(app_factory: Callable[..., App]) -> tuple[Any, list[Any]]:
    app = app_factory()
    seen: list[Any] = []

    @app.before_upgrade
    def hook(request: Request) -> dict[str, Any]:
        seen.append(("hook", request.args.get("token"), request.remote_addr))
        return {}

    @app.route("/r")
    def handler(ws: Any) -> None:
        request = ws.request
        ws.send(
            json.dumps(
                {
                    "x": request.args.getlist("x"),
                    "sid": request.cookies.get("sid"),
                    "addr": request.remote_addr,
                    "query": request.query,
                }
            )
        )

    return app, seen


def test_handler_and_hook_see_args_cookies_and_peer_on_the_server(
    app_factory: Callable[..., App],
) -> None:
    app, seen = _record_app(app_factory)
    with app.test_client() as client:
        ws = client.connect("/r?token=t%21&x=1&x=2", headers=[("Cookie", "sid=s1; a=b")])
        assert client.receive_json(ws) == {
            "x": ["1", "2"],
            "sid": "s1",
            "addr": "127.0.0.1",
            "query": "token=t%21&x=1&x=2",
        }
    assert seen == [("hook", "t!", "127.0.0.1")]


def test_pywsgi_handler_passes_the_peer_too(app_factory: Callable[..., App]) -> None:
    app, seen = _record_app(app_factory)

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [])
        return [b""]

    server = WSGIServer(("127.0.0.1", 0), wsgi_app, handler_class=app.handler_class, log=None)
    assert isinstance(server, pywsgi.WSGIServer)
    server.start()
    try:
        ws = connect(f"ws://127.0.0.1:{server.server_port}/r?x=3&token=w", timeout=WAIT)
        try:
            assert json.loads(str(ws.receive(timeout=WAIT))) == {
                "x": ["3"],
                "sid": None,
                "addr": "127.0.0.1",
                "query": "x=3&token=w",
            }
        finally:
            ws.close()
    finally:
        server.stop(timeout=2)
        app.heartbeat.stop()
        app.notify_stopped()
    assert seen == [("hook", "w", "127.0.0.1")]
