"""Running a route: the handler the server calls in each connection's greenlet.

A straight-line route calls ``handler(ws, **params)``; an event route runs connect handlers,
then message handlers (or JSON event envelopes, acked or answered with an error envelope),
then disconnect handlers once; its "error" handlers hear of its handlers' exceptions and of a
close for a protocol violation (``Closed.cause``). Registration is ``routing.py``'s job, the
wire format of envelopes ``envelopes.py``'s; no socket I/O beyond ``ws.send``/``ws.close``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .calls import REPLY_EVENTS
from .envelopes import decode, encode, error, quote, too_deep, valid_id
from .errors import ConnectionClosed, Reject
from .protocol import CloseCode, ProtocolError
from .routing import LIFECYCLE, Route

if TYPE_CHECKING:
    from .metrics import MetricsSink
    from .rooms import Rooms
    from .websocket import WebSocket

__all__ = ["Dispatcher", "dispatch_envelope"]

#: a static route's parameters: only ever unpacked (``**``), never handed out or changed,
#: so the connection need not make its own ``path_params`` dict
_NO_PARAMS: dict[str, Any] = {}

logger = logging.getLogger("wsflask")

#: ``on_error(ws, exc)``: the app's error handlers (or its log)
ErrorHook = Callable[["WebSocket", Exception], None]


class Dispatcher:
    """Runs the connections of one route: ``serve`` is the ``Upgrade.handler``.

    Args:
        route: the route whose handlers run (read at each connection, not copied).
        rooms: the app's rooms; every connection is tracked before its handlers run.
        on_error: called with each handler exception (``App.handle_exception``).
    """

    __slots__ = ("on_error", "rooms", "route")

    def __init__(self, route: Route, rooms: Rooms, on_error: ErrorHook) -> None:
        self.route = route
        self.rooms = rooms
        self.on_error = on_error

    def serve(self, ws: WebSocket) -> None:
        """Run the route on ``ws``; a handler exception goes to ``on_error``, then 1011.

        A bound method, not a ``partial``: the call stays inlined in the interpreter, so each
        idle connection's greenlet keeps a shallower C stack.
        """
        route = self.route
        params = _NO_PARAMS if route.pattern.is_static else ws.path_params
        self.rooms.track(ws)  # before disconnect callbacks: rooms are left first (§4)
        try:
            if route.handler is not None:
                if params:
                    route.handler(ws, **params)
                else:  # no ``**``: a plain call keeps the idle greenlet's C stack shallower
                    route.handler(ws)
            else:
                self._run_events(route, ws, params)
        except ConnectionClosed:
            pass  # the peer went away while the handler was sending: not an error
        except Exception as exc:
            errors = route.handlers.get("error")  # the route's own, else the app's
            if errors:
                _RouteErrors(errors, params)(ws, exc)
            else:
                self.on_error(ws, exc)
            ws.close(CloseCode.INTERNAL_ERROR, "")  # no detail leaks to the peer

    def _run_events(self, route: Route, ws: WebSocket, params: dict[str, Any]) -> None:
        if not ws.is_open:
            return  # closed before we started: no connect, so no disconnect either
        on_error: ErrorHook = self.on_error
        errors = route.handlers.get("error")
        if errors:  # registered before disconnect: a violation is reported first
            on_error = route_errors = _RouteErrors(errors, params)
            ws.add_close_callback(route_errors.closed)
        disconnect = _Disconnect(route.handlers.get("disconnect", ()), params, on_error)
        if disconnect.handlers:  # registered after rooms.track(): runs after it
            ws.add_close_callback(disconnect)
        if not _connected(route, ws, params):
            disconnect.refused = True
            ws.close(CloseCode.POLICY, "connection refused")
            return
        on_message = route.handlers.get("message")
        if route.json:
            handlers, metrics = route.handlers, self.rooms.metrics
            for message in ws:
                dispatch_envelope(ws, message, handlers, params, on_error, metrics)
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


def _connected(route: Route, ws: WebSocket, params: dict[str, Any]) -> bool:
    """Run connect handlers; False when one returns False or raises ``Reject``."""
    try:
        for handler in route.handlers.get("connect", ()):
            if handler(ws, **params) is False:
                return False
    except Reject:
        return False
    return True


class _RouteErrors:
    """A route's "error" handlers: the ``ErrorHook`` for its handlers' exceptions, and
    (``closed``) the close callback that reports a protocol violation."""

    __slots__ = ("handlers", "params")

    def __init__(self, handlers: Iterable[Callable[..., Any]], params: dict[str, Any]) -> None:
        self.handlers: tuple[Callable[..., Any], ...] = tuple(handlers)
        self.params = params

    def __call__(self, ws: WebSocket, exc: Exception) -> None:
        for handler in self.handlers:
            try:
                handler(ws, exc, **self.params)
            except ConnectionClosed:
                pass  # sending from an error handler after the close
            except Exception:
                logger.exception("error handler %r failed", handler)

    def closed(self, ws: WebSocket) -> None:
        """Close callback: the peer broke the protocol (never called for a normal close)."""
        cause = ws.close_cause
        if isinstance(cause, ProtocolError):
            self(ws, cause)


class _Disconnect:
    """The close callback that runs a route's disconnect handlers, unless connect refused."""

    __slots__ = ("handlers", "on_error", "params", "refused")

    def __init__(
        self,
        handlers: Iterable[Callable[..., Any]],
        params: dict[str, Any],
        on_error: ErrorHook,
    ) -> None:
        self.handlers: tuple[Callable[..., Any], ...] = tuple(handlers)
        self.params = params
        self.on_error = on_error
        #: set when a connect handler refused: the connection never opened for the app
        self.refused = False

    def __call__(self, ws: WebSocket) -> None:
        if self.refused:
            return
        for handler in self.handlers:
            try:
                handler(ws, **self.params)
            except ConnectionClosed:
                pass  # sending from a disconnect handler: the socket is already closed
            except Exception as exc:
                self.on_error(ws, exc)


