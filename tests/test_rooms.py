"""Rooms: the index, broadcast counts, once-only multi-room delivery, policies, auto leave.

Unit tests use a stand-in connection; the end-to-end tests (1,000 members, automatic leave)
go through real sockets with the app's test client.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event
import pytest

from wsflask import ids
from wsflask.config import Backpressure
from wsflask.errors import ConfigError
from wsflask.protocol import Opcode, PerMessageDeflate, encode_frame
from wsflask.rooms import BroadcastResult, Rooms

_ids = itertools.count(1)


class StubWS:
    """A ``rooms.Member`` (``Rooms[StubWS]`` makes mypy check it) that records its frames."""

    def __init__(self, *, accept: bool = True) -> None:
        self.id = f"c{next(_ids)}"
        self.rooms: set[str] = set()
        self.is_open = True
        self.deflate: PerMessageDeflate | None = None  # no permessage-deflate: the plain frame
        self.accept = accept
        self.frames: list[tuple[bytes, str | None]] = []
        self.callbacks: list[Callable[[StubWS], None]] = []

    def send_prepared(self, frame: bytes, *, policy: str | None = None) -> bool:
        if not self.accept or not self.is_open:
            return False
        self.frames.append((frame, policy))
        return True

    def send_nowait(self, data: str | bytes, *, policy: str | None = None) -> bool:
        raise AssertionError("only members with context takeover are sent to this way")

    def add_close_callback(self, callback: Callable[[StubWS], None]) -> None:
        self.callbacks.append(callback)

    def close_now(self) -> None:
        self.is_open = False
        for callback in self.callbacks:
            callback(self)


def test_join_leave_members_count() -> None:
    rooms: Rooms[StubWS] = Rooms()
    a, b = StubWS(), StubWS()
    rooms.join("lobby", a)
    rooms.join("lobby", b)
    rooms.join("lobby", b)  # idempotent
    assert rooms.count("lobby") == 2
    assert set(rooms.members("lobby")) == {a, b}
    assert rooms.rooms() == ["lobby"]
    assert a.rooms == {"lobby", a.id}  # the personal room too
    rooms.leave("lobby", a)
    rooms.leave("lobby", a)
    assert rooms.members("lobby") == [b]
    rooms.leave("lobby", b)
    assert rooms.rooms() == []  # emptied rooms disappear
    assert rooms.count("nowhere") == 0 and rooms.members("nowhere") == []


def test_personal_room_and_track_is_idempotent() -> None:
    rooms: Rooms[StubWS] = Rooms()
    ws = StubWS()
    rooms.track(ws)
    rooms.track(ws)
    assert len(ws.callbacks) == 1
    assert rooms.members(ws.id) == [ws]
    assert rooms.rooms(personal=True) == [ws.id]
    rooms.leave(ws.id, ws)  # the personal room cannot be left
    assert rooms.count(ws.id) == 1


def test_closed_connection_leaves_everything_and_cannot_join() -> None:
    rooms: Rooms[StubWS] = Rooms()
    ws = StubWS()
    rooms.join("a", ws)
    rooms.join("b", ws)
    ws.close_now()
    assert rooms.rooms(personal=True) == []
    assert ws.rooms == set()
    assert rooms.connections() == []
    rooms.join("a", ws)
    assert rooms.count("a") == 0


def test_broadcast_encodes_once_and_counts() -> None:
    rooms: Rooms[StubWS] = Rooms()
    members = [StubWS() for _ in range(5)]
    slow = StubWS(accept=False)
    for ws in [*members, slow]:
        rooms.join("r", ws)
    result = rooms.broadcast("r", "hi", exclude=members[0])
    assert result == BroadcastResult(sent=4, dropped=1, skipped=1)
    frames = [ws.frames[0][0] for ws in members[1:]]
    assert frames[0] == encode_frame(Opcode.TEXT, b"hi")
    assert all(frame is frames[0] for frame in frames)  # the very same bytes object
    assert members[0].frames == []


def test_binary_broadcast_and_closed_members_are_skipped() -> None:
    rooms: Rooms[StubWS] = Rooms()
    a, b = StubWS(), StubWS()
    rooms.join("r", a)
    rooms.join("r", b)
    b.is_open = False  # closing, callbacks not run yet
    result = rooms.broadcast("r", b"\x00\x01")
    assert result == BroadcastResult(sent=1, dropped=0, skipped=1)
    assert a.frames[0][0] == encode_frame(Opcode.BINARY, b"\x00\x01")


def test_multi_room_broadcast_delivers_once_per_connection() -> None:
    rooms: Rooms[StubWS] = Rooms()
    both, only_a, only_b = StubWS(), StubWS(), StubWS()
    for ws in (both, only_a):
        rooms.join("a", ws)
    for ws in (both, only_b):
        rooms.join("b", ws)
    result = rooms.broadcast(["a", "b", "missing"], "x")
    assert result.sent == 3
    assert [len(ws.frames) for ws in (both, only_a, only_b)] == [1, 1, 1]


def test_exclude_accepts_several_connections() -> None:
    rooms: Rooms[StubWS] = Rooms()
    conns = [StubWS() for _ in range(3)]
    for ws in conns:
        rooms.join("r", ws)
    result = rooms.broadcast("r", "x", exclude=conns[:2])
    assert result == BroadcastResult(sent=1, dropped=0, skipped=2)


def test_broadcast_to_everyone() -> None:
    rooms: Rooms[StubWS] = Rooms()
    conns = [StubWS() for _ in range(3)]
    for ws in conns:
        rooms.track(ws)
    assert rooms.broadcast(None, "all").sent == 3


def test_per_room_policy_overrides_the_default() -> None:
    rooms: Rooms[StubWS] = Rooms(policy="close")
    ws, other = StubWS(), StubWS()
    rooms.join("ticker", ws)
    rooms.join("chat", other)
    rooms.set_policy("ticker", "drop")
    rooms.broadcast("ticker", "1")
    rooms.broadcast("chat", "2")
    assert ws.frames[0][1] == "drop"
    assert other.frames[0][1] == "close"
    rooms.join("chat", ws)
    rooms.broadcast(["ticker", "chat"], "3")  # the first room that reaches it decides
    assert ws.frames[-1][1] == "drop"
    with pytest.raises(ValueError, match="policy"):
        rooms.set_policy("x", "block")
    with pytest.raises(ValueError, match="policy"):
        Rooms(policy="nope")


def test_policies_are_backpressure_members_and_equal_strings_are_accepted() -> None:
    rooms: Rooms[StubWS] = Rooms(policy=Backpressure.DROP)
    assert rooms.policy is Backpressure.DROP
    assert Rooms(policy="drop").policy is Backpressure.DROP
    rooms.policy = "close"  # what App.configure does with Config.backpressure_policy
    assert rooms.policy is Backpressure.CLOSE
    rooms.set_policy("ticker", "drop")
    assert rooms.policy_for("ticker") is Backpressure.DROP
    assert rooms.policy_for("other") is Backpressure.CLOSE
    with pytest.raises(ConfigError, match="expected one of close, drop"):
        rooms.policy = "block"
    assert rooms.policy is Backpressure.CLOSE


class RecordingBus:
    """A ``Bus`` that records what rooms hand it."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, int]] = []
        self.published: list[tuple[str | list[str] | None, str | bytes, list[str]]] = []

    def room_changed(self, room: str, count: int) -> None:
        self.changes.append((room, count))

    def publish(
        self, rooms: str | Iterable[str] | None, data: str | bytes, exclude: Iterable[str] = ()
    ) -> None:
        target = rooms if rooms is None or isinstance(rooms, str) else list(rooms)
        self.published.append((target, data, sorted(exclude)))

    def cluster_members(self, room: str) -> dict[str, list[str]]:
        return {"other": ["other.1", "other.2"]}


