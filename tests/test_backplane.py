"""Backplane without Redis: envelopes, routing, and two Apps in one process as two nodes.

The in-memory hub (``memory://name``) runs the same bridge code as Redis does: once-only
delivery, exclusion by connection id across nodes, personal rooms, presence, outages
(``Hub.cut()``) with dropped publishes counted, ``/readyz`` red then green, gap notices.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from helpers import wait_until

import wsflask.backplane
from wsflask import App, Config, ConfigError, envelopes, ids
from wsflask.backplane import BackplaneDown, MemoryBackplane, default_gap_message, open_backplane
from wsflask.backplane.memory import hub
from wsflask.backplane.wire import BadEnvelope, Envelope, Router, decode, encode, node_of
from wsflask.workers import check_workers

_names = itertools.count(1)
FAST: dict[str, Any] = {
    "backplane_interval": 0.2,
    "backplane_backoff_max": 0.3,
    "shutdown_grace": 1.0,
    "close_timeout": 1.0,
}


@pytest.fixture
def cluster() -> Iterator[Callable[..., tuple[App, Any]]]:
    """``cluster(bus_name)`` -> ``(app, test_client)`` of a chat app on ``memory://bus``."""
    clients: list[Any] = []

    def node(bus: str) -> tuple[App, Any]:
        app = App(backplane=f"memory://{bus}", **FAST)

        @app.route("/r/<room>")
        def chat(ws: Any, room: str) -> None:
            app.rooms.join(room, ws)
            ws.send(json.dumps({"hello": ws.id}))
            for message in ws:
                if message == "skipme":
                    app.send("skipped", to=room, skip=ws)
                else:
                    app.send(message, to=room)

        client = app.test_client(timeout=10)
        clients.append(client)
        return app, client

    yield node
    for client in clients:
        client.close()


def join(client: Any, room: str) -> tuple[Any, str]:
    ws = client.connect(f"/r/{room}")
    return ws, client.receive_json(ws)["hello"]


def started(*apps: App) -> None:
    for app in apps:
        assert app.cluster is not None
    wait_until(lambda: all(app.cluster is not None and app.cluster.ready for app in apps))


# -- envelopes and routing -------------------------------------------------------------------


def test_envelope_round_trip_is_json_and_raw_bytes_never_pickle() -> None:
    envelope = Envelope("abc", "b", b"\x00\xffraw", 7, ["lobby"], ["n.1"])
    payload = encode(envelope)
    assert payload.startswith(b"WSF1") and b"pickle" not in payload
    assert b'"o":"abc"' in payload and payload.endswith(b"\x00\xffraw")
    assert decode(payload) == envelope
    import pickle

    for bad in (
        b"",
        b"WSF1",
        pickle.dumps({"o": "x"}),
        b"WSF1\x00\x00\x00\x02[]",
        encode(Envelope("a", "t", b"\xff")),
        b'WSF1\x00\x00\x00\x09{"o":1}xx',
    ):
        with pytest.raises(BadEnvelope):
            decode(bad)


def test_envelope_message_is_text_or_binary_by_type() -> None:
    text = Envelope.message("n", 3, "héllo", ["r"], ("x.1",))
    assert text == Envelope("n", "t", "héllo".encode(), 3, ["r"], ["x.1"])
    assert Envelope.message("n", 4, b"\x00", None) == Envelope("n", "b", b"\x00", 4, None, [])
    assert decode(encode(text)) == text


def test_router_maps_rooms_personal_ids_and_everyone() -> None:
    router = Router()
    node = ids.new_node_id()
    assert node_of(ids.new_id(node)) == node and node_of(ids.new_id()) is None
    assert node_of(f"{node}.1f") is None  # a short token is not an id: a plain room name
    assert node_of("lobby") is None and node_of(f"{node}.lobby") is None
    assert router.route(None) == (["wsflask:all"], None)
    assert router.route("lobby") == (["wsflask:room:lobby"], ["lobby"])
    own, other = ids.new_id(node), ids.new_id("ffffffffffff")
    channels, names = router.route(["a", own, "a", other], node)
    assert channels == ["wsflask:room:a", "wsflask:node:ffffffffffff"]  # own ids stay local
    assert names == ["a", own, other]
    # a name shaped like an id of the old form is a room name like any other
    assert router.route("ffffffffffff.3", node)[0] == ["wsflask:room:ffffffffffff.3"]


