"""Locust integration: WebSocket users whose connects, sends and round trips show real timings.

``WebSocketClient`` reports every connect, send, receive and acked ``request()`` to locust as
``request_type="WS"``; ``WebSocketUser`` connects in ``on_start``. Importing it imports locust,
which monkey-patches: import it only from locustfiles (nothing else in wsflask does). No HTTP
user, no reconnection policy, no clock synchronisation between hosts for fan-out latency.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import gevent
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue
from locust import User
from locust.env import Environment

from .client import connect
from .envelopes import decode, encode
from .errors import ConnectionClosed
from .websocket import WebSocket

__all__ = ["REQUEST_TYPE", "WebSocketClient", "WebSocketUser", "parse_stamp", "stamp"]

REQUEST_TYPE = "WS"
#: what ``stamp()`` puts in front of a text: ``"@1732752000.123456 hello"``
_STAMP = re.compile(r"@(\d+\.\d+) ")
_ENVELOPE_START = '{"'


def stamp(payload: Any = "") -> Any:
    """Add the sender's wall-clock time: ``sent_at`` in a dict, a ``@<time> `` text prefix."""
    now = time.time()
    if isinstance(payload, dict):
        return {**payload, "sent_at": now}
    return f"@{now:.6f} {payload}"


def parse_stamp(data: Any) -> float | None:
    """The sender time ``stamp()`` put in ``data`` (or in ``data["text"]``), else None."""
    if isinstance(data, dict):
        sent_at = data.get("sent_at")
        if isinstance(sent_at, int | float):
            return float(sent_at)
        data = data.get("text")
    if isinstance(data, str) and (match := _STAMP.search(data)):
        return float(match[1])
    return None


