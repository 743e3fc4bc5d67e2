"""App and Route: routing, events, JSON envelopes, handshake hooks, Origin, subprotocols,
error handling, setup errors, emit, built-in pages and exactly-once disconnects.

Real sockets on 127.0.0.1:0 through the test client; a gevent Timeout bounds every wait.
"""

from __future__ import annotations

from typing import Any

import gevent
import gevent.event
import pytest

from wsflask.app import App, Route
from wsflask.errors import Reject, SetupError
from wsflask.protocol import Forbidden, NotFound, Request
from wsflask.routing import PathPattern
from wsflask.server import HTTPResponse, Upgrade


def request(path: str, *, headers: tuple[tuple[str, str], ...] = (("host", "h:1"),),
            subprotocols: tuple[str, ...] = (), key: str = "dGhlIHNhbXBsZSBub25jZQ==",
            method: str = "GET") -> Request:
    return Request(method, path, path, "", headers, key, subprotocols)


# -- path patterns --------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "path", "params"), [
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
])
def test_path_patterns(pattern: str, path: str, params: dict[str, Any] | None) -> None:
    assert PathPattern(pattern).match(path) == params


@pytest.mark.parametrize("bad", ["chat", "/x/<nope:y>", "/x/<a>/<a>", "/x/<a", "/x/<>"])
def test_bad_patterns_are_refused_at_registration(bad: str) -> None:
    with pytest.raises(ValueError):
        App().route(bad)


# -- resolve (no sockets) -------------------------------------------------------------------


def test_resolve_routes_and_converts_params() -> None:
    app = App()
    route = app.route("/user/<int:uid>")
    result = app.resolve(request("/user/7"), ("127.0.0.1", 1))
    assert isinstance(result, Upgrade)
    assert result.path_params == {"uid": 7}
    assert result.handler == route.serve
    with pytest.raises(NotFound):
        app.resolve(request("/nowhere"), ("127.0.0.1", 1))


def test_static_route_wins_over_pattern_and_same_path_is_one_route() -> None:
    app = App()
    pattern = app.route("/chat/<room>")
    static = app.route("/chat/lobby")
    assert app.route("/chat/lobby") is static
    assert app.match("/chat/lobby") == (static, {})
    assert app.match("/chat/other") == (pattern, {"room": "other"})


def test_plain_get_gets_pages_builtin_ones_and_426_for_websocket_routes() -> None:
    app = App()
    app.route("/ws")

    @app.get("/page/<int:n>")
    def page(req: Request, n: int) -> str:
        return f"<p>{n}</p>"

    plain = request("/page/3", key="")
    assert app.resolve(plain, ("127.0.0.1", 1)) == HTTPResponse(
        200, b"<p>3</p>", content_type="text/html; charset=utf-8")
    assert isinstance(app.resolve(request("/ws", key=""), ("127.0.0.1", 1)), Upgrade)
    health = app.resolve(request("/healthz", key=""), ("127.0.0.1", 1))
    assert isinstance(health, HTTPResponse) and health.body == b"ok"
    ready = app.resolve(request("/readyz", key=""), ("127.0.0.1", 1))
    assert isinstance(ready, HTTPResponse) and ready.status == 503  # no server yet
    with pytest.raises(NotFound):
        app.resolve(request("/missing", key=""), ("127.0.0.1", 1))