def test_config_and_factory_validate_the_url() -> None:
    assert Config().backplane is None
    assert (
        Config.from_env(environ={"WSFLASK_BACKPLANE": "redis://h:1/0"}).backplane == "redis://h:1/0"
    )
    with pytest.raises(ConfigError, match="backplane"):
        Config(backplane="kafka://x")
    with pytest.raises(ConfigError):
        open_backplane("amqp://x")
    assert isinstance(open_backplane("memory://x"), MemoryBackplane)


def test_base_is_a_leaf_and_the_backplane_package_has_no_import_cycle() -> None:
    package = Path(wsflask.backplane.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.add(node.module or "__init__")
        graph[path.stem] = found
    assert graph["base"] == set()
    assert graph["__init__"] >= {"base", "bridge", "emitter", "factory", "memory", "wire"}
    for module, imported in graph.items():
        for other in imported:
            assert module not in graph.get(other, set()), f"{module} <-> {other}"
    assert "__init__" not in set().union(*graph.values())


def test_the_gap_notice_is_an_event_envelope() -> None:
    assert default_gap_message("lobby") == envelopes.encode("_gap", {"room": "lobby"})
    assert envelopes.decode(default_gap_message("lobby")) == {
        "event": "_gap",
        "data": {"room": "lobby"},
    }


def test_workers_refuse_to_split_rooms() -> None:
    with pytest.raises(ConfigError, match="rooms would split"):
        check_workers(App(), 2)
    with pytest.raises(ConfigError, match="rooms would split"):
        check_workers(App(backplane="memory://w"), 2)
    check_workers(App(), 1)
    check_workers(App(backplane="redis://127.0.0.1:1/0"), 4)


def test_no_backplane_means_no_bus_on_the_hot_path(app_factory: Any) -> None:
    app = app_factory()
    assert app.cluster is None and app.rooms.bus is None
    with app.test_client() as client:
        ws, _ = join_plain(app, client)
        assert "." not in ws  # ids keep their local form
        assert app.rooms.count("x", cluster=True) == 1


def join_plain(app: App, client: Any) -> tuple[str, Any]:
    @app.route("/p")
    def plain(ws: Any) -> None:
        app.rooms.join("x", ws)
        ws.send(ws.id)
        for _ in ws:
            pass

    ws = client.connect("/p")
    return str(client.receive(ws)), ws


# -- two nodes on one in-memory bus -------------------------------------------------------------


def test_two_nodes_every_member_gets_every_message_once_in_order(cluster: Any) -> None:
    bus = f"b{next(_names)}"
    (a, ca), (b, cb) = cluster(bus), cluster(bus)
    members = [join(ca, "t") for _ in range(2)] + [join(cb, "t") for _ in range(2)]
    started(a, b)
    assert {node_of(ident) for _, ident in members} == {a.cluster.node, b.cluster.node}
    senders = [members[0][0], members[2][0]]
    for i in range(20):
        for n, ws in enumerate(senders):
            ws.send(f"{n}:{i}")
    for n, ws in enumerate(senders):  # per-sender order: a duplicate would precede these
        ws.send(f"{n}:end")
    for ws, _ in members:
        got = [ca.receive(ws) for _ in range(42)]
        for n in range(2):
            assert [m for m in got if m.startswith(f"{n}:")] == [
                *(f"{n}:{i}" for i in range(20)),
                f"{n}:end",
            ]  # every message once, nothing twice
    assert not a.metrics.drops and not b.metrics.drops


def test_exclude_personal_rooms_and_everyone_across_nodes(cluster: Any) -> None:
    bus = f"b{next(_names)}"
    (a, ca), (b, cb) = cluster(bus), cluster(bus)
    (wa, ida), (wb, idb) = join(ca, "t"), join(cb, "t")
    started(a, b)
    wa.send("skipme")  # skip=ws: the sender on A is left out, B's member gets it
    assert cb.receive(wb) == "skipped"
    a.send("to you", to=idb)  # a personal room on the other node
    assert cb.receive(wb) == "to you"
    b.send("everyone")
    assert ca.receive(wa) == "everyone" and cb.receive(wb) == "everyone"
    b.send("both rooms once", to=["t", ida])  # a member reached twice gets it once
    assert ca.receive(wa) == "both rooms once" and cb.receive(wb) == "both rooms once"
    b.send("skip by id", to="t", skip=[ida])  # exclusion by id from another node
    assert cb.receive(wb) == "skip by id"
    b.send("marker", to="t")  # same path, sent after: wa's next message, nothing before it
    assert ca.receive(wa) == "marker" and cb.receive(wb) == "marker"


def test_cluster_counts_and_member_ids_expire_with_a_dead_node(cluster: Any) -> None:
    bus = f"b{next(_names)}"
    (a, ca), (b, cb) = cluster(bus), cluster(bus)
    known = [join(ca, "t")[1], join(ca, "t")[1], join(cb, "t")[1]]
    started(a, b)
    wait_until(lambda: b.rooms.count("t", cluster=True) == 3)
    wait_until(lambda: sorted(a.rooms.member_ids("t", cluster=True)) == sorted(known))
    assert a.rooms.count("t") == 2
    assert a.cluster is not None
    a.cluster._running = False  # a node that stops refreshing (kill -9 of its loops)
    gevent.killall(a.cluster._greenlets)
    wait_until(lambda: b.rooms.count("t", cluster=True) == 1)  # TTL: 3 intervals


def test_outage_counts_drops_turns_readyz_red_then_sends_gap_notices(cluster: Any) -> None:
    bus = f"b{next(_names)}"
    (a, ca), (b, cb) = cluster(bus), cluster(bus)
    (wa, _), (wb, _) = join(ca, "t"), join(cb, "t")
    started(a, b)
    assert ca.get("/readyz").status == 200
    hub(bus).cut()
    wait_until(lambda: ca.get("/readyz").status == 503)
    assert ca.get("/readyz").body == b"not ready: backplane down"
    wa.send("during the cut")
    assert ca.receive(wa) == "during the cut"  # local rooms keep working
    wait_until(lambda: a.metrics.drops.get("backplane", 0) >= 1)
    assert 'websocket_dropped_messages_total{reason="backplane"}' in ca.get("/metrics").text
    hub(bus).restore()
    wait_until(lambda: ca.get("/readyz").status == 200 and cb.get("/readyz").status == 200)
    gap = json.loads(ca.receive(wa))
    assert gap == {"event": "_gap", "data": {"room": "t"}}
    assert json.loads(cb.receive(wb))["event"] == "_gap"
    wb.send("after")
    assert _next_non_gap(ca, wa) == "after"


def _next_non_gap(client: Any, ws: Any) -> str:
    while True:
        message = client.receive(ws)
        if not str(message).startswith('{"event":"_gap"'):
            return str(message)


def test_a_node_that_starts_while_the_bus_is_down_serves_locally(cluster: Any) -> None:
    bus = f"b{next(_names)}"
    hub(bus).cut()
    a, ca = cluster(bus)
    w1, _ = join(ca, "t")
    w2, _ = join(ca, "t")
    assert ca.get("/readyz").status == 503
    w1.send("local")
    assert ca.receive(w1) == "local" and ca.receive(w2) == "local"
    assert a.metrics.drops["backplane"] >= 1
    with pytest.raises(BackplaneDown):
        a.rooms.count("t", cluster=True)
    hub(bus).restore()
    wait_until(lambda: ca.get("/readyz").status == 200)


def test_a_silent_bus_fails_the_probe_and_reconnects(cluster: Any) -> None:
    bus = f"b{next(_names)}"
    a, ca = cluster(bus)
    ca.start()
    started(a)
    assert a.cluster is not None
    backplane: Any = a.cluster._bus
    backplane.live = False  # starved: the session delivers nothing any more (RD-03)
    # red (what /readyz serves) from the probe timeout until the new session's probe echoes
    wait_until(lambda: a.cluster is not None and not a.cluster.ready, interval=0.005)
    assert a.cluster.probe_timeouts >= 1
    wait_until(lambda: a.cluster is not None and a.cluster.ready)  # resubscribed, probe back
    counted = re.search(
        r"^websocket_backplane_probe_timeouts_total (\d+)$", a.metrics.render(), re.M
    )
    assert counted is not None and int(counted[1]) == a.cluster.probe_timeouts


def test_stopping_a_node_clears_its_presence_and_subscriptions(cluster: Any) -> None:
    bus = f"b{next(_names)}"
    (a, ca), (b, cb) = cluster(bus), cluster(bus)
    join(ca, "t")
    join(cb, "t")
    started(a, b)
    wait_until(lambda: b.rooms.count("t", cluster=True) == 2)
    ca.close()
    assert a.rooms.bus is None and a.cluster is not None and not a.cluster.ready
    assert b.rooms.count("t", cluster=True) == 1  # cleared at once, not after the TTL
    assert all(a.cluster.node not in str(listener.channels) for listener in hub(bus).listeners)


def test_stop_sends_what_is_queued_before_leaving_the_bus(cluster: Any) -> None:
    bus = f"b{next(_names)}"
    (a, ca), (b, cb) = cluster(bus), cluster(bus)
    wb, _ = join(cb, "t")
    ca.start()
    started(a, b)
    wait_until(lambda: a.rooms.count("t", cluster=True) == 1)
    assert a.cluster is not None
    for i in range(300):  # queued without yielding: nothing is sent before stop()
        a.rooms.broadcast("t", f"m{i}")
    a.cluster.stop()
    assert a.rooms.bus is None and not a.cluster.ready
    assert [cb.receive(wb) for _ in range(300)] == [f"m{i}" for i in range(300)]
    assert not a.metrics.drops


def test_defect3_an_envelope_behind_its_origins_sequence_is_dropped_and_counted(
    cluster: Any,
) -> None:
    bus = f"b{next(_names)}"
    a, ca = cluster(bus)
    wa, _ = join(ca, "t")
    started(a)
    wait_until(lambda: a.cluster is not None and a.cluster.ready)
    sender = MemoryBackplane(bus)

    def send(seq: int, text: str, channels: tuple[str, ...] = ("wsflask:room:t",)) -> None:
        payload = encode(Envelope.message("emitter-x", seq, text, ["t"]))
        for channel in channels:
            assert sender.publish(channel, payload) == 1

    send(5, "five", ("wsflask:room:t", "wsflask:all"))  # one envelope on two channels
    send(3, "three")  # behind 5: dropped, and counted as a loss
    send(6, "six")
    assert [ca.receive(wa), ca.receive(wa)] == ["five", "six"]
    assert a.metrics.drops == {"backplane_order": 1}  # the second copy of 5 is no loss
    assert 'websocket_dropped_messages_total{reason="backplane_order"} 1' in ca.get("/metrics").text


def test_a_room_named_like_an_old_node_prefixed_id_reaches_every_node(cluster: Any) -> None:
    bus = f"b{next(_names)}"
    (a, ca), (b, cb) = cluster(bus), cluster(bus)
    room = "0123456789ab.beef"  # not an id (ids.is_connection_id is false): a joinable room
    (wb, _) = join(cb, room)
    ca.start()
    started(a, b)
    wait_until(lambda: a.rooms.count(room, cluster=True) == 1)
    a.send("to the room", to=room)
    a.send("to everyone")
    assert cb.receive(wb) == "to the room"
    assert cb.receive(wb) == "to everyone"
