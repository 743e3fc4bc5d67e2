"""The opening handshake commands of ``Connection`` (RFC 6455 §4; RFC 7692 §5, §7).

Server side: the request head is read, validated and handed out as a ``Request`` event; then
``accept()`` (101, with permessage-deflate negotiated when the connection has
``DeflateSettings``), ``reject()`` or, for plain HTTP, ``respond()``. Client side:
``connect()`` queues the request (offering permessage-deflate likewise) and the 101 is
checked when it arrives (§4.1). ``OpeningHandshake`` is a mixin of ``Connection``, which
owns every attribute; it is split out only to keep each module short. This module does no
I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from . import handshake
from .deflate import DeflateSettings, PerMessageDeflate, accept_response, client_offer, negotiate
from .errors import HandshakeError, InvalidHandshakeResponse, InvalidState
from .events import Closed, Event, Opened, Request
from .messages import MessageAssembler
from .states import Limits, Side, State

__all__ = ["OpeningHandshake"]


class OpeningHandshake:
    """The handshake half of ``Connection``, which initialises every attribute.

    The slots are those this half assigns; the rest are ``Connection``'s, declared here for
    the type checker.
    """

    __slots__ = (
        "_deflate_offered", "_extensions_offered", "_head", "_key", "_offered",
        "_pending_input", "deflate", "request", "state", "subprotocol",
    )  # fmt: skip

    side: Side
    state: State
    subprotocol: str | None
    request: Request | None
    deflate: PerMessageDeflate | None
    _limits: Limits
    _http: bool
    _mask_source: Callable[[int], bytes]
    _head: handshake.HeadReader | None
    _events: list[Event]
    _out: list[bytes]
    _pending_input: list[bytes]
    _key: str
    _offered: Sequence[str]
    _extensions_offered: bool
    _deflate_settings: DeflateSettings | None
    _deflate_offered: bool
    _messages: MessageAssembler

    def _receive_frames(self, data: bytes) -> None:
        raise NotImplementedError  # Connection's

    def _set_closed(self, closed: Closed) -> None:
        raise NotImplementedError  # Connection's

    def _receive_head(self, data: bytes) -> None:
        if self._head is None:  # request emitted, awaiting accept(): keep the bytes, bounded
            self._pending_input.append(data)
            if sum(map(len, self._pending_input)) > self._limits.max_message_size:
                self._set_closed(Closed(1006, "too much data before the handshake completed"))
            return
        try:
            done = self._head.feed(data)
            if done is None:
                return
            head, rest = done
            self._head = None
            if rest:
                self._pending_input.append(rest)
            if self.side is Side.SERVER:
                self.request = handshake.parse_request(head, http=self._http)
                self._events.append(self.request)
            else:
                self._open_client(head)
        except HandshakeError as exc:
            self._refuse(exc)
        except InvalidHandshakeResponse as exc:
            self._set_closed(Closed(1006, str(exc), exc))

    def _refuse(self, exc: HandshakeError) -> None:
        if self.side is Side.SERVER:
            body = f"{exc.status} {exc}\n".encode("utf-8", "replace")
            self._out.append(handshake.build_response(exc.status, body, headers=exc.headers))
        self._set_closed(Closed(1006, str(exc), exc))

    def accept(
        self,
        request: Request,
        *,
        subprotocol: str | None = None,
        extensions: str = "",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Server side: answer ``request`` with 101 and open the connection.

        ``extensions`` is a ``Sec-WebSocket-Extensions`` value the caller negotiated itself;
        when empty and the connection has ``DeflateSettings``, permessage-deflate offers are
        answered here (RFC 7692) and ``Opened.extensions`` carries the answer.

        Raises:
            InvalidState: not a server awaiting its request, or a plain HTTP request.
        """
        if (
            self.side is not Side.SERVER
            or self.request is None
            or self.state is not State.CONNECTING
        ):
            raise InvalidState("accept() needs a server connection with a pending Request")
        if not request.key:
            raise InvalidState("accept() on a plain HTTP request: use respond()")
        negotiated = None
        if not extensions and self._deflate_settings is not None:
            negotiated = negotiate(request.extensions, self._deflate_settings)
        if negotiated is not None:
            extensions, codec = negotiated
            self._use_deflate(codec)
        self._out.append(
            handshake.build_accept(
                request.key, subprotocol=subprotocol, extensions=extensions, headers=headers
            )
        )
        self.subprotocol = subprotocol
        self._open(Opened(subprotocol, extensions))

    def reject(
        self, status: int, body: str = "", *, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Server side: refuse the handshake with an HTTP ``status``; the connection ends."""
        self._check_connecting_server("reject")
        text = body or f"HTTP {status}\n"
        self._out.append(handshake.build_response(status, text.encode(), headers=headers))
        self._set_closed(Closed(1006, f"handshake rejected with {status}"))

    def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Server side: answer a plain HTTP request (``http=True``) and end the connection."""
        self._check_connecting_server("respond")
        self._out.append(
            handshake.build_response(status, body, content_type=content_type, headers=headers)
        )
        self._set_closed(Closed(1006, f"HTTP {status}"))

    def _check_connecting_server(self, command: str) -> None:
        if self.side is not Side.SERVER or self.state is not State.CONNECTING:
            raise InvalidState(f"{command}() needs a server connection still in CONNECTING")

    def connect(
        self,
        host: str,
        target: str = "/",
        *,
        key: str | None = None,
        subprotocols: Sequence[str] = (),
        extensions: str = "",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Client side: queue the opening handshake; ``Opened`` or ``Closed`` follows.

        ``extensions`` is an offer the caller checks itself; when empty and the connection
        has ``DeflateSettings``, permessage-deflate is offered and the answer checked here.
        """
        if self.side is not Side.CLIENT or self.state is not State.CONNECTING or self._key:
            raise InvalidState("connect() needs a new client connection")
        self._key = key or handshake.make_key(self._mask_source)
        self._offered = tuple(subprotocols)
        self._extensions_offered = bool(extensions)
        if not extensions and self._deflate_settings is not None:
            extensions = client_offer(self._deflate_settings)
            self._deflate_offered = True
        self._out.append(
            handshake.build_request(
                host,
                target,
                self._key,
                subprotocols=subprotocols,
                extensions=extensions,
                headers=headers,
            )
        )

    def _open_client(self, head: bytes) -> None:
        subprotocol, extensions, headers = handshake.parse_response(
            head, self._key, subprotocols=self._offered
        )
        # §4.1 step 5: an extension "not present in the client's handshake" fails it; an
        # offer made by the caller is checked by that caller, ours by accept_response().
        if extensions and self._deflate_settings is not None and self._deflate_offered:
            self._use_deflate(accept_response(extensions, self._deflate_settings))
        elif extensions and not self._extensions_offered:
            raise InvalidHandshakeResponse(f"Unrequested extensions in the response: {extensions}")
        self.subprotocol = subprotocol
        self._open(Opened(subprotocol, extensions, headers))

    def _use_deflate(self, codec: PerMessageDeflate) -> None:
        self.deflate = codec
        self._messages.enable_compression(codec)

    def _open(self, opened: Opened) -> None:
        self.state = State.OPEN
        self._events.append(opened)
        pending, self._pending_input = self._pending_input, []
        for chunk in pending:
            self._receive_frames(chunk)
