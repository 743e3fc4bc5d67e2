"""routing.py: path patterns, ``Route`` registration, the setup guard, and matching.

Pattern and registration tests need no sockets; path-parameter handling is checked over real
sockets on 127.0.0.1:0 through the test client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from wsflask import App, Request, Route
from wsflask.errors import NotFound, SetupError
from wsflask.routing import PathPattern, canonical_path
from wsflask.upgrade import Upgrade


def request(
    path: str,
    *,
    headers: tuple[tuple[str, str], ...] = (("host", "h:1"),),
    subprotocols: tuple[str, ...] = (),
    key: str = "dGhlIHNhbXBsZSBub25jZQ==",
    method: str = "GET",
) -> Request:
    return Request(method, path, path, "", headers, key, subprotocols)


# -- path patterns --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "params"),
    [
        ("/echo", "/echo", {}),
        ("/echo", "/echo/", None),
        ("/chat/<room>", "/chat/lobby", {"room": "lobby"}),
        ("/chat/<room>", "/chat/a%20b", {"room": "a b"}),
        ("/chat/<room>", "/chat/a/b", None),
        ("/chat/<string:room>", "/chat/x", {"room": "x"}),
        ("/user/<int:uid>", "/user/42", {"uid": 42}),
        ("/user/<int:uid>", "/user/x", None),
        ("/v/<float:v>", "/v/1.5", {"v": 1.5}),
        ("/files/<path:p>", "/files/a/b/c.txt", {"p": "a/b/c.txt"}),
        ("/a/<x>/b/<int:y>", "/a/q/b/7", {"x": "q", "y": 7}),
        ("/a.b", "/aXb", None),  # literal parts are escaped
        ("/%65cho", "/echo", None),  # a pattern is decoded text: % is a percent sign
        ("/100%", "/100%25", {}),
        ("/café", "/caf%C3%A9", {}),
        ("/echo", "/%65%63ho", {}),
        ("/chat/<room>", "/chat/a%2Fb", {"room": "a/b"}),  # an encoded / stays in its segment
        ("/chat/<room>", "/chat/a%252Fb", {"room": "a%2Fb"}),  # decoded once, never twice
        ("/files/<path:p>", "/files/a%2Fb/c", {"p": "a/b/c"}),
        ("/user/<int:uid>", "/user/%34%32", {"uid": 42}),
        ("/user/<int:uid>", "/user/%D9%A3", None),  # only ASCII digits are an int
    ],
)
def test_path_patterns(pattern: str, path: str, params: dict[str, Any] | None) -> None:
    canonical = canonical_path(path)
    assert canonical is not None
    assert PathPattern(pattern).match(canonical) == params


def test_canonical_path_decodes_segments_and_keeps_percent_and_slash_encoded() -> None:
    assert canonical_path("/plain/path") == "/plain/path"
    assert canonical_path("/%65cho/caf%C3%A9") == "/echo/café"
    assert canonical_path("/a%2Fb/c%25d") == "/a%2Fb/c%25d"
    assert canonical_path("/a%2fb") == "/a%2Fb"
    assert canonical_path("/%zz") == "/%25zz"  # not an escape: a percent sign
    assert canonical_path("/caf%E9") is None  # Latin-1, not UTF-8


@pytest.mark.parametrize("bad", ["chat", "/x/<nope:y>", "/x/<a>/<a>", "/x/<a", "/x/<>"])
def test_bad_patterns_are_refused_at_registration(bad: str) -> None:
    with pytest.raises(ValueError):
        App().route(bad)


def test_resolve_routes_and_converts_params() -> None:
    app = App()
    route = app.route("/user/<int:uid>")
    result = app.resolve(request("/user/7"), ("127.0.0.1", 1))
    assert isinstance(result, Upgrade)
    assert result.path_params == {"uid": 7}  # <int:> params arrive as int
    assert (
        result.handler == cast(Upgrade, app.resolve(request("/user/8"), ("127.0.0.1", 1))).handler
    )
    app.route("/other")
    assert result.handler != cast(Upgrade, app.resolve(request("/other"), ("127.0.0.1", 1))).handler
    assert app.match("/user/7") == (route, {"uid": 7})
    with pytest.raises(NotFound):
        app.resolve(request("/nowhere"), ("127.0.0.1", 1))


def test_static_route_wins_over_pattern_and_same_path_is_one_route() -> None:
    app = App()
    pattern = app.route("/chat/<room>")
    static = app.route("/chat/lobby")
    assert app.route("/chat/lobby") is static
    assert app.match("/chat/lobby") == (static, {})
    assert app.match("/chat/other") == (pattern, {"room": "other"})


def test_subprotocol_choice_is_the_first_client_offer_the_route_supports() -> None:
    app = App()
    app.route("/s", subprotocols=["chat.v2", "chat.v1"])
    app.route("/none")
    pick = app.resolve(request("/s", subprotocols=("x", "chat.v1", "chat.v2")), ("h", 1))
    assert isinstance(pick, Upgrade) and pick.subprotocol == "chat.v1"
    neither = app.resolve(request("/s", subprotocols=("x",)), ("h", 1))
    assert isinstance(neither, Upgrade) and neither.subprotocol is None
    unsupported = app.resolve(request("/none", subprotocols=("chat.v1",)), ("h", 1))
    assert isinstance(unsupported, Upgrade) and unsupported.subprotocol is None


def test_decorators_return_the_function_unchanged() -> None:
    app = App()

    def handler(*args: Any) -> None:
        pass

    assert app.route("/a")(handler) is handler
    assert app.route("/b").on("message")(handler) is handler
    assert app.on("connect")(handler) is handler
    assert app.before_upgrade(handler) is handler
    assert app.errorhandler(ValueError)(handler) is handler
    assert app.get("/p")(handler) is handler
    assert isinstance(app.route("/"), Route)


def test_conflicting_registrations_raise_setup_error() -> None:
    app = App()

    @app.route("/straight")
    def straight(ws: Any) -> None:
        pass

    with pytest.raises(SetupError, match="straight-line"):
        app.route("/straight").on("message")(straight)
    app.on("message")(straight)
    with pytest.raises(SetupError, match="one per event"):
        app.on("message")(straight)
    app.on("connect")(straight)
    app.on("connect")(straight)  # lifecycle handlers stack


def test_route_registration_after_serving_is_guarded_by_setupmethod() -> None:
    app = App()
    route = app.route("/r")
    app.make_server("127.0.0.1", 0)
    with pytest.raises(SetupError, match=r"add_handler\(\) after the app started serving"):
        route.on("message")(print)
    with pytest.raises(SetupError, match=r"set_handler\(\)"):
        route(print)
    assert route.handlers == {} and route.handler is None


# -- over sockets -------------------------------------------------------------------------


def test_straight_line_handler_with_path_params(app_factory: Callable[..., App]) -> None:
    app = app_factory()

    @app.route("/chat/<room>/<int:n>")
    def chat(ws: Any, room: str, n: int) -> None:
        for message in ws:
            ws.send(f"{room}:{n + 1}:{message}")

    with app.test_client() as client:
        ws = client.connect("/chat/lobby/41")
        ws.send("hi")
        assert client.receive(ws) == "hi".join(["lobby:42:", ""])
        client.assert_refused("/chat/lobby", 404)
        client.assert_refused("/chat/lobby/x", 404)


def test_defect12_routes_match_the_percent_decoded_path(app_factory: Callable[..., App]) -> None:
    app = app_factory()

    @app.route("/echo")
    def echo(ws: Any) -> None:
        ws.send("echo")

    @app.route("/café")
    def cafe(ws: Any) -> None:
        ws.send("café")

    @app.route("/p/<name>")
    def param(ws: Any, name: str) -> None:
        ws.send(name)

    @app.get("/page/é")
    def page(req: Request) -> str:
        return "page"

    with app.test_client() as client:
        assert client.receive(client.connect("/%65cho")) == "echo"
        assert client.receive(client.connect("/caf%C3%A9")) == "café"
        assert client.receive(client.connect("/p/caf%C3%A9")) == "café"
        assert client.receive(client.connect("/p/a%2Fb")) == "a/b"
        assert client.receive(client.connect("/p/100%25")) == "100%"
        client.assert_refused("/p/a/b", 404)
        client.assert_refused("/caf%E9", 400)  # not UTF-8 once decoded
        assert client.get("/page/%C3%A9").text == "page"
