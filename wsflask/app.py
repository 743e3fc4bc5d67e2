"""The application object: routes, event handlers, handshake hooks, rooms, and ``run()``.

What it does: ``App`` collects WebSocket routes (``app.route("/chat/<room>")``), their handlers
(straight-line ``def h(ws, room)`` or ``@route.on("connect" | "message" | "disconnect" |
"<event>" | "*")``), ``@app.before_upgrade`` hooks, ``@app.errorhandler`` handlers and small
plain-HTTP pages (``@app.get``). ``App.resolve()`` is the server's resolver: it maps a parsed
handshake to an ``Upgrade`` (route handler, subprotocol, session, path parameters) or to an
``HTTPResponse``, or raises a ``HandshakeError`` (404, 403, or a hook's ``Reject``).
``run()``/``make_server()`` build the ``Server`` with this app's ``Metrics`` and ``Heartbeat``.

What it does not do: no socket I/O (``server.py`` and ``websocket.py`` do it), no JSON
envelope decoding or acks (``envelopes.py``, called from ``Route``), no monkey-patching (the
application's first line does it, if it wants), no threads.

Decisions (documented here and in the README):

* JSON routes (``json=True``): a text message that is not JSON, or not an object with a
  string ``"event"``, gets an error envelope back and the connection stays open (a client bug
  should not cost it its connection); a binary message closes with 1003 (unsupported data).
  ``connect``/``disconnect`` cannot be sent as events (error envelope).
* A handler exception goes to the most specific ``@app.errorhandler`` (or the log), then the
  connection closes with 1011 and an empty reason: no detail leaks to the peer.
* A connect handler that returns ``False`` or raises ``Reject`` closes with 1008; disconnect
  handlers of that connection are not called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .backplane.bridge import Bridge, NodeLifecycle
from .config import Config
from .envelopes import LIFECYCLE as _LIFECYCLE
from .envelopes import dispatch as dispatch_envelope
from .envelopes import envelope as _envelope
from .errors import ConnectionClosed, Reject, SetupError
from .heartbeat import Heartbeat
from .metrics import Metrics
from .protocol import Forbidden, HandshakeError, MethodNotAllowed, NotFound, Request
from .rooms import BroadcastResult, Rooms
from .routing import PathPattern
from .server import Server
from .upgrade import HTTPResponse, Upgrade

if TYPE_CHECKING:
    from .testing import TestClient
    from .websocket import WebSocket
    from .wsgi import WebSocketHandler, WebSocketMiddleware

__all__ = ["App", "Route"]

logger = logging.getLogger("wsflask.app")

F = TypeVar("F", bound=Callable[..., Any])
#: the close code for a connection refused by its connect handler
REFUSED = 1008
_MISSING: Any = object()


class InternalServerError(HandshakeError):
    """A ``before_upgrade`` hook or page handler raised: answer 500 without detail."""

    status = 500


class Route:
    """One WebSocket endpoint: a compiled path plus its handlers.

    Made by ``app.route(path)``. Use it as a decorator for a straight-line handler
    (``@app.route("/echo")``), or keep it and register events with ``@route.on(...)``.
    """

    def __init__(self, app: App, path: str, *, json: bool = False,
                 subprotocols: Iterable[str] = ()) -> None:
        self.app = app
        self.pattern = PathPattern(path)
        self.json = json
        self.subprotocols = tuple(subprotocols)
        #: the straight-line handler, if any: ``handler(ws, **path_params)``
        self.handler: Callable[..., Any] | None = None
        #: event name -> handlers (several only for connect/disconnect)
        self.handlers: dict[str, list[Callable[..., Any]]] = {}

    @property
    def path(self) -> str:
        return self.pattern.path

    def __repr__(self) -> str:
        return f"<Route {self.path!r} json={self.json}>"

    def __call__(self, func: F) -> F:
        """Register ``func(ws, **path_params)`` as this route's straight-line handler."""
        self.app.add_route(self.path, func)
        return func

    def on(self, event: str) -> Callable[[F], F]:
        """Register a handler for ``event``: "connect", "message", "disconnect", a JSON event
        name or "*" (JSON catch-all, called as ``f(ws, event, data, **path_params)``)."""
        def decorator(func: F) -> F:
            self.add_handler(event, func)
            return func
        return decorator

    def add_handler(self, event: str, func: Callable[..., Any]) -> None:
        """Register ``func`` for ``event`` (see ``on()``); raises ``SetupError`` on conflicts."""
        self.app.check_setup(f"a handler for {event!r} on {self.path!r}")
        if self.handler is not None:
            raise SetupError(f"route {self.path!r} has a straight-line handler; use either it "
                             "or @route.on(...) handlers, not both")
        current = self.handlers.setdefault(event, [])
        if current and event not in _LIFECYCLE:
            raise SetupError(f"route {self.path!r} already has a {event!r} handler "
                             f"({current[0].__qualname__}); register one per event")
        current.append(func)

    def set_handler(self, func: Callable[..., Any]) -> None:
        """Make ``func`` the straight-line handler (``App.add_route`` calls it)."""
        if self.handlers or (self.handler is not None and self.handler is not func):
            raise SetupError(f"route {self.path!r} already has handlers; a straight-line "
                             "handler must be the only one")
        self.handler = func

    def choose_subprotocol(self, offers: Iterable[str]) -> str | None:
        """The first of the client's ``offers`` this route supports, else None (AMB-27)."""
        for offer in offers:
            if offer in self.subprotocols:
                return offer
        return None

    # -- running a connection -----------------------------------------------------------------

    def serve(self, ws: WebSocket) -> None:
        """The ``handler(ws)`` the server runs in the connection's greenlet."""
        params = ws.path_params
        self.app.rooms.track(ws)  # before disconnect callbacks: rooms are left first (§4)
        try:
            if self.handler is not None:
                if params:
                    self.handler(ws, **params)
                else:  # no ``**``: a plain call keeps the idle greenlet's C stack shallower
                    self.handler(ws)
            else:
                self._run_events(ws, params)
        except ConnectionClosed:
            pass  # the peer went away while the handler was sending: not an error
        except Exception as exc:
            self.app.handle_exception(ws, exc)

    def _run_events(self, ws: WebSocket, params: dict[str, Any]) -> None:
        if not ws.is_open:
            return  # closed before we started: no connect, so no disconnect either
        state = {"refused": False}
        if self.handlers.get("disconnect"):  # registered after rooms.track(): runs after it
            ws.add_close_callback(partial(self._disconnected, params=params, state=state))
        if not self._connected(ws, params):
            state["refused"] = True
            ws.close(REFUSED, "connection refused")
            return
        on_message = self.handlers.get("message")
        if self.json:
            for message in ws:
                dispatch_envelope(ws, message, self.handlers, params)
        elif on_message:
            handler = on_message[0]
            for message in ws:
                if params:
                    handler(ws, message, **params)
                else:
                    handler(ws, message)
        else:
            for _ in ws:  # no message handler: read (and discard) until the close
                pass

    def _connected(self, ws: WebSocket, params: dict[str, Any]) -> bool:
        """Run connect handlers; False when one returns False or raises ``Reject``."""
        try:
            for handler in self.handlers.get("connect", ()):
                if handler(ws, **params) is False:
                    return False
        except Reject:
            return False
        return True

    def _disconnected(self, ws: WebSocket, *, params: dict[str, Any],
                      state: dict[str, bool]) -> None:
        if state["refused"]:
            return
        for handler in self.handlers.get("disconnect", ()):
            try:
                handler(ws, **params)
            except ConnectionClosed:
                pass  # sending from a disconnect handler: the socket is already closed
            except Exception as exc:
                self.app.handle_exception(ws, exc)