@pytest.mark.parametrize(("origin", "allowed", "ok"), [
    (None, (), True),
    ("http://h:1", (), True),  # same origin as the Host header
    ("https://H:1/", (), True),
    ("http://evil.example", (), False),
    ("null", (), False),
    ("http://evil.example", ("https://app.example",), False),
    ("https://app.example", ("https://app.example",), True),
    ("https://app.example", ("app.example",), True),
    ("http://evil.example", ("*",), True),
])
def test_origin_policy(origin: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    app = App(allowed_origins=allowed)
    app.route("/")
    headers = (("host", "h:1"),) + ((("origin", origin),) if origin else ())
    if ok:
        app.resolve(request("/", headers=headers), ("127.0.0.1", 1))
    else:
        with pytest.raises(Forbidden):
            app.resolve(request("/", headers=headers), ("127.0.0.1", 1))


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


def test_registering_after_the_server_exists_raises_setup_error() -> None:
    app = App()
    app.make_server("127.0.0.1", 0)
    for register in (lambda: app.route("/late"), lambda: app.on("message"),
                     lambda: app.add_before_upgrade(lambda r: None),
                     lambda: app.add_error_handler(KeyError, print),
                     lambda: app.add_page("/x", print)):
        with pytest.raises(SetupError, match=r"before app\.run\(\)"):
            register()


# -- over sockets -------------------------------------------------------------------------


def test_straight_line_handler_with_path_params(app_factory: Any) -> None:
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


def test_event_handlers_get_path_params_and_disconnect_once(app_factory: Any) -> None:
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


def test_app_on_registers_on_the_default_route(app_factory: Any) -> None:
    app = app_factory()

    @app.on("message")
    def echo(ws: Any, data: str | bytes) -> None:
        ws.send(data)

    with app.test_client() as client:
        ws = client.connect("/")
        ws.send("x")
        assert client.receive(ws) == "x"


def test_connect_handler_refusal_closes_1008_without_disconnect(app_factory: Any) -> None:
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


def json_app(app_factory: Any) -> Any:
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


def test_json_catch_all(app_factory: Any) -> None:
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


def test_before_upgrade_rejects_and_fills_the_session(app_factory: Any) -> None:
    app = app_factory()

    @app.before_upgrade
    def auth(req: Request) -> dict[str, Any]:
        token = req.header("authorization")
        if token != "Bearer good":
            raise Reject(401, "login first", headers=[("WWW-Authenticate", "Bearer")])
        return {"user": "ann"}

    @app.before_upgrade
    def more(req: Request) -> dict[str, Any]:
        return {"role": "admin"}

    @app.route("/me")
    def me(ws: Any) -> None:
        ws.send(f"{ws.session['user']}/{ws.session['role']}")

    with app.test_client() as client:
        refused = client.assert_refused("/me", 401)
        assert ("www-authenticate", "Bearer") in [(k.lower(), v) for k, v in refused.headers]
        ws = client.connect("/me", headers=[("Authorization", "Bearer good")])
        assert client.receive(ws) == "ann/admin"


def test_before_upgrade_crash_is_a_500_without_detail(app_factory: Any) -> None:
    app = app_factory()
    app.route("/")

    @app.before_upgrade
    def broken(req: Request) -> None:
        raise RuntimeError("secret detail")

    with app.test_client() as client:
        refused = client.assert_refused("/", 500)
        assert b"secret" not in refused.body


def test_origin_over_sockets(app_factory: Any) -> None:
    app = app_factory()
    app.route("/")
    with app.test_client() as client:
        client.connect("/")  # no Origin
        client.connect("/", headers=[("Origin", f"http://127.0.0.1:{client.port}")])
        client.assert_refused("/", 403, headers=[("Origin", "http://evil.example")])

    star = app_factory(allowed_origins=("*",))
    star.route("/")
    with star.test_client() as client:
        client.connect("/", headers=[("Origin", "http://evil.example")])


def test_subprotocol_over_sockets(app_factory: Any) -> None:
    app = app_factory()

    @app.route("/s", subprotocols=["b", "a"])
    def which(ws: Any) -> None:
        ws.send(str(ws.subprotocol))

    with app.test_client() as client:
        ws = client.connect("/s", subprotocols=["z", "a", "b"])
        assert ws.subprotocol == "a"
        assert client.receive(ws) == "a"
        ws = client.connect("/s", subprotocols=["z"])
        assert ws.subprotocol is None
        assert client.receive(ws) == "None"


def test_handler_exception_goes_to_errorhandler_then_1011_without_detail(
        app_factory: Any) -> None:
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


def test_setup_error_after_the_test_client_started(app_factory: Any) -> None:
    app = app_factory()
    app.route("/")
    with app.test_client() as client:
        client.connect("/")
        with pytest.raises(SetupError):
            app.route("/late")


def test_emit_envelopes_raw_data_and_skip(app_factory: Any) -> None:
    app = app_factory()
    by_id: dict[str, Any] = {}

    @app.on("connect")
    def join(ws: Any) -> None:
        app.rooms.join("lobby", ws)
        by_id[ws.id] = ws
        ws.send(ws.id)  # tell the client who it is on the server

    with app.test_client() as client:
        a, b = client.connect("/"), client.connect("/")
        a_id, b_id = client.receive(a), client.receive(b)
        assert isinstance(a_id, str) and isinstance(b_id, str)
        result = app.emit("news", {"n": 1}, to="lobby", skip=by_id[a_id])
        assert (result.sent, result.dropped, result.skipped) == (1, 0, 1)
        assert client.receive(b) == '{"event":"news","data":{"n":1}}'
        result = app.emit(b"\x00", to=["lobby", a_id])  # a is in both: delivered once
        assert result.sent == 2
        app.emit("direct", to=a_id)  # the personal room
        assert client.receive(a) == b"\x00"
        assert client.receive(a) == "direct"
        assert client.receive(b) == b"\x00"
        with pytest.raises(TimeoutError):
            client.receive(b, timeout=0.2)


def test_pages_metrics_health_ready(app_factory: Any) -> None:
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
        for name in ("websocket_connections_total", "websocket_message_rate_per_second",
                     "websocket_frame_parsing_duration_ms"):
            assert name in metrics.text
        assert 'websocket_handshakes_total{status="101"}' in metrics.text
        assert client.get("/nowhere").status == 404
        assert client.get("/ws").status == 426


def test_close_races_call_disconnect_exactly_once(app_factory: Any) -> None:
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
        gevent.sleep(0.2)  # a window for any duplicate call to show up
    assert len(counts) == n and set(counts.values()) == {1}
    assert app.rooms.count("all") == 0


def test_shutdown_races_with_closes_still_one_disconnect(app_factory: Any) -> None:
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


RUN_SCRIPT = """
import logging, sys
from wsflask import App
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
app = App()
@app.route("/echo")
def echo(ws):
    for message in ws:
        ws.send(message)
app.run("127.0.0.1", 0)
print("stopped", flush=True)
"""


def test_run_serves_until_sigterm_then_drains() -> None:
    import re
    import signal
    import sys

    from gevent import subprocess

    from wsflask.client import connect

    proc = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        with gevent.Timeout(20):
            port, lines = None, []
            while port is None:
                line = proc.stderr.readline().decode()
                lines.append(line)
                assert line, "the app exited before serving:\n" + "".join(lines)
                found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
                port = int(found[1]) if found else None
            ws = connect(f"ws://127.0.0.1:{port}/echo", timeout=5)
            ws.send("hi")
            assert ws.receive(timeout=5) == "hi"
            proc.send_signal(signal.SIGTERM)
            assert ws.receive(timeout=5) is None
            assert ws.close_code == 1001
            assert proc.wait() == 0
            assert proc.stdout.read().decode().strip() == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_app_settings_build_or_override_a_config() -> None:
    from wsflask.config import Config
    from wsflask.errors import ConfigError

    app = App(ping_interval=5.0, backpressure_policy="drop")
    assert app.config.ping_interval == 5.0 and app.heartbeat.interval == 5.0
    assert app.rooms.policy == "drop"
    base = Config(pong_timeout=3.0)
    derived = App(config=base, ping_interval=7.0).config
    assert (derived.pong_timeout, derived.ping_interval) == (3.0, 7.0)
    assert App(config=base).config is base
    with pytest.raises(ConfigError):
        App(no_such_setting=1)
