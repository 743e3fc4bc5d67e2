"""Transport: the owned write side and the teardown of one connection's socket.

Writes that may block (the caller's greenlet waits: natural backpressure), writes that never
block (the kernel, else a bounded outbox drained by a short-lived writer greenlet), corking
(the writes of one batch of received messages leave in one send), dropping TCP, and the
orderly close. It never reads frames, never talks to the protocol core and never
decides what a slow consumer costs: ``WebSocket`` owns it and applies that policy.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import weakref
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any

import gevent
import gevent.ssl
from gevent import Timeout, getcurrent
from gevent.event import Event

__all__ = ["Transport", "os_socket", "wait_readable_for", "wrap_tls"]

#: corked bytes past which ``write()`` hands them on at once (a batch's writes, bounded)
CORK_LIMIT = 65536

#: SO_LINGER on, 0 s: close() discards unsent data and sends RST (an abort, not a FIN).
_LINGER_ABORT = struct.pack("ii", 1, 0)


class _Turn:
    """One hub's corked transports in this turn of its loop, handed on by one callback.

    A fan-out that reaches a member several times in one turn (several broadcasts, a
    replay) then costs that member one send, and each corked member costs a list append,
    not a callback of its own.
    """

    __slots__ = ("__weakref__", "_loop", "_pending", "_scheduled")

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._pending: list[Transport] = []
        self._scheduled = False

    def add(self, transport: Transport) -> None:
        self._pending.append(transport)
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self._hand_on)

    def _hand_on(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for transport in pending:
            transport._uncork_nowait()


_TURNS: weakref.WeakKeyDictionary[Any, _Turn] = weakref.WeakKeyDictionary()


def _turn_of(hub: Any) -> _Turn:
    """The ``_Turn`` of ``hub`` (one per hub, so per thread)."""
    turn = _TURNS.get(hub)
    if turn is None:
        turn = _TURNS[hub] = _Turn(hub.loop)
    return turn


class Transport:
    """A gevent socket with a bounded outbox, owned by one ``WebSocket``.

    Args:
        sock: a gevent socket (plain or ``gevent.ssl.SSLSocket``) in blocking mode.
        limit: ``max_backpressure``: outbox bytes above which ``write()`` waits.
        read_size: the chunk size used to read the peer's last bytes in ``close()``.
        write_timeout: seconds a blocking ``write()`` may wait for the peer to read; past
            it TCP is dropped and ``timed_out`` set. ``0`` waits forever.

    Attributes:
        sock: the socket (the TLS socket under TLS).
        broken: True once TCP was dropped: every write fails, readers see EOF.
        buffered_amount: bytes queued (corked or in the outbox) that the kernel has not
            taken yet.
        timed_out: True once a blocking write passed ``write_timeout`` (then ``broken``).
        corked: the writes held by ``cork()`` (None when not corked).
    """

    __slots__ = ("_corked_bytes", "_hub_turn", "_limit", "_outbox", "_raw", "_read_size",
                 "_turn", "_write_timeout", "_writer", "_writing", "broken",
                 "buffered_amount", "corked", "sock", "timed_out")  # fmt: skip

    def __init__(
        self, sock: Any, *, limit: int, read_size: int = 65536, write_timeout: float = 0.0
    ) -> None:
        self.sock = sock
        self.broken = False
        #: the OS socket for non-blocking writes; None under TLS (the SSL object must write)
        self._raw = os_socket(sock)
        self._limit = limit
        self._read_size = read_size
        self._outbox: deque[bytes | memoryview] | None = None  # None while idle
        self.buffered_amount = 0  # an attribute, not a property: read on the hot path
        self._writer: gevent.Greenlet | None = None  # the short-lived outbox drainer
        self._writing = False  # a blocking sendall is in progress
        self._turn: Event | None = None  # set when that sendall ends (made only when awaited)
        self._write_timeout = write_timeout
        self.timed_out = False
        self.corked: list[bytes] | None = None
        self._corked_bytes = 0
        hub = getattr(sock, "hub", None)
        self._hub_turn = _turn_of(gevent.get_hub() if hub is None else hub)

    def reconfigure(self, *, limit: int, write_timeout: float) -> None:
        """Adopt a new outbox limit and ``write_timeout`` (a live reload); the next blocking
        write is bounded by them."""
        self._limit, self._write_timeout = limit, write_timeout

    @property
    def idle(self) -> bool:
        """True when nothing is corked, queued or being written."""
        return not (self._writing or self._writer is not None or self._outbox or self.corked)

    def cork(self) -> None:
        """Hold ``write()``'s data until ``uncork()`` or the end of the hub's turn, to send a
        batch of answers at once.

        A server's reader corks whenever it hands its handler a message (a client's, when
        one receive brought several): the answers then leave in one system call when the
        handler waits again, at the end of the hub's turn, together with every other
        connection's. Held data never waits for long: a hub callback hands it on as soon as
        the corking greenlet yields (for input or anything else), every other kind of write
        hands it on first (order kept), and more than ``CORK_LIMIT`` bytes are handed on at
        once.
        """
        if self.corked is None and not self.broken:
            self.corked = []
            self._hub_turn.add(self)

    def uncork(self) -> bool:
        """Write what ``cork()`` held, as one ``write()`` (may block: backpressure).

        Returns False when the transport is gone.
        """
        corked = self.corked
        if corked is None:
            return not self.broken
        self.corked = None
        if not corked:
            return not self.broken
        data = corked[0] if len(corked) == 1 else b"".join(corked)
        self.buffered_amount -= self._corked_bytes
        self._corked_bytes = 0
        return self.write(data)

    def _uncork_nowait(self) -> None:
        """Hand what is corked to the kernel (or the outbox), never blocking: the end of the
        hub loop's turn, or another kind of write that must come after it."""
        corked = self.corked
        if corked is None:
            return
        self.corked = None
        self.buffered_amount -= self._corked_bytes
        self._corked_bytes = 0
        if corked and not self.broken:  # write_nowait(budget=None), inline
            self._send_or_queue(corked[0] if len(corked) == 1 else b"".join(corked))

    def write(self, data: bytes) -> bool:
        """Write ``data``, blocking this greenlet while the outbox is over the limit.

        Returns False when the transport is gone. A Timeout or kill mid-write drops TCP.
        """
        if self.broken:
            return False
        corked = self.corked
        if corked is not None:
            corked.append(data)
            self._corked_bytes += len(data)
            self.buffered_amount += len(data)
            if self._corked_bytes < CORK_LIMIT:
                return True
            return self.uncork()
        if self._writing or self._writer is not None or self._outbox:
            self._enqueue(data)  # keep the order: behind what others queued
            self._start_writer()
            if self.buffered_amount > self._limit:
                self._bounded(self._wait_below_limit)
            return not self.broken
        sent = self._try_send(data)
        if sent == len(data):
            return True
        if sent < 0:
            return False
        self._writing = True
        done = False
        try:
            rest = memoryview(data)[sent:] if sent else data
            done = self._bounded(self.sock.sendall, rest)
        except OSError:
            pass
        finally:
            self._writing = False
            if not done:  # an error, or a Timeout/kill mid-frame: the stream is unusable
                self.drop()
            self._start_writer()
            turn, self._turn = self._turn, None
            if turn is not None:  # wake the greenlets that queued behind this write
                turn.set()
        return done

    def _bounded(self, wait: Callable[..., Any], *args: Any) -> bool:
        """Run the blocking ``wait(*args)`` under ``write_timeout`` (the slow path only):
        past it, drop TCP and set ``timed_out``. False when it timed out."""
        if not self._write_timeout:
            wait(*args)
            return True
        timer = Timeout(self._write_timeout)
        try:
            with timer:
                wait(*args)
            return True
        except Timeout as exc:
            if exc is not timer:
                raise
            self.timed_out = True
            self.drop()
            return False

    def write_urgent(self, data: bytes, *, last: bool = False) -> int:
        """Queue a control frame (Ping, Close) ahead of every queued data frame, never
        splitting the frame the writer has begun (RFC 6455 §5.4: control frames may be
        injected between frames, never inside one). Never blocks.

        ``last``: ``data`` is a Close; everything queued behind it is discarded (RFC 6455
        §5.5.1: no data frames after a Close). Returns how many queued chunks were
        discarded (for the drop counters), ``-1`` when the transport is gone.
        """
        if self.broken:
            return -1
        if self.corked is not None:
            self._uncork_nowait()
        outbox = self._outbox
        if not outbox:
            return 0 if self.write_nowait(data, budget=None) else -1
        at = 1 if self._writer is not None else 0  # the writer owns the head chunk
        discarded = 0
        if last:
            while len(outbox) > at:
                self.buffered_amount -= len(outbox.pop())
                discarded += 1
        outbox.insert(at, data)
        self.buffered_amount += len(data)
        self._start_writer()
        return discarded

    def shutdown_read(self) -> None:
        """Wake a greenlet blocked reading (it sees EOF) while queued bytes still drain."""
        raw = getattr(self.sock, "_sock", self.sock)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RD)

    def _wait_below_limit(self) -> None:
        """Natural backpressure for blocking writers, whoever holds the socket: the writer
        greenlet, or another greenlet's sendall (then wait for its end)."""
        while self.buffered_amount > self._limit and not self.broken:
            writer = self._writer
            if writer is not None:
                writer.join()
            elif self._writing:
                if self._turn is None:
                    self._turn = Event()
                self._turn.wait()
            else:
                self._start_writer()

    def write_nowait(self, data: bytes, *, budget: int | None) -> bool:
        """Hand ``data`` to the kernel without blocking; queue what it refuses.

        ``budget``: the outbox bytes allowed after queuing, ``None`` for no limit (control
        frames). Returns False, queuing nothing, when over budget or when the transport is
        gone (``broken`` tells which).
        """
        if self.broken:
            return False
        if self.corked is not None:
            self._uncork_nowait()
        if (
            budget is not None
            and (self._writing or self._writer is not None or self._outbox)
            and self.buffered_amount + len(data) > budget
        ):
            return False
        return self._send_or_queue(data)

    def _send_or_queue(self, data: bytes) -> bool:
        """``write_nowait()`` without a budget, on a transport that is not broken: behind
        what is queued, else to the kernel and queue the rest. False when it broke."""
        if self._writing or self._writer is not None or self._outbox:
            self._enqueue(data)
            self._start_writer()
            return True
        sent = self._try_send(data)
        if sent < 0:
            return False
        if sent < len(data):
            self._enqueue(memoryview(data)[sent:] if sent else data)
            self._start_writer()
        return True

    def write_soon(self, data: bytes, *, budget: int) -> bool:
        """``write_nowait()`` for fan-out: ``data`` waits for the end of this turn of the hub
        loop, with whatever else this connection gets in the same turn, then leaves in one
        send. Never blocks.

        Refuses exactly when ``write_nowait()`` would: the first frame of a turn is always
        taken (the kernel gets it), a later one only while the held bytes stay within
        ``budget`` (else what is held is handed on first and ``write_nowait()`` decides).
        """
        if self.broken:
            return False
        corked = self.corked
        if corked is None:
            if self._writing or self._writer is not None or self._outbox:
                return self.write_nowait(data, budget=budget)
            self.corked = [data]
            self._corked_bytes = len(data)
            self.buffered_amount += len(data)
            self._hub_turn.add(self)
            return True
        size = self._corked_bytes + len(data)
        if size > CORK_LIMIT or self.buffered_amount + len(data) > budget:
            return self.write_nowait(data, budget=budget)
        corked.append(data)
        self._corked_bytes = size
        self.buffered_amount += len(data)
        return True

    def write_last(self, data: bytes) -> None:
        """Best effort before ``drop()``: ``data`` (a Close) if the kernel takes it now.

        Only when nothing else is queued, so it never cuts into a frame; under TLS too
        (RFC 6455 §7.1.7: SHOULD send a Close first).
        """
        if self.corked is not None:
            self._uncork_nowait()
        if self.broken or not self.idle:
            return
        try:
            if self._raw is not None:
                self._raw.send(data)
            elif getattr(self.sock, "_sslobj", None) is not None:
                # gevent's SSLSocket.send() tries exactly this first, then waits; we never wait
                self.sock._sslobj.write(data)
        except OSError:  # includes ssl.SSLWantWriteError: the kernel is full, drop anyway
            pass

    def _try_send(self, data: bytes) -> int:
        """Plain TCP: one non-blocking send to the OS socket (no gevent layers); -1 when
        the transport broke. Under TLS: 0 (the SSL socket writes)."""
        raw = self._raw
        if raw is None:
            return 0
        try:
            sent: int = raw.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self.drop()
            return -1
        return sent

    def _enqueue(self, chunk: bytes | memoryview) -> None:
        if self._outbox is None:
            self._outbox = deque()
        self._outbox.append(chunk)
        self.buffered_amount += len(chunk)

    def _start_writer(self) -> None:
        if self._outbox and self._writer is None and not self._writing and not self.broken:
            self._writer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        """The writer greenlet: push the outbox into the socket, then exit."""
        outbox = self._outbox
        try:
            while outbox and not self.broken:
                chunk = outbox[0]
                sent = self.sock.send(chunk)  # blocks this greenlet only
                self.buffered_amount -= sent
                if sent < len(chunk):
                    outbox[0] = memoryview(chunk)[sent:]
                else:
                    outbox.popleft()
        except OSError:
            self.drop()
        finally:
            self._writer = None
            if not self._outbox:
                self._outbox = None  # idle again: no buffer kept

    def drop(self) -> None:
        """Drop TCP: forget the outbox, RST on close (SO_LINGER 0), wake any blocked reader."""
        self.broken = True
        if self._outbox:
            self._outbox.clear()
        self.corked = None
        self._corked_bytes = 0
        self.buffered_amount = 0
        raw = getattr(self.sock, "_sock", self.sock)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self, timeout: float) -> None:
        """Flush, half-close, read to the peer's FIN, close; each wait bounded by ``timeout``."""
        sock = self.sock
        if self.corked is not None:
            self._uncork_nowait()
        try:
            writer = self._writer
            if writer is not None and not self.broken:
                writer.join(timeout)
            if not self.idle:
                self.drop()  # could not flush in time
            if not self.broken:
                # RFC 6455 §7.1.1: the server should close TCP first; either side waits for
                # the peer's FIN so that the last bytes are not lost to a RST.
                getattr(sock, "_sock", sock).shutdown(socket.SHUT_WR)
                self._discard_until_eof(timeout)
        except OSError:
            pass
        finally:
            if self._writer is not None:
                self._writer.kill(block=False)
            sock.close()

    def _discard_until_eof(self, timeout: float) -> None:
        if self._raw is not None:
            self._discard_raw(self._raw, timeout)
            return
        timer = Timeout(timeout)
        try:
            with timer:
                while self.sock.recv(self._read_size):
                    pass
        except Timeout as exc:
            if exc is not timer:
                raise
            self.drop()

    def _discard_raw(self, raw: Any, timeout: float) -> None:
        """Plain TCP: read the OS socket to EOF, waiting on the hub with one timer (no
        ``Timeout`` object, no gevent socket layers: this runs once per connection).

        Waits before the first read: the peer's FIN usually follows our Close, so reading
        first would cost a ``recv`` that finds nothing."""
        deadline = monotonic() + timeout
        size = self._read_size
        data: bytes | None = None
        while True:
            left = deadline - monotonic()
            if left <= 0:  # also a peer that never stops sending
                self.drop()
                return
            if data is None:
                wait_readable_for(self.sock, left)
            try:
                data = raw.recv(size)
            except BlockingIOError:
                data = None
            if data == b"":
                return  # the peer's FIN


