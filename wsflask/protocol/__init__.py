"""wsflask.protocol: a sans-I/O RFC 6455 + RFC 7692 engine (README.md states the no-I/O rule).

``Connection`` is the state machine; ``encode_frame`` makes a frame once for many sockets,
``shared_frame`` a compressed one for connections without context takeover.
``DeflateSettings`` configures permessage-deflate (``deflate.py``). ``speedups_active()``
says whether masking and frame coding run in the optional compiled module (``speedups.py``).
"""

from __future__ import annotations

from .connection import Connection as Connection
from .connection import Limits as Limits
from .connection import Side as Side
from .connection import State as State
from .deflate import DeflateSettings as DeflateSettings
from .deflate import PerMessageDeflate as PerMessageDeflate
from .deflate import shared_frame as shared_frame
from .errors import VIOLATION_CODES as VIOLATION_CODES
from .errors import CompressionError as CompressionError
from .errors import Forbidden as Forbidden
from .errors import HandshakeError as HandshakeError
from .errors import HeadersTooLarge as HeadersTooLarge
from .errors import InvalidHandshakeResponse as InvalidHandshakeResponse
from .errors import InvalidPayloadData as InvalidPayloadData
from .errors import InvalidState as InvalidState
from .errors import MessageTooBig as MessageTooBig
from .errors import MethodNotAllowed as MethodNotAllowed
from .errors import NotFound as NotFound
from .errors import PolicyViolation as PolicyViolation
from .errors import ProtocolError as ProtocolError
from .errors import ServiceUnavailable as ServiceUnavailable
from .errors import TooManyRequests as TooManyRequests
from .errors import UpgradeRequired as UpgradeRequired
from .events import BinaryMessage as BinaryMessage
from .events import Closed as Closed
from .events import Event as Event
from .events import Opened as Opened
from .events import Ping as Ping
from .events import Pong as Pong
from .events import Request as Request
from .events import TextMessage as TextMessage
from .frames import CloseCode as CloseCode
from .frames import FrameInfo as FrameInfo
from .frames import Opcode as Opcode
from .frames import encode_frame as encode_frame
from .frames import frame_info as frame_info
from .frames import payload_length as payload_length
from .handshake import accept_key as accept_key
from .speedups import speedups_active as speedups_active

__all__ = [
    "VIOLATION_CODES",
    "BinaryMessage",
    "CloseCode",
    "Closed",
    "CompressionError",
    "Connection",
    "DeflateSettings",
    "Event",
    "Forbidden",
    "FrameInfo",
    "HandshakeError",
    "HeadersTooLarge",
    "InvalidHandshakeResponse",
    "InvalidPayloadData",
    "InvalidState",
    "Limits",
    "MessageTooBig",
    "MethodNotAllowed",
    "NotFound",
    "Opcode",
    "Opened",
    "PerMessageDeflate",
    "Ping",
    "PolicyViolation",
    "Pong",
    "ProtocolError",
    "Request",
    "ServiceUnavailable",
    "Side",
    "State",
    "TextMessage",
    "TooManyRequests",
    "UpgradeRequired",
    "accept_key",
    "encode_frame",
    "frame_info",
    "payload_length",
    "shared_frame",
    "speedups_active",
]
