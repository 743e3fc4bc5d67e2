"""Server: a gevent ``StreamServer`` that admits, handshakes and runs WebSocket connections.

Admission through a bounded pool (a real 503/429 past it), TLS and the HTTP request under one
``handshake_timeout``, the decision by ``upgrade.answer()``, services started and stopped with
it, and a documented drain (``stop()``). No routing, Origin or subprotocol policy (the
resolver decides), no frame handling (``websocket.py``), no monkey-patching.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Sequence, Sized
from http import HTTPStatus
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent import Timeout
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from . import framestacks, ids
from .admission import Admission, Refusal
from .breaker import CircuitBreaker
from .config import Config
from .deadlines import Deadlines
from .degradation import Degrader, ResourceMonitor
from .diagnostics import log_handshake_phases
from .errors import ConfigError, Reject
from .heap import HeapTrimmer
from .protocol import (
    CloseCode,
    Connection,
    DeflateSettings,
    HandshakeError,
    Limits,
    Request,
    Side,
    State,
)  # fmt: skip
from .protocol.handshake import build_response
from .replay import KeyReplayCache
from .transport import Transport, wrap_tls
from .upgrade import HTTPResponse, Resolver, Upgrade, answer, going_away, read_request
from .violations import reporter
from .websocket import Watcher, WebSocket

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["HTTPResponse", "Resolver", "Server", "Service", "Upgrade"]

logger = logging.getLogger("wsflask")
#: one line per connection open and close (``wsflask.logs.ACCESS_LOGGER``)
access_log = logging.getLogger("wsflask.access")

#: Greenlets that may answer 503/429 at once; beyond that, refused sockets are just closed.
SHED_CONCURRENCY = 128
#: Accept backoff after EMFILE/ENFILE: first and longest sleep, in seconds.
ACCEPT_BACKOFF_MIN = 0.01
ACCEPT_BACKOFF_MAX = 1.0
#: ``apply_config()`` lets the hub run between batches of this many open connections.
RELOAD_BATCH = 1000
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Draining(Exception):
    """Raised into greenlets still in their handshake when ``stop()`` begins."""


_TIMED_OUT = object()
#: The reason heartbeat.py fails a silent peer with (a partition, for the metrics).
PING_TIMEOUT = "ping timeout"


class Service(Protocol):
    """Runs alongside the server (heartbeat, backplane bridge): started by ``start()`` in
    order, stopped by ``stop()`` in reverse once the connections drained."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


