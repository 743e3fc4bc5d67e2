"""gunicorn integration: ``gunicorn -k wsflask.gunicorn.GeventWorker module:app``.

gunicorn's gevent pywsgi worker (it monkey-patches each worker itself) with wsflask's
``WebSocketHandler`` and ``WSGIServer``, so SIGTERM sends 1001 to every WebSocket within
``--graceful-timeout``; each worker runs the apps' startup hooks when its server starts and
the shutdown hooks after its drain. Only this module imports gunicorn.
"""

from __future__ import annotations

from .lifespan import hosted
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

    def run(self) -> None:
        """gunicorn's loop (its ``WSGIServer.start`` runs the apps' startup hooks); when it
        returns after the drain, stop the background tasks and run the shutdown hooks."""
        try:
            super().run()
        finally:
            for lifespan in hosted():
                lifespan.notify_stopped()