class App:
    """A wsflask application.

    Args:
        config: a ``Config`` to start from (default: ``Config()``).
        **settings: ``Config`` fields that override it (``App(ping_interval=5)``).

    Register routes and hooks first, then call ``run()`` (or ``make_server()``, or
    ``test_client()`` in tests). Registering after that raises ``SetupError``.
    """

    def __init__(self, config: Config | None = None, **settings: Any) -> None:
        config = config if config is not None else Config()
        if settings:
            config = config.replace(**settings)  # ConfigError names unknown or bad keys
        self.config: Config = config
        self.metrics = Metrics()
        self.rooms = Rooms(policy=config.backpressure_policy)
        self.rooms.metrics = self.metrics
        self.heartbeat = Heartbeat(config.ping_interval, config.pong_timeout,
                                   metrics=self.metrics)
        #: the backplane bridge with ``backplane=`` (started with the server), else None
        self.cluster: Bridge | None = (Bridge(self.rooms, config, self.metrics)
                                       if config.backplane else None)
        #: the server started by ``run()``/``make_server()``, once there is one
        self.server: Server | None = None
        self._routes: list[Route] = []
        self._static: dict[str, Route] = {}
        self._pages: list[tuple[PathPattern, Callable[..., Any]]] = []
        self._before_upgrade: list[Callable[[Request], dict[str, Any] | None]] = []
        self._error_handlers: dict[type[BaseException], Callable[..., Any]] = {}
        #: GET /metrics, /healthz, /readyz; pages registered with ``get()`` take precedence
        self._builtins: list[tuple[PathPattern, Callable[..., Any]]] = [
            (PathPattern("/metrics"), self._metrics_page),
            (PathPattern("/healthz"), lambda request: HTTPResponse(200, b"ok")),
            (PathPattern("/readyz"), self._ready_page),
        ]
        self._setup_finished = False

    def check_setup(self, what: str) -> None:
        """Raise ``SetupError`` when ``what`` is registered after the app started serving."""
        if self._setup_finished:
            raise SetupError(f"cannot register {what} after the app started serving; "
                             "register every route, handler and hook before app.run(), "
                             "app.make_server() or the test client's first connection")

    def configure(self, config: Config) -> None:
        """Replace the settings before serving (the CLI applies file, env and flags with it).

        Rebuilds what was derived from them: the rooms' policy, the heartbeat, the backplane
        bridge.
        """
        self.check_setup("new settings")
        self.config = config
        self.rooms.policy = config.backpressure_policy
        self.heartbeat = Heartbeat(config.ping_interval, config.pong_timeout,
                                   metrics=self.metrics)
        self.cluster = Bridge(self.rooms, config, self.metrics) if config.backplane else None

    # -- registration: decorators over add_* ------------------------------------------------

    def route(self, path: str, *, json: bool | None = None,
              subprotocols: Iterable[str] | None = None) -> Route:
        """Return the ``Route`` for ``path`` (created once); use it as a decorator or keep it."""
        return self.add_route(path, json=json, subprotocols=subprotocols)

    def add_route(self, path: str, handler: Callable[..., Any] | None = None, *,
                  json: bool | None = None, subprotocols: Iterable[str] | None = None) -> Route:
        """Register (or update) the WebSocket route at ``path``; return it.

        Args:
            path: a Flask-style pattern (``/chat/<room>``, ``<int:id>``, ``<path:p>``).
            handler: a straight-line ``handler(ws, **path_params)``.
            json: opt in to JSON event envelopes.
            subprotocols: the subprotocols this route speaks, in no particular order.
        """
        self.check_setup(f"route {path!r}")
        route = next((r for r in self._routes if r.path == path), None)
        if route is None:
            route = Route(self, path)
            self._routes.append(route)
            if route.pattern.is_static:
                self._static[path] = route
        if json is not None:
            route.json = json
        if subprotocols is not None:
            route.subprotocols = tuple(subprotocols)
        if handler is not None:
            route.set_handler(handler)
        return route

    def on(self, event: str) -> Callable[[F], F]:
        """Register an event handler on the default route ``/`` (``app.route("/").on``)."""
        return self.route("/").on(event)

    def before_upgrade(self, func: F) -> F:
        """Register ``func(request)``: it runs before the 101, may raise ``Reject`` or return
        a dict merged into ``ws.session``."""
        self.add_before_upgrade(func)
        return func

    def add_before_upgrade(self, func: Callable[[Request], dict[str, Any] | None]) -> None:
        """Register a handshake hook (see ``before_upgrade``)."""
        self.check_setup("a before_upgrade hook")
        self._before_upgrade.append(func)

    def errorhandler(self, exc_type: type[BaseException]) -> Callable[[F], F]:
        """Register ``func(ws, exc)`` for handler exceptions of ``exc_type`` (and subclasses)."""
        def decorator(func: F) -> F:
            self.add_error_handler(exc_type, func)
            return func
        return decorator

    def add_error_handler(self, exc_type: type[BaseException],
                          func: Callable[..., Any]) -> None:
        """Register an error handler (see ``errorhandler``)."""
        self.check_setup(f"an error handler for {exc_type.__name__}")
        self._error_handlers[exc_type] = func

    def get(self, path: str) -> Callable[[F], F]:
        """Register ``func(request, **path_params)`` for plain HTTP GET ``path``; it returns
        ``str`` (HTML), ``bytes`` or an ``HTTPResponse``."""
        def decorator(func: F) -> F:
            self.add_page(path, func)
            return func
        return decorator

    def add_page(self, path: str, func: Callable[..., Any]) -> None:
        """Register a plain HTTP page (see ``get``)."""
        self.check_setup(f"page {path!r}")
        self._pages.append((PathPattern(path), func))

    # -- handshake ---------------------------------------------------------------------------

    def match(self, path: str) -> tuple[Route, dict[str, Any]] | None:
        """Find the WebSocket route for ``path`` and its converted parameters."""
        route = self._static.get(path)
        if route is not None:
            return route, {}
        for route in self._routes:
            params = route.pattern.match(path)
            if params is not None:
                return route, params
        return None

    def resolve(self, request: Request, addr: tuple[str, int]) -> Upgrade | HTTPResponse:
        """The server's resolver: route a handshake (or a plain GET) to what answers it.

        Raises:
            HandshakeError: ``NotFound`` (404), ``Forbidden`` (403, Origin), a hook's
                ``Reject``, ``MethodNotAllowed`` for plain non-GET requests.
        """
        self._setup_finished = True
        found = self.match(request.path)
        if not request.key:  # plain HTTP (the server parses with http=True)
            page = self._page(request)
            if page is not None:
                return page
            if found is not None:  # a WebSocket route: the server answers 426
                return Upgrade(handler=found[0].serve)
        if found is None:
            raise NotFound(f"no route for {request.path}")
        route, params = found
        self.check_origin(request)
        session = self._run_hooks(request)
        return Upgrade(handler=route.serve,
                       subprotocol=route.choose_subprotocol(request.subprotocols),
                       session=session, path_params=params)

    def check_origin(self, request: Request) -> None:
        """Allow an absent Origin, the same origin, or ``config.allowed_origins``; else 403."""
        origin = request.origin
        allowed = self.config.allowed_origins
        if origin is None or "*" in allowed:
            return
        origin_l = origin.lower().rstrip("/")
        netloc = urlsplit(origin_l).netloc
        if netloc and netloc == (request.host or "").lower():
            return
        for entry in allowed:
            entry_l = entry.lower().rstrip("/")
            if entry_l == origin_l or (netloc and entry_l == netloc):
                return
        raise Forbidden(f"origin {origin!r} not allowed")

    def _run_hooks(self, request: Request) -> dict[str, Any]:
        session: dict[str, Any] = {}
        for hook in self._before_upgrade:
            try:
                extra = hook(request)
            except HandshakeError:
                raise
            except Exception as exc:
                logger.exception("before_upgrade hook %r failed", hook)
                raise InternalServerError("internal error") from exc
            if extra:
                session.update(extra)
        return session

    def _page(self, request: Request) -> HTTPResponse | None:
        for pattern, func in [*self._pages, *self._builtins]:
            params = pattern.match(request.path)
            if params is None:
                continue
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{request.method} not allowed")
            try:
                return _as_response(func(request, **params))
            except HandshakeError:
                raise
            except Exception as exc:
                logger.exception("page %s failed", pattern.path)
                raise InternalServerError("internal error") from exc
        return None

    def _metrics_page(self, request: Request) -> HTTPResponse:
        return HTTPResponse(200, self.metrics.render().encode(),
                            content_type="text/plain; version=0.0.4; charset=utf-8")

    def _ready_page(self, request: Request) -> HTTPResponse:
        if self.server is not None and self.server.is_ready:
            if self.cluster is None or self.cluster.ready:
                return HTTPResponse(200, b"ready")
            return HTTPResponse(503, b"not ready: backplane down")
        return HTTPResponse(503, b"not ready")

    # -- runtime -----------------------------------------------------------------------------

    def handle_exception(self, ws: WebSocket, exc: Exception) -> None:
        """Call the most specific error handler for ``exc`` (or log it), then close 1011."""
        handler = next((self._error_handlers[cls] for cls in type(exc).__mro__
                        if cls in self._error_handlers), None)
        if handler is None:
            logger.error("handler failed on %s", ws.request and ws.request.path, exc_info=exc)
        else:
            try:
                handler(ws, exc)
            except Exception:
                logger.exception("error handler %r failed", handler)
        ws.close(1011, "")

    def emit(self, event_or_data: Any, data: Any = _MISSING, *,
             to: str | Iterable[str] | None = None,
             skip: WebSocket | Iterable[WebSocket] | None = None) -> BroadcastResult:
        """Send to room(s) ``to`` (``None``: every connection), skipping ``skip``.

        ``emit("news", {"x": 1}, to="lobby")`` sends the envelope ``{"event": "news", "data":
        {...}}``; ``emit("raw text", to="lobby")`` sends the text (or bytes) as is.
        """
        message = event_or_data if data is _MISSING else _envelope(event_or_data, data)
        return self.rooms.broadcast(to, message, exclude=skip)

    def make_server(self, host: str | None = None, port: int | None = None, *,
                    listener: Any = None) -> Server:
        """Build the ``Server`` for this app (not started); ends the setup phase.

        ``listener``: a bound, listening socket to serve instead of ``(host, port)`` (a
        pre-forked worker's inherited socket). Call ``server.start()`` then, or
        ``serve_forever()``; ``run()`` does both. With a backplane, the server's start and
        stop also join and leave the bus.
        """
        self._setup_finished = True
        address = listener if listener is not None else (
            host if host is not None else self.config.host,
            port if port is not None else self.config.port)
        heartbeat = (self.heartbeat if self.cluster is None
                     else NodeLifecycle(self.heartbeat, self.cluster))
        self.server = Server(address, self.resolve, self.config,
                             metrics=self.metrics, heartbeat=heartbeat)
        return self.server

    def run(self, host: str | None = None, port: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT (then drain, ARCHITECTURE.md §4). Blocks."""
        server = self.make_server(host, port)
        server.start()  # binds now, so the log line has the real port
        server.install_signal_handlers()
        logger.info("wsflask serving on %s:%s", server.server_host, server.server_port)
        server.serve_forever()

    @property
    def handler_class(self) -> type[WebSocketHandler]:
        """A ``gevent.pywsgi`` handler class serving this app's routes next to a WSGI app on
        one port: ``WSGIServer(addr, flask_app, handler_class=app.handler_class)``."""
        from .wsgi import bind_handler  # pywsgi is imported only by those who use it

        return bind_handler(self)

    def wsgi_middleware(self, wsgi_app: Callable[..., Any]) -> WebSocketMiddleware:
        """Wrap a WSGI app so that upgrades to this app's routes are served here (needs
        ``wsflask.wsgi.WebSocketHandler`` or ``-k wsflask.wsgi.GeventWorker``)."""
        from .wsgi import WebSocketMiddleware

        return WebSocketMiddleware(self, wsgi_app)

    def test_client(self, **kwargs: Any) -> TestClient:
        """A ``TestClient`` that serves this app on 127.0.0.1:0 when first used."""
        from .testing import TestClient  # testing never imports app; app imports it lazily

        return TestClient(self, **kwargs)


def _as_response(value: Any) -> HTTPResponse:
    if isinstance(value, HTTPResponse):
        return value
    if isinstance(value, str):
        return HTTPResponse(200, value.encode(), content_type="text/html; charset=utf-8")
    if isinstance(value, bytes):
        return HTTPResponse(200, value, content_type="application/octet-stream")
    raise TypeError(f"a page handler must return str, bytes or HTTPResponse, not "
                    f"{type(value).__name__}")
