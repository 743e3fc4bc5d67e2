"""The server tests/browser/js_client.mjs talks to (run by tests/test_js_client.py as a script).

``/events`` is a JSON event route (``add`` acks a sum, ``fail`` raises, ``shout`` emits
an event back, ``slow`` answers late, ``drop`` closes with 1001 without answering); ``/raw``
calls the client three times in the wire format with plain ``ws.send``/``ws.receive`` (not
``ws.call``) and sends the three replies back as a ``replies`` event; ``/refuse`` refuses
with 1008.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from wsflask import App, Config, WebSocket  # noqa: E402
from wsflask.envelopes import encode  # noqa: E402
from wsflask.protocol import CloseCode  # noqa: E402

app = App()
events = app.route("/events", json=True)


@events.on("add")
def add(ws: WebSocket, data: Any) -> Any:
    return data["a"] + data["b"]


@events.on("fail")
def fail(ws: WebSocket, data: Any) -> Any:
    raise ValueError("refused on purpose")


@events.on("shout")
def shout(ws: WebSocket, data: Any) -> None:
    app.emit("shouted", str(data).upper(), to=ws.id)


@events.on("slow")
def slow(ws: WebSocket, data: Any) -> Any:
    gevent.sleep(float(data))  # blocks this connection only: its call times out first
    return data


@events.on("drop")
def drop(ws: WebSocket, data: Any) -> None:
    ws.close(CloseCode.GOING_AWAY, "dropped on purpose")


@app.route("/raw")
def raw(ws: WebSocket) -> None:
    replies = []
    for call in (
        encode("ping", 1, "s1"),
        encode("nosuch", None, "s2"),
        encode("boom", None, "s3"),
    ):
        ws.send(call)
        reply = ws.receive()
        replies.append(json.loads(reply) if isinstance(reply, str) else None)
    ws.send(encode("replies", replies))
    for _ in ws:
        pass


refuse = app.route("/refuse", json=True)


@refuse.on("connect")
def refused(ws: WebSocket) -> bool:
    return False


if __name__ == "__main__":
    from wsflask.logs import setup

    setup("text", "INFO")
    app.configure(app.config.replace(**Config.env_overrides()))
    app.run()
