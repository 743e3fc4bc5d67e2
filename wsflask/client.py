"""A gevent WebSocket client: ``connect(url)`` returns a ``WebSocket`` on the same driver.

It opens TCP (and TLS for ``wss://``), runs the client side of the opening handshake
(``open_client``) under one deadline, and offers permessage-deflate with
``compression=True``. The returned ``WebSocket`` answers the server's calls once handlers
are registered with ``ws.on_call(event, fn)``. No reconnection, no proxies, no monkey-patching.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import gevent.socket
from gevent import Timeout

from .config import Config
from .errors import InvalidHandshakeResponse
from .protocol import Connection, Side
from .transport import wrap_tls
from .websocket import WebSocket

__all__ = ["connect", "open_client"]


def connect(
    url: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: Iterable[tuple[str, str]] = (),
    timeout: float = 10.0,
    config: Config | None = None,
    ssl_context: ssl.SSLContext | None = None,
    compression: bool = False,
) -> WebSocket:
    """Open a WebSocket connection to ``url`` (``ws://`` or ``wss://``).

    Args:
        url: ``ws://host[:port]/path[?query]`` or ``wss://...``.
        subprotocols: offered in order; the chosen one is ``ws.subprotocol``.
        headers: extra request headers (e.g. ``("Origin", "https://app.example")``).
        timeout: seconds for TCP connect, TLS and the HTTP handshake together.
        config: limits for what the server may send (``max_message_size``...) and
            ``close_timeout``; defaults to ``Config()``.
        ssl_context: for ``wss://``; defaults to ``ssl.create_default_context()``.
        compression: offer permessage-deflate with ``config``'s window bits, memLevel,
            threshold and context takeover (``Config.deflate_settings()``); the server may
            decline (then ``ws.extensions == ""``). ``ws.send(data, compress=False)`` opts a
            message out.

    Returns:
        an open ``WebSocket``: call ``send()``, ``receive()``, then ``close()``. To answer
        the server's calls (``ws.call`` on its side), register ``ws.on_call(event, fn)``:
        ``fn(data)`` returns the ack's data; other calls then get an "UnknownEvent" error.
        Calls are answered while this side reads (``receive()``, ``for m in ws``).

    Raises:
        HandshakeRejected: the server answered with a non-101 status (``.status``).
        InvalidHandshakeResponse: the answer was not a valid WebSocket handshake.
        TimeoutError: ``timeout`` passed. OSError: TCP or TLS failed.
    """
    secure, host, port, target = _parse_url(url)
    config = config or Config()
    sock = gevent.socket.create_connection((host, port), timeout=timeout)
    timer = Timeout(timeout)
    done = False
    try:
        with timer:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)  # from here the driver's timers apply
            if secure:
                context = ssl_context or ssl.create_default_context()
                sock = wrap_tls(sock, context, server_hostname=host)
                sock.do_handshake()
            deflate = config.deflate_settings() if compression else None
            conn = Connection(Side.CLIENT, limits=config.limits(), deflate=deflate)
            conn.connect(
                _host_header(host, port, secure), target, subprotocols=subprotocols, headers=headers
            )
            ws = WebSocket(sock, conn, config=config, remote_address=_peer(sock))
            open_client(ws)
            done = True
            return ws
    except Timeout as exc:
        if exc is not timer:
            raise
        raise TimeoutError(f"WebSocket handshake with {url} took over {timeout} s") from None
    finally:
        if not done:
            sock.close()


def open_client(ws: WebSocket) -> None:
    """Send the request ``Connection.connect()`` queued; read until the 101 (RFC 6455 §4.1).

    Raises:
        HandshakeRejected: the server answered with another status (``Closed.cause``).
        InvalidHandshakeResponse: the answer was not a valid handshake response.
    """
    ws.flush()
    ws.read_handshake()
    if not ws.opened:  # no 101: refused, invalid, or EOF
        if isinstance(ws.close_cause, InvalidHandshakeResponse):
            raise ws.close_cause
        raise InvalidHandshakeResponse(ws.close_reason or "closed during the handshake")


def _parse_url(url: str) -> tuple[bool, str, int, str]:
    """Split a ws/wss URL into (secure, host, port, request target)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return secure, parts.hostname, port, target


def _host_header(host: str, port: int, secure: bool) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == (443 if secure else 80) else f"{name}:{port}"


def _peer(sock: Any) -> tuple[str, int] | None:
    try:
        address = sock.getpeername()
    except OSError:
        return None
    return str(address[0]), int(address[1])
