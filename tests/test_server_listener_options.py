"""TCP_NODELAY and keep-alive are set once on the listening socket where accepted sockets
inherit them (Linux), checked on the first connection; otherwise per connection as before.
Either way every accepted socket ends up with exactly the options the config asks for.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest
from gevent.queue import Queue
from helpers import SERVER_FAST

from wsflask.client import connect
from wsflask.config import Config
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")


def _holding(holder: Queue) -> Callable[[WebSocket], None]:
    def handler(ws: WebSocket) -> None:
        holder.put(ws)
        for _ in ws:
            pass

    return handler


def _options(ws: WebSocket) -> tuple[int, int, int | None]:
    sock = ws.transport
    idle = None
    if hasattr(socket, "TCP_KEEPIDLE"):
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
    return (
        int(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))),
        int(bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))),
        idle,
    )


def _accepted(server: Any, holder: Queue) -> tuple[int, int, int | None]:
    """Open one connection, return its accepted socket's options, close it."""
    client = connect(f"ws://127.0.0.1:{server.server_port}/", timeout=5)
    try:
        return _options(holder.get(timeout=5))
    finally:
        client.close()


IDLE = 60 if hasattr(socket, "TCP_KEEPIDLE") else None


@pytest.mark.parametrize("keepalive", [True, False])
def test_every_accepted_socket_has_the_configured_options(
    serve: Callable[..., Any], keepalive: bool
) -> None:
    holder: Queue = Queue()
    server = serve(_holding(holder), config=Config(**SERVER_FAST, tcp_keepalive=keepalive))
    for _ in range(3):  # the first connection checks inheritance, the others rely on it
        nodelay, alive, idle = _accepted(server, holder)
        assert (nodelay, alive) == (1, int(keepalive))
        if keepalive:
            assert idle == IDLE
    if sys.platform == "linux":  # Linux passes the listener's options to accept()
        assert server._inherits is True


def test_a_reload_of_tcp_keepalive_reaches_new_connections(serve: Callable[..., Any]) -> None:
    holder: Queue = Queue()
    config = Config(**SERVER_FAST, tcp_keepalive=True)
    server = serve(_holding(holder), config=config)
    assert _accepted(server, holder)[:2] == (1, 1)
    server.apply_config(Config(**SERVER_FAST, tcp_keepalive=False))
    assert _accepted(server, holder)[:2] == (1, 0)
    assert _accepted(server, holder)[:2] == (1, 0)
    server.apply_config(config)
    assert _accepted(server, holder) == (1, 1, IDLE)


def test_a_listener_whose_options_do_not_carry_over_is_tuned_per_connection(
    serve: Callable[..., Any],
) -> None:
    holder: Queue = Queue()
    server = serve(_holding(holder), config=Config(**SERVER_FAST, tcp_keepalive=True))
    # as on an OS that does not copy them: accepted sockets start without the options
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
    server._inherits = None
    for _ in range(2):
        assert _accepted(server, holder) == (1, 1, IDLE)
    assert server._inherits is False