class Server(StreamServer):  # type: ignore[misc]
    """Serve WebSocket (and plain HTTP) connections with ``resolve`` deciding each request.

    Args:
        listener: an address ``(host, port)`` or a bound, listening socket.
        resolve: ``resolve(request, remote_address) -> Upgrade | HTTPResponse``; may raise
            ``HandshakeError`` (or ``Reject``) to refuse with its status and headers.
        config: limits and timeouts (``Config``).
        metrics: counters to bump (handshakes by status, connections, messages...).
        heartbeat: told of every connection's open and close (``Watcher``); to run it,
            pass it in ``services`` too.
        services: started in order by ``start()``, stopped in reverse by ``stop()``.
        new_id: gives each connection its id, once, at construction.
        ssl_context: an ``ssl.SSLContext`` to use instead of ``config.certfile``.
        admission: who may start a handshake (default ``Admission(config)``; tests inject
            one with a fake probe and clock).
        breaker: the handshake circuit breaker (default from ``circuit_breaker_*``).

    Raises:
        ConfigError: the certificate or key cannot be loaded (fail fast, battery TL-04).
    """

    def __init__(
        self,
        listener: Any,
        resolve: Resolver,
        config: Config | None = None,
        *,
        metrics: Metrics | None = None,
        heartbeat: Watcher | None = None,
        services: Sequence[Service] = (),
        new_id: Callable[[], str] = ids.new_id,
        ssl_context: ssl.SSLContext | None = None,
        admission: Admission | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.config = config or Config()
        self._core_for: Config | None = None  # the config _core was made from
        self._core: tuple[Limits, DeflateSettings | None] = (Limits(), None)
        self.admission = admission if admission is not None else Admission(self.config)
        self.breaker = breaker or CircuitBreaker(
            self.config.circuit_breaker_failures, self.config.circuit_breaker_reset
        )
        self.resolve = resolve
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.services = tuple(services)
        self.new_id = new_id
        #: False until start() and again from the first step of stop(): what /readyz reports.
        self.is_ready = False
        #: Open connections (handshake complete), for stop() and introspection.
        self.connections: set[WebSocket] = set()
        #: Greenlets still in their handshake, with their WebSocket once it exists.
        self._handshaking: dict[gevent.Greenlet, WebSocket | None] = {}
        self._per_ip: dict[str, int] = {}
        self._ssl = ssl_context if ssl_context is not None else _make_ssl_context(self.config)
        self._reload_watcher: Any = None  # the SIGHUP handler, once installed
        self._shed_pool = Pool(SHED_CONCURRENCY)
        self._accept_delay = 0.0
        #: accepted sockets come with the listener's TCP options (checked on the first
        #: connection after ``_tune_listener``; None until then): no setsockopt per connection
        self._inherits: bool | None = False
        self._stopping = False
        self._stopped = Event()
        self._drained = Event()
        self._drained.set()
        super().__init__(listener, self.handle, spawn=self._admit)
        #: The bounded pool every connection greenlet runs in (max_connections).
        self.pool = _ConnectionPool(self.config.connection_limit())
        self._close_socket = self.do_close  # bound once: every connection greenlet holds it
        #: fragment_timeout and session expiry, checked on a tick over ``connections``
        self.deadlines = Deadlines(self.connections, self.config, note=self._note)
        #: graceful degradation under pressure (``pressure_threshold``), else None
        self.degrader = self._make_degrader(heartbeat)
        #: Sec-WebSocket-Key values seen lately (``key_replay_ttl``), or None when off.
        self.replay_cache = _replay_cache(self.config)
        #: gives freed heap memory back once many connections closed (``heap_trim_drop``)
        self.heap = HeapTrimmer(self.config.heap_trim_drop, metrics)

    def _make_degrader(self, heartbeat: Any) -> Degrader | None:
        if not self.config.pressure_threshold:
            return None
        stretchable = isinstance(getattr(heartbeat, "interval", None), int | float)
        return Degrader(
            ResourceMonitor(threshold=self.config.pressure_threshold),
            connections=self.connections,
            admission=self.admission,
            heartbeat=heartbeat if stretchable else None,  # Heartbeat.interval is stretched
            note=self._note,
        )

    def _note(self, event: str) -> None:
        """Count a bound or degradation event (``websocket_degradation_events_total``)."""
        record = getattr(self.metrics, "degradation", None)  # stand-ins may lack it
        if record is not None:
            record(event)

    def full(self) -> bool:
        """Never stop accepting: over capacity, clients get a 503 instead of a queue."""
        return False

    def start(self) -> None:
        """Bind (if needed) and start accepting; start the services. Returns at once. Puts
        the frame-stack cache (``frame_stack_cache``, ``wsflask.framestacks``) in place."""
        super().start()
        self._tune_listener()
        framestacks.keep(self.config.frame_stack_cache)
        self.is_ready = True
        self.deadlines.start()
        if self.degrader is not None:
            self.degrader.start()
        for service in self.services:
            service.start()

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until no connection is open; False when ``timeout`` passed first."""
        return bool(self._drained.wait(timeout))

    # ------------------------------------------------------------------ admission

    def _admit(
        self, func: Callable[..., Any], handle: Any, close: Any, args: tuple[Any, Any]
    ) -> Any:
        """The ``spawn`` of StreamServer: a pool greenlet, or the 503/429 shedding path."""
        sock, address = args
        if self._stopping:
            reporter.refusal(_address(address), 503, "stopping")
            return self._shed(sock, 503)
        refusal = self.admission.check(_ip(address), len(self.pool))
        if refusal is not None:
            reporter.refusal(_address(address), refusal.status, refusal.reason)
            return self._shed(sock, refusal.status, refusal)
        cap = self.config.max_connections_per_ip
        if cap:
            ip = _ip(address)
            if self._per_ip.get(ip, 0) >= cap:
                reporter.refusal(_address(address), 429, "too many connections from this address")
                return self._shed(sock, 429)
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        # _serve_and_close instead of gevent's func(handle, close, args): its handle(*args)
        # would add an interpreter frame to the C stack every idle greenlet keeps.
        return self.pool.spawn(_serve_and_close, handle, self._close_socket, sock, address)

    def _release(self, address: Any) -> None:
        if self._per_ip:  # not the setting: a reload may have turned it off meanwhile
            ip = _ip(address)
            left = self._per_ip.get(ip, 1) - 1
            if left > 0:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)

    def _shed(self, sock: Any, status: int, refusal: Refusal | None = None) -> None:
        if self._shed_pool.full():  # a flood: do not even answer, never queue
            self._count(status)
            _abort_socket(sock)
            return
        self._shed_pool.spawn(self._refuse, sock, status, refusal)

    def _refuse(self, sock: Any, status: int, refusal: Refusal | None = None) -> None:
        """Answer ``status`` without reading the request; wait briefly for the peer's FIN."""
        self._count(status)
        retry = str(refusal.retry_after if refusal is not None else 1)
        extra = (("Retry-After", retry),) if status in (429, 503) else ()
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        if refusal is not None:
            body = f"{status} {HTTPStatus(status).phrase}: {refusal.reason}\n".encode()
        limit = min(1.0, self.config.close_timeout)
        transport = Transport(sock, limit=self.config.max_backpressure)
        timer = Timeout(limit)
        try:
            with timer:
                transport.write(build_response(status, body, headers=extra))
        except Timeout as exc:
            if exc is not timer:
                raise
        finally:
            transport.close(limit)  # so that our answer is not destroyed by a RST

    def do_read(self) -> Any:
        """Accept one connection; on EMFILE/ENFILE back off and keep serving (battery CN-02)."""
        try:
            result = super().do_read()
        except OSError as exc:
            if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                raise
            self._back_off(exc)
            return None
        self._accept_delay = 0.0
        if result is not None:  # (socket, address): the peer's host text shared (_shared_host)
            sock, address = result
            if type(address) is tuple and len(address) == 2:
                result = sock, (_shared_host(address[0]), address[1])
        return result

    def _back_off(self, exc: OSError) -> None:
        delay = min(ACCEPT_BACKOFF_MAX, self._accept_delay * 2 or ACCEPT_BACKOFF_MIN)
        if not self._accept_delay:
            logger.warning(
                "accept() failed (%s); backing off up to %.1f s, existing "
                "connections keep being served",
                exc.strerror,
                ACCEPT_BACKOFF_MAX,
            )
        self._accept_delay = delay
        self.stop_accepting()
        self._timer = self.loop.timer(delay)
        self._timer.start(self._start_accepting_if_started)

    # ------------------------------------------------------------------ one connection

    def handle(self, sock: Any, address: Any) -> None:
        """Serve one TCP connection in its pool greenlet: handshake, then the handler."""
        try:
            if not self._inherits:
                self._tune_socket(sock)
            delay = self.admission.handshake_delay(len(self.pool) - 1)  # the others
            if delay:  # the soft limit: slow new handshakes down near the cap (ER-12)
                gevent.sleep(delay)
            if self._stopping:
                self._refuse(sock, 503)
                return
            opened = self._handshake(sock, address)
            if opened is not None:
                ws, handler = opened[0], opened[1].handler
                del opened  # the Upgrade (session, path_params: copied) is not kept while open
                self._serve(ws, handler)
        finally:
            self._release(address)

    def _tune_listener(self) -> None:
        """Set TCP_NODELAY and the keep-alive settings on the listening socket once, so
        that accepted sockets inherit them where the OS does that (Linux)."""
        self._inherits = False
        keepalive = self.config.tcp_keepalive
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(keepalive))
            if keepalive:
                _keepalive(self.socket)
        except (OSError, AttributeError):  # not TCP (a UNIX socket): per connection
            return
        self._inherits = None  # the first connection tells

    def _tune_socket(self, sock: Any) -> None:
        """TCP_NODELAY and keep-alive on an accepted socket that did not inherit them."""
        with contextlib.suppress(OSError):  # not TCP (a UNIX socket), or already reset
            if self._inherits is None:
                self._inherits = _has_options(sock, self.config.tcp_keepalive)
                if self._inherits:
                    return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.config.tcp_keepalive:
                _keepalive(sock)

    def _handshake(self, sock: Any, address: Any) -> tuple[WebSocket, Upgrade] | None:
        """TLS and the HTTP request under one deadline, then the resolver's decision.

        Plain TCP reads the request under a hub timer (``read_request``'s timeout); only
        TLS, whose handshake is gevent's, needs a ``Timeout`` object.
        """
        me = gevent.getcurrent()
        self._handshaking[me] = None
        ws: WebSocket | None = None
        outcome: object = None
        timer: Timeout | None = None
        began = perf_counter()
        try:
            if self._ssl is None:
                ws = self._websocket(sock, address, me)
                outcome = read_request(ws, self.config.handshake_timeout)
            else:
                timer = Timeout(self.config.handshake_timeout)
                with timer:
                    sock = wrap_tls(sock, self._ssl, server_side=True)
                    sock.do_handshake()
                    ws = self._websocket(sock, address, me)
                    outcome = read_request(ws)
        except Timeout as exc:
            if exc is not timer:
                raise
            outcome = _TIMED_OUT
        except TimeoutError:  # read_request's deadline (before OSError: it is one)
            outcome = _TIMED_OUT
        except _Draining:
            outcome = 503
        except OSError:  # TLS handshake failed or the peer reset: nothing to answer
            outcome = None
        finally:
            self._handshaking.pop(me, None)
        if isinstance(outcome, Request) and ws is not None:
            read = perf_counter() - began
            upgrade = answer(
                ws,
                outcome,
                self._resolve_guarded,
                stopping=self._stopping,
                metrics=self.metrics,
                replay=self.replay_cache,
            )
            if logger.isEnabledFor(logging.DEBUG):
                log_handshake_phases(ws, outcome, read, perf_counter() - began - read)
            return None if upgrade is None else (ws, upgrade)
        self._give_up(ws, sock, outcome, _address(address))
        return None

    def _websocket(self, sock: Any, address: Any, me: gevent.Greenlet) -> WebSocket:
        """A server-side ``WebSocket`` for an accepted socket, known to ``stop()`` at once."""
        limits, deflate = self._core_settings()
        conn = Connection(Side.SERVER, limits=limits, http=True, deflate=deflate)
        ws = WebSocket(
            sock,
            conn,
            config=self.config,
            metrics=self.metrics,
            heartbeat=self.heartbeat,
            remote_address=address,
            connection_id=self.new_id(),
        )
        self._handshaking[me] = ws
        return ws

    def _core_settings(self) -> tuple[Limits, DeflateSettings | None]:
        """The core's settings for the current ``config``, made once per config (a reload
        swaps ``config``: the next handshake makes them again)."""
        config = self.config
        if self._core_for is not config:
            self._core = (config.limits(), config.deflate_settings())
            self._core_for = config
        return self._core

    def _resolve_guarded(self, request: Request, address: tuple[str, int]) -> Any:
        """``resolve`` behind the circuit breaker, then the reserved-slot check (ER-10)."""
        breaker = self.breaker
        if not breaker.allow():
            retry = (("Retry-After", str(breaker.retry_after())),)
            raise Reject(503, "service unavailable: handshake circuit open", retry)
        try:
            result = self.resolve(request, address)
        except HandshakeError as exc:
            if exc.status >= 500:
                self._breaker_failure()
            else:  # a 4xx: the resolver works, the client was refused
                breaker.success()
            raise
        except Exception:
            self._breaker_failure()
            raise
        breaker.success()
        if isinstance(result, Upgrade) and request.key:
            refusal = self.admission.check_priority(result.session, len(self.pool))
            if refusal is not None:
                raise Reject(refusal.status, refusal.reason, (("Retry-After", "1"),))
        return result

    def _breaker_failure(self) -> None:
        trips = self.breaker.trips
        self.breaker.failure()
        if self.breaker.trips != trips:
            self._note("breaker_open")

    def _give_up(
        self, ws: WebSocket | None, sock: Any, outcome: object, peer: tuple[str, int] | None
    ) -> None:
        """The handshake did not produce a request: count it, log it and close."""
        if isinstance(outcome, HandshakeError):  # the core already answered and closed
            self._count(outcome.status)
            reporter.refusal(peer, outcome.status, str(outcome))
            return
        live = ws is None or ws.state is State.CONNECTING
        if outcome is _TIMED_OUT:
            reporter.refusal(peer, 408, "no complete request within handshake_timeout")
            if live and ws is not None and ws.request_started:
                self._refuse(ws.transport, 408)  # a partial request: say why
                return
            self._count(408)
        elif outcome == 503 and live:
            self._refuse(sock if ws is None else ws.transport, 503)
            return
        _abort_socket(sock if ws is None else ws.transport)

    def _serve(self, ws: WebSocket, handler: Callable[[WebSocket], None]) -> None:
        connections = self.connections
        connections.add(ws)
        self.heap.opened(len(connections))
        self._drained.clear()
        # The access log: one check per connection, no logging work when it is disabled.
        opened = monotonic() if access_log.isEnabledFor(logging.INFO) else 0.0
        if opened:
            _log_access("open", ws)
        try:
            # stop() may have begun while we were accepting: then 1001 instead of the handler
            ws.run(going_away if self._stopping else handler)
        finally:
            connections.discard(ws)
            self.heap.closed(len(connections))
            if not connections:
                self._drained.set()
            if ws.close_reason == PING_TIMEOUT:  # TCP up, peer silent: a partition (ER-27)
                self._note("partition")
            if opened:
                _log_access("close", ws, monotonic() - opened)

    def _count(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.handshake(status)

    def stats(self) -> dict[str, Any]:
        """A snapshot for operators: connections by state, bytes queued for slow readers,
        and the heartbeat's watched count and mean RTT (seconds; None before any pong).
        O(open connections)."""
        states = {"handshaking": len(self._handshaking), "open": 0, "closing": 0}
        buffered = 0
        rtts = []
        for ws in list(self.connections):
            key = "open" if ws.state is State.OPEN else "closing"
            states[key] += 1
            buffered += ws.buffered_amount
            if ws.latency is not None:
                rtts.append(ws.latency)
        heartbeat = self.heartbeat
        return {
            "connections": states,
            "buffered_bytes": buffered,
            "heartbeat_watched": len(heartbeat) if isinstance(heartbeat, Sized) else 0,
            "mean_rtt": sum(rtts) / len(rtts) if rtts else None,
        }

    def apply_config(self, config: Config) -> None:
        """Adopt reloadable settings (``wsflask.reload``): new connections use ``config``
        and open ones adopt its limits and timeouts (``WebSocket.apply_config``; the walk
        yields every ``RELOAD_BATCH`` connections). Admission, the circuit breaker,
        ``fragment_timeout`` and the key replay cache follow; changed TLS files are loaded
        for new handshakes (a file that does not load is logged, the old context stays).
        Capacity, the bind and turning TLS on or off need a restart."""
        old, self.config = self.config, config
        if config.tcp_keepalive != old.tcp_keepalive and getattr(self, "socket", None) is not None:
            self._tune_listener()
        if config.key_replay_ttl != old.key_replay_ttl:
            self.replay_cache = _replay_cache(config)
        if config.frame_stack_cache != old.frame_stack_cache:
            framestacks.keep(config.frame_stack_cache)
        self.heap.drop = config.heap_trim_drop
        self.admission.reconfigure(config)
        self.deadlines.reconfigure(config)
        self.breaker.failures = config.circuit_breaker_failures
        self.breaker.reset = config.circuit_breaker_reset
        if self._ssl is not None and _tls_files(config) != _tls_files(old):
            self.reload_certificates()
        live = [*self.connections, *filter(None, self._handshaking.values())]
        for count, ws in enumerate(live, 1):
            ws.apply_config(config)
            if count % RELOAD_BATCH == 0:
                gevent.sleep(0)

    # ------------------------------------------------------------------ shutdown

    def stop(self, timeout: float | None = None) -> None:
        """Shut down gracefully; idempotent (a second call waits for the first). Steps:

        * stop accepting and close the listening socket;
        * readiness off (``is_ready = False``: ``/readyz`` fails);
        * ``503`` to connections still in their handshake;
        * Close ``1001`` "going away" to every open connection;
        * wait up to ``timeout`` seconds (default ``config.shutdown_grace``) for the
          connection greenlets to finish their closing handshakes;
        * kill what is left (TCP dropped, close callbacks still run);
        * stop the services, in reverse order.
        """
        if self._stopping:
            self._stopped.wait()
            return
        self._stopping = True
        self.is_ready = False
        try:
            if not self.closed:
                self.close()
            for greenlet, ws in list(self._handshaking.items()):
                if ws is None or ws.state is State.CONNECTING:  # not while it answers an error
                    greenlet.kill(_Draining, block=False)
            for ws in list(self.connections):
                ws.close(CloseCode.GOING_AWAY, "going away")
            grace = self.config.shutdown_grace if timeout is None else timeout
            self.pool.join(timeout=grace)
            self.pool.kill(block=True, timeout=1.0)  # killed handlers drop TCP: no waits
            self._shed_pool.kill(block=True, timeout=1.0)
            self.heap.cancel()
            for service in reversed(self.services):
                service.stop()
            self.deadlines.stop()
            watcher, self._reload_watcher = self._reload_watcher, None
            if watcher is not None:
                watcher.cancel()
            if self.degrader is not None:
                self.degrader.stop()
        finally:
            self._stopped.set()

    def install_signal_handlers(self) -> None:
        """On SIGTERM or SIGINT, run ``stop()`` in a new greenlet (then serve_forever returns)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._on_signal, signum)
        self.install_reload_handler()

    def install_reload_handler(self) -> None:
        """On SIGHUP, ``reload_certificates()`` (TLS from ``certfile`` only); the handler is
        removed by ``stop()``."""
        if self.config.certfile and self._ssl is not None and self._reload_watcher is None:
            self._reload_watcher = gevent.signal_handler(signal.SIGHUP, self.reload_certificates)

    def reload_certificates(self) -> bool:
        """Load ``certfile``/``keyfile`` (and ``ca_file``) again for new handshakes; open
        connections keep their session. A file that does not load is logged and the old
        certificate stays. Returns True when the new one is in use (FX-05)."""
        try:
            context = _make_ssl_context(self.config)
        except ConfigError as exc:
            logger.error("certificate reload failed, keeping the old one: %s", exc)
            return False
        if context is None:
            return False
        self._ssl = context
        logger.info("certificate reloaded from %s", self.config.certfile)
        return True

    def _on_signal(self, signum: int) -> None:
        logger.info("signal %s: draining connections", signal.Signals(signum).name)
        gevent.spawn(self.stop)


def _log_access(event: str, ws: WebSocket, duration: float | None = None) -> None:
    """One ``wsflask.access`` line: id, peer, route (the request path), duration, close code."""
    peer = ws.remote_address
    fields: dict[str, Any] = {
        "id": ws.id,
        "peer": f"{peer[0]}:{peer[1]}" if peer else "-",
        "route": ws.request.path if ws.request else "-",
    }
    if duration is not None:
        fields["duration"] = round(duration, 3)
        fields["close_code"] = CloseCode.ABNORMAL if ws.close_code is None else ws.close_code
    access_log.info("connection %s", event, extra=fields)


class ConnectionGreenlet(gevent.Greenlet):  # type: ignore[misc]
    """A connection's pool greenlet, without the spawning stack gevent records for
    debugging (ten frame records per greenlet, always the hub's accept loop here): about
    200 bytes less per open connection."""

    __slots__ = ()
    spawning_stack_limit = 0


class _ConnectionPool(Pool):  # type: ignore[misc]
    """The connections' pool: ``ConnectionGreenlet``s, and one bound ``_discard`` for all
    of their links (gevent binds a new one per greenlet: 64 bytes per open connection)."""

    def __init__(self, size: int) -> None:
        super().__init__(size, greenlet_class=ConnectionGreenlet)
        self._discard = self._discard  # type: ignore[has-type]  # shadows the method


def _serve_and_close(
    handle: Callable[[Any, Any], None], close: Callable[[Any, Any], None], sock: Any, address: Any
) -> None:
    """A connection's pool greenlet: ``handle(sock, address)``, then ``close`` it."""
    try:
        handle(sock, address)
    finally:
        close(sock, address)


def _make_ssl_context(config: Config) -> ssl.SSLContext | None:
    """TLS 1.2+ server context from ``certfile``/``keyfile``; None without a certificate."""
    if not config.certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"certfile={config.certfile!r} keyfile={config.keyfile!r} cannot be loaded: {exc}"
        ) from exc
    _client_certificates(context, config)
    return context


def _client_certificates(context: ssl.SSLContext, config: Config) -> None:
    """``ca_file``: verify client certificates against it, required with
    ``require_client_cert`` (mutual TLS), else optional."""
    if config.require_client_cert and not config.ca_file:
        raise ConfigError("require_client_cert=True needs ca_file (the CA of client certificates)")
    if not config.ca_file:
        return
    try:
        context.load_verify_locations(config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ca_file={config.ca_file!r} cannot be loaded: {exc}") from exc
    context.verify_mode = ssl.CERT_REQUIRED if config.require_client_cert else ssl.CERT_OPTIONAL


def _tls_files(config: Config) -> tuple[object, ...]:
    """The settings ``_make_ssl_context`` reads: a change means loading them again."""
    return config.certfile, config.keyfile, config.ca_file, config.require_client_cert


def _replay_cache(config: Config) -> KeyReplayCache | None:
    return KeyReplayCache(config.key_replay_ttl) if config.key_replay_ttl else None


def _address(address: Any) -> tuple[str, int] | None:
    """``(host, port)`` of a peer address for logs; None for other kinds (UNIX sockets)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


#: host texts of recent peers, so that every connection from one address keeps one string
_HOSTS: dict[Any, Any] = {}
#: distinct hosts remembered, then it starts over (many peers: at most this many kept)
HOSTS_SHARED_MAX = 1024


def _shared_host(host: Any) -> Any:
    """``host`` as the one string already kept for it (about 60 bytes less per connection
    from an address that has others open); bounded by ``HOSTS_SHARED_MAX``."""
    shared = _HOSTS.get(host)
    if shared is None:
        if len(_HOSTS) >= HOSTS_SHARED_MAX:
            _HOSTS.clear()
        shared = _HOSTS[host] = host
    return shared


def _ip(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


def _abort_socket(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


#: TCP keep-alive tuning where the OS has it: probe after 60 s idle, every 10 s, 5 times
_KEEPALIVE_TUNING = tuple(
    (getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 5))
    if hasattr(socket, name)
)


def _has_options(sock: Any, keepalive: bool) -> bool:
    """True when ``sock`` already has TCP_NODELAY and the keep-alive settings (inherited
    from the listener), so that setting them again would change nothing."""
    if not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
        return False
    if bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)) != keepalive:
        return False
    return not keepalive or all(
        sock.getsockopt(socket.IPPROTO_TCP, option) == value for option, value in _KEEPALIVE_TUNING
    )


def _keepalive(sock: Any) -> None:
    """TCP keep-alive: probe an idle peer after 60 s, every 10 s, 5 times (where the OS
    lets us tune it), so a vanished peer is found even without the heartbeat (X-04)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in _KEEPALIVE_TUNING:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