class WebSocketClient:
    """One WebSocket connection that reports to locust's statistics.

    Args:
        environment: the locust ``Environment`` (``user.environment``).
        url: ``ws://host:port/path?query``.
        subprotocols, headers, timeout: as for ``wsflask.connect``.
        inbox_size: messages kept for ``receive()``; the oldest is dropped beyond it.

    Call ``connect()``, then ``send()``/``request()``/``round_trip()``/``receive()``, and
    ``close()`` at the end. ``request()`` sends an event envelope with an ``id`` and times it
    until the ``ack`` (or ``error``) with that id. ``round_trip()`` does the same for echo
    routes. For fan-out latency, ``stamp()`` puts the sender's wall-clock time into a payload
    and ``track_fanout(event)`` reports ``now - sent_at`` on each receiver. A reader greenlet
    takes every message: acks wake their ``request()``, tracked events are timed, the rest
    wait in a bounded inbox for ``receive()``. The server's calls (``ws.call``) are answered
    by ``on_call(event, fn)`` handlers (``fn(data)`` returns the ack's data), and with an
    "UnknownEvent" error for events without one.
    """

    def __init__(
        self,
        environment: Environment,
        url: str,
        *,
        subprotocols: Sequence[str] = (),
        headers: Iterable[tuple[str, str]] = (),
        timeout: float = 10.0,
        inbox_size: int = 1000,
    ) -> None:
        self.environment = environment
        self.url = url
        self.subprotocols = tuple(subprotocols)
        self.headers = tuple(headers)
        self.timeout = timeout
        #: the open connection, None before ``connect()`` succeeded
        self.ws: WebSocket | None = None
        self.inbox: Queue[str | bytes] = Queue(inbox_size)
        self._pending: dict[int, AsyncResult] = {}
        self._ids = itertools.count(1)
        self._fanout: dict[str, tuple[str, Callable[[Any], float | None]]] = {}
        self._reader: gevent.Greenlet | None = None
        self._closing = False
        #: event -> handler answering the server's calls (see ``on_call``)
        self.call_handlers: dict[str, Callable[[Any], Any]] = {}

    def on_call(self, event: str, handler: Callable[[Any], Any]) -> None:
        """Answer the server's calls of ``event`` with ``handler(data)`` (the ack's data)."""
        self.call_handlers[event] = handler

    @property
    def is_open(self) -> bool:
        return self.ws is not None and self.ws.is_open

    def connect(self, name: str = "connect") -> bool:
        """Open the connection, timed as ``WS <name>``; False (a failure recorded) if refused."""
        self._closing = False
        with self.environment.events.request.measure(REQUEST_TYPE, name) as meta:
            self.ws = None
            self.ws = connect(
                self.url, subprotocols=self.subprotocols, headers=self.headers, timeout=self.timeout
            )
            meta["context"] = {"url": self.url}
        if self.ws is None:
            return False
        self.ws.answer_calls(self.call_handlers)
        self._reader = gevent.spawn(self._read_loop, self.ws)
        return True

    def close(self, code: int = 1000) -> None:
        """Close (waits for the closing handshake, bounded) and fail requests still pending."""
        self._closing = True
        ws, reader = self.ws, self._reader
        if ws is not None:
            ws.close(code)
        if reader is not None:
            reader.join(timeout=self.timeout)
            reader.kill(block=False)
        self._fail_pending(ConnectionClosed(1000, "closed by the load test"))

    # -- sending ------------------------------------------------------------------------------

    def send(self, data: str | bytes, name: str = "send") -> None:
        """Send one message, timed as ``WS <name>`` (the time the write took)."""
        ws = self._open()
        started = time.perf_counter()
        exception: Exception | None = None
        try:
            ws.send(data)
        except ConnectionClosed as exc:
            exception = exc
        self._fire(name, started, len(data), exception)

    def emit(self, event: str, data: Any = None, name: str | None = None) -> None:
        """Send the envelope ``{"event", "data"}`` (no ack expected), timed as a send."""
        self.send(encode(event, data, None), name or event)

    def request(
        self, event: str, data: Any = None, *, name: str | None = None, timeout: float | None = None
    ) -> Any:
        """Send ``{"event", "data", "id"}`` and wait for its ack; return the ack's data.

        Timed as ``WS <name or event>`` from send to ack. An ``error`` envelope with this id,
        a timeout or a closed connection is recorded as a failure and returns None.
        """
        ws = self._open()
        msg_id = next(self._ids)
        waiter: AsyncResult = AsyncResult()
        self._pending[msg_id] = waiter
        text = encode(event, data, msg_id)
        started = time.perf_counter()
        exception: Exception | None = None
        answer: Any = None
        try:
            ws.send(text)
            answer = waiter.get(timeout=self.timeout if timeout is None else timeout)
        except gevent.Timeout:
            exception = TimeoutError(f"no ack for {event!r} within {timeout or self.timeout} s")
        except Exception as exc:  # ConnectionClosed, or an error envelope (RuntimeError)
            exception = exc
        finally:
            self._pending.pop(msg_id, None)
        self._fire(name or event, started, len(text), exception)
        return answer

    def round_trip(
        self, data: str | bytes, name: str = "round_trip", timeout: float | None = None
    ) -> str | bytes | None:
        """Send ``data`` and take the next message (an echo), timed from send to arrival."""
        ws = self._open()
        started = time.perf_counter()
        exception: Exception | None = None
        reply: str | bytes | None = None
        try:
            ws.send(data)
            reply = self.inbox.get(timeout=self.timeout if timeout is None else timeout)
        except Empty:
            exception = TimeoutError(f"no reply within {timeout or self.timeout} s")
        except ConnectionClosed as exc:
            exception = exc
        self._fire(name, started, len(data), exception)
        return reply

    # -- receiving ----------------------------------------------------------------------------

    def receive(self, timeout: float | None = None, name: str = "receive") -> str | bytes | None:
        """The next message not taken by an ack or a fan-out tracker, timed as the wait."""
        started = time.perf_counter()
        try:
            message: str | bytes = self.inbox.get(
                timeout=self.timeout if timeout is None else timeout
            )
        except Empty:
            self._fire(name, started, 0, TimeoutError(f"nothing received in {timeout} s"))
            return None
        self._fire(name, started, len(message), None)
        return message

    def track_fanout(
        self,
        event: str,
        extract: Callable[[Any], float | None] = parse_stamp,
        name: str | None = None,
    ) -> None:
        """Report ``now - sent_at`` for every ``event`` envelope received, as ``WS <name>``.

        ``extract(data)`` returns the sender's ``time.time()`` (``parse_stamp`` reads what
        ``stamp()`` wrote); envelopes without one are ignored.
        """
        self._fanout[event] = (name or f"fanout {event}", extract)

    # -- the reader ---------------------------------------------------------------------------

    def _read_loop(self, ws: WebSocket) -> None:
        for message in ws:
            envelope = _decode(message)
            if envelope is None or not self._dispatch(envelope, len(message)):
                if self.inbox.full():
                    self.inbox.get_nowait()  # keep the newest: nobody is reading them
                self.inbox.put_nowait(message)
        self._fail_pending(ConnectionClosed(ws.close_code or 1006, ws.close_reason))
        if not self._closing:  # the server (or the network) ended it: that is a failure
            self._fire(
                "disconnect",
                time.perf_counter(),
                0,
                ConnectionClosed(ws.close_code or 1006, ws.close_reason),
            )

    def _dispatch(self, envelope: dict[str, Any], size: int) -> bool:
        """Hand an envelope to its waiter or fan-out tracker; False when nobody took it."""
        event, msg_id = envelope.get("event"), envelope.get("id")
        waiter = self._pending.get(msg_id) if isinstance(msg_id, int) else None
        if waiter is not None and event in ("ack", "error"):
            if event == "ack":
                waiter.set(envelope.get("data"))
            else:
                waiter.set_exception(RuntimeError(f"error envelope: {envelope.get('data')!r}"))
            return True
        tracker = self._fanout.get(event) if isinstance(event, str) else None
        if tracker is None:
            return False
        sent_at = tracker[1](envelope.get("data"))
        if sent_at is not None:
            self._report(tracker[0], max(0.0, (time.time() - sent_at) * 1000), size, None)
        return True

    # -- helpers ------------------------------------------------------------------------------

    def _open(self) -> WebSocket:
        """The open connection; connects again (timed) after a drop."""
        if self.ws is None or not self.ws.is_open:
            self.connect()
        if self.ws is None or not self.ws.is_open:
            raise ConnectionClosed(1006, f"cannot connect to {self.url}")
        return self.ws

    def _fire(self, name: str, started: float, length: int, exception: Exception | None) -> None:
        """Report what began at ``perf_counter()`` ``started`` and ends now."""
        self._report(name, (time.perf_counter() - started) * 1000, length, exception)

    def _report(
        self, name: str, milliseconds: float, length: int, exception: Exception | None
    ) -> None:
        self.environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type=REQUEST_TYPE,
            name=name,
            response_time=milliseconds,
            response_length=length,
            exception=exception,
            context={"url": self.url},
        )

    def _fail_pending(self, exc: Exception) -> None:
        for waiter in list(self._pending.values()):
            if not waiter.ready():
                waiter.set_exception(exc)


