"""The chat example: rooms with nicknames, a live dashboard, echo, metrics and health checks.

Run it with ``make run``, ``python examples/chat.py`` or ``wsflask run examples.chat:app``,
then open http://127.0.0.1:8080/ in two tabs.

Plain HTTP (``@app.get``): ``/`` the chat page, ``/dashboard`` live charts, ``/static/<file>``
their CSS/JS/SVG (all served by the app, no CDN); ``/metrics``, ``/healthz`` and ``/readyz``
are built into ``App``. Unknown paths get 404, a plain GET on a WebSocket route 426.

WebSocket routes:

* ``/chat/<room>?nick=NAME`` speaks JSON envelopes ``{"event": ..., "data": ..., "id": ...}``
  (the page uses the JavaScript client the app serves at ``/wsflask.js``). Client to server:
  ``say {"text"}``, ``nick {"nick"}``, ``ping <any>``, ``count``, ``members {"offset"}``; with
  an ``"id"`` the server answers ``{"event": "ack", "data": result, "id": id}``. Server to
  client: ``welcome {"id", "nick", "room", "count", "members", "history", "rooms"}`` (members:
  the first ``MEMBER_PAGE``), ``joined``/``left {"id", "nick", "count"}`` in small rooms,
  ``count {"count"}`` in big ones (see ``announce``), ``said {"id", "nick", "text", "ts"}``,
  ``renamed {"id", "old", "nick"}``. Counts and member lists are cluster-wide with a backplane.
* ``/dashboard/feed``: ``snapshot`` envelopes, one per second, from ONE greenlet for every
  viewer (``Feed``); ``ping`` answers with an ack so the page can time its own round trip.
* ``/echo``: every message back to its sender.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: patch first. `wsflask run` patches for us, and
    from gevent import monkey  # the tests import this module without patching pytest.

    monkey.patch_all()

import re
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gevent

from wsflask import App, Config, HTTPResponse, Reject, Request, WebSocket

#: heartbeat pings every 5 s, so the dashboard's RTT chart fills up quickly
app = App(ping_interval=5.0)

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: same-origin everything: the pages load nothing from elsewhere and talk only to this server
PAGE_HEADERS = (
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:"),
)
HISTORY = 50  # messages kept per active room, replayed on (re)join
MAX_TEXT = 2000
ROOM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
DASHBOARD = "dashboard"  # the rooms index holds chat rooms as "chat:<name>" next to this one

SMALL_ROOM = 20  # up to this many members, joins and leaves are announced by name
MEMBER_PAGE = 50  # members in the welcome and in each `members` page

_history: dict[str, deque[dict[str, Any]]] = {}
_nicks: dict[str, str] = {}  # connection id -> nickname, this node's chat connections
_announced: dict[str, int] = {}  # room -> the count its members heard last


# -- pages ------------------------------------------------------------------------------------


def asset(name: str) -> HTTPResponse:
    """The file ``static/<name>`` with its content type; 404 for anything else."""
    path = STATIC / name
    kind = CONTENT_TYPES.get(path.suffix)
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        raise Reject(404, f"no such file: {name}")
    return HTTPResponse(200, path.read_bytes(), content_type=kind, headers=PAGE_HEADERS)


@app.get("/")
def chat_page(request: Request) -> HTTPResponse:
    return asset("chat.html")


@app.get("/dashboard")
def dashboard_page(request: Request) -> HTTPResponse:
    return asset("dashboard.html")


@app.get("/static/<name>")
def static(request: Request, name: str) -> HTTPResponse:
    return asset(name)


@app.get("/favicon.ico")
def favicon(request: Request) -> HTTPResponse:
    return asset("favicon.svg")


# -- chat -------------------------------------------------------------------------------------

chat = app.route("/chat/<room>", json=True)


def clean_nick(raw: Any, fallback: str) -> str:
    """A nickname: whitespace collapsed, at most 24 characters, else ``fallback``."""
    nick = " ".join(str(raw or "").split())[:24]
    return nick or fallback


def room_count(room: str) -> int:
    """Members of chat room ``room`` on every node (this node's alone if Redis is down)."""
    try:
        return app.rooms.count(f"chat:{room}", cluster=True)
    except ConnectionError:  # BackplaneDown: Redis is unreachable
        return app.rooms.count(f"chat:{room}")


def member_page(room: str, offset: int = 0) -> list[dict[str, Any]]:
    """At most ``MEMBER_PAGE`` members from ``offset``: ``{"id", "nick"}``, this node's first;
    a member on another node has ``"nick": None`` (nicknames live on their own node)."""
    try:
        ids = app.rooms.member_ids(f"chat:{room}", cluster=True)
    except ConnectionError:  # BackplaneDown
        ids = app.rooms.member_ids(f"chat:{room}")
    return [{"id": id, "nick": _nicks.get(id)} for id in ids[offset : offset + MEMBER_PAGE]]


def active_rooms() -> list[dict[str, Any]]:
    """This node's chat rooms with people in them, busiest first (at most 20)."""
    rooms = [
        (name[5:], app.rooms.count(name)) for name in app.rooms.rooms() if name.startswith("chat:")
    ]
    rooms.sort(key=lambda item: (-item[1], item[0]))
    return [{"name": name, "members": count} for name, count in rooms[:20]]


def announce(room: str, event: str, ws: WebSocket, count: int) -> None:
    """Tell the room that ``ws`` joined or left, at O(1) frames per member per change.

    A small room (at most ``SMALL_ROOM``) hears ``joined``/``left`` with the nickname. A big
    one hears only ``count``, and only when the count has doubled or halved since the last
    one it heard: N joins then cost O(N) frames in all, not O(N²). Pages ask for the exact
    count themselves (``count`` every few seconds).
    """
    if count <= SMALL_ROOM:
        _announced[room] = count
        data = {"id": ws.id, "nick": ws.session.get("nick", "?"), "count": count}
        app.emit(event, data, to=f"chat:{room}", skip=ws)
        return
    last = _announced.get(room, 0)
    if count >= 2 * last or 2 * count <= last:
        _announced[room] = count
        app.emit("count", {"count": count}, to=f"chat:{room}", skip=ws)


@chat.on("connect")
def joined(ws: WebSocket, room: str) -> bool:
    """Name the connection, greet it with the room's state, tell the room."""
    if not ROOM_NAME.match(room):
        return False  # closes with 1008: room names are 1-32 of A-Z a-z 0-9 _ -
    query = parse_qs(ws.request.query if ws.request else "")
    nick = clean_nick(query.get("nick", [""])[0], f"guest-{ws.id[-6:]}")
    ws.session["nick"] = _nicks[ws.id] = nick
    app.rooms.join(f"chat:{room}", ws)
    count = room_count(room)
    welcome = {
        "id": ws.id,
        "nick": nick,
        "room": room,
        "count": count,
        "members": member_page(room),  # the first page; `members` {"offset"} pages on
        "history": list(_history.get(room, ())),
        "rooms": active_rooms(),
    }
    app.emit("welcome", welcome, to=ws.id)  # every connection has a personal room: its id
    announce(room, "joined", ws, count)
    return True


@chat.on("say")
def said(ws: WebSocket, data: Any, room: str) -> dict[str, Any]:
    """Broadcast a message to the room (the sender included: one order for everyone)."""
    text = str(data.get("text", "") if isinstance(data, dict) else data or "").strip()
    if not text:
        return {"ok": False, "error": "empty message"}
    if len(text) > MAX_TEXT:
        return {"ok": False, "error": f"messages are limited to {MAX_TEXT} characters"}
    message = {"id": ws.id, "nick": ws.session["nick"], "text": text, "ts": int(time.time() * 1000)}
    _history.setdefault(room, deque(maxlen=HISTORY)).append(message)
    app.emit("said", message, to=f"chat:{room}")
    return {"ok": True}


@chat.on("nick")
def renamed(ws: WebSocket, data: Any, room: str) -> dict[str, Any]:
    """Change the nickname and tell the room."""
    old = ws.session["nick"]
    new = clean_nick(data.get("nick") if isinstance(data, dict) else data, old)
    ws.session["nick"] = _nicks[ws.id] = new
    if new != old:
        app.emit("renamed", {"id": ws.id, "old": old, "nick": new}, to=f"chat:{room}")
    return {"ok": True, "nick": new}


@chat.on("count")
def counted(ws: WebSocket, data: Any, room: str) -> dict[str, int]:
    """The room's member count, cluster-wide (pages poll it: big rooms push few updates)."""
    return {"count": room_count(room)}


@chat.on("members")
def member_list(ws: WebSocket, data: Any, room: str) -> dict[str, Any]:
    """One page of members from ``{"offset": n}`` (bounded: ``MEMBER_PAGE``)."""
    offset = data.get("offset", 0) if isinstance(data, dict) else 0
    offset = offset if isinstance(offset, int) and offset >= 0 else 0
    return {"offset": offset, "members": member_page(room, offset), "count": room_count(room)}


@chat.on("ping")
def chat_ping(ws: WebSocket, data: Any, room: str) -> Any:
    return data  # the ack carries it back: the page times its own round trip


@chat.on("disconnect")
def left(ws: WebSocket, room: str) -> None:
    """Tell the room (the connection already left it); forget an emptied room's state."""
    _nicks.pop(ws.id, None)
    if not app.rooms.count(f"chat:{room}"):
        _history.pop(room, None)
    count = room_count(room)
    if count:
        announce(room, "left", ws, count)
    else:
        _announced.pop(room, None)


# -- echo -------------------------------------------------------------------------------------


@app.route("/echo")
def echo(ws: WebSocket) -> None:
    """Every message back to its sender."""
    for message in ws:
        ws.send(message)


# -- dashboard --------------------------------------------------------------------------------


class Feed:
    """ONE greenlet pushes a metrics snapshot to every dashboard viewer each ``interval`` s.

    It starts with the first viewer (``ensure_running()``) and ends when the last one leaves,
    so an idle server runs no timer for it.
    """

    def __init__(self, app: App, interval: float = 1.0) -> None:
        self.app = app
        self.interval = interval
        self.started = time.monotonic()
        self.greenlet: gevent.Greenlet | None = None
        self._last: tuple[float, int, int] | None = None

    def ensure_running(self) -> None:
        if self.greenlet is None or self.greenlet.dead:
            self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while self.app.rooms.count(DASHBOARD):
            self.app.emit("snapshot", self.snapshot(), to=DASHBOARD)
            gevent.sleep(self.interval)
        self.greenlet = None

    def snapshot(self) -> dict[str, Any]:
        """Counters now, per-second rates since the last snapshot, heartbeat RTTs."""
        metrics, now = self.app.metrics, time.monotonic()
        received, sent = metrics.messages_in, metrics.messages_out
        last, self._last = self._last, (now, received, sent)
        elapsed = now - last[0] if last else 0.0
        rate_in = (received - last[1]) / elapsed if last and elapsed > 0 else 0.0
        rate_out = (sent - last[2]) / elapsed if last and elapsed > 0 else 0.0
        rtts = [ws.latency * 1000 for ws in self.app.rooms.connections() if ws.latency is not None]
        return {
            "ts": int(time.time() * 1000),
            "uptime_s": round(now - self.started, 1),
            "connections": metrics.connections_current,
            "connections_total": metrics.connections_total,
            "messages_in": received,
            "messages_out": sent,
            "in_per_s": round(rate_in, 2),
            "out_per_s": round(rate_out, 2),
            "rtt_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
            "rtt_max_ms": round(max(rtts), 3) if rtts else None,
            "rooms": active_rooms(),
        }


feed = Feed(app)
dashboard_feed = app.route("/dashboard/feed", json=True)


@dashboard_feed.on("connect")
def viewer(ws: WebSocket) -> None:
    app.rooms.join(DASHBOARD, ws)
    feed.ensure_running()


@dashboard_feed.on("ping")
def feed_ping(ws: WebSocket, data: Any) -> Any:
    return data


if __name__ == "__main__":
    from wsflask.logs import setup

    setup("text", "INFO")  # readable logs, one line per connection (as `wsflask run` does)
    app.configure(app.config.replace(**Config.env_overrides()))  # WSFLASK_PORT=9000 and co.
    app.run()  # 127.0.0.1:8080 unless WSFLASK_HOST/WSFLASK_PORT say otherwise
