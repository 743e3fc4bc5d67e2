"""WSGI integration: WebSockets next to a WSGI app (Flask...) on one port, under pywsgi.

``WebSocketHandler`` serves upgrades for an App's routes with ``Server``'s decision
(``upgrade.answer``), limits (503/429) and head deadline (408), a plain request to them with
426, the rest through WSGI; ``WebSocketMiddleware`` does it inside the WSGI stack;
``environ["wsgi.websocket"]`` keeps gevent-websocket's API. No HTTP parsing (pywsgi reads, the
core validates), no monkey-patching.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterable, Iterator
from socket import IPPROTO_TCP, TCP_NODELAY
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import quote

import gevent
from gevent import Timeout, pywsgi
from gevent.event import Event

from .config import Config
from .errors import ConnectionClosed
from .heap import HeapTrimmer
from .lifespan import Lifespan, hosted
from .protocol import CloseCode, Connection, HandshakeError, Request, Side
from .server import Service
from .upgrade import HTTPResponse, Upgrade, answer, going_away, read_request, reject
from .websocket import Watcher, WebSocket, ending
from .wsgi_pages import PagesApp, pages_app

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["GeventWebSocket", "PagesApp", "WSGIServer", "WebSocketApp", "WebSocketHandler",
           "WebSocketMiddleware", "bind_handler", "pages_app", "upgrade_required"]  # fmt: skip

logger = logging.getLogger("wsflask.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_DEFAULT_CONFIG = Config()
_NEEDS_HANDLER = b"needs wsflask.wsgi.WebSocketHandler (pywsgi) or wsflask.gunicorn.GeventWorker\n"
_TIMEOUT_BODY = b"408 Request Timeout\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class _HeadTimeout(OSError):
    """``handshake_timeout`` passed while pywsgi read a request head (an ``OSError``, so
    pywsgi's reader gives up on the connection as on a reset)."""


class AppHeartbeat(Watcher, Protocol):
    """The App's heartbeat as pywsgi needs it: told of connections, started on first use,
    stopped with the server."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


class WebSocketApp(Protocol):
    """What the handler needs from a wsflask ``App``."""

    @property
    def config(self) -> Config: ...
    @property
    def metrics(self) -> Metrics | None: ...
    @property
    def heartbeat(self) -> AppHeartbeat | None: ...
    def match(self, path: str) -> object | None: ...
    def resolve(self, request: Request, addr: tuple[str, int]) -> Upgrade | HTTPResponse: ...
    def notify_started(self, address: tuple[str, int]) -> None: ...
    def notify_stopped(self) -> None: ...
    def new_id(self) -> str: ...


class WebSocketHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    """A pywsgi handler that serves WebSocket upgrades itself and the rest through WSGI.

    Use ``app.handler_class`` (bound to an App) or this class with a WSGI app wrapped in
    ``app.wsgi_middleware()``. Upgrade requests not taken by an App see
    ``environ["wsgi.websocket"]`` (a ``GeventWebSocket``) and ``environ["wsflask.upgrade"]``.
    Every request head must arrive within ``handshake_timeout`` (the bound App's, else the
    default 5 s); upgrades take a ``WSGIServer.admit`` slot (503/429 past the limits).
    """

    #: the App whose routes this handler serves first (set by ``bind_handler``)
    ws_app: ClassVar[WebSocketApp | None] = None
    #: True once the socket belongs to a WebSocket: pywsgi must not write or close it
    upgraded = False
    socket: Any  # pywsgi's; None once a WebSocket owns it
    result: Any  # pywsgi's: the WSGI app's response
    requestline: str  # pywsgi's, without its line ending

    #: the request line ended with a bare LF (the core then answers 400, as on ``Server``)
    bare_lf = False
    #: the deadline of the head being read (``handshake_timeout``), else None
    _deadline: Timeout | None = None
    #: this request holds a WebSocket slot of the server (``WSGIServer.admit``)
    _admitted = False
    #: a request line was read on this connection (later ones may idle first: keep-alive)
    _had_request = False

    def handle_one_request(self) -> Any:
        """pywsgi's, with the request head read under ``handshake_timeout`` (then 408)."""
        try:
            return super().handle_one_request()
        finally:
            self._end_deadline()

    def read_requestline(self) -> str:
        """pywsgi's, read as ``Server`` reads heads: one empty line before the request line
        is ignored (RFC 7230 §3.5), a bare-LF line ending is remembered. The deadline runs
        from the connection's start (first request) or from the first byte (keep-alive)."""
        timeout = self._config().handshake_timeout
        if not self._had_request:
            self._had_request = True
            self._deadline = Timeout.start_new(timeout, _HeadTimeout())
        try:
            if not self._await_request():
                return ""
        except _HeadTimeout:  # not one byte in time: nothing to answer (as on ``Server``)
            self._timed_out()
            return ""
        if self._deadline is None:
            self._deadline = Timeout.start_new(timeout, _HeadTimeout())
        try:
            line: str = super().read_requestline()
            if line == "\r\n":
                line = super().read_requestline()
        except _HeadTimeout:
            self._timed_out()
            with Timeout(1.0, False), contextlib.suppress(OSError):
                self.socket.sendall(_REQUEST_TIMEOUT)
            return ""
        self.bare_lf = line.endswith("\n") and not line.endswith("\r\n")
        return line

    def read_request(self, raw_requestline: str) -> Any:
        """pywsgi's header reading, within the head's deadline."""
        try:
            return super().read_request(raw_requestline)
        finally:
            self._end_deadline()

    def handle_error(self, t: type[BaseException], v: BaseException, tb: Any) -> None:
        """pywsgi's, except once upgraded: the socket is the WebSocket's (or gone), so no
        500 is written; a kill at the end of ``stop()``'s grace is not logged."""
        if not self.upgraded:
            super().handle_error(t, v, tb)
            return
        self.close_connection = True
        self._log_error(t, v, tb)  # pywsgi's: skips GreenletExit

    def _handle_client_error(self, ex: Exception) -> Any:
        if isinstance(ex, _HeadTimeout):
            self._timed_out()
            return ("408", _REQUEST_TIMEOUT)
        return super()._handle_client_error(ex)

    def _await_request(self) -> bool:
        """Wait for the first byte of a request; False at EOF or on an error."""
        try:
            return bool(self.rfile.peek(1))
        except _HeadTimeout:
            raise
        except (OSError, ValueError):
            return False

    def _end_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    def _config(self) -> Config:
        return self.ws_app.config if self.ws_app is not None else _DEFAULT_CONFIG

    def _timed_out(self) -> None:
        self.close_connection = True
        metrics = self.ws_app.metrics if self.ws_app is not None else None
        if metrics is not None:
            metrics.handshake(408)

    def run_application(self) -> None:
        """Route one request: an App route (426 without an upgrade), else the WSGI app (with
        ``wsgi.websocket``)."""
        environ = self.environ
        environ["wsflask.server"] = self.server  # for the pages' /readyz
        if not _wants_websocket(environ):
            app = self.ws_app
            if app is not None and app.match(_path(self.path)) is not None:
                self.result = upgrade_required(app, environ, self.start_response)
                self.process_result()
                return
            super().run_application()
            return
        if self.ws_app is not None and self.upgrade(self.ws_app):
            return
        environ["wsflask.upgrade"] = self.upgrade
        environ["wsgi.websocket_version"] = "13"
        compat = GeventWebSocket(self)
        environ["wsgi.websocket"] = compat
        self._run_wsgi(compat)

    def upgrade(self, app: WebSocketApp) -> bool:
        """Serve this request with ``app`` if its path matches one of the App's routes.

        Returns False (nothing touched) when no route matches; else True once the connection
        ended: the handshake was refused or the route's handler returned.
        """
        if self.upgraded:
            raise RuntimeError("this request was already upgraded")
        if app.match(_path(self.path)) is None:
            return False
        app.notify_started(_bound(self.server))  # idempotent: a plain pywsgi server's start
        status = _StatusLog(self, app.metrics)
        ws, request = self._take_over(app.config, status, app.heartbeat, app.new_id())
        if request is None or not self._admit(ws, app.config, status):
            return True
        try:
            upgrade = answer(
                ws, request, app.resolve, stopping=_stopping(self.server), metrics=status
            )
            if upgrade is not None:
                self._serve(ws, upgrade.handler)
        finally:
            self._release()
        return True

    def _admit(self, ws: WebSocket, config: Config, status: _StatusLog) -> bool:
        """Take a WebSocket slot of the server, or refuse: 503 past ``max_connections``, 429
        past ``max_connections_per_ip`` (both with ``Retry-After``, as on ``Server``)."""
        server = self.server
        if not isinstance(server, WSGIServer):
            return True
        refusal = server.admit(self.client_address, config)
        if refusal is None:
            self._admitted = True
            return True
        status.handshake(refusal)
        reject(ws, refusal, "too many connections", headers=(("Retry-After", "1"),))
        return False

    def _release(self) -> None:
        if self._admitted and isinstance(self.server, WSGIServer):
            self._admitted = False
            self.server.release(self.client_address)

    # -- the takeover --------------------------------------------------------------------------

    def _take_over(
        self,
        config: Config,
        status: _StatusLog,
        heartbeat: AppHeartbeat | None,
        connection_id: str | None,
    ) -> tuple[WebSocket, Request | None]:
        """Hand the socket and the head pywsgi read to a WebSocket. pywsgi keeps no
        reference to the socket afterwards, so only the WebSocket closes it."""
        self.upgraded = True
        sock = self.socket
        leftover = _buffered(self.rfile, sock)
        self.rfile.close()  # drops makefile()'s reference: closing the socket now closes it
        self.socket = None  # pywsgi's handle() skips its own close
        self.close_connection = True
        self.wsgi_input = pywsgi.Input(None, 0)  # nothing left for pywsgi to discard
        self.response_headers: list[tuple[bytes, bytes]] = []
        with contextlib.suppress(OSError):
            sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
        if heartbeat is not None:  # the App's one heartbeat greenlet, stopped with the server
            if isinstance(self.server, WSGIServer):
                self.server.run_service(heartbeat)
            else:
                heartbeat.start()  # idempotent
        conn = Connection(
            Side.SERVER, limits=config.limits(), http=True, deflate=config.deflate_settings()
        )
        ws = WebSocket(
            sock,
            conn,
            config=config,
            metrics=status.metrics,
            heartbeat=heartbeat,
            remote_address=self.client_address,
            connection_id=connection_id,
            initial=self._head() + leftover,
        )
        # pywsgi's access log prints the request line: leave the query (tokens) out, as
        # wsflask's own logs do
        method, _, rest = self.requestline.partition(" ")
        target, _, version = rest.rpartition(" ")
        self.requestline = f"{method} {target.partition('?')[0]} {version}"
        outcome = read_request(ws)  # the core validates the head (400/405/426/431)
        if isinstance(outcome, Request):
            return ws, outcome
        if isinstance(outcome, HandshakeError):
            status.handshake(outcome.status)
        return ws, None

    def _head(self) -> bytes:
        """The request head as the client sent it (pywsgi keeps the line and the fields; a
        bare LF after the request line is kept, for the core to refuse)."""
        fields = "".join(h.rstrip("\r\n") + "\r\n" for h in self.headers.headers)
        eol = "\n" if self.bare_lf else "\r\n"
        return f"{self.requestline}{eol}{fields}\r\n".encode("latin-1")

    def _serve(self, ws: WebSocket, handler: Callable[[WebSocket], None]) -> None:
        server = self.server
        if isinstance(server, WSGIServer):
            server.track(ws)
        try:
            ws.run(going_away if _stopping(server) else handler)
        finally:
            if isinstance(server, WSGIServer):
                server.untrack(ws)

    # -- gevent-websocket compatibility ---------------------------------------------------------

    def accept_compat(self, subprotocol: str | None = None) -> WebSocket | None:
        """Complete the handshake for ``environ["wsgi.websocket"]``; None when refused.

        The App given by ``environ["wsflask.app"]`` (the middleware sets it) or ``ws_app``
        lends its config, metrics and heartbeat; no hooks run.
        """
        app: WebSocketApp | None = self.environ.get("wsflask.app") or self.ws_app
        status = _StatusLog(self, app.metrics if app is not None else None)
        ws, request = self._take_over(
            app.config if app is not None else _DEFAULT_CONFIG,
            status,
            app.heartbeat if app is not None else None,
            app.new_id() if app is not None else None,
        )
        if request is None or not self._admit(ws, ws.config, status):
            return None
        chosen = Upgrade(going_away, subprotocol=subprotocol)  # its handler never runs
        if (
            answer(
                ws, request, lambda _r, _a: chosen, stopping=_stopping(self.server), metrics=status
            )
            is None
        ):
            return None
        # This greenlet reads the connection from now on, as ws.run() would have said: a
        # close() from another greenlet (server shutdown) must not read it too.
        ws.claim_reader()
        if isinstance(self.server, WSGIServer):
            self.server.track(ws)
        return ws

    def _run_wsgi(self, compat: GeventWebSocket) -> None:
        """Call the WSGI app; once it upgraded, drop its response and end the WebSocket as
        ``ws.run()`` would (exceptions before the upgrade are pywsgi's to answer)."""
        try:
            with ending(lambda: compat.websocket):
                try:
                    self.result = self.application(self.environ, self.start_response)
                    if not self.upgraded:
                        self.process_result()
                finally:
                    result, self.result = self.result, None
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
        finally:
            if compat.websocket is not None and isinstance(self.server, WSGIServer):
                self.server.untrack(compat.websocket)
            self._release()


class _StatusLog:
    """Counts a handshake's final status on the App's metrics and shows it in pywsgi's
    access log (``answer()``'s ``HandshakeCounter``)."""

    __slots__ = ("handler", "metrics")

    def __init__(self, handler: WebSocketHandler, metrics: Metrics | None) -> None:
        self.handler = handler
        self.metrics = metrics

    def handshake(self, status: int) -> None:
        self.handler.status = f"{status} WebSocket".encode()
        self.handler._orig_status = f"{status} WebSocket"
        if self.metrics is not None:
            self.metrics.handshake(status)


class GeventWebSocket:
    """``environ["wsgi.websocket"]``: gevent-websocket's API over a wsflask ``WebSocket``.

    The handshake runs on first use (or ``accept()``); ``receive()`` returns ``None`` once the
    connection is closed, ``send()`` raises ``ConnectionClosed`` then. ``websocket`` is the
    underlying ``WebSocket`` for wsflask's own API (rooms, ``send_prepared``...).
    """

    def __init__(self, handler: WebSocketHandler) -> None:
        self._handler = handler
        self.environ: dict[str, Any] = handler.environ
        #: the wsflask WebSocket once the handshake succeeded
        self.websocket: WebSocket | None = None
        self._tried = False

    @property
    def closed(self) -> bool:
        """True once the connection is closed (or the handshake was refused)."""
        return self._tried and (self.websocket is None or not self.websocket.is_open)

    @property
    def path(self) -> str:
        return str(self.environ.get("PATH_INFO", ""))

    @property
    def origin(self) -> str | None:
        return self.environ.get("HTTP_ORIGIN")

    @property
    def protocol(self) -> str | None:
        """The negotiated subprotocol."""
        return self.websocket.subprotocol if self.websocket is not None else None

    def accept(self, subprotocol: str | None = None) -> bool:
        """Answer 101 now (announcing ``subprotocol``); False when the handshake was refused."""
        if not self._tried:
            self._tried = True
            self.websocket = self._handler.accept_compat(subprotocol)
        return self.websocket is not None

    def receive(self) -> str | bytes | None:
        """The next message (``str`` text, ``bytes`` binary), or None once closed."""
        return self.websocket.receive() if self.accept() and self.websocket else None

    read_message = receive

    def send(self, message: str | bytes, binary: bool | None = None) -> None:
        """Send ``message``; ``binary`` forces the frame type as in gevent-websocket."""
        if not self.accept() or self.websocket is None:
            raise ConnectionClosed(CloseCode.ABNORMAL, "the WebSocket handshake was refused")
        if binary and isinstance(message, str):
            message = message.encode("utf-8")
        elif binary is False and isinstance(message, bytes):
            message = message.decode("utf-8")
        self.websocket.send(message)

    def close(self, code: int = CloseCode.NORMAL, message: bytes | str = b"") -> None:
        """Start the closing handshake (waits for the peer's Close, bounded)."""
        if self.websocket is not None:
            reason = message.decode("utf-8") if isinstance(message, bytes) else message
            self.websocket.close(code, reason)
        self._tried = True

    def __iter__(self) -> Iterator[str | bytes]:
        while (message := self.receive()) is not None:
            yield message


class WebSocketMiddleware:
    """``app.wsgi_middleware(wsgi_app)``: WebSocket upgrades for App routes, the rest to WSGI.

    Needs ``WebSocketHandler`` (or ``GeventWorker``) as the server's handler: it provides
    ``environ["wsflask.upgrade"]``. Without it an upgrade to an App route gets 501; a plain
    request to one gets 426 either way.
    """

    def __init__(self, ws_app: WebSocketApp, wsgi_app: WSGIApp) -> None:
        self.ws_app = ws_app
        self.wsgi_app = wsgi_app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        upgrade = environ.get("wsflask.upgrade")
        if upgrade is not None:
            environ.setdefault("wsflask.app", self.ws_app)
            if upgrade(self.ws_app):
                return []
        elif self.ws_app.match(_environ_path(environ)) is not None:
            if not _wants_websocket(environ):
                return upgrade_required(self.ws_app, environ, start_response)
            start_response("501 Not Implemented", [("Content-Type", "text/plain; charset=utf-8")])
            return [_NEEDS_HANDLER]
        return self.wsgi_app(environ, start_response)


class WSGIServer(pywsgi.WSGIServer):  # type: ignore[misc]
    """``gevent.pywsgi.WSGIServer`` with ``WebSocketHandler`` and a WebSocket-aware shutdown.

    ``close()`` stops accepting, then sends Close 1001 to every open WebSocket (upgrades
    still arriving get 503). ``stop(timeout)`` also waits up to ``timeout`` seconds (default
    ``stop_timeout``) for their closing handshakes, kills what is left (TCP dropped), then
    stops the Apps' heartbeats. ``install_signal_handlers()`` makes SIGTERM/SIGINT drain.
    """

    handler_class = WebSocketHandler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: open WebSockets and the greenlets that serve them
        self.websockets: dict[WebSocket, gevent.Greenlet] = {}
        #: True from the first close(): no new WebSocket is accepted
        self.stopping = False
        #: the apps whose lifespan start() began (``lifespan.py``); stop() ends them
        self.lifespans: list[WebSocketApp | Lifespan] = []
        #: started by ``run_service`` (the Apps' heartbeats...), stopped by ``stop()``
        self.services: list[Service] = []
        #: WebSocket slots held (handshaking or open), in all and per client IP
        self.admitted = 0
        self._per_ip: dict[str, int] = {}
        self._stop_begun = False
        self._stopped = Event()
        #: gives freed heap memory back once many WebSockets closed (``heap_trim_drop`` of
        #: the App this server serves, from ``start()``; the default until then)
        self.heap = HeapTrimmer(_DEFAULT_CONFIG.heap_trim_drop)

    def start(self) -> None:
        """Start accepting, then run the startup hooks of the App this server serves (its
        ``handler_class``'s or middleware's), else of every App hosted in this process."""
        super().start()
        own = getattr(self.handler_class, "ws_app", None) or getattr(
            self.application, "ws_app", None
        )
        self.lifespans = [own] if own is not None else list(hosted())
        if own is not None:
            self.heap.drop, self.heap.metrics = own.config.heap_trim_drop, own.metrics
        for app in self.lifespans:
            app.notify_started(_bound(self))

    def admit(self, address: Any, config: Config) -> int | None:
        """Take a WebSocket slot for a client at ``address``; ``release()`` it later.

        Returns None, or the refusal's status: 503 at ``config.connection_limit()`` slots,
        429 at ``max_connections_per_ip`` for that IP. Plain HTTP takes no slot (bound it
        with pywsgi's ``spawn=N`` pool).
        """
        if self.admitted >= config.connection_limit():
            return 503
        ip = _ip(address)
        held = self._per_ip.get(ip, 0)
        if config.max_connections_per_ip and held >= config.max_connections_per_ip:
            return 429
        self.admitted += 1
        self._per_ip[ip] = held + 1
        return None

    def release(self, address: Any) -> None:
        self.admitted -= 1
        ip = _ip(address)
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def run_service(self, service: Service) -> None:
        """Start ``service`` (idempotent); ``stop()`` stops it once the WebSockets drained.

        The handlers run the Apps' heartbeats; run a backplane yourself before serving:
        ``server.run_service(app.cluster)``.
        """
        if service not in self.services:
            self.services.append(service)
        service.start()

    def track(self, ws: WebSocket) -> None:
        """Register an open WebSocket (the handler calls it); ``untrack()`` when it ends."""
        websockets = self.websockets
        websockets[ws] = gevent.getcurrent()
        self.heap.opened(len(websockets))
        if self.stopping:
            ws.close(CloseCode.GOING_AWAY, "going away")

    def untrack(self, ws: WebSocket) -> None:
        websockets = self.websockets
        if websockets.pop(ws, None) is not None:
            self.heap.closed(len(websockets))

    def close(self) -> None:
        """Stop accepting; Close 1001 "going away" to every open WebSocket. Idempotent."""
        self.stopping = True
        if not self.closed:
            super().close()
        for ws in list(self.websockets):
            ws.close(CloseCode.GOING_AWAY, "going away")

    def stop(self, timeout: float | None = None) -> None:
        """``close()``, wait for the WebSockets (then the pool), kill what is left, stop the
        services. A second call waits for the first (``serve_forever`` makes one)."""
        if self._stop_begun:
            self._stopped.wait()
            return
        self._stop_begun = True
        try:
            self.close()
            grace = self.stop_timeout if timeout is None else timeout
            gevent.joinall(list(self.websockets.values()), timeout=grace)
            super().stop(timeout=grace)
            for greenlet in list(self.websockets.values()):  # killed handlers drop TCP
                greenlet.kill(block=True, timeout=1.0)
            self.heap.cancel()
            for service in reversed(self.services):
                service.stop()
            lifespans, self.lifespans = self.lifespans, []
            for app in lifespans:  # after the drain: background tasks, then shutdown hooks
                app.notify_stopped()
        finally:
            self._stopped.set()

    def install_signal_handlers(self) -> None:
        """On SIGTERM or SIGINT, ``stop()`` in a new greenlet: every WebSocket gets 1001, then
        ``serve_forever()`` returns (no ``KeyboardInterrupt``). Not under gunicorn: its
        worker handles the signals."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        logger.info("signal %s: draining connections", signal.Signals(signum).name)
        gevent.spawn(self.stop)


def bind_handler(app: WebSocketApp) -> type[WebSocketHandler]:
    """A ``WebSocketHandler`` subclass serving ``app``'s routes (``App.handler_class``)."""
    return type("WebSocketHandler", (WebSocketHandler,), {"ws_app": app})


def upgrade_required(
    app: WebSocketApp, environ: dict[str, Any], start_response: Callable[..., Any]
) -> list[bytes]:
    """426 for a request without an upgrade to a WebSocket route, as ``Server`` answers it
    (RFC 9110 §15.5.22: with ``Upgrade``); counted on the App's metrics."""
    if app.metrics is not None:
        app.metrics.handshake(426)
    body = b"this resource needs a WebSocket upgrade\n"
    start_response(
        "426 Upgrade Required",
        [
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def _wants_websocket(environ: dict[str, Any]) -> bool:
    """An ``Upgrade: websocket`` request (the core validates the rest)."""
    tokens = str(environ.get("HTTP_UPGRADE", "")).lower().split(",")
    return "websocket" in (token.strip() for token in tokens)


def _path(target: str) -> str:
    """The path of a request target, not percent-decoded (as ``Request.path``)."""
    if not target.startswith("/") and "://" in target:  # absolute-form
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return target.partition("?")[0]


def _environ_path(environ: dict[str, Any]) -> str:
    """The request path, percent-encoded as sent (gunicorn's ``RAW_URI``) or re-encoded
    from ``PATH_INFO`` (which WSGI decodes)."""
    raw = environ.get("RAW_URI")
    if raw:
        return _path(str(raw))
    path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    try:
        return quote(path.encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
    except UnicodeEncodeError:  # not a PEP 3333 value: match it as it is
        return path


def _ip(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


def _buffered(rfile: Any, sock: Any) -> bytes:
    """Bytes pywsgi's reader already took from the kernel after the head, without blocking."""
    try:
        sock.settimeout(0.0)  # peek() returns the buffer, or b"" instead of waiting
        return bytes(rfile.peek())
    except (OSError, ValueError):
        return b""
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)  # the driver's timers apply from here


def _bound(server: Any) -> tuple[str, int]:
    """The ``(host, port)`` a started pywsgi server listens on."""
    return str(server.server_host), int(server.server_port)


def _stopping(server: Any) -> bool:
    return bool(getattr(server, "stopping", False))
