"""The WebSocket connection state machine: one object per peer, handshake to close.

Rules for editors (each one is an RFC requirement or a contract the drivers rely on):

1. Inputs are ``receive_data()``/``receive_eof()``; outputs are ``data_to_send()`` and
   ``events_received()``. After every input or command the driver writes
   ``data_to_send()`` first and then handles the events.
2. A peer that breaks a rule never makes an input raise: the connection is failed with the
   error's ``close_code`` (§7.1.7) and the error is reported as ``Closed.cause``. Commands
   raise (``InvalidState``, ``ValueError``) only when the caller misuses them.
3. States go forward only: CONNECTING -> OPEN -> CLOSING -> CLOSED (§4, §7).
4. §5.5.1: "After sending a Close frame, the endpoint MUST NOT send any more data frames";
   once a Close is sent every send command raises ``InvalidState`` and only a Close is awaited.
5. §5.5.1: on receiving a Close the endpoint "MUST send a Close frame in response" (the
   echo carries the same code); the echo comes from here, never from the driver.
6. §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in response"
   with "identical Application data"; queued here before the Ping event is returned.
7. ``Closed`` is emitted exactly once, as the last event; input after CLOSED is ignored.
8. A message never exceeds ``Limits.max_message_size``; each continuation frame is charged
   ``fragment_overhead`` bytes as well, so floods of tiny fragments end in 1009 (§10.4);
   ``messages.py`` reassembles fragments, ``close.py`` checks Close bodies.
9. RFC 7692: with ``DeflateSettings`` the server negotiates permessage-deflate in
   ``accept()`` and the client offers it in ``connect()`` (``deflate.py``). RSV1 marks a
   compressed message on its first frame only (§6.1, else 1002); it is inflated under the
   same budget (rule 8) in inflated bytes. Sends compress from ``compress_threshold`` up.

This module does no I/O and reads no clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

from . import handshake
from .close import check_close_code, close_payload, parse_close
from .deflate import DeflateSettings, PerMessageDeflate, accept_response, client_offer, negotiate
from .errors import (
    HandshakeError,
    HandshakeRejected,
    InvalidHandshakeResponse,
    InvalidState,
    ProtocolError,
)
from .events import BinaryMessage, Closed, Event, Opened, Ping, Pong, Request, TextMessage
from .frames import CloseCode, FrameDecoder, encode_frame, frame_dump
from .messages import MessageAssembler, scan_messages
from .states import Limits as Limits
from .states import Side as Side
from .states import State as State
from .utf8 import decode_text

__all__ = ["Connection", "Limits", "Side", "State"]


class Connection:
    """A sans-I/O RFC 6455 endpoint, either side; the module docstring lists its rules.

    Server side: feed the request bytes; a ``Request`` event asks for ``accept()``,
    ``reject()`` or (for plain HTTP with ``http=True``) ``respond()``. Client side: call
    ``connect()`` first. Then send with the ``send_*`` commands and finish with ``close()``.
    ``deflate``
    (``DeflateSettings``) turns permessage-deflate negotiation on (RFC 7692); ``None`` (the
    default) leaves every message uncompressed.
    """

    __slots__ = (
        "_close_sent", "_decoder", "_deflate_offered", "_deflate_settings", "_events",
        "_extensions_offered", "_head", "_http", "_key", "_limits", "_mask_source", "_messages",
        "_offered", "_out", "_pending_input", "_send_deflating", "deflate", "error_header",
        "remote_addr", "request", "side", "state", "subprotocol",
    )  # fmt: skip

    def __init__(
        self,
        side: Side,
        *,
        limits: Limits | None = None,
        http: bool = False,
        mask_source: Callable[[int], bytes] = os.urandom,
        deflate: DeflateSettings | None = None,
    ) -> None:
        self.side = side
        self.state = State.CONNECTING
        self.subprotocol: str | None = None
        #: Server side: the validated request once it arrived.
        self.request: Request | None = None
        self._limits = limits or Limits()
        self._http = http
        self._mask_source = mask_source
        self._head: handshake.HeadReader | None = handshake.HeadReader(
            self._limits.max_header_bytes, self._limits.max_headers
        )
        self._decoder = FrameDecoder(
            expect_mask=side is Side.SERVER, max_payload=self._limits.max_message_size
        )
        #: events not yet taken; None when there are none (no list kept while idle)
        self._events: list[Event] | None = None
        self._out: list[bytes] = []
        #: Bytes that arrived after the handshake head, before accept() or connect's 101;
        #: None when there are none (the usual case: no list kept per connection).
        self._pending_input: list[bytes] | None = None
        self._key = ""
        self._offered: Sequence[str] = ()
        self._extensions_offered = False
        self._close_sent = False
        self._messages = MessageAssembler(
            self._decoder, self._limits.max_message_size, self._limits.fragment_overhead
        )
        self._deflate_settings = deflate if deflate is not None and deflate.enabled else None
        self._deflate_offered = False
        #: The permessage-deflate codec once negotiated (RFC 7692), else None.
        self.deflate: PerMessageDeflate | None = None
        #: True while a compressed message is being sent in fragments.
        self._send_deflating = False
        #: Server side: add ``X-WebSocket-Error: <reason token>`` to the core's own refusals
        #: (400/405/414/426/431), an opt-in debugging aid the driver sets before the head.
        self.error_header = False
        #: Server side: the peer's IP address, which only the driver knows; set before the
        #: head arrives, it becomes the ``Request``'s ``remote_addr`` (None: not known).
        self.remote_addr: str | None = None

    # ------------------------------------------------------------------ outputs

    def data_to_send(self) -> bytes:
        """Return (and forget) every byte queued for the peer; ``b""`` when none."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _event(self, event: Event) -> None:
        events = self._events
        if events is None:
            self._events = [event]
        else:
            events.append(event)

    def events_received(self) -> list[Event]:
        """Return (and forget) the events since the last call, oldest first."""
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    @property
    def receiving_message(self) -> bool:
        """True while a fragmented message is partly received (the driver, which has a
        clock, bounds how long: ``Config.fragment_timeout``)."""
        return self._messages.in_progress

    @property
    def frame_bytes_missing(self) -> int:
        """Bytes still missing from a long frame whose header was accepted (0 when none):
        within the limits already checked, so a driver may read that many at once instead
        of its usual chunk (fewer wake-ups for a large message)."""
        return self._decoder.missing

    def set_limits(self, limits: Limits) -> None:
        """Adopt new limits while open (a live reload): the next frame and message are held
        to the new ``max_message_size`` and ``fragment_overhead`` (a frame whose header
        already passed keeps its verdict). Header limits matter only before the handshake."""
        self._limits = limits
        self._messages.set_budget(limits.max_message_size, limits.fragment_overhead)

    def close_expected(self) -> bool:
        """True once a Close was sent and the peer's answer is awaited: arm a close timer."""
        return self.state is State.CLOSING

    # ------------------------------------------------------------------ inputs

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the transport. Never raises for anything the peer sent."""
        if self.state is State.CLOSED or not data:
            return
        if self.state is State.CONNECTING:
            self._receive_head(data)
            return
        self._receive_frames(data)

    def receive_eof(self) -> None:
        """The transport ended. Without a closing handshake this is 1006 (§7.1.5)."""
        if self.state is not State.CLOSED:
            self._set_closed(Closed(CloseCode.ABNORMAL, "connection lost"))

    # ------------------------------------------------------------------ opening handshake (§4)

    def _receive_head(self, data: bytes) -> None:
        if self._head is None:  # request emitted, awaiting accept(): keep the bytes, bounded
            pending = self._pending_input
            if pending is None:
                pending = self._pending_input = []
            pending.append(data)
            if sum(map(len, pending)) > self._limits.max_message_size:
                self._set_closed(
                    Closed(CloseCode.ABNORMAL, "too much data before the handshake completed")
                )
            return
        try:
            done = self._head.feed(data)
            if done is None:
                return
            head, rest = done
            self._head = None
            if rest:  # the first bytes kept: the head was still incomplete until now
                self._pending_input = [rest]
            if self.side is Side.SERVER:
                self.request = handshake.parse_request(
                    head, http=self._http, remote_addr=self.remote_addr
                )
                self._event(self.request)
            else:
                self._open_client(head, rest)
        except HandshakeError as exc:
            self._refuse(exc)
        except InvalidHandshakeResponse as exc:
            self._set_closed(Closed(CloseCode.ABNORMAL, str(exc), exc))

    def _refuse(self, exc: HandshakeError) -> None:
        if self.side is Side.SERVER:
            body = f"{exc.status} {exc}\n".encode("utf-8", "replace")
            headers = exc.headers
            if self.error_header:
                headers = (*headers, ("X-WebSocket-Error", handshake.error_token(str(exc))))
            self._out.append(handshake.build_response(exc.status, body, headers=headers))
        self._set_closed(Closed(CloseCode.ABNORMAL, str(exc), exc))

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
        self._set_closed(Closed(CloseCode.ABNORMAL, f"handshake rejected with {status}"))

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
        # RFC 9110 §9.3.2: "The server SHOULD send the same header fields in response to a
        # HEAD request as it would have sent if the request method had been GET" (no content)
        head_only = self.request is not None and self.request.method == "HEAD"
        self._out.append(
            handshake.build_response(
                status, body, content_type=content_type, headers=headers, head_only=head_only
            )
        )
        self._set_closed(Closed(CloseCode.ABNORMAL, f"HTTP {status}"))

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

    def _open_client(self, head: bytes, rest: bytes) -> None:
        try:
            subprotocol, extensions, headers = handshake.parse_response(
                head, self._key, subprotocols=self._offered
            )
        except HandshakeRejected as exc:  # §4.1: a refusal; the body is what came with it
            exc.body = rest[: self._limits.max_header_bytes]
            raise
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
        self._event(opened)
        pending, self._pending_input = self._pending_input, None
        for chunk in pending or ():
            self._receive_frames(chunk)

    # ------------------------------------------------------------------ frames in

    def _receive_frames(self, data: bytes) -> None:
        events, assembler = self._events, self._messages
        if events is None:
            events = self._events = []
        is_open = self.state is State.OPEN
        decoder = self._decoder
        if (
            scan_messages is not None
            and is_open
            and not assembler.in_progress
            and not decoder.buffered
        ):  # plain whole messages first, in one compiled call
            whole, end = scan_messages(
                data, decoder.expect_mask, decoder.max_payload, TextMessage, BinaryMessage
            )
            events += whole
            if end == len(data):
                return
            data = data[end:]  # the first other frame on: the decoder judges it
        fin, opcode, rsv, payload = True, 0, 0, b""  # bound for the error path's dump
        try:
            for fin, opcode, rsv, payload in decoder.feed(data):
                # Hot path first: a whole uncompressed message in one frame, nothing pending.
                if fin and not rsv and is_open and 0 < opcode < 3 and not assembler.in_progress:
                    if opcode == 1:
                        events.append(TextMessage(decode_text(payload)))
                    else:
                        events.append(BinaryMessage(payload))
                elif opcode >= 0x8:
                    self._receive_control(opcode, payload)
                    if self.state is State.CLOSED:
                        return
                elif is_open:
                    message = assembler.add(fin, opcode, payload, rsv)
                    if message is not None:
                        events.append(message)
        except ProtocolError as exc:
            if not exc.frame:  # refused for what it carries: the decoder kept no bytes
                exc.frame = frame_dump(fin, opcode, rsv, payload)
            self.fail(exc.close_code, str(exc), cause=exc)

    def _receive_control(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x8:
            self._receive_close(payload)
        elif opcode == 0x9:
            if not self._close_sent:
                self._out.append(encode_frame(0xA, payload, mask=self._mask()))  # §5.5.2
                self._event(Ping(payload))
        elif not self._close_sent:
            self._event(Pong(payload))  # §5.5.3: unsolicited pongs are fine

    def _receive_close(self, payload: bytes) -> None:
        code, reason = parse_close(payload)
        if not self._close_sent:  # §5.5.1: echo the code we received
            self._send_close_frame(code, "")
        self._set_closed(Closed(code, reason, None, True))

    # ------------------------------------------------------------------ frames out

    def _mask(self) -> bytes | None:
        return self._mask_source(4) if self.side is Side.CLIENT else None

    def _check_sendable(self) -> None:
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot send in state {self.state.name}")

    def send_text(self, data: str, *, fin: bool = True, compress: bool | None = None) -> None:
        """Send a text message (or its first fragment when ``fin`` is False).

        ``compress`` (with permessage-deflate negotiated): None compresses whole messages
        of ``compress_threshold`` bytes and more, True compresses whatever the size (a
        fragmented message too), False never (a secret next to attacker data, RFC 7692 §8).
        """
        if self.state is not State.OPEN:  # _check_sendable(), inline on the hot path
            raise InvalidState(f"cannot send in state {self.state.name}")
        if self.deflate is None:  # the hot path: no helper call
            mask = None if self.side is Side.SERVER else self._mask_source(4)
            self._out.append(encode_frame(0x1, data.encode("utf-8"), fin=fin, mask=mask))
        else:
            self._out.append(self._data_frame(0x1, data.encode("utf-8"), fin, compress))

    def send_binary(self, data: bytes, *, fin: bool = True, compress: bool | None = None) -> None:
        """Send a binary message (or its first fragment); ``compress`` as for ``send_text``."""
        if self.state is not State.OPEN:  # _check_sendable(), inline on the hot path
            raise InvalidState(f"cannot send in state {self.state.name}")
        if self.deflate is None:
            mask = None if self.side is Side.SERVER else self._mask_source(4)
            self._out.append(encode_frame(0x2, data, fin=fin, mask=mask))
        else:
            self._out.append(self._data_frame(0x2, data, fin, compress))

    def send_continuation(self, data: bytes, *, fin: bool) -> None:
        """Send the next fragment of the message started with ``fin=False``."""
        self._check_sendable()
        if self._send_deflating and self.deflate is not None:  # compressed like its start
            self._send_deflating = not fin
            data = self.deflate.encode(data, fin=fin)
        self._out.append(encode_frame(0x0, data, fin=fin, mask=self._mask()))

    def encode_message(self, data: str | bytes) -> bytes:
        """Return a whole message as one frame for THIS connection, for ``send_frame_bytes``.

        Compressed as ``send_text``/``send_binary`` would; with context takeover the frame
        refers to earlier ones, so send it before encoding the next. To compress a
        broadcast once, see ``deflate.shared_frame()``.
        """
        if isinstance(data, str):
            return self._data_frame(0x1, data.encode("utf-8"), True, None)
        return self._data_frame(0x2, data, True, None)

    def _data_frame(self, opcode: int, payload: bytes, fin: bool, compress: bool | None) -> bytes:
        codec = self.deflate
        if (
            codec is None
            or compress is False
            or (compress is None and (not fin or len(payload) < codec.threshold))
        ):
            return encode_frame(opcode, payload, fin=fin, mask=self._mask())
        self._send_deflating = not fin
        # RFC 7692 §6: RSV1 ("Per-Message Compressed") on the first frame only.
        payload = codec.encode(payload, fin=fin)
        return encode_frame(opcode, payload, fin=fin, rsv=0x40, mask=self._mask())

    def send_frame_bytes(self, frame: bytes) -> None:
        """Send a frame made by ``encode_frame()`` as it is (one encoding, many sockets)."""
        self._check_sendable()
        self._out.append(frame)

    def send_ping(self, data: bytes = b"") -> None:
        """Send a ping; its pong arrives as a ``Pong`` event."""
        self._check_sendable()
        if len(data) > 125:
            raise ValueError("ping payload longer than 125 bytes (RFC 6455 §5.5)")
        self._out.append(encode_frame(0x9, data, mask=self._mask()))

    def send_pong(self, data: bytes = b"") -> None:
        """Send an unsolicited pong (a unidirectional heartbeat, §5.5.3)."""
        self._check_sendable()
        if len(data) > 125:
            raise ValueError("pong payload longer than 125 bytes (RFC 6455 §5.5)")
        self._out.append(encode_frame(0xA, data, mask=self._mask()))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; a no-op once closing. Arm a timer: ``close_expected()``.

        Raises:
            InvalidState: the handshake has not completed (reject or drop it instead).
            ValueError: a code that may not be sent or a reason over 123 bytes.
        """
        if self.state is State.CONNECTING:
            raise InvalidState("close() before the handshake completed")
        check_close_code(code)
        if self.state is not State.OPEN:
            return
        self._send_close_frame(code, reason)
        self.state = State.CLOSING

    def fail(self, code: int, reason: str = "", *, cause: Exception | None = None) -> None:
        """_Fail the WebSocket Connection_ (§7.1.7): send a Close if none was sent, end now."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.CONNECTING and not self._close_sent:
            self._send_close_frame(code, reason.encode()[:120].decode("utf-8", "ignore"))
        self._set_closed(Closed(code, reason, cause))

    def _send_close_frame(self, code: int, reason: str) -> None:
        payload = close_payload(code, reason)
        self._out.append(encode_frame(0x8, payload, mask=self._mask()))
        self._close_sent = True

    def _set_closed(self, closed: Closed) -> None:
        self.state = State.CLOSED
        self._messages.reset()
        if self.deflate is not None:
            self.deflate.release()  # zlib memory goes now, not when the object is collected
        self._pending_input = None
        self._event(closed)
