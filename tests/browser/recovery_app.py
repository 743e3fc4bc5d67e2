"""The server tests/browser/recovery.mjs talks to (run by tests/test_browser_recovery.py).

``/`` serves ``recovery.html`` (the page under test). ``/r/<room>`` joins ``room``: rooms
``whole:*`` are recoverable with the defaults, ``tiny:*`` keep only 3 publications (so a
long outage is unrecoverable). ``/control`` is the driver's remote: ``publish``
``{room, first, count, interval, skip, cut}`` starts a greenlet emitting the numbers
``first..first+count-1`` as ``n`` events to ``room``, ``interval`` seconds apart. A number
in ``skip`` is numbered and kept but its live copy is lost (delivered to nobody, as a
``drop`` policy would lose it); right after a number in ``cut`` it cuts the TCP
connection of every member of the room without a Close frame (SO_LINGER 0, shutdown; once
the room has a member again), so the publications that follow while the page reconnects are
missed for sure. ``cuts``
``{room}`` answers how many members each cut reached.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import struct  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from wsflask import App, Config, HTTPResponse, Request, WebSocket  # noqa: E402
from wsflask.history import MemoryHistory  # noqa: E402

PAGE = Path(__file__).resolve().parent / "recovery.html"

app = App()
app.rooms.recoverable("whole:*")
app.rooms.recoverable("tiny:*", history_size=3)


@app.get("/")
def page(request: Request) -> HTTPResponse:
    return HTTPResponse(200, PAGE.read_bytes(), content_type="text/html; charset=utf-8")


member = app.route("/r/<room>", json=True)


@member.on("connect")
def joined(ws: WebSocket, room: str) -> None:
    app.rooms.join(room, ws)


control = app.route("/control", json=True)


#: room -> how many members each cut reached
cuts: dict[str, list[int]] = {}


def cut(room: str) -> None:
    with gevent.Timeout(10, False):  # a page still reconnecting from the last cut: wait
        while not app.rooms.members(room):
            gevent.sleep(0.005)
    members = app.rooms.members(room)
    for victim in members:  # what a dead network looks like: no Close frame, TCP gone
        raw = getattr(victim.transport, "_sock", victim.transport)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.shutdown(socket.SHUT_RDWR)
    cuts.setdefault(room, []).append(len(members))


def stream(room: str, numbers: range, interval: float, skip: set[int], cut_at: set[int]) -> None:
    for n in numbers:
        if n in skip:
            lose_live_copy(room, n)
        else:
            app.emit("n", n, to=room)
        if n in cut_at:
            cut(room)
        gevent.sleep(interval)


def lose_live_copy(room: str, n: int) -> None:
    """Emit ``n`` numbered and kept but delivered to nobody, as a ``drop`` policy would lose
    it (``skip=`` would not do: the member left out gets a ``_skipped`` position)."""
    recovery = app.rooms.recovery
    history = None if recovery is None else recovery.history
    assert isinstance(history, MemoryHistory)
    live = history.on_live
    history.on_live = lambda *args: None
    try:
        app.emit("n", n, to=room)
    finally:
        history.on_live = live


@control.on("publish")
def publish(ws: WebSocket, data: Any) -> bool:
    first, count = int(data["first"]), int(data["count"])
    numbers = range(first, first + count)
    marks = (set(data.get("skip", [])), set(data.get("cut", [])))
    gevent.spawn(stream, data["room"], numbers, float(data["interval"]), *marks)
    return True


@control.on("cuts")
def cuts_of(ws: WebSocket, data: Any) -> list[int]:
    return cuts.get(data["room"], [])


if __name__ == "__main__":
    from wsflask.logs import setup

    setup("text", "INFO")
    app.configure(app.config.replace(**Config.env_overrides()))
    app.run()
