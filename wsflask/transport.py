"""Transport: the write side and the teardown of one connection's socket.

What it does (ARCHITECTURE.md §3 rule 3): writes that may block, for the connection's own
greenlet (natural backpressure); writes that never block, for broadcasters (the OS socket
first, then a bounded outbox drained by a short-lived writer greenlet spawned only when
needed); dropping TCP (RST, waking any blocked reader); and the orderly close (flush,
half-close, wait for the peer's FIN within ``close_timeout``, close).

What it does not do: it never parses frames nor talks to the protocol core, and it never
decides what a slow consumer costs. ``WebSocket`` (``websocket.py``) subclasses it, reads,
drives the core (STYLE.md rule 5) and applies the backpressure policy in ``_over_budget``.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections import deque
from typing import Any

import gevent
import gevent.ssl
from gevent import Timeout

from .config import Config

__all__ = ["Transport", "wrap_tls"]

#: SO_LINGER on, 0 s: close() discards unsent data and sends RST (an abort, not a FIN).
_LINGER_ABORT = struct.pack("ii", 1, 0)


class Transport:
    """A gevent socket with a bounded outbox; the base class of ``WebSocket``.

    Args:
        sock: a gevent socket (plain or ``gevent.ssl.SSLSocket``) in blocking mode.
        config: ``max_backpressure``, ``close_timeout`` and ``read_size`` apply.
    """

    __slots__ = ("_broken", "_config", "_outbox", "_outbox_bytes", "_raw", "_sock", "_writer",
                 "_writing")

    def __init__(self, sock: Any, config: Config) -> None:
        self._sock = sock
        #: the OS socket for non-blocking writes; None under TLS (the SSL object must write)
        self._raw = None if isinstance(sock, gevent.ssl.SSLSocket) else getattr(sock, "_sock", None)
        self._config = config
        self._outbox: deque[bytes | memoryview] | None = None  # None while idle
        self._outbox_bytes = 0
        self._writer: gevent.Greenlet | None = None  # the short-lived outbox drainer
        self._writing = False  # a blocking sendall is in progress
        self._broken = False  # TCP dropped: every write fails, readers see EOF

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in the outbox that the kernel has not taken yet."""
        return self._outbox_bytes

    @property
    def transport(self) -> Any:
        """The socket this connection runs on (the TLS socket under TLS)."""
        return self._sock

    def _write(self, data: bytes) -> bool:
        """Write from a greenlet that may block; False when the transport is gone."""
        if self._broken:
            return False
        if self._writing or self._writer is not None or self._outbox:
            self._enqueue(data)  # keep the order: behind what broadcasters queued
            self._start_writer()
            writer = self._writer
            while self._outbox_bytes > self._config.max_backpressure and writer is not None:
                writer.join()  # natural backpressure for the handler's own sends
                writer = self._writer
            return not self._broken
        rest: bytes | memoryview = data
        raw = self._raw
        if raw is not None:  # plain TCP: the OS socket first, no gevent layers (usual case)
            try:
                sent = raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._break_transport()
                return False
            if sent == len(data):
                return True
            rest = memoryview(data)[sent:]  # the kernel is full: block for the rest
        self._writing = True
        done = False
        try:
            self._sock.sendall(rest)
            done = True
        except OSError:
            pass
        finally:
            self._writing = False
            if not done:  # an error, or a Timeout/kill mid-frame: the stream is unusable
                self._break_transport()
        self._start_writer()
        return done

    def _send_nowait(self, data: bytes, *, control: bool = False,
                     policy: str | None = None) -> bool:
        """Hand ``data`` to the kernel without blocking; queue what it refuses."""
        if self._broken:
            return False
        if self._writing or self._writer is not None or self._outbox:
            if not control and self._outbox_bytes + len(data) > self._config.max_backpressure:
                return self._over_budget(policy)
            self._enqueue(data)
            self._start_writer()
            return True
        sent = 0
        if self._raw is not None:  # plain TCP: try the OS socket directly
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._break_transport()
                return False
        if sent < len(data):
            self._enqueue(memoryview(data)[sent:] if sent else data)
            self._start_writer()
        return True

    def _enqueue(self, chunk: bytes | memoryview) -> None:
        if self._outbox is None:
            self._outbox = deque()
        self._outbox.append(chunk)
        self._outbox_bytes += len(chunk)

    def _start_writer(self) -> None:
        if self._outbox and self._writer is None and not self._writing and not self._broken:
            self._writer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        """The writer greenlet: push the outbox into the socket, then exit."""
        outbox = self._outbox
        try:
            while outbox and not self._broken:
                chunk = outbox[0]
                sent = self._sock.send(chunk)  # blocks this greenlet only
                self._outbox_bytes -= sent
                if sent < len(chunk):
                    outbox[0] = memoryview(chunk)[sent:]
                else:
                    outbox.popleft()
        except OSError:
            self._break_transport()
        finally:
            self._writer = None
            if not self._outbox:
                self._outbox = None  # idle again: no buffer kept

    def _break_transport(self) -> None:
        """Drop TCP: forget the outbox, RST on close (SO_LINGER 0), wake any blocked reader."""
        self._broken = True
        if self._outbox:
            self._outbox.clear()
        self._outbox_bytes = 0
        raw = getattr(self._sock, "_sock", self._sock)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_transport(self) -> None:
        """Flush, half-close, read to the peer's FIN (bounded by close_timeout), close."""
        sock, limit = self._sock, self._config.close_timeout
        try:
            writer = self._writer
            if writer is not None and not self._broken:
                writer.join(limit)
            if self._writing or self._writer is not None:
                self._break_transport()  # could not flush in time
            if not self._broken:
                # RFC 6455 §7.1.1: the server should close TCP first; either side waits for
                # the peer's FIN so that the last bytes are not lost to a RST.
                getattr(sock, "_sock", sock).shutdown(socket.SHUT_WR)
                self._discard_until_eof(limit)
        except OSError:
            pass
        finally:
            if self._writer is not None:
                self._writer.kill(block=False)
            sock.close()

    def _discard_until_eof(self, limit: float) -> None:
        timer = Timeout(limit)
        try:
            with timer:
                while self._sock.recv(self._config.read_size):
                    pass
        except Timeout as exc:
            if exc is not timer:
                raise
            self._break_transport()

    def _over_budget(self, policy: str | None) -> bool:
        """The outbox is full; subclasses apply a policy. Returns False (not queued)."""
        return False


def wrap_tls(sock: Any, context: ssl.SSLContext, *, server_side: bool = False,
             server_hostname: str | None = None) -> Any:
    """Wrap a gevent socket in gevent's cooperative ``SSLSocket``, for any ``SSLContext``.

    A stdlib context's own ``wrap_socket()`` returns a blocking socket (the TLS handshake
    would freeze every greenlet) unless ``ssl`` is monkey-patched; this works either way.
    No I/O happens here: call ``do_handshake()`` on the result next, under a deadline,
    and close the result (it owns the descriptor now) if that fails.
    """
    return gevent.ssl.SSLSocket(sock=sock, server_side=server_side, _context=context,
                                server_hostname=server_hostname,
                                do_handshake_on_connect=False)