def dispatch_envelope(
    ws: WebSocket,
    message: str | bytes,
    handlers: dict[str, list[Callable[..., Any]]],
    params: dict[str, Any],
    on_error: ErrorHook,
    metrics: MetricsSink | None = None,
) -> None:
    """Decode one envelope, call its handler, send the ack or an error envelope.

    Bad input gets a bounded error envelope (``envelopes.error``) and the connection stays
    open; a binary message closes it with 1003. A handler exception goes to ``on_error``,
    then, unless that closed the connection, to the client as an error envelope with the
    exception's type and no detail; the connection stays open (a JSON route's client sees
    which request failed, a straight-line route cannot say, so it closes with 1011).
    An ``ack``/``error`` that answers no pending call (``ws.call``; late, after a timeout)
    is dropped, counted as the drop ``late_reply`` on ``metrics``, never answered: two peers
    must not trade error replies.
    """
    if isinstance(message, bytes):
        ws.close(CloseCode.UNSUPPORTED, "binary messages are not accepted on this route")
        return
    config = ws.config
    if too_deep(message, config.max_json_depth):
        ws.send(error("BadEnvelope", f"JSON nested deeper than {config.max_json_depth} levels"))
        return
    decoded = decode(message)  # never raises: malformed or deeply nested JSON gives None
    if decoded is None:
        ws.send(error("BadEnvelope", 'expected a JSON object {"event": name, "data": ...}'))
        return
    event, data, msg_id = decoded["event"], decoded.get("data"), decoded.get("id")
    if event in REPLY_EVENTS:
        if metrics is not None:
            metrics.dropped("late_reply")
        return
    if event in LIFECYCLE:
        ws.send(error("BadEnvelope", f"{event!r} is not an event a client may send", msg_id))
        return
    if len(event) > config.max_event_name:
        message = f"event name over {config.max_event_name} characters: {quote(event)!r}"
        ws.send(error("BadEnvelope", message, msg_id))
        return
    found = handlers.get(event)
    if not found and "*" not in handlers:
        ws.send(error("UnknownEvent", f"unknown event {quote(event)!r}", msg_id))
        return
    if msg_id is not None and not valid_id(msg_id):  # an ack would echo it: keep it short
        ws.send(error("BadEnvelope", "an id is an int or a string of at most 64 characters"))
        return
    try:
        if found:
            result = found[0](ws, data, **params)
        else:
            result = handlers["*"][0](ws, event, data, **params)
    except ConnectionClosed:
        raise  # the peer went away: nothing to answer
    except Exception as exc:
        on_error(ws, exc)
        if ws.is_open:  # the error handler may have closed it instead
            ws.send(error(type(exc).__name__, "internal error", msg_id))
        return
    if msg_id is not None:
        try:
            ack = encode("ack", result, msg_id)
        except (TypeError, ValueError) as exc:  # NaN, a set, an object: not JSON
            logger.error("handler for %r returned what JSON cannot hold: %s", quote(event), exc)
            ack = error("BadResult", "the handler's result is not JSON", msg_id)
        ws.send(ack)
