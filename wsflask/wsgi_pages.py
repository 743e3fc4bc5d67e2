"""An App's plain pages as a WSGI app: ``@app.get`` pages, ``/metrics``, ``/healthz``, ``/readyz``.

``pages_app(app, fallback)`` answers what ``app.pages`` answers on ``Server`` and hands every
other request to ``fallback`` (a Flask ``wsgi_app``; 404 without one). ``/readyz`` reports
the pywsgi ``WSGIServer`` that serves it (503 once it drains) and the backplane. No routing
of WebSockets here (``wsgi.py``), no HTTP parsing (the WSGI server's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from .errors import HandshakeError
from .protocol import Request
from .routing import canonical_path
from .upgrade import HTTPResponse

if TYPE_CHECKING:
    from .pages import Pages

__all__ = ["PagesApp", "PagesOwner", "pages_app"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Bus(Protocol):
    """The backplane as ``/readyz`` sees it."""

    @property
    def ready(self) -> bool: ...


class PagesOwner(Protocol):
    """What ``pages_app`` needs from a wsflask ``App``."""

    @property
    def pages(self) -> Pages: ...
    @property
    def cluster(self) -> Bus | None: ...


class PagesApp:
    """The WSGI app ``pages_app()`` returns.

    Args:
        app: the wsflask App whose pages (and metrics) are served.
        fallback: the WSGI app for every other path (404 when None).
    """

    def __init__(self, app: PagesOwner, fallback: WSGIApp | None = None) -> None:
        self.app = app
        self.fallback = fallback

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = _request(environ)
        path = canonical_path(request.path)
        try:
            if path == "/readyz":
                response: HTTPResponse | None = self._ready(environ)
            else:
                response = None if path is None else self.app.pages.answer(request, path)
        except HandshakeError as exc:  # 405 for other methods, 500 when a page failed
            response = HTTPResponse(exc.status, f"{exc}\n".encode(), headers=exc.headers)
        if response is None:
            if self.fallback is not None:
                return self.fallback(environ, start_response)
            response = HTTPResponse(404, b"not found\n")
        return _send(response, environ, start_response)

    def _ready(self, environ: dict[str, Any]) -> HTTPResponse:
        """200 while the serving ``WSGIServer`` accepts and the backplane (if any) is up."""
        server = environ.get("wsflask.server")
        if server is None or getattr(server, "stopping", False) or not server.started:
            return HTTPResponse(503, b"not ready")
        cluster = self.app.cluster
        if cluster is not None and not cluster.ready:
            return HTTPResponse(503, b"not ready: backplane down")
        return HTTPResponse(200, b"ready")


def pages_app(app: PagesOwner, fallback: WSGIApp | None = None) -> PagesApp:
    """``app``'s pages as a WSGI app in front of ``fallback``; with Flask::

    flask_app.wsgi_app = app.wsgi_middleware(pages_app(app, flask_app.wsgi_app))

    ``/readyz`` needs ``wsflask.wsgi.WebSocketHandler`` (``WSGIServer``'s, ``GeventWorker``'s)
    to know the server; under another handler it answers 503.
    """
    return PagesApp(app, fallback)


def _request(environ: dict[str, Any]) -> Request:
    """The ``Request`` a page handler gets (no WebSocket key: a plain request)."""
    path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    with contextlib.suppress(UnicodeEncodeError):  # not a PEP 3333 value: keep it as is
        path = quote(path.encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
    query = str(environ.get("QUERY_STRING", ""))
    headers = tuple(
        (key[5:].replace("_", "-").lower(), str(value).strip())
        for key, value in environ.items()
        if key.startswith("HTTP_")
    )
    return Request(
        method=str(environ.get("REQUEST_METHOD", "GET")),
        target=f"{path}?{query}" if query else path,
        path=path,
        query=query,
        headers=headers,
        key="",
    )


def _send(
    response: HTTPResponse, environ: dict[str, Any], start_response: Callable[..., Any]
) -> list[bytes]:
    status = response.status
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ],
    )
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [response.body]
