"""The application object: registration (routes, hooks, pages, error handlers) and serving.

``App`` collects what the user registers, resolves each handshake to an ``Upgrade`` or an
``HTTPResponse`` (``resolve()``), and builds the ``Server`` (``run()``/``make_server()``).
Route patterns live in ``routing.py``, running a route in ``dispatch.py``, plain pages in
``pages.py``; no socket I/O here, no monkey-patching, no threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import gevent

from . import framestacks, ids, logs
from .backplane.bridge import Bridge
from .config import Config
from .dispatch import Dispatcher
from .envelopes import encode
from .errors import Reject, SetupError
from .group_calls import GroupResult, call_group
from .handoff import Handoff
from .heartbeat import Heartbeat
from .hosts import host_allowed
from .lifespan import Lifespan, Started, host
from .metrics import Metrics
from .pages import Pages
from .protocol import Forbidden, HandshakeError, NotFound, Request
from .rooms import BroadcastResult, Rooms
from .routing import Route, canonical_path, setupmethod
from .server import Server, Service
from .upgrade import HTTPResponse, Upgrade

if TYPE_CHECKING:
    from .testing import TestClient
    from .websocket import WebSocket
    from .wsgi import WebSocketHandler, WebSocketMiddleware

__all__ = ["App", "Route"]

logger = logging.getLogger("wsflask.app")

F = TypeVar("F", bound=Callable[..., Any])


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
        self.rooms = Rooms(policy=config.backpressure_policy, metrics=self.metrics)
        self.rooms.max_message_size = config.max_message_size  # outbound check (CM-17)
        #: the heartbeat the server runs, and the backplane bridge with ``backplane=`` (started
        #: with the server) or None; ``configure`` rebuilds both
        self.heartbeat, self.cluster = self._build_services(config)
        #: the server started by ``run()``/``make_server()``, once there is one
        self.server: Server | None = None
        #: plain-HTTP pages: ``@app.get`` ones, then /metrics, /healthz, /readyz
        self.pages = Pages(self.metrics, self._not_ready)
        self._routes: list[Route] = []
        self._static: dict[str, Route] = {}
        self._before_upgrade: list[Callable[[Request], dict[str, Any] | None]] = []
        self._error_handlers: dict[type[BaseException], Callable[..., Any]] = {}
        #: route -> what runs its connections (``Upgrade.handler`` is its ``serve``)
        #: each route's ``Dispatcher.serve``, bound once (every open connection holds it)
        self._dispatchers: dict[Route, Callable[[WebSocket], None]] = {}
        self._setup_finished = False
        #: startup/shutdown hooks and background tasks (``lifespan.py``)
        self.lifespan = Lifespan()
        #: ``emit``/``send`` from other OS threads run in the serving thread (``handoff.py``)
        self.handoff = Handoff()

    def _build_services(self, config: Config) -> tuple[Heartbeat, Bridge | None]:
        """What the server runs besides connections, for ``config``: heartbeat and bridge."""
        heartbeat = Heartbeat(
            config.ping_interval,
            config.pong_timeout,
            max_missed=config.max_missed_pongs,
            idle_timeout=config.idle_timeout,
            metrics=self.metrics,
        )
        bridge = Bridge(self.rooms, config, self.metrics) if config.backplane else None
        return heartbeat, bridge

    def _check_setup_finished(self, f_name: str) -> None:
        """Raise ``SetupError`` when setup method ``f_name`` runs after serving started."""
        if self._setup_finished:
            raise SetupError(
                f"cannot call {f_name}() after the app started serving; "
                "register every route, handler and hook before app.run(), "
                "app.make_server() or the test client's first connection"
            )

    @setupmethod
    def configure(self, config: Config) -> None:
        """Replace the settings before serving (the CLI applies file, env and flags with it).

        Rebuilds what was derived from them: the rooms' policy, the heartbeat, the backplane
        bridge.
        """
        self.config = config
        self.rooms.policy = config.backpressure_policy
        self.rooms.max_message_size = config.max_message_size
        self.heartbeat, self.cluster = self._build_services(config)

    def apply_live(self, config: Config) -> None:
        """Adopt ``config`` while serving (``wsflask.reload`` checked that only reloadable
        settings changed): origins, rooms' policy, heartbeat timings, and the server's
        settings, which open connections adopt too (``Server.apply_config``)."""
        self.config = config
        self.rooms.policy = config.backpressure_policy
        self.rooms.max_message_size = config.max_message_size  # the outbound size check
        self.heartbeat.reconfigure(
            config.ping_interval, config.pong_timeout, config.max_missed_pongs, config.idle_timeout
        )
        if self.server is not None:
            self.server.apply_config(config)
            if self.server.is_ready:
                self.heartbeat.start()  # idempotent; it may have been disabled before

    def reconcile(self) -> list[str]:
        """Remove closed connections the rooms still hold, logging each repair (CM-12);
        return their ids (``diagnostics.reconcile``)."""
        from .diagnostics import reconcile

        return reconcile(self.rooms)

    # -- registration: decorators over add_* ------------------------------------------------

    def route(
        self, path: str, *, json: bool | None = None, subprotocols: Iterable[str] | None = None
    ) -> Route:
        """Return the ``Route`` for ``path`` (created once); use it as a decorator or keep it.

        A route with ``@route.on("connect")``/``"disconnect"``/event handlers plays the role
        of a Socket.IO namespace: one path per concern (``/chat``, ``/admin``), each with its
        own connect check, events and rooms; clients open one connection per route.
        """
        return self.add_route(path, json=json, subprotocols=subprotocols)

    @setupmethod
    def add_route(
        self,
        path: str,
        handler: Callable[..., Any] | None = None,
        *,
        json: bool | None = None,
        subprotocols: Iterable[str] | None = None,
    ) -> Route:
        """Register (or update) the WebSocket route at ``path``; return it.

        Args:
            path: a Flask-style pattern (``/chat/<room>``, ``<int:id>``, ``<path:p>``).
            handler: a straight-line ``handler(ws, **path_params)``.
            json: opt in to JSON event envelopes.
            subprotocols: the subprotocols this route speaks, in no particular order.
        """
        route = next((r for r in self._routes if r.path == path), None)
        if route is None:
            route = Route(self, path)
            self._routes.append(route)
            self._dispatchers[route] = Dispatcher(route, self.rooms, self.handle_exception).serve
            if route.pattern.is_static:
                self._static[route.pattern.canonical] = route
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

    @setupmethod
    def add_before_upgrade(self, func: Callable[[Request], dict[str, Any] | None]) -> None:
        """Register a handshake hook (see ``before_upgrade``)."""
        self._before_upgrade.append(func)

    def errorhandler(self, exc_type: type[BaseException]) -> Callable[[F], F]:
        """Register ``func(ws, exc)`` for handler exceptions of ``exc_type`` (and subclasses).

        On a straight-line route the connection then closes with 1011; on a JSON route the
        client gets an error envelope and the connection stays open, unless ``func`` closed it.
        """

        def decorator(func: F) -> F:
            self.add_error_handler(exc_type, func)
            return func

        return decorator

    @setupmethod
    def add_error_handler(self, exc_type: type[BaseException], func: Callable[..., Any]) -> None:
        """Register an error handler (see ``errorhandler``)."""
        self._error_handlers[exc_type] = func

    def get(self, path: str) -> Callable[[F], F]:
        """Register ``func(request, **path_params)`` for plain HTTP GET ``path``; it returns
        ``str`` (HTML), ``bytes`` or an ``HTTPResponse``."""

        def decorator(func: F) -> F:
            self.add_page(path, func)
            return func

        return decorator

    @setupmethod
    def add_page(self, path: str, func: Callable[..., Any]) -> None:
        """Register a plain HTTP page (see ``get``)."""
        self.pages.add(path, func)

    # -- handshake ---------------------------------------------------------------------------

    def match(self, path: str) -> tuple[Route, dict[str, Any]] | None:
        """Find the WebSocket route for ``path`` (as sent, percent-encoded) and its parameters."""
        canonical = canonical_path(path)
        return None if canonical is None else self._match(canonical)

    def _match(self, path: str) -> tuple[Route, dict[str, Any]] | None:
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
                ``Reject``, ``MethodNotAllowed`` for plain non-GET requests, 400 for a path
                that is not UTF-8 once percent-decoded.
        """
        if not host_allowed(request.host, self.config.allowed_hosts, self._bound_host()):
            raise HandshakeError(f"host {(request.host or '')[:64]!r} not allowed")  # 400
        path = canonical_path(request.path)
        if path is None:
            raise HandshakeError("the path is not UTF-8 once percent-decoded")  # 400
        found = self._match(path)
        if not request.key:  # plain HTTP (the server parses with http=True)
            page = self.pages.answer(request, path)
            if page is not None:
                return page
            if found is not None:  # a WebSocket route: the server answers 426
                return Upgrade(handler=self._dispatchers[found[0]])
        if found is None:
            raise NotFound(f"no route for {request.path}")
        route, params = found
        self.check_origin(request)
        session = self._run_hooks(request)
        return Upgrade(
            handler=self._dispatchers[route],
            subprotocol=route.choose_subprotocol(request.subprotocols),
            session=session,
            path_params=params,
        )

    def check_origin(self, request: Request) -> None:
        """Allow an absent Origin, then: with ``config.allowed_origins`` set, exactly the
        listed origins (``*``: any); without it, the same origin only. Else 403.

        Same origin means the same scheme, host and port (RFC 6454 §4-5, default ports
        normalised): this server's scheme is https with ``certfile``, else http, unless a
        TLS-terminating proxy says otherwise in ``X-Forwarded-Proto`` (a browser cannot set
        that header, and a non-browser can send any ``Origin`` anyway).
        """
        origin = request.origin
        allowed = self.config.allowed_origins
        if origin is None or "*" in allowed:
            return
        theirs = _origin_of(origin)
        if theirs is not None:
            scheme = (request.header("x-forwarded-proto") or "").split(",")[0].strip().lower()
            if scheme not in _DEFAULT_PORTS:
                scheme = "https" if self.config.certfile else "http"
            if allowed:  # an explicit list replaces the same-origin default (battery HS-08)
                if any(_allows(entry, theirs) for entry in allowed):
                    return
            elif theirs == _authority_of(request.host or "", scheme):
                return
        raise Forbidden(f"origin {origin[:64]!r} not allowed")

    def _bound_host(self) -> str | None:
        """The address this app's own server listens on; None under a WSGI host (unknown:
        ``allowed_hosts=()`` then allows any name)."""
        return None if self.server is None else str(self.server.server_host)

    def _run_hooks(self, request: Request) -> dict[str, Any]:
        session: dict[str, Any] = {}
        for hook in self._before_upgrade:
            try:
                extra = hook(request)
            except HandshakeError:
                raise
            except Exception as exc:
                logger.exception("before_upgrade hook %r failed", hook)
                raise Reject(500, "internal error") from exc
            if extra:
                session.update(extra)
        return session

    def _not_ready(self) -> str | None:
        """Why ``/readyz`` answers 503, or None when this node serves and its bus is up."""
        if self.server is None or not self.server.is_ready:
            return "not ready"
        if self.cluster is not None and not self.cluster.ready:
            return "not ready: backplane down"
        return None

    # -- runtime -----------------------------------------------------------------------------

    def handle_exception(self, ws: WebSocket, exc: Exception) -> None:
        """Call the most specific error handler for ``exc``, or log it when there is none.

        The caller decides what happens to the connection next (``dispatch.py``).
        """
        handler = next(
            (self._error_handlers[cls] for cls in type(exc).__mro__ if cls in self._error_handlers),
            None,
        )
        if handler is None:
            logger.error("handler failed on %s", ws.request and ws.request.path, exc_info=exc)
            return
        try:
            handler(ws, exc)
        except Exception:
            logger.exception("error handler %r failed", handler)

    def emit(
        self,
        event: str,
        data: Any = None,
        *,
        to: str | Iterable[str] | None = None,
        skip: WebSocket | Iterable[WebSocket] | None = None,
    ) -> BroadcastResult:
        """Send the event envelope ``{"event": event, "data": data}`` to room(s) ``to``.

        ``to=None`` reaches every connection; ``skip`` leaves out connections (or their ids).
        Safe from any OS thread: another thread's call runs in the serving thread and
        waits for it there.
        """
        if self.handoff.foreign():
            return self.handoff.run(self.rooms.broadcast, to, encode(event, data), exclude=skip)
        return self.rooms.broadcast(to, encode(event, data), exclude=skip)

    def send(
        self,
        data: str | bytes,
        *,
        to: str | Iterable[str] | None = None,
        skip: WebSocket | Iterable[WebSocket] | None = None,
    ) -> BroadcastResult:
        """Send ``data`` as is (text or binary message) to room(s) ``to``; see ``emit``."""
        if self.handoff.foreign():
            return self.handoff.run(self.rooms.broadcast, to, data, exclude=skip)
        return self.rooms.broadcast(to, data, exclude=skip)

    def call(
        self, event: str, data: Any = None, *, to: str, timeout: float | None = None
    ) -> GroupResult:
        """Call ``event`` on every member of room ``to``, on every node; one reply each.

        Waits (this greenlet) up to ``timeout`` (default ``call_timeout``); the result says
        who answered (``replies``, by connection id), who failed (an error reply, or
        disconnected: counted at once) and who timed out. With a backplane the other nodes'
        members are called too (``backplane/group.py``; ``BackplaneDown`` when cluster
        presence is unreachable). Call it from a greenlet that reads no member's socket.
        """
        limit = self.config.call_timeout if timeout is None else timeout
        if self.cluster is not None:
            return self.cluster.group.call(event, data, to, limit)
        return call_group(self.rooms.members(to), event, data, limit)

    def make_server(
        self, host: str | None = None, port: int | None = None, *, listener: Any = None
    ) -> Server:
        """Build the ``Server`` for this app (not started); ends the setup phase.

        ``listener``: a bound, listening socket to serve instead of ``(host, port)`` (a
        pre-forked worker's inherited socket). Call ``server.start()`` then, or
        ``serve_forever()``; ``run()`` does both. With a backplane, the server's start and
        stop also join and leave the bus.
        """
        self._setup_finished = True
        self.handoff.bind()
        address = (
            listener
            if listener is not None
            else (
                host if host is not None else self.config.host,
                port if port is not None else self.config.port,
            )
        )
        self.server = Server(
            address,
            self.resolve,
            self.config,
            metrics=self.metrics,
            heartbeat=self.heartbeat,
            services=self._services(),
            new_id=self.new_id,
        )
        return self.server

    def _services(self) -> tuple[Service, ...]:
        """What the server starts (in order) and stops (in reverse) around its connections;
        the lifespan last, so startup hooks see a bound server and shutdown hooks run first
        after the drain."""
        started = Started(self.lifespan, self._bound_address)
        if self.cluster is None:
            return (self.heartbeat, started)
        return (self.heartbeat, self.cluster, started)

    def _bound_address(self) -> tuple[str, int]:
        server = self.server
        assert server is not None, "the lifespan service runs only inside make_server()'s"
        return str(server.server_host), int(server.server_port)

    # -- lifespan (lifespan.py) ---------------------------------------------------------------

    def on_startup(self, func: F) -> F:
        """Register ``func()``: it runs in each serving process once the server is bound
        (``app.address`` then holds the real ``(host, port)``); an exception stops the start."""
        self._check_setup_finished("on_startup")
        self.lifespan.startup.append(func)
        return func

    def on_shutdown(self, func: F) -> F:
        """Register ``func()``: it runs in each serving process after the drain and after
        the background tasks were killed; exceptions are logged."""
        self._check_setup_finished("on_shutdown")
        self.lifespan.shutdown.append(func)
        return func

    def start_background_task(
        self, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> gevent.Greenlet:
        """Run ``func(*args, **kwargs)`` in a greenlet that the stop kills and joins."""
        return self.lifespan.spawn(func, *args, **kwargs)

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` this process serves on, from ``notify_started``; else None."""
        return self.lifespan.address

    def notify_started(self, address: tuple[str, int]) -> None:
        """For servers other than wsflask's: the app is bound at ``address``. Runs the
        startup hooks; idempotent per process. ``make_server()``, the pywsgi handler and
        ``wsflask.gunicorn`` call it. The first call puts the frame-stack cache in place,
        as ``Server.start()`` does (the pywsgi handler calls this on every upgrade)."""
        if self.lifespan.address is None:
            framestacks.keep(self.config.frame_stack_cache)
        self.handoff.bind()
        self.lifespan.notify_started(address)

    def notify_stopped(self) -> None:
        """For servers other than wsflask's: the app drained. Kills and joins the background
        tasks, then runs the shutdown hooks; idempotent."""
        self.lifespan.notify_stopped()

    def new_id(self) -> str:
        """A connection id, prefixed with this node's id when a backplane is configured."""
        return ids.new_id(self.cluster.node if self.cluster is not None else "")

    def run(self, host: str | None = None, port: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT (then drain, ARCHITECTURE.md §4). Blocks.

        ``WSFLASK_*`` environment variables override the app's settings (as with ``wsflask
        run``); ``host``/``port`` override both. The address is logged at INFO on the
        ``wsflask`` logger, which gets a stderr handler only when logging is unconfigured.
        """
        overrides = Config.env_overrides()
        if overrides:
            self.configure(self.config.replace(**overrides))
        _default_log_handler()
        server = self.make_server(host, port)
        server.start()  # binds now, so the log line has the real port
        server.install_signal_handlers()
        logger.info("wsflask serving on %s:%s", server.server_host, server.server_port)
        server.serve_forever()

    @property
    def handler_class(self) -> type[WebSocketHandler]:
        """A ``gevent.pywsgi`` handler class serving this app's routes next to a WSGI app on
        one port: ``WSGIServer(addr, flask_app, handler_class=app.handler_class)``. Ends the
        setup phase."""
        from .wsgi import bind_handler  # pywsgi is imported only by those who use it

        self._setup_finished = True
        host(self.lifespan)  # wsflask.wsgi.WSGIServer runs its hooks
        return bind_handler(self)

    def wsgi_middleware(self, wsgi_app: Callable[..., Any]) -> WebSocketMiddleware:
        """Wrap a WSGI app so that upgrades to this app's routes are served here (needs
        ``wsflask.wsgi.WebSocketHandler`` or ``-k wsflask.gunicorn.GeventWorker``). Ends the
        setup phase."""
        from .wsgi import WebSocketMiddleware

        self._setup_finished = True
        host(self.lifespan)  # wsflask.wsgi.WSGIServer and wsflask.gunicorn run its hooks
        return WebSocketMiddleware(self, wsgi_app)

    def test_client(self, **kwargs: Any) -> TestClient:
        """A ``TestClient`` that serves this app on 127.0.0.1:0 when first used."""
        from .testing import TestClient  # testing never imports app; app imports it lazily

        return TestClient(self, **kwargs)


def _default_log_handler() -> None:
    """So that ``run()``'s INFO lines show when logging is unconfigured: a bounded-queue
    handler (``logs.attach``: formatted and written by a thread, never in the hub) on the
    ``wsflask`` logger (level INFO unless set), only when no handler exists on it or on an
    ancestor (the root), so a user's configuration is never touched."""
    wsflask_logger = logging.getLogger("wsflask")
    if wsflask_logger.hasHandlers():
        return
    logs.attach(wsflask_logger)
    if wsflask_logger.level == logging.NOTSET:
        wsflask_logger.setLevel(logging.INFO)


#: RFC 6454 §4 step 5: a URI without a port gets its scheme's default
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def _authority_of(netloc: str, scheme: str) -> Origin | None:
    """``(scheme, host, port)`` of ``host[:port]`` for ``scheme``, or None when malformed."""
    try:
        parts = urlsplit(f"//{netloc.strip().lower()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


def _origin_of(origin: str) -> Origin | None:
    """The ``(scheme, host, port)`` tuple of an ``Origin`` value; None for ``null`` and junk."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS:
        return None
    return _authority_of(rest.rstrip("/"), scheme)


def _allows(entry: str, theirs: Origin) -> bool:
    """True when ``allowed_origins`` entry ``https://app.example`` (or bare ``app.example``,
    any scheme) names the origin ``theirs``."""
    if "://" in entry:
        return _origin_of(entry) == theirs
    return _authority_of(entry, theirs[0]) == theirs
