"""wsflask: a gevent WebSocket microframework with decorator routing, on RFC 6455.

Importing wsflask has no side effects: it never monkey-patches (if your application wants
gevent's monkey-patching, its own first line does it) and never imports optional
integrations (``wsflask.locust``, ``wsflask.backplane.redis``). The public surface is this
list; tests/test_exports.py keeps ``__all__`` in sync with it.
"""

from __future__ import annotations

from .app import App as App
from .app import Route as Route
from .client import connect as connect
from .config import Config as Config
from .errors import ConfigError as ConfigError
from .errors import ConnectionClosed as ConnectionClosed
from .errors import HandshakeError as HandshakeError
from .errors import HandshakeRejected as HandshakeRejected
from .errors import Reject as Reject
from .errors import SetupError as SetupError
from .errors import WsflaskError as WsflaskError
from .protocol import CloseCode as CloseCode
from .protocol import Request as Request
from .rooms import BroadcastResult as BroadcastResult
from .rooms import Rooms as Rooms
from .server import Server as Server
from .testing import TestClient as TestClient
from .upgrade import HTTPResponse as HTTPResponse
from .upgrade import Upgrade as Upgrade
from .websocket import WebSocket as WebSocket

__version__ = "0.1.0"

__all__ = [
    "App",
    "BroadcastResult",
    "CloseCode",
    "Config",
    "ConfigError",
    "ConnectionClosed",
    "HTTPResponse",
    "HandshakeError",
    "HandshakeRejected",
    "Reject",
    "Request",
    "Rooms",
    "Route",
    "Server",
    "SetupError",
    "TestClient",
    "Upgrade",
    "WebSocket",
    "WsflaskError",
    "connect",
]
