"""The error classifier: what an exception means for a connection (seed audit ER-03).

``classify(exc)`` maps it to a category (protocol, client, resource, network, internal), a
logging severity and the close code to send. Pure: it logs and closes nothing itself.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from .errors import ConnectionClosed
from .protocol import CloseCode, HandshakeError, ProtocolError

__all__ = ["Classified", "classify"]


@dataclass(frozen=True)
class Classified:
    """What an error means: ``category`` (protocol, resource, client, network, internal),
    ``severity`` (a logging level) and the close ``code`` to send."""

    category: str
    severity: int
    code: int


def classify(exc: BaseException) -> Classified:
    """Map ``exc`` to its category, severity and close code (ER-03)."""
    if isinstance(exc, ProtocolError):
        code = int(getattr(exc, "close_code", CloseCode.PROTOCOL_ERROR))
        return Classified("protocol", logging.WARNING, code)
    if isinstance(exc, HandshakeError):
        return Classified("client", logging.INFO, CloseCode.POLICY)
    if isinstance(exc, MemoryError):
        return Classified("resource", logging.CRITICAL, CloseCode.TRY_AGAIN_LATER)
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        return Classified("resource", logging.ERROR, CloseCode.TRY_AGAIN_LATER)
    if isinstance(exc, ConnectionClosed | ConnectionError | TimeoutError):
        return Classified("network", logging.INFO, CloseCode.ABNORMAL)
    if isinstance(exc, OSError):
        return Classified("network", logging.WARNING, CloseCode.ABNORMAL)
    return Classified("internal", logging.ERROR, CloseCode.INTERNAL_ERROR)


_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
