"""A small typed user app: what a downstream project writes, checked with ``mypy --strict``.

tests/test_typing.py type-checks this file against the INSTALLED wheel (so ``py.typed`` and the
public annotations are what is tested, not the source tree). It is never run by pytest; it
uses only the public API: ``from wsflask import ...``.
"""

from __future__ import annotations

from typing import Any

from wsflask import (
    App,
    BroadcastResult,
    HTTPResponse,
    Reject,
    Request,
    TestClient,
    WebSocket,
)

app = App(ping_interval=5.0)
chat = app.route("/chat/<room>", json=True)


@app.before_upgrade
def authenticate(request: Request) -> dict[str, Any] | None:
    """Refuse anonymous upgrades; the returned dict becomes ``ws.session``."""
    token = request.header("authorization") or ""
    if not token.startswith("Bearer "):
        raise Reject(401, "a bearer token is required")
    return {"user": token.removeprefix("Bearer ")}


@chat.on("connect")
def joined(ws: WebSocket, room: str) -> bool:
    app.rooms.join(room, ws)
    result: BroadcastResult = app.emit("joined", {"user": ws.session["user"]}, to=room, skip=ws)
    return result.sent >= 0


@chat.on("say")
def said(ws: WebSocket, data: dict[str, Any], room: str) -> dict[str, bool]:
    text = str(data.get("text", ""))
    app.rooms.broadcast(room, text, exclude=ws)
    app.emit("said", {"text": text}, to=room)
    return {"ok": bool(text)}


@chat.on("disconnect")
def left(ws: WebSocket, room: str) -> None:
    app.rooms.leave(room, ws)


@app.route("/echo")
def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)
    code: int | None = ws.close_code
    assert code is None or code >= 1000


@app.errorhandler(ValueError)
def bad_value(ws: WebSocket, exc: ValueError) -> None:
    ws.send(f"bad value: {exc}")


@app.get("/")
def index(request: Request) -> HTTPResponse:
    return HTTPResponse(200, f"<p>{request.path}</p>".encode(), content_type="text/html")


def smoke_test() -> None:
    """What a user's own test does with the test client."""
    client: TestClient
    with app.test_client() as client:
        ws = client.connect("/echo", headers=[("Authorization", "Bearer alice")])
        ws.send("hello")
        answer: str | bytes | None = client.receive(ws)
        assert answer == "hello"
        ws.close()
        assert client.get("/").status == 200
