"""Plain-HTTP pages next to the WebSocket routes: ``@app.get`` pages and the built-ins.

``Pages`` answers a GET (or HEAD) with the first matching page: the app's own, then
``/metrics`` (Prometheus text), ``/healthz``, ``/readyz`` and the JavaScript client
``/wsflask.js`` with its types ``/wsflask.d.ts`` (``ETag``; ``304`` to a matching
``If-None-Match``). A page handler returns ``str``
(HTML), ``bytes`` or an ``HTTPResponse``; a crash is a 500 without detail. No socket I/O
here: the server writes the ``HTTPResponse``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from .errors import HandshakeError, MethodNotAllowed, Reject
from .metrics import Metrics
from .protocol import Request
from .routing import PathPattern
from .upgrade import HTTPResponse

__all__ = ["Pages", "as_response"]

logger = logging.getLogger("wsflask.app")

#: ``not_ready()``: why the node is not ready, or None when it is
Readiness = Callable[[], str | None]


class Pages:
    """The plain-HTTP pages of one app.

    Args:
        metrics: rendered at ``GET /metrics``.
        not_ready: ``GET /readyz`` answers 200 when it returns None, else 503 with its text.
    """

    def __init__(self, metrics: Metrics, not_ready: Readiness) -> None:
        self.metrics = metrics
        self.not_ready = not_ready
        #: what ``GET /metrics`` serves (a pre-forked worker swaps in the sum over workers)
        self.render_metrics: Callable[[], str] = metrics.render
        self._pages: list[tuple[PathPattern, Callable[..., Any]]] = []
        #: the built-ins; pages registered with ``add()`` take precedence
        self._builtins: list[tuple[PathPattern, Callable[..., Any]]] = [
            (PathPattern("/metrics"), self._metrics_page),
            (PathPattern("/healthz"), _health_page),
            (PathPattern("/readyz"), self._ready_page),
            (PathPattern("/wsflask.js"), _client_page),
            (PathPattern("/wsflask.d.ts"), _client_page),
        ]

    def add(self, path: str, func: Callable[..., Any]) -> None:
        """Serve ``func(request, **path_params)`` at ``path``."""
        self._pages.append((PathPattern(path), func))

    def answer(self, request: Request, path: str) -> HTTPResponse | None:
        """The response of the page at ``path`` (``routing.canonical_path(request.path)``).

        None when no page matches.

        Raises:
            MethodNotAllowed: the page exists but the method is not GET or HEAD.
            Reject: 500 when the page handler raised (logged; no detail in the body).
        """
        for pattern, func in [*self._pages, *self._builtins]:
            params = pattern.match(path)
            if params is None:
                continue
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{request.method} not allowed")
            try:
                return as_response(func(request, **params))
            except HandshakeError:
                raise
            except Exception as exc:
                logger.exception("page %s failed", pattern.path)
                raise Reject(500, "internal error") from exc
        return None

    def _metrics_page(self, request: Request) -> HTTPResponse:
        return HTTPResponse(
            200,
            self.render_metrics().encode(),
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )

    def _ready_page(self, request: Request) -> HTTPResponse:
        reason = self.not_ready()
        if reason is None:
            return HTTPResponse(200, b"ready")
        return HTTPResponse(503, reason.encode())


def _health_page(request: Request) -> HTTPResponse:
    return HTTPResponse(200, b"ok")


#: the JavaScript client's files (shipped in the wheel as package data) and their types
STATIC = Path(__file__).resolve().parent / "static"
_CLIENT_TYPES = {
    "/wsflask.js": "text/javascript; charset=utf-8",
    "/wsflask.d.ts": "application/typescript; charset=utf-8",
}


@cache
def _client_file(path: str) -> tuple[bytes, str]:
    """The file's bytes and its strong ETag (read once per process)."""
    body = (STATIC / path.lstrip("/")).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def _client_page(request: Request) -> HTTPResponse:
    """``/wsflask.js`` or ``/wsflask.d.ts``: revalidated by ETag on every use (``no-cache``),
    so a new wsflask release reaches the browser without a versioned URL."""
    path = "/wsflask.d.ts" if request.path.endswith(".d.ts") else "/wsflask.js"
    body, etag = _client_file(path)
    headers = (
        ("ETag", etag),
        ("Cache-Control", "no-cache"),
        ("X-Content-Type-Options", "nosniff"),
    )
    if _matches(request.header("if-none-match"), etag):
        return HTTPResponse(304, b"", headers=headers)  # RFC 9110 §13.1.2
    return HTTPResponse(200, body, content_type=_CLIENT_TYPES[path], headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """True when the ``If-None-Match`` list names ``etag`` (weak comparison) or is ``*``."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def as_response(value: Any) -> HTTPResponse:
    """A page handler's return value as an ``HTTPResponse`` (str: HTML, bytes: octets)."""
    if isinstance(value, HTTPResponse):
        return value
    if isinstance(value, str):
        return HTTPResponse(200, value.encode(), content_type="text/html; charset=utf-8")
    if isinstance(value, bytes):
        return HTTPResponse(200, value, content_type="application/octet-stream")
    raise TypeError(
        f"a page handler must return str, bytes or HTTPResponse, not {type(value).__name__}"
    )
