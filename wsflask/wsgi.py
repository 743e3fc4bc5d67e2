"""WSGI integration: WebSockets next to a WSGI app (Flask...) on one port, under pywsgi.

``WebSocketHandler`` serves upgrades for an App's routes over the same driver and handshake
decision as ``Server`` (``upgrade.answer``) and the rest through WSGI; ``WebSocketMiddleware``
does it inside the WSGI stack; ``environ["wsgi.websocket"]`` keeps gevent-websocket's API.
No HTTP parsing (pywsgi reads, the core validates), no handshake deadline, no monkey-patching.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from socket import IPPROTO_TCP, TCP_NODELAY
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import gevent
from gevent import pywsgi

from .config import Config
from .errors import ConnectionClosed
from .lifespan import Lifespan, hosted
from .protocol import CloseCode, Connection, HandshakeError, Request, Side
from .upgrade import HTTPResponse, Upgrade, answer, going_away, read_request
from .websocket import Watcher, WebSocket, ending

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["GeventWebSocket", "WSGIServer", "WebSocketApp", "WebSocketHandler",
           "WebSocketMiddleware", "bind_handler"]  # fmt: skip

logger = logging.getLogger("wsflask.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_DEFAULT_CONFIG = Config()
_NEEDS_HANDLER = b"needs wsflask.wsgi.WebSocketHandler (pywsgi) or wsflask.gunicorn.GeventWorker\n"


class AppHeartbeat(Watcher, Protocol):
    """The App's heartbeat as pywsgi needs it: told of connections, started on first use."""

    def start(self) -> None: ...


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


class WebSocketHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    """A pywsgi handler that serves WebSocket upgrades itself and the rest through WSGI.

    Use ``app.handler_class`` (bound to an App) or this class with a WSGI app wrapped in
    ``app.wsgi_middleware()``. Upgrade requests not taken by an App see
    ``environ["wsgi.websocket"]`` (a ``GeventWebSocket``) and ``environ["wsflask.upgrade"]``.
    """

    #: the App whose routes this handler serves first (set by ``bind_handler``)
    ws_app: ClassVar[WebSocketApp | None] = None
    #: True once the socket belongs to a WebSocket: pywsgi must not write or close it
    upgraded = False
    socket: Any  # pywsgi's; None once a WebSocket owns it
    requestline: str  # pywsgi's, without its line ending

    #: the request line ended with a bare LF (the core then answers 400, as on ``Server``)
    bare_lf = False

    def read_requestline(self) -> str:
        """pywsgi's, read as ``Server`` reads heads: one empty line before the request line
        is ignored (RFC 7230 §3.5), and a bare-LF line ending is remembered."""
        line: str = super().read_requestline()
        if line == "\r\n":
            line = super().read_requestline()
        self.bare_lf = line.endswith("\n") and not line.endswith("\r\n")
        return line

    def run_application(self) -> None:
        """Route one request: an App route, else the WSGI app (with ``wsgi.websocket``)."""
        environ = self.environ
        if not _wants_websocket(environ):
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
        ws, request = self._take_over(app.config, status, app.heartbeat)
        if request is not None:
            upgrade = answer(
                ws, request, app.resolve, stopping=_stopping(self.server), metrics=status
            )
            if upgrade is not None:
                self._serve(ws, upgrade.handler)
        return True

    # -- the takeover --------------------------------------------------------------------------

    def _take_over(
        self, config: Config, status: _StatusLog, heartbeat: AppHeartbeat | None
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
        if heartbeat is not None:
            heartbeat.start()  # idempotent: the App's one heartbeat greenlet
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
        )
        if request is None:
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
    ``environ["wsflask.upgrade"]``. Without it an upgrade to an App route gets 501.
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
        elif _wants_websocket(environ) and self.ws_app.match(environ.get("PATH_INFO", "")):
            start_response("501 Not Implemented", [("Content-Type", "text/plain; charset=utf-8")])
            return [_NEEDS_HANDLER]
        return self.wsgi_app(environ, start_response)


class WSGIServer(pywsgi.WSGIServer):  # type: ignore[misc]
    """``gevent.pywsgi.WSGIServer`` with ``WebSocketHandler`` and a WebSocket-aware shutdown.

    ``close()`` stops accepting, then sends Close 1001 to every open WebSocket (upgrades
    still arriving get 503). ``stop(timeout)`` also waits up to ``timeout`` seconds (default
    ``stop_timeout``) for their closing handshakes, then kills what is left (TCP dropped).
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

    def start(self) -> None:
        """Start accepting, then run the startup hooks of the App this server serves (its
        ``handler_class``'s or middleware's), else of every App hosted in this process."""
        super().start()
        own = getattr(self.handler_class, "ws_app", None) or getattr(
            self.application, "ws_app", None
        )
        self.lifespans = [own] if own is not None else list(hosted())
        for app in self.lifespans:
            app.notify_started(_bound(self))

    def track(self, ws: WebSocket) -> None:
        """Register an open WebSocket (the handler calls it); ``untrack()`` when it ends."""
        self.websockets[ws] = gevent.getcurrent()
        if self.stopping:
            ws.close(CloseCode.GOING_AWAY, "going away")

    def untrack(self, ws: WebSocket) -> None:
        self.websockets.pop(ws, None)

    def close(self) -> None:
        """Stop accepting; Close 1001 "going away" to every open WebSocket. Idempotent."""
        self.stopping = True
        if not self.closed:
            super().close()
        for ws in list(self.websockets):
            ws.close(CloseCode.GOING_AWAY, "going away")

    def stop(self, timeout: float | None = None) -> None:
        """``close()``, wait for the WebSockets (then the pool), kill what is left."""
        self.close()
        grace = self.stop_timeout if timeout is None else timeout
        gevent.joinall(list(self.websockets.values()), timeout=grace)
        super().stop(timeout=grace)
        for greenlet in list(self.websockets.values()):  # killed handlers drop TCP with 1001
            greenlet.kill(block=True, timeout=1.0)
        lifespans, self.lifespans = self.lifespans, []
        for app in lifespans:  # after the drain: background tasks, then shutdown hooks
            app.notify_stopped()


def bind_handler(app: WebSocketApp) -> type[WebSocketHandler]:
    """A ``WebSocketHandler`` subclass serving ``app``'s routes (``App.handler_class``)."""
    return type("WebSocketHandler", (WebSocketHandler,), {"ws_app": app})


def _wants_websocket(environ: dict[str, Any]) -> bool:
    """An ``Upgrade: websocket`` request (the core validates the rest)."""
    tokens = str(environ.get("HTTP_UPGRADE", "")).lower().split(",")
    return "websocket" in (token.strip() for token in tokens)


def _path(target: str) -> str:
    """The path of a request target, not percent-decoded (as ``Request.path``)."""
    if not target.startswith("/") and "://" in target:  # absolute-form
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return target.partition("?")[0]


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