class WebSocketUser(User):
    """A locust user with one ``WebSocketClient`` to ``host + path`` (``--host ws://...``).

    Subclass it, set ``path`` (and ``subprotocols``/``headers``), and write ``@task``
    methods with ``self.client``. Overriding ``on_start``/``on_stop``: call ``super()``.
    """

    abstract = True
    #: appended to ``host``: ``"/echo"``, ``"/chat/lobby?nick=bot"``
    path: ClassVar[str] = "/"
    subprotocols: ClassVar[Sequence[str]] = ()
    headers: ClassVar[Sequence[tuple[str, str]]] = ()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise ValueError("set --host ws://HOST:PORT (or the user's host attribute)")
        self.client = WebSocketClient(
            environment, self.url(), subprotocols=self.subprotocols, headers=self.headers
        )

    def url(self) -> str:
        """``host`` + ``path``; override for a per-user path (a room, a nickname)."""
        return str(self.host).rstrip("/") + self.path

    def on_start(self) -> None:
        """Connect (timed as ``WS connect``); a failed connect is retried by the next call."""
        self.client.connect()

    def on_stop(self) -> None:
        self.client.close()


def _decode(message: str | bytes) -> dict[str, Any] | None:
    """The JSON envelope in ``message``, or None for anything else (cheap check first)."""
    if not isinstance(message, str) or not message.startswith(_ENVELOPE_START):
        return None
    return decode(message)
