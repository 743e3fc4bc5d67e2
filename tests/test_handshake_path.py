"""The server's per-handshake shortcuts keep their meaning: the core stamps its one
``Request`` with the peer's address (no second copy), and the core's settings follow a
swapped config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from wsflask import App
from wsflask.protocol import Connection, Side
from wsflask.protocol.events import Request

HEAD = (
    b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n\r\n"
)


def _request(remote_addr: str | None, head: bytes = HEAD) -> Request:
    conn = Connection(Side.SERVER, http=True)
    conn.remote_addr = remote_addr
    conn.receive_data(head)
    (request,) = conn.events_received()
    assert isinstance(request, Request) and conn.request is request  # one object, not two
    return request


def test_the_core_stamps_its_request_with_the_peers_address() -> None:
    stamped, plain = _request("10.0.0.1"), _request(None)
    assert stamped.remote_addr == "10.0.0.1" and plain.remote_addr is None
    assert stamped.target == "/a?b=1" and stamped.subprotocols == ("chat",)
    # every other field as without the address
    assert stamped == dataclasses.replace(plain, remote_addr="10.0.0.1")
    page = _request("10.0.0.2", b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP
    assert page.key == "" and page.remote_addr == "10.0.0.2"


def test_core_settings_are_made_once_per_config(app_factory: Callable[..., App]) -> None:
    app = app_factory(max_message_size=1000)
    server = app.make_server("127.0.0.1", 0)
    first = server._core_settings()
    assert server._core_settings() is first and first[0].max_message_size == 1000
    server.apply_config(server.config.replace(max_message_size=500))
    assert server._core_settings()[0].max_message_size == 500
