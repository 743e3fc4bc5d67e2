"""The examples: each app imported (no monkey-patching) and driven through ``app.test_client()``,
and each script run as ``python examples/<name>.py`` once."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from helpers import wait_until

from wsflask import connect
from wsflask.testing import TestClient

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `import examples.chat` from the repository root
    sys.path.insert(0, str(ROOT))

from examples import broadcast, chat, echo  # noqa: E402

TIMEOUT = 10.0


@pytest.fixture
def chat_client() -> Iterator[TestClient]:
    with chat.app.test_client(timeout=TIMEOUT) as client:
        yield client


def events(client: TestClient, ws: Any, count: int) -> list[dict[str, Any]]:
    return [client.receive_json(ws) for _ in range(count)]


# -- echo and broadcast -------------------------------------------------------------------------


def test_echo_sends_text_and_binary_back() -> None:
    with echo.app.test_client(timeout=TIMEOUT) as client:
        ws = client.connect("/echo")
        ws.send("hello")
        ws.send(b"\x00\xff")
        assert client.receive(ws) == "hello"
        assert client.receive(ws) == b"\x00\xff"


def test_broadcast_reaches_every_connection_sender_included() -> None:
    with broadcast.app.test_client(timeout=TIMEOUT) as client:
        peers = [client.connect("/") for _ in range(3)]
        peers[1].send("to everyone")
        for ws in peers:
            assert client.receive(ws) == "to everyone"
        peers[2].send(b"bin")
        for ws in peers:
            assert client.receive(ws) == b"bin"


# -- chat ---------------------------------------------------------------------------------------


def test_chat_join_say_leave_between_two_clients(chat_client: TestClient) -> None:
    alice = chat_client.connect("/chat/room1?nick=alice")
    welcome = chat_client.receive_json(alice)
    assert welcome["event"] == "welcome"
    assert welcome["data"]["nick"] == "alice" and welcome["data"]["room"] == "room1"
    assert welcome["data"]["members"] == [{"id": welcome["data"]["id"], "nick": "alice"}]
    assert welcome["data"]["count"] == 1
    assert {"name": "room1", "members": 1} in welcome["data"]["rooms"]

    bob = chat_client.connect("/chat/room1?nick=bob")
    bob_welcome = chat_client.receive_json(bob)["data"]
    assert sorted(m["nick"] for m in bob_welcome["members"]) == ["alice", "bob"]
    assert bob_welcome["count"] == 2
    joined = chat_client.receive_json(alice)
    assert joined == {
        "event": "joined",
        "data": {"id": bob_welcome["id"], "nick": "bob", "count": 2},
    }

    chat_client.emit(bob, "say", {"text": "  hello alice  "}, id=7)
    said = chat_client.receive_json(alice)
    assert said["event"] == "said"
    assert (said["data"]["nick"], said["data"]["text"]) == ("bob", "hello alice")
    assert [e["event"] for e in events(chat_client, bob, 2)] == ["said", "ack"]

    bob.close()
    left = chat_client.receive_json(alice)
    assert left == {"event": "left", "data": {"id": bob_welcome["id"], "nick": "bob", "count": 1}}


def test_chat_rooms_are_separate_and_history_is_replayed(chat_client: TestClient) -> None:
    one = chat_client.connect("/chat/history-a?nick=one")
    other = chat_client.connect("/chat/history-b?nick=other")
    chat_client.receive_json(one), chat_client.receive_json(other)
    chat_client.emit(one, "say", {"text": "first"}, id=1)
    assert [e["event"] for e in events(chat_client, one, 2)] == ["said", "ack"]
    late = chat_client.connect("/chat/history-a?nick=late")
    history = chat_client.receive_json(late)["data"]["history"]
    assert [(m["nick"], m["text"]) for m in history] == [("one", "first")]
    chat_client.emit(other, "ping", "b", id=2)  # room b saw nothing of room a
    assert chat_client.receive_json(other) == {"event": "ack", "data": "b", "id": 2}


def test_chat_nicknames_renames_and_refusals(chat_client: TestClient) -> None:
    anon = chat_client.connect("/chat/names")
    nick = chat_client.receive_json(anon)["data"]["nick"]
    assert re.fullmatch(r"guest-[0-9a-f]+", nick)
    long = chat_client.connect("/chat/names?nick=" + "x" * 40)
    assert chat_client.receive_json(long)["data"]["nick"] == "x" * 24
    assert chat_client.receive_json(anon)["event"] == "joined"
    chat_client.emit(long, "nick", {"nick": "  Ada   L  "}, id=1)
    renamed = chat_client.receive_json(anon)
    assert renamed["event"] == "renamed" and renamed["data"]["nick"] == "Ada L"
    chat_client.emit(anon, "say", {"text": "   "}, id=2)
    assert chat_client.receive_json(anon)["data"] == {"ok": False, "error": "empty message"}
    chat_client.emit(anon, "say", {"text": "y" * 2001}, id=3)
    assert chat_client.receive_json(anon)["data"]["ok"] is False
    bad = chat_client.connect("/chat/no%20spaces")
    chat_client.assert_closed(bad, 1008)


def test_chat_count_and_members_calls(chat_client: TestClient) -> None:
    alice = chat_client.connect("/chat/paging?nick=alice")
    chat_client.receive_json(alice)
    bob = chat_client.connect("/chat/paging?nick=bob")
    bob_id = chat_client.receive_json(bob)["data"]["id"]
    assert chat_client.receive_json(alice)["event"] == "joined"
    chat_client.emit(alice, "count", None, id=1)
    assert chat_client.receive_json(alice) == {"event": "ack", "data": {"count": 2}, "id": 1}
    chat_client.emit(alice, "members", {"offset": 1}, id=2)
    page = chat_client.receive_json(alice)["data"]
    assert page == {"offset": 1, "members": [{"id": bob_id, "nick": "bob"}], "count": 2}
    chat_client.emit(alice, "members", {"offset": -5}, id=3)
    assert chat_client.receive_json(alice)["data"]["offset"] == 0


def test_a_thousand_joins_cost_linear_frames(chat_client: TestClient) -> None:
    """N joins into one room: the server sends O(N) messages in all (not one per member per
    join, which would be N²/2), each joiner gets a bounded member page, leaving is O(N) too."""
    n, metrics = 1000, chat.app.metrics
    before = metrics.messages_out
    sockets = []
    for i in range(n):
        ws = chat_client.connect(f"/chat/big?nick=u{i}")
        welcome = chat_client.receive_json(ws)  # the join is complete once welcomed
        assert welcome["event"] == "welcome" and welcome["data"]["count"] == i + 1
        assert len(welcome["data"]["members"]) == min(i + 1, chat.MEMBER_PAGE)
        sockets.append(ws)
    joined_frames = metrics.messages_out - before
    assert n <= joined_frames <= 3 * n, joined_frames
    assert chat.app.rooms.count("chat:big") == n
    # the first member heard every small-room join by name, then a few count updates
    heard = [chat_client.receive_json(sockets[0]) for _ in range(chat.SMALL_ROOM - 1)]
    assert [e["event"] for e in heard] == ["joined"] * (chat.SMALL_ROOM - 1)
    assert chat_client.receive_json(sockets[0]) == {"event": "count", "data": {"count": 40}}

    before = metrics.messages_out
    for ws in sockets:
        ws.close()
    wait_until(lambda: chat.app.rooms.count("chat:big") == 0)
    left_frames = metrics.messages_out - before
    assert left_frames <= 3 * n, left_frames


# -- dashboard ------------------------------------------------------------------------------------


def test_dashboard_feed_pushes_snapshots_from_one_greenlet(chat_client: TestClient) -> None:
    first = chat_client.connect("/dashboard/feed")
    second = chat_client.connect("/dashboard/feed")
    snapshot = chat_client.receive_json(first)
    assert snapshot["event"] == "snapshot"
    data = snapshot["data"]
    assert data["connections"] >= 1 and data["connections_total"] >= 1
    for key in ("in_per_s", "out_per_s", "rtt_ms", "rooms", "uptime_s", "ts"):
        assert key in data
    greenlet: Any = chat.feed.greenlet
    assert greenlet is not None
    assert chat_client.receive_json(second)["event"] == "snapshot"
    assert chat_client.receive_json(first)["event"] == "snapshot"  # the next second's
    assert chat.feed.greenlet in (greenlet,)  # the same greenlet serves every viewer
    chat_client.emit(first, "ping", 42, id=9)
    reply = chat_client.receive_json(first)
    while reply["event"] == "snapshot":
        reply = chat_client.receive_json(first)
    assert reply == {"event": "ack", "data": 42, "id": 9}
    first.close()
    second.close()
    with gevent.Timeout(TIMEOUT):  # the last viewer left: the feed greenlet ends
        while chat.feed.greenlet is not None:
            gevent.sleep(0.05)
    assert greenlet.dead


# -- pages and plain HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "marker"),
    [
        ("/", "text/html; charset=utf-8", "<title>wsflask chat</title>"),
        ("/dashboard", "text/html; charset=utf-8", '<canvas id="chart-connections"'),
        ("/static/style.css", "text/css; charset=utf-8", "prefers-color-scheme"),
        ("/static/chat.js", "text/javascript; charset=utf-8", 'from "/wsflask.js"'),
        ("/wsflask.js", "text/javascript; charset=utf-8", "export function connect"),
        ("/static/dashboard.js", "text/javascript; charset=utf-8", "class LineChart"),
        ("/static/favicon.svg", "image/svg+xml", "<svg"),
        ("/favicon.ico", "image/svg+xml", "<svg"),
    ],
)
def test_pages_and_assets(chat_client: TestClient, path: str, kind: str, marker: str) -> None:
    page = chat_client.get(path)
    assert page.status == 200
    assert page.headers["content-type"] == kind
    assert marker in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "assets must be local"


def test_every_asset_is_local() -> None:
    for path in (ROOT / "examples" / "static").iterdir():
        text = path.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path.name


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/static/missing.css", 404),
        ("/static/..%2Fchat.py", 404),
        ("/static/.hidden.js", 404),
        ("/nowhere", 404),
        ("/chat/lobby", 426),
        ("/echo", 426),
        ("/dashboard/feed", 426),
    ],
)
def test_unknown_paths_404_and_websocket_routes_426(
    chat_client: TestClient, path: str, status: int
) -> None:
    assert chat_client.get(path).status == status


def test_metrics_and_health_are_built_in(chat_client: TestClient) -> None:
    ws = chat_client.connect("/echo")
    ws.send("ping")
    assert chat_client.receive(ws) == "ping"
    metrics = chat_client.get("/metrics").text
    for name in (
        "websocket_connections_total",
        "websocket_message_rate_per_second",
        "websocket_frame_parsing_duration_ms",
    ):
        assert f"# TYPE {name} " in metrics
    assert chat_client.get("/healthz").text == "ok"
    assert chat_client.get("/readyz").text == "ready"


# -- the scripts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"), [("echo", "/echo"), ("broadcast", "/"), ("chat", "/echo")]
)
def test_example_script_runs_and_stops_on_sigterm(wsflask_run: Any, name: str, path: str) -> None:
    proc = wsflask_run(script=f"examples/{name}.py", env={"WSFLASK_PORT": "0"})
    port = proc.wait_serving()
    ws = connect(f"ws://127.0.0.1:{port}{path}", timeout=TIMEOUT)
    ws.send("hi")
    assert ws.receive(timeout=TIMEOUT) == "hi"
    ws.close()
    assert proc.stop() == 0
    assert "connection open" in proc.log
