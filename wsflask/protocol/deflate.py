"""permessage-deflate negotiation (RFC 7692 §5, §7.1), both sides; the codec is re-exported.

``negotiate()`` answers a client's offers on the server: the first acceptable
``permessage-deflate`` offer wins. §7: a server "MUST decline an extension negotiation offer"
with a parameter not defined for offers, an invalid value, several parameters of one name,
or a configuration it does not support; such an offer is skipped, never answered with a 4xx
(battery HS-10). The response holds only what the offer allows; the truth tables above the
rules in ``_answer()`` and ``accept_response()`` say what goes in it. ``client_offer()`` and
``accept_response()`` are the client side; a response the offer did not allow raises
``InvalidHandshakeResponse`` (§7: the client "MUST _Fail the WebSocket Connection_").

Window bits (§7.1.2.1/§7.1.2.2 allow 8-15). zlib cannot compress with a 256-byte raw window
(madler/zlib#171), so a server declines offers of ``server_max_window_bits=8`` and
``DeflateSettings`` takes 9-15. A client told ``client_max_window_bits=8`` compresses with 9
bits, whose output a 256-byte window holds (``compression.py`` explains why).

``PerMessageDeflate`` (the codec), ``shared_frame()`` and the memory formulas live in
``compression.py`` and are re-exported here. This module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .compression import PerMessageDeflate as PerMessageDeflate
from .compression import ShareKey as ShareKey
from .compression import deflate_memory as deflate_memory
from .compression import inflate_memory as inflate_memory
from .compression import shared_frame as shared_frame
from .errors import InvalidHandshakeResponse
from .extensions import Extension, parse_extensions

__all__ = [
    "NAME",
    "DeflateSettings",
    "PerMessageDeflate",
    "ShareKey",
    "accept_response",
    "client_offer",
    "deflate_memory",
    "inflate_memory",
    "negotiate",
    "shared_frame",
]

NAME = "permessage-deflate"
# §7.1.2.1: "a decimal integer value without leading zeroes between 8 to 15, inclusive"
_BITS = re.compile(r"[89]|1[0-5]")
_SNCT, _CNCT = "server_no_context_takeover", "client_no_context_takeover"
_SMWB, _CMWB = "server_max_window_bits", "client_max_window_bits"
_NAMES = frozenset((_SNCT, _CNCT, _SMWB, _CMWB))


@dataclass(frozen=True, slots=True)
class DeflateSettings:
    """permessage-deflate configuration of a server or a client (RFC 7692 §7.1).

    Attributes:
        enabled: offer (client) or accept (server) permessage-deflate. Default True.
        server_max_window_bits: log2 of the server's LZ77 window, 9-15 (default 15). Server:
            the largest window its compressor uses; a smaller one in the offer wins. Client:
            offered when below 15. Bounds server deflate and client inflate memory.
        client_max_window_bits: log2 of the client's window, 9-15 (default 15). Server: asked
            of clients whose offer carries ``client_max_window_bits``; below 15, an offer
            without it is declined, so inflate memory stays within budget. Client: offered.
        server_no_context_takeover: the server compresses every message on its own
            (§7.1.1.1). Default False. Saves deflate memory per connection and CPU on rooms
            (one compression per broadcast), and keeps secrets out of a CRIME-style oracle
            (§8); costs ratio.
        client_no_context_takeover: the client does the same (§7.1.1.2). Default False.
            Saves the server's inflate memory between messages.
        mem_level: zlib memLevel of our compressor, 1-9 (default 8): hash and buffer memory
            ``1 << (mem_level + 9)`` bytes.
        compress_level: zlib level of our compressor, 0-9 (default 6): CPU against ratio.
        compress_threshold: bytes (default 128); shorter messages go uncompressed (RSV1
            clear), since DEFLATE saves little on them and costs CPU.
    """

    enabled: bool = True
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    mem_level: int = 8
    compress_level: int = 6
    compress_threshold: int = 128

    def __post_init__(self) -> None:
        for name in (_SMWB, _CMWB):
            if not 9 <= getattr(self, name) <= 15:
                raise ValueError(f"{name} must be 9-15 (zlib cannot compress with 8)")
        if not 1 <= self.mem_level <= 9 or not 0 <= self.compress_level <= 9:
            raise ValueError("mem_level must be 1-9 and compress_level 0-9")
        if self.compress_threshold < 0:
            raise ValueError("compress_threshold must be >= 0")


class _Params(NamedTuple):
    snct: bool  # server_no_context_takeover present
    cnct: bool  # client_no_context_takeover present
    smwb: int | None  # server_max_window_bits value, None when absent
    cmwb: int | None  # client_max_window_bits value, None when absent or without one
    cmwb_sent: bool  # client_max_window_bits present, with or without a value


def _parse_params(params: Sequence[tuple[str, str | None]]) -> _Params | None:
    """Return the parameters, or None when §7 says to decline (server) or fail (client)."""
    found: dict[str, str | None] = {}
    for name, value in params:
        if name not in _NAMES or name in found:  # §7 (a) undefined, (c) "the same name"
            return None
        found[name] = value
    if found.get(_SNCT) is not None or found.get(_CNCT) is not None:
        return None  # §7.1.1: the two takeover parameters have no value
    smwb, cmwb = found.get(_SMWB), found.get(_CMWB)
    if (_SMWB in found and (smwb is None or not _BITS.fullmatch(smwb))) or (
        cmwb is not None and not _BITS.fullmatch(cmwb)
    ):
        return None  # §7 (b): an invalid value; 7.1.2.1: server_max_window_bits needs one
    return _Params(
        _SNCT in found,
        _CNCT in found,
        int(smwb) if smwb else None,
        int(cmwb) if cmwb else None,
        _CMWB in found,
    )


def _header(snct: bool, cnct: bool, smwb: int | None, cmwb: int | bool | None) -> str:
    parts = [NAME]
    if snct:
        parts.append(_SNCT)
    if cnct:
        parts.append(_CNCT)
    if smwb:
        parts.append(f"{_SMWB}={smwb}")
    if cmwb is True:
        parts.append(_CMWB)
    elif cmwb:
        parts.append(f"{_CMWB}={cmwb}")
    return "; ".join(parts)


def negotiate(
    offers: Sequence[Extension], settings: DeflateSettings
) -> tuple[str, PerMessageDeflate] | None:
    """Server side: answer the client's offers (``Request.extensions``), first acceptable wins.

    Returns the ``Sec-WebSocket-Extensions`` value for the 101 and the codec, or None to
    decline them all (no header; the connection runs uncompressed). Linear in the offers.
    """
    if not settings.enabled:
        return None
    for name, params in offers:
        parsed = _parse_params(params) if name == NAME else None
        answer = _answer(parsed, settings) if parsed is not None else None
        if answer is not None:
            return answer
    return None


def _answer(offer: _Params, s: DeflateSettings) -> tuple[str, PerMessageDeflate] | None:
    # server_no_context_takeover (7.1.1.1)   offer    settings | response  our compressor
    #                                         absent   False    | absent    keeps context
    #                                         absent   True     | present   resets
    #                                         present  any      | present   resets
    # "A server accepts an extension negotiation offer that includes the
    # "server_no_context_takeover" extension parameter by including [it] in the response"
    snct = offer.snct or s.server_no_context_takeover
    # client_no_context_takeover (7.1.1.2)   offer    settings | response  our inflater
    #                                         absent   False    | absent    keeps context
    #                                         absent   True     | present   per message
    #                                         present  any      | present   per message
    # (an offered hint is taken: the inflater need not outlive a message)
    cnct = offer.cnct or s.client_no_context_takeover
    # server_max_window_bits (7.1.2.1)       offer    settings | response  compressor
    #                                         absent   15       | absent    15
    #                                         absent   S < 15   | =S        S
    #                                         =v, 9+   S        | =min(v,S) min(v, S)
    #                                         =8       any      | decline the offer (zlib)
    # "A server accepts an extension negotiation offer with this parameter by including the
    # "server_max_window_bits" extension parameter ... with the same or smaller value"
    if offer.smwb == 8:
        return None
    server_bits = min(offer.smwb or 15, s.server_max_window_bits)
    # client_max_window_bits (7.1.2.2)       offer    settings | response  inflater
    #                                         absent   15       | absent    15
    #                                         absent   C < 15   | decline the offer (budget)
    #                                         no value C        | =C, absent when 15
    #                                         =v       C        | =min(v,C), absent when 15
    # "If a received extension negotiation offer doesn't have the "client_max_window_bits"
    # extension parameter, the corresponding ... response ... MUST NOT include" it.
    if not offer.cmwb_sent and s.client_max_window_bits < 15:
        return None
    client_bits = min(offer.cmwb or 15, s.client_max_window_bits)
    header = _header(
        snct, cnct, server_bits if offer.smwb or server_bits < 15 else None,
        client_bits if client_bits < 15 else None,
    )  # fmt: skip
    codec = PerMessageDeflate(
        local_no_context_takeover=snct, remote_no_context_takeover=cnct,
        local_max_window_bits=server_bits, remote_max_window_bits=client_bits,
        mem_level=s.mem_level, compress_level=s.compress_level,
        threshold=s.compress_threshold, is_server=True,
    )  # fmt: skip
    return header, codec


def client_offer(settings: DeflateSettings) -> str:
    """Client side: the ``Sec-WebSocket-Extensions`` offer for ``settings``.

    ``client_max_window_bits`` is always sent (without a value at 15) so the server may
    lower our window; ``server_max_window_bits`` only below 15.
    """
    s = settings
    server_bits = s.server_max_window_bits if s.server_max_window_bits < 15 else None
    client_bits = s.client_max_window_bits if s.client_max_window_bits < 15 else True
    return _header(
        s.server_no_context_takeover, s.client_no_context_takeover, server_bits, client_bits
    )


def accept_response(header_value: str, settings: DeflateSettings) -> PerMessageDeflate:
    """Client side: check the server's answer to ``client_offer(settings)``; return the codec.

    Raises:
        InvalidHandshakeResponse: anything the offer did not allow (§7: the client "MUST
            _Fail the WebSocket Connection_").
    """
    try:
        answer = parse_extensions(header_value)
    except ValueError as exc:
        raise InvalidHandshakeResponse(str(exc)) from None
    parsed = _parse_params(answer[0][1]) if len(answer) == 1 and answer[0][0] == NAME else None
    if parsed is None:
        raise InvalidHandshakeResponse(f"Extensions not offered or invalid: {header_value!r}")
    s = settings
    # response holds            we offered            verdict
    # server_no_context_takeover  anything              our inflater resets per message
    # nothing of it               it (7.1.1.1)          fail: accepting means including it
    # server_max_window_bits=v    nothing, or =S, v<=S  our inflater uses v (8 is fine)
    # nothing, or =v > S          =S < 15 (7.1.2.1)     fail: "the same or smaller value"
    # client_max_window_bits=v    it (always)           we compress with min(v, C); 8 -> 9
    # client_max_window_bits      it                    fail: a response carries a value
    # client_no_context_takeover  anything              our compressor resets per message
    offered_bits = s.server_max_window_bits if s.server_max_window_bits < 15 else None
    if (
        (s.server_no_context_takeover and not parsed.snct)
        or (offered_bits and (parsed.smwb or 15) > offered_bits)
        or (parsed.cmwb_sent and parsed.cmwb is None)
    ):
        raise InvalidHandshakeResponse(f"Response not allowed by the offer: {header_value!r}")
    return PerMessageDeflate(
        local_no_context_takeover=parsed.cnct or s.client_no_context_takeover,
        remote_no_context_takeover=parsed.snct,
        local_max_window_bits=min(parsed.cmwb or 15, s.client_max_window_bits),
        remote_max_window_bits=parsed.smwb or 15,
        mem_level=s.mem_level, compress_level=s.compress_level,
        threshold=s.compress_threshold, is_server=False,
    )  # fmt: skip