def test_attach_hands_changes_and_broadcasts_to_the_bus_until_detach() -> None:
    rooms: Rooms[StubWS] = Rooms()
    bus = RecordingBus()
    a, b = StubWS(), StubWS()
    rooms.attach(bus, "0123456789ab")
    assert rooms.bus is bus and rooms.node == "0123456789ab"
    rooms.join("r", a)
    rooms.join("r", b)
    assert bus.changes == [("r", 1), ("r", 2)]  # personal rooms are never reported
    assert rooms.broadcast("r", "hi", exclude=a).sent == 1
    assert bus.published == [("r", "hi", [a.id])]
    assert rooms.count("r", cluster=True) == 4
    assert rooms.member_ids("r", cluster=True) == [a.id, b.id, "other.1", "other.2"]
    rooms.leave("r", a)
    assert bus.changes[-1] == ("r", 1)
    rooms.detach()
    rooms.detach()  # idempotent
    assert rooms.bus is None and rooms.node == ""
    rooms.broadcast("r", "local")
    rooms.leave("r", b)
    assert len(bus.published) == 1 and bus.changes[-1] == ("r", 1)
    assert rooms.count("r", cluster=True) == 0


def test_a_member_closing_during_broadcast_does_not_break_the_loop() -> None:
    rooms: Rooms[StubWS] = Rooms()
    conns = [StubWS() for _ in range(4)]
    for ws in conns:
        rooms.join("r", ws)

    def closing_send(frame: bytes, *, policy: str | None = None) -> bool:
        conns[1].close_now()  # e.g. policy "close" closing it synchronously
        return False

    conns[1].send_prepared = closing_send  # type: ignore[method-assign]
    result = rooms.broadcast("r", "x")
    assert result.sent == 3 and result.dropped == 1
    assert rooms.count("r") == 3


