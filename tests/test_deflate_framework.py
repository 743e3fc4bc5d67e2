"""permessage-deflate in the framework: Config, the drivers, ws.send(compress=), rooms, metrics.

Real sockets on 127.0.0.1 (the app's test server) and wsflask's own client with
``compression=True``; the protocol layer has its own tests under tests/protocol.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import pytest

from wsflask import App
from wsflask.client import connect
from wsflask.config import Config
from wsflask.errors import ConfigError
from wsflask.protocol import DeflateSettings

pytestmark = pytest.mark.timeout(120)


def payload(i: int, size: int = 1024) -> str:
    return json.dumps({"seq": i, "items": ["alpha", "bravo"] * (size // 16)})[:size]


def test_config_defaults_and_validation() -> None:
    settings = Config().deflate_settings()
    assert settings == DeflateSettings(
        server_max_window_bits=12, client_max_window_bits=12, mem_level=5,
        compress_threshold=128,
    )  # fmt: skip
    nct = Config(deflate_no_context_takeover=True).deflate_settings()
    assert nct is not None and nct.server_no_context_takeover and nct.client_no_context_takeover
    assert Config(compression=False).deflate_settings() is None
    assert Config.from_env(environ={"WSFLASK_COMPRESSION": "off"}).compression is False
    for bad in (
        {"deflate_window_bits": 8},
        {"deflate_mem_level": 0},
        {"compress_threshold": -1},
        {"compression": "yes"},
    ):
        with pytest.raises(ConfigError):
            Config(**bad)


def test_client_offer_is_accepted_and_send_can_opt_out(app_factory: Callable[..., App]) -> None:
    app = app_factory()
    server_side: list[Any] = []

    @app.route("/echo")
    def echo(ws: Any) -> None:
        server_side.append(ws)
        for message in ws:
            ws.send(message, compress=not message.startswith("plain"))

    with app.test_client(timeout=30) as client:
        ws = connect(client.url("/echo"), compression=True, timeout=30)
        assert ws.extensions == (
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        )
        assert ws.deflate is not None and ws.deflate.local_max_window_bits == 12
        big, plain = payload(1), "plain " + payload(2)
        for message in (big, plain, "x"):  # "x" is under the threshold: compress=True forces it
            ws.send(message)
            assert ws.receive(timeout=30) == message
        codec = server_side[0].deflate
        assert server_side[0].extensions == ws.extensions
        # the server compressed big and "x" (forced), not the opted-out plain one
        assert codec.raw_out == len(big) + 1
        assert ws.deflate.inflated_in == len(big) + 1
        assert codec.inflated_in == len(big) + len(plain)  # the client compressed both
        ws.close()


def test_server_with_compression_off_declines(app_factory: Callable[..., App]) -> None:
    app = app_factory(compression=False)

    @app.route("/echo")
    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    with app.test_client(timeout=30) as client:
        ws = connect(client.url("/echo"), compression=True, timeout=30)
        assert ws.extensions == "" and ws.deflate is None
        ws.send(payload(1))
        assert ws.receive(timeout=30) == payload(1)
        ws.close()


@pytest.mark.parametrize("no_takeover", [False, True], ids=["takeover", "no-takeover"])
def test_room_broadcast_reaches_compressed_and_plain_members(
    app_factory: Callable[..., App], no_takeover: bool
) -> None:
    app = app_factory(deflate_no_context_takeover=no_takeover)
    members: list[Any] = []
    everyone = gevent.event.Event()

    @app.route("/room")
    def room(ws: Any) -> None:
        app.rooms.join("r", ws)
        members.append(ws)
        if len(members) == 4:
            everyone.set()
        for _ in ws:
            pass

    with app.test_client(timeout=30) as client:
        clients = [connect(client.url("/room"), compression=i < 3, timeout=30) for i in range(4)]
        assert everyone.wait(30)
        keys = {ws.id: ws.deflate.share_key if ws.deflate else "plain" for ws in members}
        assert list(keys.values()).count("plain") == 1
        shared = [key for key in keys.values() if key != "plain"]
        if no_takeover:  # one compression per broadcast serves all three
            assert shared[0] is not None and len(set(shared)) == 1
        else:  # each compressed in its own stream
            assert shared == [None, None, None]
        messages: list[str | bytes] = [*(payload(i) for i in range(5)), "short", b"\x00" * 4096]
        for message in messages:
            assert app.rooms.broadcast("r", message).sent == 4
        for ws in clients:
            for message in messages:
                assert ws.receive(timeout=30) == message
        compressed_members = [ws for ws in members if ws.deflate is not None]
        for ws in compressed_members:  # shared frames are counted on each member's codec too
            assert ws.deflate.raw_out == sum(len(m) for m in messages if len(m) >= 128)
            assert 0 < ws.deflate.compressed_out < ws.deflate.raw_out
        text = app.metrics.render()
        assert 'websocket_deflate_bytes_total{direction="out",form="compressed"}' in text
        _, _, raw_out, zout = app.metrics.deflate_bytes()
        assert raw_out == 3 * compressed_members[0].deflate.raw_out and 0 < zout < raw_out
        assert "websocket_deflate_compress_seconds_total" in text
        assert app.metrics.compress_seconds > 0
        for ws in clients:
            ws.close()


def test_closed_connections_keep_their_bytes_in_the_metrics(
    app_factory: Callable[..., App],
) -> None:
    app = app_factory()
    done = gevent.event.Event()

    @app.route("/echo")
    def echo(ws: Any) -> None:
        ws.add_close_callback(lambda _: done.set())
        for message in ws:
            ws.send(message)

    with app.test_client(timeout=30) as client:
        ws = connect(client.url("/echo"), compression=True, timeout=30)
        ws.send(payload(1))
        assert ws.receive(timeout=30) == payload(1)
        before = app.metrics.deflate_bytes()
        ws.close()
        assert done.wait(30)
        assert app.server is not None and app.server.wait_drained(30)
        assert app.metrics.deflate_bytes() == before
        assert before[1] == before[2] == len(payload(1))
