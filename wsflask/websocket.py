"""WebSocket: the one driver where ``protocol.Connection`` meets a socket (STYLE.md rule 5).

It reads the socket on demand, feeds the sans-I/O core, writes what the core produced through
its ``Transport``, then handles the events; handlers get a blocking API, broadcasters a write
that never blocks; it closes and cleans up exactly once (ARCHITECTURE.md §4). No parsing, no
routing, no reader greenlet: a handler that does not read leaves the bytes in the kernel.
"""

from __future__ import annotations

import contextlib
import logging
import os
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from functools import lru_cache
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import gevent.event
from gevent import Timeout, getcurrent
from gevent.event import AsyncResult

from .calls import CallHandler, Calls
from .config import Backpressure, Config
from .envelopes import encode
from .errors import ConnectionClosed
from .ids import new_id
from .limits import MessageRate
from .protocol import (
    BinaryMessage,
    CloseCode,
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
    frame_info,
    payload_length,
    speedups,
)
from .tracing import tracer
from .transport import Transport, os_socket, wait_readable_for
from .violations import report_violation

if TYPE_CHECKING:
    from typing import Self

    from .metrics import Metrics

__all__ = ["Watcher", "WebSocket", "ending"]

logger = logging.getLogger("wsflask")

_DEFAULT_CONFIG = Config()
#: the most messages ``call()`` queues while it reads for its reply (then it stops reading)
CALL_READ_AHEAD = 128
#: heartbeat round-trip times averaged by ``WebSocket.rtt``
RTT_SAMPLES = 10
#: the most one read takes for the rest of a long frame (``_recv_raw``): bounds the buffer a
#: read allocates and how long one connection holds the hub, whatever max_message_size is
LONG_READ_MAX = 1 << 20


class Watcher(Protocol):
    """Told of each connection's open and close (the heartbeat): ``heartbeat=`` below."""

    def add(self, ws: WebSocket) -> None: ...
    def remove(self, ws: WebSocket) -> None: ...


