"""The connection lifecycle of ``WebSocket``: handshake, ``run()``, closing, cleanup.

What it does: ``Lifecycle`` is the part of ``websocket.WebSocket`` that drives a connection
from its first byte to its cleanup: the server side answers the handshake
(``read_request()``, then ``accept()``, ``reject()`` or ``respond()``) and runs the handler
(``run()``); the client side completes its handshake (``open_client()``); both close
(``close()``, ``abort()``, the close timer) and clean up exactly once, in the order of
ARCHITECTURE.md §4: core CLOSED -> ``heartbeat.remove(ws)`` -> socket closed -> close
callbacks in registration order (``add_close_callback()``).

What it does not do: it never reads the socket nor feeds the core: it waits by calling
``WebSocket._pump()``, so ``websocket.py`` stays the only module that calls both ``sock.recv``
and ``Connection.receive_data`` (STYLE.md rule 5). No parsing, no routing, no message API
(``receive``/``send`` live in ``websocket.py``). Use it only through ``WebSocket``: it declares
the slots of the closing state it assigns, ``WebSocket.__init__`` initialises them, and the
other attributes it uses are ``WebSocket``'s.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from time import monotonic
from typing import TYPE_CHECKING, Any, cast

import gevent

from .errors import ConnectionClosed, HandshakeRejected, InvalidHandshakeResponse
from .protocol import Connection, Event, HandshakeError, PerMessageDeflate, Request, Side, State
from .transport import Transport

if TYPE_CHECKING:
    from typing import Self

    from .metrics import Metrics
    from .websocket import HeartbeatLike, WebSocket

__all__ = ["Lifecycle"]

logger = logging.getLogger("wsflask")


class Lifecycle(Transport):
    """Handshake, handler run, closing and cleanup; a base of ``WebSocket`` only.

    Drivers call, server side: ``read_request()``, then ``accept()`` and ``run(handler)`` (or
    ``reject()`` / ``respond()``); client side: ``open_client()``. Any greenlet may call
    ``close()``, ``abort()`` and ``add_close_callback()``.
    """

    # the state this class assigns; WebSocket.__init__ sets every one of them
    __slots__ = (
        "_callbacks", "_close_deadline", "_closer", "_finished", "_head_log", "close_code",
        "close_reason",
    )  # fmt: skip

    close_code: int | None
    close_reason: str
    _callbacks: list[Callable[[Any], None]] | None
    _close_deadline: float
    _closer: gevent.Greenlet | None
    _finished: bool
    _head_log: bytes | None

    if TYPE_CHECKING:  # WebSocket's attributes and methods this class uses
        id: str
        request: Request | None
        deflate: PerMessageDeflate | None
        _conn: Connection
        _metrics: Metrics | None
        _heartbeat: HeartbeatLike | None
        _owner: Any
        _cause: Exception | None
        _opened_at: float
        _reading: bool

        def _pump(self, timeout: float | None = None) -> bool: ...
        def _dispatch(self, events: list[Event]) -> None: ...

    # ------------------------------------------------------------------ closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; idempotent, callable from any greenlet.

        From the greenlet that reads this connection it also waits (up to ``close_timeout``)
        for the peer's Close and the end of TCP. From other greenlets it returns at once and a
        timer drops TCP after ``close_timeout`` if the peer never answers.

        Raises:
            ValueError: a code that may not be sent (RFC 6455 §7.4) or a reason over 123 bytes.
        """
        conn = self._conn
        if conn.state is not State.OPEN:
            return
        conn.close(code, reason)
        self._close_deadline = monotonic() + self._config.close_timeout
        self._send_nowait(conn.data_to_send(), control=True)
        if not self._reading and self._owner in (None, gevent.getcurrent()):
            while not self._finished:
                self._pump()
        elif self._closer is None:
            self._closer = gevent.spawn_later(self._config.close_timeout, self._close_expired)

    def _close_expired(self) -> None:
        self._closer = None
        if not self._finished and self._conn.state is not State.CLOSED:
            self._break_transport()  # wakes the reader with EOF -> Closed(1006) -> cleanup

    def abort(self, code: int = 1011, reason: str = "") -> None:
        """Fail the connection now: send Close if the stream allows it, then drop TCP.

        Never blocks. The reading greenlet (or ``run()``) completes the cleanup.
        """
        conn = self._conn
        if conn.state is not State.CLOSED:
            conn.fail(code, reason)
            self.close_code, self.close_reason = code, reason
        data = conn.data_to_send()
        idle = not (self._writing or self._writer is not None or self._outbox)
        if data and idle and self._raw is not None and not self._broken:
            with contextlib.suppress(OSError):  # best effort: the Close, if the kernel takes it
                self._raw.send(data)
        self._break_transport()

    def add_close_callback(self, callback: Callable[[Self], None]) -> None:
        """Call ``callback(ws)`` once after the socket is closed (at once if it already is)."""
        if self._finished:
            callback(self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def _finish(self) -> None:
        """Clean up exactly once: CLOSED -> heartbeat.remove -> socket closed -> callbacks."""
        if self._finished:
            return
        self._finished = True
        if self._heartbeat is not None:
            self._heartbeat.remove(cast("WebSocket", self))
        if self._closer is not None:
            self._closer.kill(block=False)
            self._closer = None
        try:
            self._close_transport()
        finally:
            if self._metrics is not None and self._opened_at and self._conn.side is Side.SERVER:
                code = 1006 if self.close_code is None else self.close_code
                duration = monotonic() - self._opened_at
                if self.deflate is None:
                    self._metrics.connection_closed(code, duration)
                else:
                    self._metrics.connection_closed(code, duration, self.deflate)
            callbacks, self._callbacks = self._callbacks, None
            for callback in callbacks or ():
                try:
                    callback(self)
                except Exception:  # one failing callback must not skip the others
                    logger.exception("close callback %r failed for %r", callback, self)

    # ------------------------------------------------------------------ server driver API

    def read_request(self) -> Request | HandshakeError | None:
        """Server side: read until the request head is complete.

        Returns:
            the ``Request`` (answer with ``accept()``, ``reject()`` or ``respond()``); the
            ``HandshakeError`` the core already answered (400/405/426/431; the connection is
            closed); or ``None`` when the peer went away.
        """
        while self.request is None and not self._finished:
            self._pump()
        if self.request is not None:
            return self.request
        return self._cause if isinstance(self._cause, HandshakeError) else None

    def accept(
        self, *, subprotocol: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Server side: answer the pending request with 101. Next: ``run(handler)``."""
        if self.request is None:
            raise RuntimeError("accept() before read_request() returned a Request")
        self._conn.accept(self.request, subprotocol=subprotocol, headers=headers)
        self._write(self._conn.data_to_send())
        self._dispatch(self._conn.events_received())

    def reject(
        self, status: int, body: str = "", *, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Server side: refuse the handshake with ``status``; returns once the socket is closed."""
        self._conn.reject(status, body, headers=headers)
        self._write(self._conn.data_to_send())
        self._dispatch(self._conn.events_received())

    def respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Server side: answer a plain HTTP request; returns once the socket is closed."""
        self._conn.respond(status, body, content_type=content_type, headers=headers)
        self._write(self._conn.data_to_send())
        self._dispatch(self._conn.events_received())

    def run(self, handler: Callable[[Self], None]) -> None:
        """Run ``handler(ws)`` in this greenlet, then close and clean up.

        A handler that returns closes with 1000 (if still open); one that raises closes with
        1011 and an empty reason (the exception is logged to the ``wsflask`` logger); a kill
        (``GreenletExit``) drops TCP at once. Returns after the close callbacks ran.
        """
        self._owner = gevent.getcurrent()
        code, killed = 1000, True
        try:
            handler(self)
            killed = False
        except ConnectionClosed:
            killed = False
        except Exception:
            logger.exception("handler failed on connection %s", self.id)
            code, killed = 1011, False
        finally:
            try:
                if killed:
                    self.abort(1001, "going away")
                self._end(code)
            finally:
                if not self._finished:  # killed while closing: drop TCP, clean up, no waits
                    self.abort(1001, "going away")
                    self._pump()

    def _end(self, code: int) -> None:
        if self._conn.state is State.OPEN:
            self.close(code)
        while not self._finished:
            self._pump()

    # ------------------------------------------------------------------ client driver API

    def open_client(self) -> None:
        """Client side: send the request ``Connection.connect()`` queued; read until the 101.

        Raises:
            HandshakeRejected: the server answered with another status.
            InvalidHandshakeResponse: the answer was not a valid handshake response.
        """
        self._head_log = b""
        self._write(self._conn.data_to_send())
        while self._conn.state is State.CONNECTING and not self._finished:
            self._pump()
        log, self._head_log = self._head_log, None
        if self._opened_at == 0.0:  # no Opened event: refused, invalid, or EOF
            rejected = HandshakeRejected.from_response(log or b"")
            if rejected is not None:
                raise rejected
            if isinstance(self._cause, InvalidHandshakeResponse):
                raise self._cause
            raise InvalidHandshakeResponse(self.close_reason or "closed during the handshake")
