"""WebSocket: the one driver where ``protocol.Connection`` meets a socket (STYLE.md rule 5).

What it does: reads the socket on demand (one ``recv`` per wake-up), feeds the sans-I/O core,
writes everything the core produced in one send, then handles the events; gives handlers a
blocking API (``for message in ws``, ``receive(timeout=)``, ``send()``, ``close()``); gives
broadcasters a write that never blocks (``send_prepared()``: the kernel, else a bounded
outbox drained by a short-lived writer greenlet). The handshake, ``run()``, closing (the
close timer) and the cleanup, exactly once in the order of ARCHITECTURE.md §4, come from its
base ``lifecycle.Lifecycle``; they are ``WebSocket`` methods like the others.

What it does not do: no parsing or framing (the core does that), no accept loop or routing
(``server.py``), no timers per message (the heartbeat pings), no reader greenlet: messages are
read when the handler asks, so a handler that does not read leaves the bytes in the kernel and
TCP slows the peer down (battery BP-03).

Drivers (server, client, WSGI handler, test client) use it as::

    ws = WebSocket(sock, Connection(Side.SERVER, http=True), config=config)
    request = ws.read_request()          # then resolve it, and either
    ws.accept(subprotocol=None)          # ... 101, then
    ws.run(handler)                      # handler(ws) in this greenlet, then close + cleanup
    # or ws.reject(403) / ws.respond(200, b"ok")
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent import Timeout, getcurrent

from .config import Config
from .errors import ConnectionClosed
from .lifecycle import Lifecycle
from .protocol import (
    BinaryMessage,
    Closed,
    Connection,
    Event,
    Opened,
    PerMessageDeflate,
    Ping,
    Pong,
    Request,
    Side,
    State,
    TextMessage,
)
from .transport import wrap_tls

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["HeartbeatLike", "WebSocket", "wrap_tls"]

logger = logging.getLogger("wsflask")

_ids = itertools.count(1)
_DEFAULT_CONFIG = Config()


class HeartbeatLike(Protocol):
    """What the driver and the server need from ``wsflask.heartbeat.Heartbeat``."""

    def add(self, ws: WebSocket) -> None: ...
    def remove(self, ws: WebSocket) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class WebSocket(Lifecycle):
    """One WebSocket connection, server or client side, on a gevent socket.

    Handlers read with ``for message in ws`` or ``receive()``, write with ``send()``, and end
    with ``close()`` (or just return). Fan-out code writes with ``send_prepared()``, which
    never blocks. Every method may be called from any greenlet unless it says otherwise; at
    most one greenlet reads at a time.

    Attributes:
        id: unique per process.
        request: server side, the handshake ``Request`` (path, query, headers).
        remote_address: the peer's ``(host, port)``.
        subprotocol: the negotiated subprotocol, or ``None``.
        extensions: the negotiated ``Sec-WebSocket-Extensions`` value (e.g.
            ``"permessage-deflate; client_max_window_bits=12"``), ``""`` when none.
        deflate: the permessage-deflate codec (``protocol.PerMessageDeflate``: settings,
            byte counters, ``memory_estimate()``) once negotiated, else ``None``.
        session: data returned by ``before_upgrade`` hooks; free for the app to use.
        path_params: the route's path parameters.
        rooms: names of the rooms this connection is in (maintained by ``rooms.py``).
        close_code: the code that ended the connection, ``None`` while it is open.
        close_reason: the reason that goes with ``close_code``.
        latency: seconds, round-trip time of the last heartbeat ping that got its pong.
        last_received: ``time.monotonic()`` of the last frame received (unmatched pongs excluded).
        ping_sent_at: monotonic time of the outstanding heartbeat ping, ``None`` when none.
    """

    __slots__ = (  # lifecycle.Lifecycle holds the closing state's slots
        "__weakref__", "_cause", "_conn", "_drained", "_heartbeat", "_messages", "_metrics",
        "_opened_at", "_owner", "_ping_payload", "_reading", "_rx", "deflate", "extensions",
        "id", "last_received", "latency", "path_params", "ping_sent_at", "remote_address",
        "request", "rooms", "session", "subprotocol",
    )  # fmt: skip

    def __init__(self, sock: Any, connection: Connection, *, config: Config | None = None,
                 metrics: Metrics | None = None, heartbeat: HeartbeatLike | None = None,
                 remote_address: tuple[str, int] | None = None,
                 connection_id: str | None = None) -> None:
        self.id = connection_id or format(next(_ids), "x")
        self.request: Request | None = connection.request
        self.remote_address = remote_address
        self.subprotocol: str | None = connection.subprotocol
        self.extensions = ""
        self.deflate: PerMessageDeflate | None = None
        self.session: dict[str, Any] = {}
        self.path_params: dict[str, str] = {}
        self.rooms: set[str] = set()
        self.close_code: int | None = None
        self.close_reason = ""
        self.latency: float | None = None
        self.last_received = monotonic()
        self.ping_sent_at: float | None = None
        super().__init__(sock, config or _DEFAULT_CONFIG)
        self._conn = connection
        self._metrics = metrics
        self._heartbeat = heartbeat
        self._messages: deque[str | bytes] | None = None  # None while idle: no buffer kept
        self._reading = False  # a greenlet is blocked in recv
        self._owner: Any = None  # server side: the greenlet running run()
        self._callbacks: list[Callable[[WebSocket], None]] | None = None
        self._finished = False
        self._cause: Exception | None = None
        self._close_deadline = 0.0
        self._closer: gevent.Greenlet | None = None
        self._opened_at = 0.0
        self._ping_payload: bytes | None = None
        self._rx = False
        self._head_log: bytes | None = None
        self._drained = True  # the last read emptied the kernel buffer: wait before reading

    def __repr__(self) -> str:
        return f"<WebSocket {self.id} {self._conn.state.name} {self.remote_address}>"

    # ------------------------------------------------------------------ queries

    @property
    def is_open(self) -> bool:
        """True while messages may be sent (handshake done, no Close sent or received)."""
        return self._conn.state is State.OPEN and not self._broken

    @property
    def state(self) -> State:
        """The protocol state: CONNECTING, OPEN, CLOSING or CLOSED."""
        return self._conn.state

    @property
    def request_started(self) -> bool:
        """Server side: True once any byte arrived (a timeout then answers 408)."""
        return self._rx

    # ------------------------------------------------------------------ the frame loop

    def _pump(self, timeout: float | None = None) -> bool:
        """One wake-up. Returns False when ``timeout`` passed with nothing received.

        The order is fixed (STYLE.md rule 5): 1. one recv; 2. feed the core; 3. write all it
        produced (pongs, close echo, HTTP errors) in one send; 4. only then handle events, so
        a handler that answers a message never races the core's own output.
        """
        conn = self._conn
        if conn.state is State.CLOSED:  # abort()/fail() ended the core: only events are left
            self._dispatch(conn.events_received())
            if not self._finished:
                self._finish()
            return True
        closing = conn.state is State.CLOSING
        wait = timeout
        if closing:  # the close timer: the peer's Close is due by _close_deadline
            left = self._close_deadline - monotonic()
            wait = left if timeout is None else min(timeout, left)
        data = self._recv(wait)  # 1.
        if data is None:
            if not closing or monotonic() < self._close_deadline:
                return False
            self._break_transport()  # close_timeout passed: drop TCP, report 1006
            data = b""
        metrics = self._metrics
        started = perf_counter() if metrics is not None else 0.0
        if data:  # 2.
            self._rx = True
            if self._head_log is not None:
                self._head_log += data[: 65536 - len(self._head_log)]
            conn.receive_data(data)
        else:
            conn.receive_eof()
        if metrics is not None:
            metrics.frame_parse(perf_counter() - started)
        out = conn.data_to_send()  # 3.
        if out:
            self._write(out)
        self._dispatch(conn.events_received())  # 4.
        return True

    def _recv(self, wait: float | None) -> bytes | None:
        """Read once; ``b""`` on EOF or a transport error, ``None`` when ``wait`` passed."""
        if wait is not None and wait <= 0:
            return None
        if wait is None and self._raw is not None:
            return self._recv_raw(self._raw)
        self._reading = True
        timer = Timeout(wait) if wait is not None else None
        try:
            if timer is None:
                return bytes(self._sock.recv(self._config.read_size))
            with timer:
                return bytes(self._sock.recv(self._config.read_size))
        except Timeout as exc:
            if exc is not timer:
                raise
            return None
        except OSError:  # ECONNRESET, TLS errors, a socket closed under us: the transport ended
            return b""
        finally:
            self._reading = False

    def _recv_raw(self, raw: Any) -> bytes:
        """Plain TCP, no deadline: the OS socket and the hub directly, no gevent layers.

        Waits first when the last read drained the kernel (the usual case: a whole read
        costs one ``recv`` and no ``EAGAIN``); reads first after a full read. The shallow
        wait keeps the greenlet's saved C stack small while it is idle.
        """
        sock, size = self._sock, self._config.read_size
        self._reading = True
        try:
            if self._drained:
                _wait_readable(sock)
            while True:
                try:
                    data: bytes = raw.recv(size)
                    break
                except BlockingIOError:
                    _wait_readable(sock)
        except OSError:  # ECONNRESET, a socket closed under us: the transport ended
            return b""
        finally:
            self._reading = False
        self._drained = len(data) < size
        return data

    def _dispatch(self, events: list[Event]) -> None:
        """Handle events in order; ``Closed`` (always last) runs the cleanup."""
        now = 0.0
        for event in events:
            if isinstance(event, (TextMessage, BinaryMessage)):
                self.last_received = now = now or monotonic()
                self._on_message(event.data)
            elif isinstance(event, Ping):
                self.last_received = now = now or monotonic()
            elif isinstance(event, Pong):
                self._on_pong(event.data)
            elif isinstance(event, Opened):
                self._on_opened(event)
            elif isinstance(event, Request):
                self.request = event
            elif isinstance(event, Closed):
                self._on_closed(event)

    def _on_message(self, data: str | bytes) -> None:
        if self._metrics is not None:
            self._metrics.message_in(_nbytes(data))
        if self._conn.state is State.CLOSING:
            return  # we sent Close: nobody will read it, keep memory bounded
        if self._messages is None:
            self._messages = deque()
        self._messages.append(data)

    def _on_pong(self, data: bytes) -> None:
        # Only the pong that answers our heartbeat ping proves liveness (battery HB-03).
        if self._ping_payload is None or data != self._ping_payload:
            return
        now = monotonic()
        self.latency = now - (self.ping_sent_at or now)
        self.last_received = now
        self.ping_sent_at = None
        self._ping_payload = None

    def _on_opened(self, event: Opened) -> None:
        self.subprotocol = event.subprotocol
        self.extensions = event.extensions
        self.deflate = self._conn.deflate
        self._opened_at = self.last_received = monotonic()
        if self._metrics is not None and self._conn.side is Side.SERVER:
            if self.deflate is None:
                self._metrics.connection_opened()
            else:  # its counters are read at render time
                self._metrics.connection_opened(self.deflate)
        if self._heartbeat is not None:
            self._heartbeat.add(self)

    def _on_closed(self, event: Closed) -> None:
        self.close_code = event.code
        self.close_reason = event.reason
        self._cause = event.cause
        self._finish()

    # ------------------------------------------------------------------ reading

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        """Return the next message (``str`` for text, ``bytes`` for binary).

        Returns ``None`` once the connection is closed. Blocks this greenlet until a message
        arrives; pings are answered meanwhile.

        Raises:
            TimeoutError: ``timeout`` seconds passed without a message; the connection stays
                usable, call ``receive()`` again.
            RuntimeError: another greenlet is already reading this connection.
        """
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            messages = self._messages
            if messages:
                message = messages.popleft()
                if not messages:
                    self._messages = None
                return message
            if self._finished:
                return None
            if self._reading:
                raise RuntimeError(f"{self!r} is already being read by another greenlet")
            wait = None if deadline is None else deadline - monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError(f"no message within {timeout} s")
            self._pump(wait)

    def __iter__(self) -> Iterator[str | bytes]:
        """Yield messages until the connection closes (then the loop just ends)."""
        while (message := self.receive()) is not None:
            yield message

    # ------------------------------------------------------------------ writing

    def send(self, data: str | bytes, compress: bool | None = None) -> None:
        """Send a message: ``str`` as text, bytes-like as binary.

        ``compress`` matters once permessage-deflate was negotiated (``ws.extensions``):
        ``None`` compresses messages of ``compress_threshold`` bytes and more, ``True``
        whatever the size, ``False`` never: use it for a message that holds a secret next to
        data an attacker chooses (RFC 7692 §8, CRIME-style length oracles).

        May block this greenlet while the kernel and the outbox are full (backpressure).
        From fan-out code use ``send_prepared()``, which never blocks.

        Raises:
            ConnectionClosed: the connection is closing or closed.
        """
        conn = self._conn
        if conn.state is not State.OPEN or self._broken:
            raise self._closed_error()
        timed = self.deflate is not None and self._metrics is not None
        started = perf_counter() if timed else 0.0
        if isinstance(data, str):
            conn.send_text(data, compress=compress)
        else:
            conn.send_binary(data if isinstance(data, bytes) else bytes(data), compress=compress)
        if timed and self._metrics is not None:
            self._metrics.compress_time(perf_counter() - started)
        if not self._write(conn.data_to_send()):
            raise self._closed_error()
        if self._metrics is not None:
            self._metrics.message_out(_nbytes(data))

    def send_prepared(self, frame: bytes, *, policy: str | None = None) -> bool:
        """Queue a frame from ``protocol.encode_frame()`` without ever blocking.

        The frame goes to the kernel, or to the bounded outbox. When the outbox would exceed
        ``max_backpressure``, ``policy`` (default ``config.backpressure_policy``) applies:
        ``"close"`` fails the connection with 1013 and counts a slow consumer; ``"drop"``
        discards this frame and counts a drop.

        Returns:
            True when queued or sent; False when dropped or the connection is not open.
        """
        if self._conn.state is not State.OPEN or self._broken:
            return False
        if self._conn.side is Side.CLIENT and not frame[1] & 0x80:
            raise ValueError("client frames must be masked: encode_frame(..., mask=...)")
        if not self._send_nowait(frame, policy=policy):
            return False
        if self._metrics is not None:
            self._metrics.message_out(_payload_length(frame))
        return True

    def send_nowait(self, data: str | bytes, *, policy: str | None = None) -> bool:
        """Encode ``data`` for THIS connection and queue it like ``send_prepared()``.

        For fan-out to a connection with its own compression context (permessage-deflate
        with context takeover; ``rooms.py`` uses it): the frame is compressed here, in this
        connection's stream, so it cannot be dropped afterwards (the peer's decompressor
        would miss its history). The budget is checked first, with the uncompressed size;
        a compressed frame refused after all fails the connection with 1013.

        Returns:
            True when queued or sent; False when dropped or the connection is not open.
        """
        conn = self._conn
        if conn.state is not State.OPEN or self._broken:
            return False
        busy = self._writing or self._writer is not None or self._outbox
        if busy and self._outbox_bytes + _nbytes(data) > self._config.max_backpressure:
            return self._over_budget(policy)
        started = perf_counter()
        frame = conn.encode_message(data)
        if self._metrics is not None and self.deflate is not None:
            self._metrics.compress_time(perf_counter() - started)
        if self.send_prepared(frame, policy=policy):
            return True
        if frame[0] & 0x40 and self.is_open:  # compressed, then dropped: the stream is broken
            self.abort(1013, "try again later")
        return False

    def send_heartbeat_ping(self) -> None:
        """Send a ping with a fresh payload and set ``ping_sent_at``; never blocks.

        Its pong sets ``latency`` and clears ``ping_sent_at``; other pongs are ignored.
        """
        if self._conn.state is not State.OPEN or self._broken:
            return
        payload = os.urandom(8)
        self._conn.send_ping(payload)
        self._ping_payload = payload
        self.ping_sent_at = monotonic()
        self._send_nowait(self._conn.data_to_send(), control=True)

    def _over_budget(self, policy: str | None) -> bool:
        if (policy or self._config.backpressure_policy) == "drop":
            if self._metrics is not None:
                self._metrics.dropped("backpressure")
            return False
        if self._metrics is not None:
            self._metrics.slow_consumer_closed()
        self.abort(1013, "try again later")
        return False

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(1006 if self.close_code is None else self.close_code,
                                self.close_reason)


def _wait_readable(sock: Any) -> None:
    """Block this greenlet until the gevent socket ``sock`` is readable (or closed).

    Leaner than ``hub.wait(watcher)`` (no ``Waiter``: about 600 bytes less saved C stack per
    idle connection). A stray switch into this greenlet is harmless: the caller's ``recv``
    gets ``EAGAIN`` and waits again. ``sock.close()`` elsewhere throws into us through the
    watcher's callback (gevent's ``cancel_wait``); kills and ``Timeout`` arrive as usual.
    """
    watcher = sock._read_event
    watcher.start(getcurrent().switch)
    try:
        sock.hub.switch()
    finally:
        watcher.stop()


def _nbytes(data: str | bytes) -> int:
    """Payload bytes of a message (UTF-8 length for text, without encoding ASCII)."""
    if isinstance(data, str):
        return len(data) if data.isascii() else len(data.encode("utf-8"))
    return len(data)


def _payload_length(frame: bytes) -> int:
    """Payload length of an encoded frame, read from its header (RFC 6455 §5.2)."""
    size = frame[1] & 0x7F
    head = 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if frame[1] & 0x80 else 0)
    return len(frame) - head
