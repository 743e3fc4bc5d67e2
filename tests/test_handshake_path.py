"""The server's per-handshake shortcuts keep their meaning: the peer-stamped ``Request`` is
``dataclasses.replace`` field for field, and the core's settings follow a swapped config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from wsflask import App
from wsflask.protocol.events import Request
from wsflask.websocket import _with_peer


def test_with_peer_is_replace_for_every_field() -> None:
    request = Request(
        "GET", "/a?b=1", "/a", "b=1", (("host", "x"),), "k" * 24, ("chat",),
        (("permessage-deflate", (("client_max_window_bits", None),)),),
    )  # fmt: skip
    stamped = _with_peer(request, ("10.0.0.1", 5))
    assert stamped == dataclasses.replace(request, remote_addr="10.0.0.1")
    for field in dataclasses.fields(Request):  # a new field must be carried over too
        if field.init:
            expected = "10.0.0.1" if field.name == "remote_addr" else getattr(request, field.name)
            assert getattr(stamped, field.name) == expected, field.name
    assert _with_peer(request, None) is request


def test_core_settings_are_made_once_per_config(app_factory: Callable[..., App]) -> None:
    app = app_factory(max_message_size=1000)
    server = app.make_server("127.0.0.1", 0)
    first = server._core_settings()
    assert server._core_settings() is first and first[0].max_message_size == 1000
    server.apply_config(server.config.replace(max_message_size=500))
    assert server._core_settings()[0].max_message_size == 500