# -- end to end ---------------------------------------------------------------------------------


def test_thousand_members_receive_every_broadcast(app_factory: Any) -> None:
    from wsflask import App

    app: App = app_factory()
    room = app.route("/room")
    n, messages = 1000, 5
    everyone = gevent.event.Event()

    @room.on("connect")
    def joined(ws: Any) -> None:
        app.rooms.join("big", ws)
        if app.rooms.count("big") == n:
            everyone.set()

    with app.test_client(timeout=30) as client:
        conns = [client.connect("/room") for _ in range(n)]
        assert everyone.wait(30)
        for i in range(messages):
            result = app.rooms.broadcast("big", f"m{i}")
            assert result.sent == n and result.dropped == 0
        received = [0] * n

        def drain(index: int) -> None:
            for i in range(messages):
                assert conns[index].receive(timeout=30) == f"m{i}"
                received[index] += 1

        with gevent.Timeout(60):
            gevent.joinall([gevent.spawn(drain, i) for i in range(n)], raise_error=True)
        assert received == [messages] * n


def test_automatic_leave_on_close(app_factory: Any) -> None:
    from wsflask import App

    app: App = app_factory()
    left, inside = gevent.event.Event(), gevent.event.Event()

    @app.on("connect")
    def joined(ws: Any) -> None:
        app.rooms.join("r", ws)
        inside.set()

    @app.on("disconnect")
    def gone(ws: Any) -> None:
        # rooms are left before the app is told (ARCHITECTURE.md §4)
        assert "r" not in ws.rooms and ws not in app.rooms.members("r")
        left.set()

    with app.test_client() as client:
        ws = client.connect("/")
        assert inside.wait(5) and app.rooms.count("r") == 1
        ws.close()
        assert left.wait(5)
        assert app.rooms.count("r") == 0
        assert app.rooms.rooms(personal=True) == []


# -- defect 1: personal rooms are reserved ------------------------------------------------------


def test_defect1_no_one_can_join_another_connections_personal_room(app_factory: Any) -> None:
    from wsflask import App

    app: App = app_factory()

    @app.route("/chat/<room>")  # the README pattern: the room name comes from the client
    def chat(ws: Any, room: str) -> None:
        try:
            app.rooms.join(room, ws)
        except ValueError as exc:
            ws.send(f"refused: {exc}")
        else:
            ws.send(f"joined as {ws.id}")
        for _ in ws:
            pass

    with app.test_client() as client:
        victim = client.connect("/chat/lobby")
        victim_id = str(victim.receive(timeout=5)).removeprefix("joined as ")
        attacker = client.connect(f"/chat/{victim_id}")
        assert attacker.receive(timeout=5) == (
            f"refused: room {victim_id!r} is reserved: it is a connection's personal room"
        )
        assert app.rooms.member_ids(victim_id) == [victim_id]
        app.send("secret", to=victim_id)
        app.send("public")  # to everyone, after the secret
        assert victim.receive(timeout=5) == "secret"
        assert victim.receive(timeout=5) == "public"
        assert attacker.receive(timeout=5) == "public"  # the secret never reached it


def test_defect1_names_shaped_like_connection_ids_are_refused_even_untracked() -> None:
    rooms: Rooms[StubWS] = Rooms()
    ws = StubWS()
    for name in (ids.new_id(), ids.new_id(ids.new_node_id())):
        with pytest.raises(ValueError, match="reserved"):
            rooms.join(name, ws)
    assert rooms.rooms() == [] and ws.rooms == {ws.id}
    rooms.join(ws.id, ws)  # its own personal room: already a member, allowed
    rooms.join("0123456789abcdef-lobby", ws)  # looks close, is not an id
    assert rooms.rooms() == ["0123456789abcdef-lobby"]


def test_connection_ids_are_distinct_across_batches_and_never_shared_with_a_forked_child() -> None:
    made = [ids.new_id() for _ in range(3 * ids.TOKENS_PER_READ + 7)]  # several reads
    assert len(set(made)) == len(made) and all(ids.is_connection_id(i) for i in made)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker forked while the parent holds unused tokens
        os.write(writer, ids.new_id().encode())
        os._exit(0)
    os.close(writer)
    child = os.read(reader, 64).decode()
    os.close(reader)
    os.waitpid(pid, 0)
    parents_next = [ids.new_id() for _ in range(ids.TOKENS_PER_READ)]
    assert ids.is_connection_id(child) and child not in parents_next and child not in made