def wait_readable_for(sock: Any, seconds: float) -> None:
    """Block this greenlet until ``sock`` is readable or ``seconds`` passed (the caller
    tells which by reading). ``sock.close()`` elsewhere throws into us through the read
    watcher's callback, as in ``websocket._wait_readable``; kills arrive as usual."""
    hub, switch = sock.hub, getcurrent().switch
    watcher, timer = sock._read_event, sock.hub.loop.timer(seconds)
    watcher.start(switch)
    timer.start(switch)
    try:
        hub.switch()
    finally:
        watcher.stop()
        timer.close()


def os_socket(sock: Any) -> Any | None:
    """The OS socket under a plain gevent socket, for I/O without gevent layers; None
    under TLS (the SSL object must do the I/O)."""
    return None if isinstance(sock, gevent.ssl.SSLSocket) else getattr(sock, "_sock", None)


def wrap_tls(
    sock: Any,
    context: ssl.SSLContext,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
) -> Any:
    """Wrap a gevent socket in gevent's cooperative ``SSLSocket``, for any ``SSLContext``.

    A stdlib context's own ``wrap_socket()`` returns a blocking socket (the TLS handshake
    would freeze every greenlet) unless ``ssl`` is monkey-patched; this works either way.
    No I/O happens here: call ``do_handshake()`` on the result next, under a deadline,
    and close the result (it owns the descriptor now) if that fails.
    """
    return gevent.ssl.SSLSocket(
        sock=sock,
        server_side=server_side,
        _context=context,
        server_hostname=server_hostname,
        do_handshake_on_connect=False,
    )
