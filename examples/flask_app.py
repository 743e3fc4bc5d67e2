"""Flask and wsflask on one port: Flask serves the pages, wsflask the WebSocket they open.

Run it with either::

    python examples/flask_app.py [PORT]              # gevent.pywsgi on 127.0.0.1:8080
    gunicorn -k wsflask.gunicorn.GeventWorker -b 127.0.0.1:8080 examples.flask_app:flask_app

then open http://127.0.0.1:8080/, log in with any name, and chat (two tabs, two names).
Set ``FLASK_SECRET_KEY`` when running more than one process (gunicorn ``-w 2``): each would
otherwise sign sessions with its own random key. SIGTERM or Ctrl-C drains: every WebSocket
gets 1001, then the process exits 0.

How the pieces fit:

* Flask owns ``/``, ``/login`` and ``/logout``; its (signed) session cookie says who you are.
* wsflask owns the WebSocket route ``/ws/chat`` (a plain GET there gets 426) and, through
  ``pages_app``, ``/metrics``, ``/healthz`` and ``/readyz``. ``flask_app.wsgi_app`` is
  wrapped in both, so the pywsgi handler (``wsflask.wsgi.WSGIServer`` uses
  ``WebSocketHandler``) or gunicorn's ``GeventWorker`` hands upgrades for ``/ws/chat`` to
  wsflask and everything else to Flask. Without the middleware, ``WSGIServer(addr,
  pages_app(ws_app, flask_app), handler_class=ws_app.handler_class)`` does the same.
* ``before_upgrade`` decodes Flask's session cookie with Flask's own session serializer
  (itsdangerous, the app's secret key): no session, no WebSocket (401).
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: patch first (gunicorn's worker patches itself,
    from gevent import monkey  # and the tests import this module without patching pytest)

    monkey.patch_all()

import html
import json
import os
import secrets
from http.cookies import CookieError, SimpleCookie
from typing import Any

from flask import Flask, redirect, request, session
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature
from werkzeug.wrappers import Response

from wsflask import App, Reject, Request, WebSocket
from wsflask.wsgi import pages_app

flask_app = Flask(__name__)
flask_app.secret_key = os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32)

ws_app = App()
ROOM = "lobby"

PAGE = """<!doctype html>
<meta charset="utf-8"><title>Flask + wsflask</title>
<p>Logged in as <b>{user}</b> (<a href="/logout">log out</a>)</p>
<ul id="log"></ul>
<form id="say"><input id="text" autocomplete="off" autofocus><button>Send</button></form>
<script>
const log = document.getElementById("log");
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/ws/chat");
ws.onmessage = (event) => {{
  const item = document.createElement("li");
  const message = JSON.parse(event.data);
  item.textContent = message.user + ": " + message.text;
  log.appendChild(item);
}};
ws.onclose = (event) => {{
  const item = document.createElement("li");
  item.textContent = "(closed: " + event.code + ")";
  log.appendChild(item);
}};
document.getElementById("say").onsubmit = (event) => {{
  event.preventDefault();
  const text = document.getElementById("text");
  ws.send(text.value);
  text.value = "";
}};
</script>
"""

LOGIN = """<!doctype html>
<meta charset="utf-8"><title>Log in</title>
<form action="/login"><input name="name" placeholder="your name" autofocus>
<button>Log in</button></form>
"""


# -- Flask: pages and the session ---------------------------------------------------------------


@flask_app.route("/")
def index() -> str:
    user = session.get("user")
    if not user:
        return LOGIN
    return PAGE.format(user=html.escape(user))


@flask_app.route("/login")
def login() -> Response:
    name = " ".join(request.args.get("name", "").split())[:24]
    if name:
        session["user"] = name
    return redirect("/")


@flask_app.route("/logout")
def logout() -> Response:
    session.clear()
    return redirect("/")


# -- wsflask: the WebSocket, authenticated by Flask's session cookie -----------------------------


def flask_session(handshake: Request) -> dict[str, Any] | None:
    """Flask's session from the handshake's cookie, verified with the app's secret key."""
    cookie = SimpleCookie()
    try:
        cookie.load(handshake.header("cookie") or "")
    except CookieError:
        return None
    morsel = cookie.get(flask_app.config["SESSION_COOKIE_NAME"])
    interface = flask_app.session_interface
    if morsel is None or not isinstance(interface, SecureCookieSessionInterface):
        return None
    serializer = interface.get_signing_serializer(flask_app)
    if serializer is None:  # no secret key
        return None
    max_age = int(flask_app.permanent_session_lifetime.total_seconds())
    try:
        data = serializer.loads(morsel.value, max_age=max_age)
    except BadSignature:  # forged, tampered with, or expired
        return None
    return data if isinstance(data, dict) else None


@ws_app.before_upgrade
def require_login(handshake: Request) -> dict[str, Any]:
    """Refuse the upgrade (401) without a valid Flask session; else keep the user name."""
    data = flask_session(handshake)
    if not data or not data.get("user"):
        raise Reject(401, "log in first")
    return {"user": data["user"]}  # -> ws.session["user"]


chat = ws_app.route("/ws/chat", json=False)


@chat.on("connect")
def joined(ws: WebSocket) -> None:
    ws_app.rooms.join(ROOM, ws)


@chat.on("message")
def said(ws: WebSocket, text: str | bytes) -> None:
    if isinstance(text, str) and text.strip():
        message = {"user": ws.session["user"], "text": text.strip()[:2000]}
        ws_app.send(json.dumps(message), to=ROOM)


# upgrades to /ws/chat -> wsflask; /metrics, /healthz, /readyz -> wsflask; the rest -> Flask
flask_app.wsgi_app = ws_app.wsgi_middleware(  # type: ignore[method-assign]
    pages_app(ws_app, flask_app.wsgi_app)
)


def main(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or Ctrl-C, then drain (1001 to every client)."""
    from wsflask.wsgi import WSGIServer

    server = WSGIServer(("127.0.0.1", port), flask_app)
    server.start()
    server.install_signal_handlers()
    print(f"serving on http://127.0.0.1:{server.server_port}/ (WebSocket at /ws/chat)")
    server.serve_forever()
    print("stopped")


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