class WebSocket:
    """One WebSocket connection, server or client side, on a gevent socket.

    Handlers read with ``for message in ws`` or ``receive()``, write with ``send()``, and end
    with ``close()`` (or just return). Fan-out code writes with ``send_prepared()``, which
    never blocks. Every method may be called from any greenlet unless it says otherwise; at
    most one greenlet reads at a time.

    Drivers (server, client, WSGI handler) construct it on a socket and a ``Connection``,
    complete the opening handshake (``read_handshake()``, commands on ``connection`` then
    ``flush()``), then ``run(handler)``.

    Attributes:
        id: unguessable and unique, assigned once (``ids.new_id()`` unless the driver gives
            one: ``Server(new_id=...)``).
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
        close_cause: the error that ended the connection (``Closed.cause``), else ``None``.
        latency: seconds, round-trip time of the last heartbeat ping that got its pong.
        last_received: ``time.monotonic()`` of the last frame received (unmatched pongs excluded).
        ping_sent_at: monotonic time of the outstanding heartbeat ping, ``None`` when none.
    """

    __slots__ = (
        "__weakref__", "_big", "_callbacks", "_calls", "_close_deadline", "_closer", "_config",
        "_conn",
        "_drained", "_finished", "_heartbeat", "_hold", "_initial", "_messages", "_metrics",
        "_opened_at", "_owner", "_path_params", "_ping_payload", "_rate", "_raw", "_reading",
        "_rtts", "_rx", "_session", "_sock", "_transport", "_user_pings", "_woken",
        "bytes_received", "bytes_sent", "close_cause", "close_code", "close_reason", "deflate",
        "extensions", "id", "last_received", "latency", "messages_received", "messages_sent",
        "ping_sent_at", "remote_address", "request", "rooms", "subprotocol",
    )  # fmt: skip

    def __init__(
        self,
        sock: Any,
        connection: Connection,
        *,
        config: Config | None = None,
        metrics: Metrics | None = None,
        heartbeat: Watcher | None = None,
        remote_address: Any = None,
        connection_id: str | None = None,
        initial: bytes = b"",
    ) -> None:
        self.id = connection_id or new_id()
        self.request: Request | None = connection.request
        self.remote_address = _address(remote_address)
        if self.remote_address is not None:  # the core stamps its Request with the peer's host
            connection.remote_addr = self.remote_address[0]
        self.subprotocol: str | None = connection.subprotocol
        self.extensions = ""
        self.deflate: PerMessageDeflate | None = None
        #: ``session`` and ``path_params``: made on first use (most connections never need
        #: either: 128 bytes less per idle connection)
        self._session: dict[str, Any] | None = None
        self._path_params: dict[str, Any] | None = None
        self.rooms: set[str] = set()
        self.close_code: int | None = None
        self.close_reason = ""
        self.close_cause: Exception | None = None
        self.latency: float | None = None
        self.last_received = monotonic()
        self.ping_sent_at: float | None = None
        config = config or _DEFAULT_CONFIG
        self._config = config
        self._sock = sock
        self._transport = Transport(
            sock,
            limit=config.max_backpressure,
            read_size=config.read_size,
            write_timeout=config.write_timeout,
        )
        #: sends longer than this get the exact outbound size check (one compare otherwise)
        self._big = _quarter(config.max_message_size)
        #: the message-rate token bucket; None (no per-message cost) when the limit is off
        self._rate = MessageRate.of(config) if config.max_messages_per_second else None
        #: the OS socket for reads without gevent layers; None under TLS
        self._raw = os_socket(sock)
        self._conn = connection
        self._metrics = metrics
        self._heartbeat = heartbeat
        self._initial = initial  # bytes a driver already read from the socket (WSGI)
        self._messages: deque[str | bytes] | None = None  # None while idle: no buffer kept
        self._reading = False  # a greenlet is blocked in recv
        self._owner: Any = None  # the greenlet that reads this connection (run())
        self._callbacks: tuple[Callable[[Any], None], ...] = ()  # a tuple: no list per conn
        self._finished = False
        self._close_deadline = 0.0
        self._closer: gevent.Greenlet | None = None
        self._opened_at = 0.0
        self._ping_payload: bytes | None = None
        self._rx = False
        self._drained = True  # the last read emptied the kernel buffer: wait before reading
        #: a message iterator's wait ended (``_woke``): 0 no, _READY read at once, _CLOSED the
        #: socket was closed under the wait (the next read reports the end without reading)
        self._woken = 0
        #: server side: cork whenever a message is handed out, so the handler's answers leave
        #: when it waits again, at the end of the hub's turn, with every other connection's
        #: (fewer wake-ups of the peers' readers: less kernel time per echoed message). A
        #: client corks only for a batch of several messages: its code may block without
        #: yielding to the hub, which must not hold its sends.
        self._hold = connection.side is Side.SERVER
        self._calls: Calls | None = None  # made by the first call()/on_call() (calls.py)
        # -- operability (issue 16): per-connection figures (bytes: counted with metrics on)
        self.messages_received = self.messages_sent = 0
        self.bytes_received = self.bytes_sent = 0
        #: the last RTT_SAMPLES heartbeat RTTs, as raw doubles: 144 bytes, where a deque of
        #: float objects took about 1,000 on every connection the heartbeat had pinged 10 times
        self._rtts: array[float] | None = None
        self._user_pings: dict[bytes, gevent.event.Event] | None = None  # ping() waiting

    def __repr__(self) -> str:
        return f"<WebSocket {self.id} {self._conn.state.name} {self.remote_address}>"

    # ------------------------------------------------------------------ queries

    @property
    def is_open(self) -> bool:
        """True while messages may be sent (handshake done, no Close sent or received)."""
        return self._conn.state is State.OPEN and not self._transport.broken

    @property
    def state(self) -> State:
        """The protocol state: CONNECTING, OPEN, CLOSING or CLOSED."""
        return self._conn.state

    @property
    def opened(self) -> bool:
        """True once the opening handshake completed, even if the connection closed since."""
        return self._opened_at != 0.0

    @property
    def config(self) -> Config:
        """The limits and timeouts this connection runs with."""
        return self._config

    def apply_config(self, config: Config) -> None:
        """Adopt reloaded settings while open (``wsflask.reload``), never per message: the
        inbound budget (the next frame header is judged by ``max_message_size``), the
        outbound size check, ``max_backpressure``, ``write_timeout``, the message rate (a
        fresh bucket when it changed), ``compress_threshold``, ``max_pending_calls``, and
        every setting read through ``config`` (close and call timeouts, envelope limits,
        policy)."""
        old, self._config = self._config, config
        self._big = _quarter(config.max_message_size)
        if (old.max_messages_per_second, old.message_burst) != (
            config.max_messages_per_second, config.message_burst
        ):  # fmt: skip
            self._rate = MessageRate.of(config) if config.max_messages_per_second else None
        self._transport.reconfigure(
            limit=config.max_backpressure, write_timeout=config.write_timeout
        )
        self._conn.set_limits(config.limits())
        if self.deflate is not None:
            self.deflate.threshold = config.compress_threshold
        if self._calls is not None:
            self._calls.reconfigure(config.max_pending_calls)

    @property
    def connection(self) -> Connection:
        """The protocol core; drivers issue handshake commands on it, then ``flush()``."""
        return self._conn

    @property
    def transport(self) -> Any:
        """The socket this connection runs on (the TLS socket under TLS)."""
        return self._sock

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in the outbox that the kernel has not taken yet."""
        return self._transport.buffered_amount

    @property
    def request_started(self) -> bool:
        """Server side: True once any byte arrived (a timeout then answers 408)."""
        return self._rx

    # ------------------------------------------------------------------ driver API

    def read_handshake(self, timeout: float | None = None) -> bool:
        """Read until the peer's half of the opening handshake arrived or the connection ended.

        Server side that is the ``Request`` (``request``); client side the 101 (``state``
        becomes OPEN) or a refusal (``close_cause``). Bytes given as ``initial`` are fed first.
        Returns False when ``timeout`` seconds passed first (one deadline for every read;
        on plain TCP a hub timer, no ``Timeout`` object).
        """
        conn = self._conn
        if self._initial:
            data, self._initial = self._initial, b""
            self._rx = True
            conn.receive_data(data)
            self.flush(self._config.handshake_timeout)  # a refusal of a bad head: bounded
        deadline = None if timeout is None else monotonic() + timeout
        while self.request is None and conn.state is State.CONNECTING and not self._finished:
            if deadline is None:
                self._pump()
            elif not self._pump(max(0.0, deadline - monotonic())) and monotonic() >= deadline:
                return False
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Write what the core produced, then handle its events (after a command on it).

        ``timeout`` bounds the write; past it TCP is dropped (a peer that does not read).
        """
        conn = self._conn
        data = conn.data_to_send()
        if data:
            if timeout is None:
                self._transport.write(data)
            else:
                timer = Timeout(timeout)
                try:
                    with timer:
                        self._transport.write(data)
                except Timeout as exc:
                    if exc is not timer:
                        raise
        self._dispatch(conn.events_received())

    def claim_reader(self) -> None:
        """Make this greenlet the connection's reader, as ``run()`` does: ``close()`` from
        another greenlet then leaves the reading to it."""
        self._owner = getcurrent()

    # ------------------------------------------------------------------ the frame loop

    def _pump(self, timeout: float | None = None) -> bool:
        """One wake-up. Returns False when ``timeout`` passed with nothing received.

        The order is fixed (STYLE.md rule 5): 1. one recv; 2. feed the core; 3. write all it
        produced (pongs, close echo, HTTP errors) in one send; 4. only then handle events, so
        a handler that answers a message never races the core's own output.
        """
        conn = self._conn
        state = conn.state
        if state is State.OPEN and timeout is None and self._raw is not None:
            data: bytes | None = self._recv_raw(self._raw)  # 1. the hot path: no timer
        elif state is State.CLOSED:  # abort()/fail() ended the core: only events are left
            self._dispatch(conn.events_received())
            if not self._finished:
                self._finish()
            return True
        else:
            data = self._recv_or_expire(timeout, state is State.CLOSING)  # 1.
            if data is None:
                return False
        metrics = self._metrics
        started = perf_counter() if metrics is not None else 0.0
        if data:  # 2.
            self._rx = True
            conn.receive_data(data)
        else:
            conn.receive_eof()
        if metrics is not None:
            metrics.frame_parse(perf_counter() - started)
        out = conn.data_to_send()  # 3.
        if out:
            self._transport.write(out)
        self._dispatch(conn.events_received())  # 4.
        return True

    def _recv_or_expire(self, timeout: float | None, closing: bool) -> bytes | None:
        """``_recv`` under the close timer too (``closing``: the peer's Close is due by
        ``_close_deadline``; past it TCP is dropped and the read reports the end)."""
        wait = timeout
        if closing:
            left = self._close_deadline - monotonic()
            wait = max(0.0, left if timeout is None else min(timeout, left))
        data = self._recv(wait)
        if data is None and closing and monotonic() >= self._close_deadline:
            self._transport.drop()  # close_timeout passed: drop TCP, report 1006
            return b""
        return data

    def _recv(self, wait: float | None) -> bytes | None:
        """Read once; ``b""`` on EOF or a transport error, ``None`` when ``wait`` passed.

        ``wait=0`` still reads what the kernel already holds (a ``Timeout(0)`` fires only
        once this greenlet would block).
        """
        if self._raw is not None:
            return self._recv_raw(self._raw) if wait is None else self._recv_within(self._raw, wait)
        self._reading = True
        timer = Timeout(wait) if wait is not None else None
        size = self._config.read_size
        try:
            if not self._drained:  # a full read: the other ready connections read first
                gevent.sleep(0)
            if timer is None:
                data = bytes(self._sock.recv(size))
            else:
                with timer:
                    data = bytes(self._sock.recv(size))
        except Timeout as exc:
            if exc is not timer:
                raise
            return None
        except OSError:  # ECONNRESET, TLS errors, a socket closed under us: the transport ended
            return b""
        finally:
            self._reading = False
        self._drained = len(data) < size
        return data

    def _recv_within(self, raw: Any, wait: float) -> bytes | None:
        """Plain TCP with a deadline: one hub timer instead of a ``Timeout`` object (these
        reads wait for a handshake, a Close, ``receive(timeout)``). Waits first when the last
        read drained the kernel, as ``_recv_raw`` does; ``wait=0`` only reads."""
        size = self._config.read_size
        self._reading = True
        try:
            if not self._drained:  # a full read: the other ready connections read first
                gevent.sleep(0)
            elif wait > 0:
                wait_readable_for(self._sock, wait)
            data: bytes = raw.recv(size)
        except BlockingIOError:  # ``wait`` passed (or a stray wake-up): nothing to read
            self._drained = True  # the next call waits
            return None
        except OSError:  # ECONNRESET, a socket closed under us: the transport ended
            return b""
        finally:
            self._reading = False
        self._drained = len(data) < size
        return data

    def _recv_raw(self, raw: Any) -> bytes:
        """Plain TCP, no deadline: the OS socket and the hub directly, no gevent layers.

        Waits first when the last read drained the kernel (the usual case: a whole read
        costs one ``recv`` and no ``EAGAIN``); after a full read, yields to the hub and then
        reads first: one read per wake-up, so a peer that keeps the socket full cannot hold
        the hub while other connections wait (CF-02). The shallow wait keeps the greenlet's
        saved C stack small while it is idle.
        """
        sock, size = self._sock, self._config.read_size
        self._reading = True
        try:
            woken = self._woken
            if woken:  # the caller waited (``_step``): read at once, or report the end
                self._woken = 0
                if woken == _CLOSED:
                    return b""
            elif self._drained:
                _wait_readable(sock)
            else:  # a full read: the other ready connections read first
                gevent.sleep(0)
                # the kernel holds more: take the rest of a long frame (accepted within
                # the limits) at once, not read_size at a time, up to LONG_READ_MAX
                size = max(size, min(self._conn.frame_bytes_missing, LONG_READ_MAX))
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
            elif isinstance(event, Request):  # the core's own copy, made with remote_addr
                self.request = event
            elif isinstance(event, Closed):
                self._on_closed(event)

    def _on_message(self, data: str | bytes) -> None:
        self.messages_received += 1
        if self._metrics is not None:  # _nbytes(), inline on the hot path
            nbytes = (
                len(data)
                if data.__class__ is bytes or (data.__class__ is str and data.isascii())
                else _nbytes(data)
            )
            self.bytes_received += nbytes
            self._metrics.message_in(nbytes)
        if self._rate is not None and not self._rate.take():
            self.close_now(CloseCode.POLICY, "message rate exceeded")
            return
        if self._calls is not None and isinstance(data, str) and self._take_call(data):
            return  # a reply to our call, or the peer's call answered (calls.py)
        if self._conn.state is State.CLOSING:  # close_expected(): we sent Close, nobody
            return  # will read it, keep memory bounded
        if self._messages is None:
            self._messages = deque()
        self._messages.append(data)

    def _on_pong(self, data: bytes) -> None:
        if self._user_pings is not None and data in self._user_pings:
            self._user_pings.pop(data).set()  # ping() is waiting for it
        # Only the pong that answers our heartbeat ping proves liveness (battery HB-03).
        if self._ping_payload is None or data != self._ping_payload:
            return
        now = monotonic()
        self.latency = now - (self.ping_sent_at or now)
        rtts = self._rtts
        if rtts is None:
            rtts = self._rtts = array("d")
        elif len(rtts) >= RTT_SAMPLES:
            del rtts[0]
        rtts.append(self.latency)
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
        tracer.record(self.id, State.OPEN, "handshake completed")

    def _on_closed(self, event: Closed) -> None:
        self.close_code = event.code
        self.close_reason = event.reason
        self.close_cause = event.cause
        if event.cause is not None:  # the peer broke the protocol: log it, count it by type
            report_violation(self.remote_address, self.id, event, self._metrics)
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
        woken = 0
        while True:
            step = self._step(deadline, woken)
            if step is None or isinstance(step, (str, bytes)):
                return step
            if step is _EXPIRED:
                raise TimeoutError(f"no message within {timeout} s")
            woken = self._wait(step)

    def __iter__(self) -> Iterator[str | bytes]:
        """Messages until the connection closes (then the loop just ends): ``for m in ws``.

        A ``Messages`` iterator, compiled when the speedups are: it waits for input itself,
        so an idle ``for message in ws`` holds neither a generator nor a second interpreter
        frame on its greenlet's saved C stack (about 600 bytes less per idle connection).
        """
        return Messages(self)

    def _step(self, deadline: float | None = None, woken: int = 0) -> Any:
        """One pass of ``receive()``: the next message, ``None`` once closed, ``_EXPIRED`` when
        ``deadline`` passed, or, instead of waiting on plain TCP without a deadline, the gevent
        socket to wait on (``_wait``; ``Messages`` waits in C) before the next pass.

        ``woken``: that wait ended without an exception (``_wait``'s result): this pass
        reads at once (``_READY``) or reports the end (``_CLOSED``), as after ``_woke``.
        """
        if woken:
            self._reading = False
            self._woken = woken
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
                self._await_closer()
                continue
            transport = self._transport
            if transport.corked is not None and not self._hold:
                transport.uncork()  # a client's answers to the last batch, in one send
            if deadline is None:
                if (
                    self._drained
                    and not self._woken
                    and self._raw is not None
                    and self._conn.state is State.OPEN  # neither closing nor closed
                ):
                    self._reading = True  # _pump would wait in _recv_raw: the caller waits
                    return self._sock
                self._pump()
            elif not self._pump(max(deadline - monotonic(), 0.0)) and monotonic() >= deadline:
                return _EXPIRED
            messages = self._messages
            if (
                messages is not None
                and transport.corked is None
                and (self._hold or len(messages) > 1)
            ):
                transport.cork()  # hold what the handler answers (see ``_hold``)

    def _wait(self, sock: Any) -> int:
        """Wait until ``sock`` is readable, for ``_step`` (as ``Messages`` does in C): returns
        what to pass as the next pass's ``woken``. An exception (a kill, a ``Timeout``)
        propagates after ``_woke``, so a later pass still reads at once."""
        try:
            _wait_readable(sock)
        except OSError:  # closed under us (gevent's cancel_wait): the next pass ends it
            return _CLOSED
        except BaseException:
            self._woke(False)
            raise
        return _READY

    def _woke(self, closed: bool) -> None:
        """The wait ``_step`` asked for ended, also by an exception: the next pass reads at
        once, or (``closed``: the socket was closed under the wait) reports the end."""
        self._reading = False
        self._woken = _CLOSED if closed else _READY

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
        transport = self._transport
        if conn.state is not State.OPEN or transport.broken:
            raise self._closed_error()
        if len(data) > self._big:  # one compare for small messages
            self._check_size(data)
        if self.deflate is not None:
            self._send_compressible(data, compress)
        elif isinstance(data, str):  # the hot path: nothing to compress or time
            conn.send_text(data)
        else:
            conn.send_binary(data if isinstance(data, bytes) else bytes(data))
        if not transport.write(conn.data_to_send()):
            raise self._write_failed()
        self.messages_sent += 1
        if self._metrics is not None:  # _nbytes(), inline on the hot path
            nbytes = (
                len(data)
                if data.__class__ is bytes or (data.__class__ is str and data.isascii())
                else _nbytes(data)
            )
            self.bytes_sent += nbytes
            self._metrics.message_out(nbytes)

    def _send_compressible(self, data: str | bytes, compress: bool | None) -> None:
        """``send()``'s hand-over to the core once permessage-deflate was negotiated: the
        time the codec takes is recorded (``compress_time``)."""
        conn, metrics = self._conn, self._metrics
        started = perf_counter() if metrics is not None else 0.0
        if isinstance(data, str):
            conn.send_text(data, compress=compress)
        else:
            conn.send_binary(data if isinstance(data, bytes) else bytes(data), compress=compress)
        if metrics is not None:
            metrics.compress_time(perf_counter() - started)

    def _check_size(self, data: str | bytes) -> None:
        """Refuse (and count) an outbound message over ``max_message_size``: the peer would
        fail the connection with 1009 anyway (seed audit CM-17)."""
        limit = self._config.max_message_size
        if len(data) > limit or _nbytes(data) > limit:
            if self._metrics is not None:
                self._metrics.dropped("too_big")
            raise ValueError(f"message of {_nbytes(data)} bytes over max_message_size={limit}")

    def _write_failed(self) -> ConnectionClosed:
        """A blocking write failed: past ``write_timeout`` that is a slow consumer (1013)."""
        if self._transport.timed_out and self.close_code is None:
            if self._metrics is not None:
                self._metrics.slow_consumer_closed()
            self.abort(CloseCode.TRY_AGAIN_LATER, "write timeout")
        return self._closed_error()

    def emit(self, event: str, data: Any = None) -> None:
        """Send the JSON event envelope ``{"event": event, "data": data}`` as text; blocks
        like ``send()``. Raises ``ConnectionClosed`` once closing or closed."""
        self.send(encode(event, data))

    # ------------------------------------------------------------------ calls (calls.py)

    def call_async(
        self, event: str, data: Any = None, *, timeout: float | None = None
    ) -> AsyncResult:
        """Send ``{"event", "data", "id": "s<n>"}``; return a ``gevent.event.AsyncResult``
        that the peer's ``ack`` sets to its data. Its ``get()`` raises ``CallError`` for an
        ``error`` reply, ``TimeoutError`` after ``timeout`` (default ``call_timeout``) and
        ``ConnectionClosed`` as soon as the connection closes. The reply is taken by
        whichever greenlet reads this connection; ``call()`` reads itself when that is us,
        so from a handler wait with ``call()`` (earlier results are set meanwhile), not
        ``get()``: nobody else reads there.

        Raises:
            TooManyPendingCalls: ``max_pending_calls`` calls wait already (counted).
            ConnectionClosed: the connection is closing or closed.
        """
        calls = self._calls
        if calls is None:
            calls = self._calls = Calls(self._config.max_pending_calls, self._metrics)
        msg_id, result = calls.open(self._config.call_timeout if timeout is None else timeout)
        try:
            self.send(encode(event, data, msg_id))
        except BaseException:
            calls.forget(msg_id)
            raise
        return result

    def call(self, event: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``event`` on the peer and return its ``ack`` data (see ``call_async``).

        From the greenlet that reads this connection (a handler) it reads while it waits;
        messages that arrive meanwhile stay queued for the next ``receive()``, up to
        ``CALL_READ_AHEAD``: then it stops reading (TCP pushes back on the peer) and the
        call may time out, so memory stays bounded.
        """
        result = self.call_async(event, data, timeout=timeout)
        limit = self._config.call_timeout if timeout is None else timeout
        deadline = monotonic() + limit
        while not result.ready() and not self._reading and self._owner in (None, getcurrent()):
            left = deadline - monotonic()
            queued = self._messages
            if left <= 0 or (queued is not None and len(queued) >= CALL_READ_AHEAD):
                break  # the call's timer (or the close) settles it
            self._pump(left)
        return result.get()

    def on_call(self, event: str, handler: CallHandler) -> None:
        """Answer the peer's calls of ``event`` (``{"event", "data", "id": "s<n>"}``) with
        ``handler(data)``: its result is the ``ack``'s data, an exception an ``error``. Runs
        in the reading greenlet, during ``receive()``; keep it short and non-blocking."""
        calls = self._calls
        if calls is None or calls.handlers is None:
            self.answer_calls({event: handler})
        else:
            calls.handlers[event] = handler

    def answer_calls(self, handlers: dict[str, CallHandler] | None = None) -> None:
        """Answer the peer's calls from now on: with ``handlers`` (kept, not copied, so later
        entries count), an ``error`` "UnknownEvent" for events without one. Calls already
        queued (they came with the handshake's last read) are answered now."""
        if self._calls is None:
            self._calls = Calls(self._config.max_pending_calls, self._metrics)
        if handlers is not None:
            self._calls.handlers = handlers
        elif self._calls.handlers is None:
            self._calls.handlers = {}
        if self._messages:  # calls that came with the handshake's last read
            kept = [m for m in self._messages if not (isinstance(m, str) and self._take_call(m))]
            self._messages = deque(kept) if kept else None

    def _take_call(self, data: str) -> bool:
        """True when ``data`` was a reply to our call or a call of the peer (answered)."""
        assert self._calls is not None
        envelope = self._calls.take(data)
        if envelope is None:
            return False
        if envelope:
            with contextlib.suppress(ConnectionClosed):  # the reader sees the close next
                self.send(self._calls.answer(envelope))
        return True

    def send_prepared(self, frame: bytes, *, policy: str | None = None) -> bool:
        """Queue a frame from ``protocol.encode_frame()`` without ever blocking.

        The frame goes to the kernel at the end of this turn of the hub loop, in one send with
        everything else this connection gets in the same turn (a fan-out of several messages
        costs each member one system call), or to the bounded outbox. When the outbox would exceed
        ``max_backpressure``, ``policy`` (a ``config.Backpressure``, default
        ``config.backpressure_policy``) applies: ``CLOSE`` fails the connection with 1013 and
        counts a slow consumer; ``DROP`` discards this frame and counts a drop.

        Returns:
            True when queued or sent; False when dropped or the connection is not open.
        """
        transport = self._transport
        if self._conn.state is not State.OPEN or transport.broken:
            return False
        if self._conn.side is Side.CLIENT and not frame_info(frame).masked:
            raise ValueError("client frames must be masked: encode_frame(..., mask=...)")
        if not transport.write_soon(frame, budget=self._config.max_backpressure):
            if not transport.broken:
                self._over_budget(policy)
            return False
        self.messages_sent += 1
        if self._metrics is not None:
            nbytes = payload_length(frame)
            self.bytes_sent += nbytes
            self._metrics.message_out(nbytes)
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
        transport = self._transport
        if conn.state is not State.OPEN or transport.broken:
            return False
        queued = transport.buffered_amount  # checked first, uncompressed; no call when idle
        if queued and queued + _nbytes(data) > self._config.max_backpressure:
            self._over_budget(policy)
            return False
        started = perf_counter()
        frame = conn.encode_message(data)
        if self._metrics is not None and self.deflate is not None:
            self._metrics.compress_time(perf_counter() - started)
        if self.send_prepared(frame, policy=policy):
            return True
        if self.is_open and frame_info(frame).compressed:  # dropped: the stream is broken
            self.abort(CloseCode.TRY_AGAIN_LATER, "try again later")
        return False

    def send_heartbeat_ping(self) -> None:
        """Send a ping with a fresh payload and set ``ping_sent_at``; never blocks.

        Its pong sets ``latency`` and clears ``ping_sent_at``; other pongs are ignored.
        """
        if self._conn.state is not State.OPEN or self._transport.broken:
            return
        payload = os.urandom(8)
        self._conn.send_ping(payload)
        self._ping_payload = payload
        self.ping_sent_at = monotonic()
        self._transport.write_urgent(self._conn.data_to_send())  # ahead of queued data

    @property
    def session(self) -> dict[str, Any]:
        """Data returned by ``before_upgrade`` hooks; free for the app to use (a dict)."""
        session = self._session
        if session is None:
            session = self._session = {}
        return session

    @session.setter
    def session(self, value: dict[str, Any]) -> None:
        self._session = value

    def peek_session(self) -> dict[str, Any] | None:
        """``session``, or ``None`` while nothing made it: reading it this way makes no dict
        (the server's sweeps and reports look at every open connection)."""
        return self._session

    @property
    def path_params(self) -> dict[str, Any]:
        """The route's path parameters (a dict, empty for a route without any)."""
        params = self._path_params
        if params is None:
            params = self._path_params = {}
        return params

    @path_params.setter
    def path_params(self, value: dict[str, Any]) -> None:
        self._path_params = value

    @property
    def rtt(self) -> float | None:
        """Mean of the last ``RTT_SAMPLES`` (10) heartbeat round-trip times; None before one."""
        rtts = self._rtts
        return sum(rtts) / len(rtts) if rtts else None

    def ping(self, timeout: float = 10.0) -> float:
        """Send a ping and wait for its pong; return the round-trip time in seconds.

        Messages that arrive meanwhile stay queued for ``receive()``.

        Raises:
            TimeoutError: no matching pong within ``timeout`` seconds.
            ConnectionClosed: the connection is closing or closed.
        """
        conn = self._conn
        if conn.state is not State.OPEN or self._transport.broken:
            raise self._closed_error()
        payload, answered = os.urandom(8), gevent.event.Event()
        if self._user_pings is None:
            self._user_pings = {}
        self._user_pings[payload] = answered
        sent = monotonic()
        conn.send_ping(payload)
        self._transport.write_nowait(conn.data_to_send(), budget=None)
        try:
            self._wait_pong(answered, sent + timeout)
        finally:
            pending = self._user_pings.pop(payload, None)
        if pending is not None:  # not answered: _finish() woke us
            raise self._closed_error()
        return monotonic() - sent

    def _wait_pong(self, answered: gevent.event.Event, deadline: float) -> None:
        while not answered.is_set():
            left = deadline - monotonic()
            if left <= 0:
                raise TimeoutError("no pong within the timeout")
            if self._reading or self._finished:  # the reader sees the pong; _finish wakes us
                answered.wait(left)
            else:
                self._pump(left)

    def _over_budget(self, policy: str | None) -> None:
        """The outbox is full: apply the slow-consumer policy (``config.Backpressure``)."""
        if (policy or self._config.backpressure_policy) == Backpressure.DROP:
            if self._metrics is not None:
                self._metrics.dropped("backpressure")
            return
        if self._metrics is not None:
            self._metrics.slow_consumer_closed()
        self.close_now(CloseCode.TRY_AGAIN_LATER, "try again later")

    def _closed_error(self) -> ConnectionClosed:
        code = CloseCode.ABNORMAL if self.close_code is None else self.close_code
        return ConnectionClosed(code, self.close_reason)

    # ------------------------------------------------------------------ closing

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; idempotent, callable from any greenlet.

        From the greenlet that reads this connection it also waits (up to ``close_timeout``)
        for the peer's Close and the end of TCP. From other greenlets it returns at once; a
        closing greenlet then reads the peer's Close if nobody else does (RFC 6455 §7.1.4:
        the handler need not be reading) and drops TCP after ``close_timeout`` without one.

        Raises:
            ValueError: a code that may not be sent (RFC 6455 §7.4) or a reason over 123 bytes.
        """
        conn = self._conn
        if conn.state is not State.OPEN:
            return
        conn.close(code, reason)
        tracer.record(self.id, State.CLOSING, f"close({code}) sent")
        self._close_deadline = monotonic() + self._config.close_timeout
        self._transport.write_nowait(conn.data_to_send(), budget=None)
        if not self._reading and self._owner in (None, getcurrent()):
            self._wait_finished()
        elif self._closer is None:
            self._closer = gevent.spawn(self._close_in_background)

    def _close_in_background(self) -> None:
        """The closing greenlet: read until the peer's Close unless the reader does; either
        way drop TCP once ``close_timeout`` passed (the reader then sees EOF: 1006)."""
        while not self._finished:
            if not self._reading:
                self._pump()
                continue
            left = self._close_deadline - monotonic()
            if left > 0:
                gevent.sleep(left)  # the reader finishing kills this greenlet first
                continue
            self._transport.drop()
            return

    def _wait_finished(self) -> None:
        while not self._finished:
            if self._reading:
                self._await_closer()
            else:
                self._pump()

    def _await_closer(self) -> None:
        """Another greenlet reads: the closing greenlet (then wait for it), or a misuse."""
        closer = self._closer
        if closer is None or closer is getcurrent():
            raise RuntimeError(f"{self!r} is already being read by another greenlet")
        closer.join()

    def abort(self, code: int = CloseCode.INTERNAL_ERROR, reason: str = "") -> None:
        """Fail the connection now: send Close if the stream allows it, then drop TCP.

        Never blocks. The reading greenlet (or ``run()``) completes the cleanup.
        """
        conn = self._conn
        if conn.state is not State.CLOSED:
            conn.fail(code, reason)
            self.close_code, self.close_reason = code, reason
        data = conn.data_to_send()
        if data:
            self._transport.write_last(data)
        self._transport.drop()

    def close_now(self, code: int, reason: str = "") -> None:
        """Fail the connection now, yet let the peer read why: the Close jumps the outbox
        (queued data behind it is discarded and counted as ``closing`` drops, a frame
        begun is finished), the reader is woken, and TCP closes once the Close is flushed
        (``close_timeout`` at most, then dropped). Never blocks; for slow consumers,
        floods and expired deadlines.
        """
        conn = self._conn
        if conn.state is State.CLOSED:
            return
        conn.fail(code, reason)
        self.close_code, self.close_reason = code, reason
        data = conn.data_to_send()
        discarded = self._transport.write_urgent(data, last=True) if data else -1
        if discarded < 0:
            self._transport.drop()
            return
        self._transport.shutdown_read()
        metrics = self._metrics
        if metrics is not None:
            for _ in range(discarded):
                metrics.dropped("closing")  # queued behind the Close: counted, not lost

    @property
    def receiving_message(self) -> bool:
        """True while a fragmented message is partly received (``fragment_timeout``)."""
        return self._conn.receiving_message

    def add_close_callback(self, callback: Callable[[Self], None]) -> None:
        """Call ``callback(ws)`` once after the socket is closed (at once if it already is)."""
        if self._finished:
            callback(self)
            return
        self._callbacks = (*self._callbacks, callback)

    def _finish(self) -> None:
        """Clean up exactly once: CLOSED -> heartbeat.remove -> socket closed -> callbacks."""
        if self._finished:
            return
        self._finished = True
        for waiting in (self._user_pings or {}).values():  # ping(): no pong is coming
            waiting.set()
        tracer.record(self.id, State.CLOSED, f"closed with {self.close_code}")
        if self._heartbeat is not None:
            self._heartbeat.remove(self)
        if self._calls is not None:  # pending calls fail now, not at their timeout
            self._calls.fail_all(self._closed_error())
        closer, self._closer = self._closer, None
        if closer is not None and closer is not getcurrent():
            closer.kill(block=False)
        try:
            self._transport.close(self._config.close_timeout)
        finally:
            self._count_closed()
            callbacks, self._callbacks = self._callbacks, ()
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:  # one failing callback must not skip the others
                    logger.exception("close callback %r failed for %r", callback, self)

    def _count_closed(self) -> None:
        if self._metrics is None or not self._opened_at or self._conn.side is not Side.SERVER:
            return
        code = CloseCode.ABNORMAL if self.close_code is None else self.close_code
        duration = monotonic() - self._opened_at
        if self.deflate is None:
            self._metrics.connection_closed(code, duration)
        else:
            self._metrics.connection_closed(code, duration, self.deflate)

    def run(self, handler: Callable[[Self], None]) -> None:
        """Run ``handler(ws)`` in this greenlet, then close and clean up.

        A handler that returns closes with 1000 (if still open); one that raises closes with
        1011 and an empty reason (the exception is logged to the ``wsflask`` logger); a kill
        (``GreenletExit``) drops TCP at once. Returns after the close callbacks ran.
        """
        self._owner = getcurrent()
        try:  # not ``with ending(...)``: no object is held while the handler waits
            handler(self)
        except BaseException as exc:
            if not _ended(self, type(exc), exc, exc.__traceback__):
                raise
        else:
            self.end(CloseCode.NORMAL)

    def end(self, code: int | None) -> None:
        """End the connection as its handler ended, then wait for the cleanup.

        ``code`` closes it (if still open) and waits for the closing handshake; ``None``
        (the handler was killed) sends a best-effort 1001 and drops TCP at once.
        """
        try:
            if code is None:
                self.abort(CloseCode.GOING_AWAY, "going away")
            elif self._conn.state is State.OPEN:
                self.close(code)
            self._wait_finished()
        finally:
            if not self._finished:  # killed while closing: drop TCP, clean up, no waits
                self.abort(CloseCode.GOING_AWAY, "going away")
                self._pump()


class ending:
    """Run a handler's body, then end its connection (``websocket()``) as the body ended.

    Returned (or ``ConnectionClosed``): 1000. Raised: 1011, logged to ``wsflask``. Killed
    (``GreenletExit``, a ``Timeout``): 1001 and TCP dropped. While ``websocket()`` is
    ``None`` (no upgrade happened) exceptions propagate untouched.

    A class, not ``@contextmanager``: every idle connection holds one while its handler
    waits, and a slotted instance is a few hundred bytes smaller than a suspended generator
    and its wrapper.
    """

    __slots__ = ("_websocket",)

    def __init__(self, websocket: Callable[[], WebSocket | None]) -> None:
        self._websocket = websocket

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        ws = self._websocket()
        if ws is None:
            return False
        if kind is None:
            ws.end(CloseCode.NORMAL)
            return False
        return _ended(ws, kind, exc, tb)


def _ended(ws: WebSocket, kind: type[BaseException], exc: BaseException | None, tb: Any) -> bool:
    """End ``ws`` as its handler raised (``ending``); True when the error is handled."""
    code: int | None = None  # GreenletExit, Timeout: drop TCP, let it propagate
    if issubclass(kind, ConnectionClosed):
        code = CloseCode.NORMAL
    elif issubclass(kind, Exception):
        logger.error("handler failed on connection %s", ws.id, exc_info=(kind, exc, tb))  # type: ignore[arg-type]
        code = CloseCode.INTERNAL_ERROR
    ws.end(code)
    return code is not None


#: ``_step``'s answer when its deadline passed with no message
_EXPIRED = object()
#: ``WebSocket._woken``: the wait ended with the socket readable, or closed under it
_READY, _CLOSED = 1, 2


class MessagesPython:
    """``for message in ws``: ``ws.receive()`` until the connection closes.

    The pure-Python twin of the compiled ``wsflask._iterator.Messages`` (``Messages`` below
    is that one when the speedups are active): both call ``ws._step()`` per pass and wait on
    the socket it hands back; the next pass is told how that wait ended (``woken``), or
    ``ws._woke()`` is, when it raised. tests/test_messages_iterator.py runs both.
    """

    __slots__ = ("_ws",)

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    def __iter__(self) -> MessagesPython:
        return self

    def __next__(self) -> str | bytes:
        ws = self._ws
        woken = 0
        while True:
            step = ws._step(None, woken)
            if step is None:
                raise StopIteration
            if isinstance(step, (str, bytes)):
                return step
            woken = ws._wait(step)


def _compiled_messages() -> Callable[[WebSocket], Iterator[str | bytes]] | None:
    """The compiled iterator, when built and the speedups are not switched off."""
    if speedups.compiled is None:  # WSFLASK_NO_EXTENSIONS, or no compiler at install
        return None
    try:
        from ._iterator import Messages as compiled
    except ImportError:
        return None
    return compiled


#: ``for message in ws``'s iterator: compiled when available, else ``MessagesPython``
Messages: Callable[[WebSocket], Iterator[str | bytes]] = _compiled_messages() or MessagesPython


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


@lru_cache(maxsize=8)
def _quarter(max_message_size: int) -> int:
    """``WebSocket._big``: one int shared by the connections of a config, not one each."""
    return max_message_size >> 2


def _address(address: Any) -> tuple[str, int] | None:
    """``(host, port)`` of a socket address; None for other kinds (a UNIX socket)."""
    if type(address) is tuple and len(address) == 2:
        host, port = address
        if type(host) is str and type(port) is int:
            return address  # IPv4's own tuple as it is: every open connection keeps it
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def _nbytes(data: str | bytes) -> int:
    """Payload bytes of a message (UTF-8 length for text, without encoding ASCII)."""
    if isinstance(data, str):
        return len(data) if data.isascii() else len(data.encode("utf-8"))
    return len(data)
