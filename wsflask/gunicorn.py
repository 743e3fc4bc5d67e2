"""gunicorn integration: ``gunicorn -k wsflask.gunicorn.GeventWorker module:app``.

gunicorn's gevent pywsgi worker (it monkey-patches each worker itself) with wsflask's
``WebSocketHandler`` and ``WSGIServer``, so SIGTERM sends 1001 to every WebSocket within
``--graceful-timeout``. Only this module imports gunicorn.
"""

from __future__ import annotations

from .wsgi import WebSocketHandler, WSGIServer

try:
    from gunicorn.workers import ggevent  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - gunicorn is a dev dependency
    raise ImportError("wsflask.gunicorn needs gunicorn: pip install gunicorn") from exc

__all__ = ["GeventWorker", "GunicornHandler"]


class GunicornHandler(WebSocketHandler, ggevent.PyWSGIHandler):  # type: ignore[misc]
    """gunicorn's access log and environ, with WebSocket upgrades."""


class GeventWorker(ggevent.GeventPyWSGIWorker):  # type: ignore[misc]
    """gunicorn's gevent pywsgi worker; SIGTERM closes the server, so every WebSocket gets
    1001 and the worker exits within ``--graceful-timeout``."""

    server_class = WSGIServer
    wsgi_handler = GunicornHandler
