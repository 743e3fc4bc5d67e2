"""App: resolving handshakes (Origin, hooks, subprotocols), the setup phase, settings and
services, emit/send, and run() until SIGTERM.

Real sockets on 127.0.0.1:0 through the test client; a gevent Timeout bounds every wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest

from wsflask import App, Reject, Request, SetupError
from wsflask.protocol import Forbidden
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


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, (), True),
        ("http://h:1", (), True),  # same origin as the Host header
        ("http://H:1/", (), True),
        ("https://h:1", (), False),  # another scheme is another origin (RFC 6454 §5)
        ("http://h", (), False),  # port 80 is not port 1
        ("http://h:01", (), True),
        ("http://evil.example", (), False),
        ("null", (), False),
        ("http://evil.example", ("https://app.example",), False),
        ("https://app.example", ("https://app.example",), True),
        ("https://app.example", ("app.example",), True),
        ("https://app.example:443", ("https://app.example",), True),
        ("https://app.example", ("https://app.example:8443",), False),
        ("http://app.example", ("https://app.example",), False),
        ("http://evil.example", ("*",), True),
    ],
)
def test_origin_policy(origin: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    app = App(allowed_origins=allowed)
    app.route("/")
    headers = (("host", "h:1"),) + ((("origin", origin),) if origin else ())
    if ok:
        app.resolve(request("/", headers=headers), ("127.0.0.1", 1))
    else:
        with pytest.raises(Forbidden):
            app.resolve(request("/", headers=headers), ("127.0.0.1", 1))


def test_registering_after_the_server_exists_raises_setup_error() -> None:
    app = App()
    app.make_server("127.0.0.1", 0)
    for register in (
        lambda: app.route("/late"),
        lambda: app.on("message"),
        lambda: app.add_before_upgrade(lambda r: None),
        lambda: app.add_error_handler(KeyError, print),
        lambda: app.add_page("/x", print),
        lambda: app.configure(app.config),
    ):
        with pytest.raises(SetupError, match=r"before app\.run\(\)"):
            register()


def test_resolve_does_not_end_setup_but_the_wsgi_entry_points_do() -> None:
    app = App()
    app.route("/a")
    assert isinstance(app.resolve(request("/a"), ("127.0.0.1", 1)), Upgrade)
    app.route("/b")  # resolving is a query: registration is still open
    app.wsgi_middleware(lambda environ, start_response: [])
    with pytest.raises(SetupError, match=r"add_route\(\) after the app started serving"):
        app.route("/c")
    other = App()
    assert other.handler_class is not None
    with pytest.raises(SetupError):
        other.get("/p")(print)


def test_configure_rebuilds_the_heartbeat_and_the_bridge() -> None:
    from wsflask.config import Config

    app = App()
    assert app.cluster is None
    old = app.heartbeat
    app.configure(Config(ping_interval=3.0, backplane="memory://configure-test"))
    assert app.heartbeat is not old and app.heartbeat.interval == 3.0
    assert app.cluster is not None
    app.configure(Config())
    assert app.cluster is None


def test_before_upgrade_rejects_and_fills_the_session(app_factory: Callable[..., App]) -> None:
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


def test_before_upgrade_crash_is_a_500_without_detail(app_factory: Callable[..., App]) -> None:
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


def test_a_tls_server_is_its_https_origin() -> None:
    app = App(certfile="unused.pem")  # the resolver reads the scheme only; no server here
    app.route("/")
    for origin, ok in (("https://h:1", True), ("http://h:1", False)):
        headers = (("host", "h:1"), ("origin", origin))
        if ok:
            app.resolve(request("/", headers=headers), ("127.0.0.1", 1))
        else:
            with pytest.raises(Forbidden):
                app.resolve(request("/", headers=headers), ("127.0.0.1", 1))


def handshake_status(raw_peer: Any, port: int, host: str, origin: str, extra: str = "") -> int:
    """The status the server answers to a handshake with these Host/Origin headers."""
    peer = raw_peer(port)
    peer.sock.sendall(
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {origin}\r\n{extra}\r\n".encode()
    )
    status = int(bytes(peer.read_head()).split(b" ", 2)[1])
    peer.close()
    return status


def test_defect14_same_origin_compares_scheme_host_and_port(
    app_factory: Any, raw_peer: Any
) -> None:
    app = app_factory(allowed_hosts=("example.com", "::1"))  # a loopback bind: name them
    app.route("/")
    with app.test_client() as client:
        port = client.port
        for host, origin, status in [
            ("example.com", "https://example.com", 403),  # a plain-HTTP server
            ("example.com:80", "http://example.com", 101),  # default port normalised
            ("example.com", "http://example.com:80", 101),
            ("example.com:8080", "http://example.com", 403),
            ("Example.COM", "http://example.com", 101),
            ("[::1]:8080", "http://[::1]:8080", 101),
        ]:
            assert handshake_status(raw_peer, port, host, origin) == status, (host, origin)
        # behind a TLS-terminating proxy the scheme is the proxy's
        proxied = "X-Forwarded-Proto: https\r\n"
        assert (
            handshake_status(raw_peer, port, "example.com", "https://example.com", proxied) == 101
        )
        assert handshake_status(raw_peer, port, "example.com", "http://example.com", proxied) == 403


def test_subprotocol_over_sockets(app_factory: Callable[..., App]) -> None:
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


def test_setup_error_after_the_test_client_started(app_factory: Any) -> None:
    app = app_factory()
    app.route("/")
    with app.test_client() as client:
        client.connect("/")
        with pytest.raises(SetupError):
            app.route("/late")


def test_emit_always_sends_an_envelope_and_send_always_sends_raw_data(
    app_factory: Callable[..., App],
) -> None:
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
        result = app.send(b"\x00", to=["lobby", a_id])  # a is in both: delivered once
        assert result.sent == 2
        app.emit("direct", to=a_id)  # the personal room; an event even without data
        app.send("raw", to=a_id)
        assert client.receive(a) == b"\x00"
        assert client.receive(a) == '{"event":"direct","data":null}'
        assert client.receive(a) == "raw"
        assert client.receive(b) == b"\x00"
        with pytest.raises(TimeoutError):
            client.receive(b, timeout=0.2)


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

    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT], stderr=subprocess.PIPE, stdout=subprocess.PIPE
    )
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
