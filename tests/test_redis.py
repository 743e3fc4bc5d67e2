"""The Redis backplane against a real ``redis-server`` (started and stopped by each test).

Two Apps in this process on Redis are two nodes; the process-level cases (``kill -9``,
SIGTERM) run nodes with ``python -m wsflask run tests.backplane_node:app``. Battery rows,
scaled down: RD-01 (cut one node from Redis for 3 s under load, through a TCP proxy), RD-02
(restart Redis), RD-06 (start with Redis down), PR-01 (kill -9 a node), PR-02 (kill -9 during
a publish storm: no partial, corrupt, duplicate or reordered message), PR-03 (SIGTERM), PR-04
(Redis and a node restarting together converge).
Every wait polls with a deadline; nothing asserts on speed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import gevent
from helpers import join_chat, wait_until

from wsflask.backplane import Emitter
from wsflask.client import connect

ROOM = "wsflask:room:t"


def numsub(redis_server: Any, channel: str = ROOM) -> int:
    return int(dict(redis_server.client().pubsub_numsub(channel))[channel.encode()])


def ready(*clients: Any) -> None:
    wait_until(lambda: all(c.get("/readyz").status == 200 for c in clients))


def drain_gaps(client: Any, ws: Any) -> str:
    """The next message that is not a gap notice."""
    while True:
        message = str(client.receive(ws))
        if not message.startswith('{"event":"_gap"'):
            return message


# -- two nodes, one room ------------------------------------------------------------------------


def test_two_nodes_one_room_exactly_once_in_order(redis_server: Any, chat_nodes: Any) -> None:
    (a, ca), (b, cb) = chat_nodes(redis_server.url), chat_nodes(redis_server.url)
    members = [join_chat(ca), join_chat(ca), join_chat(cb), join_chat(cb)]
    ready(ca, cb)
    wait_until(lambda: numsub(redis_server) == 2)  # one subscription per node, not per member
    senders = [members[0], members[2]]
    for i in range(50):
        for n, ws in enumerate(senders):
            ws.send(f"{n}:{i}")
    for n, ws in enumerate(senders):  # per-sender order: a duplicate would precede these
        ws.send(f"{n}:end")
    for ws in members:
        got = [str(ca.receive(ws)) for _ in range(102)]
        for n in range(2):
            assert [m for m in got if m.startswith(f"{n}:")] == [
                *(f"{n}:{i}" for i in range(50)),
                f"{n}:end",
            ]  # every message once, nothing twice
    assert not a.metrics.drops and not b.metrics.drops
    wait_until(lambda: a.rooms.count("t", cluster=True) == 4)
    for ws in members[:2]:
        ws.close()
    wait_until(lambda: numsub(redis_server) == 1)  # A unsubscribed with its last member


def test_emitter_and_personal_rooms_reach_every_node(redis_server: Any, chat_nodes: Any) -> None:
    (_, ca), (_, cb) = chat_nodes(redis_server.url), chat_nodes(redis_server.url)
    wa, wb = join_chat(ca), join_chat(cb)
    ready(ca, cb)
    wait_until(lambda: numsub(redis_server) == 2)
    with Emitter(redis_server.url) as emitter:
        assert emitter.emit("news", [1], to="t") == 2
        assert ca.receive_json(wa) == cb.receive_json(wb) == {"event": "news", "data": [1]}
        emitter.send(b"all", to=None)
        assert ca.receive(wa) == cb.receive(wb) == b"all"
        hello = json.loads(str(cb.receive(join_again := cb.connect("/r/u"))))
        emitter.send("only you", to=hello["hello"])  # a personal room on node B
        assert cb.receive(join_again) == "only you"


def test_rd01_cut_one_node_for_3s_under_load(
    redis_server: Any, chat_nodes: Any, tcp_proxy: Any
) -> None:
    proxy = tcp_proxy(redis_server.port)
    (a, ca), (_, cb) = chat_nodes(proxy.url), chat_nodes(redis_server.url)
    wa, wb = join_chat(ca), join_chat(cb)
    ready(ca, cb)
    wait_until(lambda: numsub(redis_server) == 2)
    sent = iter(range(1_000_000))

    def load() -> None:  # B publishes every 10 ms through its member
        while True:
            wb.send(f"n{next(sent)}")
            gevent.sleep(0.01)

    loader = gevent.spawn(load)
    numbers: list[int] = []
    try:
        numbers.append(int(drain_gaps(ca, wa)[1:]))
        proxy.cut()
        wait_until(lambda: ca.get("/readyz").status == 503)
        wa.send("from A during the cut")  # local delivery works, the publish is counted
        wait_until(lambda: a.metrics.drops.get("backplane", 0) >= 1)
        gevent.sleep(3.0)  # the outage itself (scenario time, not a wait for startup)
        proxy.restore()
        restored, resumed = time.monotonic(), 0.0
        seen_gap, after = False, 0
        while after < 20:
            message = str(ca.receive(wa))
            if message.startswith('{"event":"_gap"'):
                seen_gap = True
            elif message.startswith("n"):
                numbers.append(int(message[1:]))
                after += seen_gap
                resumed = resumed or (seen_gap and time.monotonic())
        assert resumed - restored < 2.0  # the battery's bound: delivery back within 2 s
        wait_until(lambda: numsub(redis_server) == 2)  # resubscribed: one per node again
    finally:
        loader.kill()
    assert seen_gap  # A's members were told they may have missed messages
    assert numbers == sorted(set(numbers))  # never a duplicate, never out of order
    assert numbers[-1] - numbers[0] + 1 > len(numbers)  # the cut lost some: hence the notice
    # B's member is told about the publishes A dropped (the gap envelope went out)
    wait_until(lambda: _got_gap(cb, wb))


def _got_gap(client: Any, ws: Any) -> bool:
    try:
        message = str(client.receive(ws, timeout=0.5))
    except TimeoutError:
        return False
    return message.startswith('{"event":"_gap"')


def _errors(redis: Any, kind: str) -> int:
    """How many error replies of ``kind`` (``OOM``, ``NOPERM``) Redis has sent so far."""
    return int(redis.info("errorstats").get(f"errorstat_{kind}", {}).get("count", 0))


def test_defect4_presence_refused_with_oom_is_retried_after_memory_frees(
    redis_server: Any, chat_nodes: Any
) -> None:
    (a, ca), (b, cb) = chat_nodes(redis_server.url), chat_nodes(redis_server.url)
    join_chat(ca), join_chat(cb)
    ready(ca, cb)
    wait_until(lambda: b.rooms.count("t", cluster=True) == 2)
    redis = redis_server.client()
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", 1)  # every write is refused with OOM from now on
    redis.flushall()  # the presence written so far is gone
    wait_until(lambda: b.rooms.count("t", cluster=True) == 1)
    wait_until(lambda: _errors(redis, "OOM") >= 1)
    # both nodes had a presence write refused (each retries every interval)
    wait_until(lambda: all(n.cluster is not None and n.cluster.presence_failures for n in (a, b)))
    redis.config_set("maxmemory", 0)
    wait_until(lambda: a.rooms.count("t", cluster=True) == b.rooms.count("t", cluster=True) == 2)
    assert ca.get("/readyz").status == 200


def test_defect4_publish_refused_with_noperm_is_counted_and_recovers(
    redis_server: Any, chat_nodes: Any
) -> None:
    (a, ca), (_, cb) = chat_nodes(redis_server.url), chat_nodes(redis_server.url)
    wa, wb = join_chat(ca), join_chat(cb)
    ready(ca, cb)
    wait_until(lambda: numsub(redis_server) == 2)
    redis = redis_server.client()
    redis.execute_command("ACL", "SETUSER", "default", "-publish")
    try:
        wa.send("refused")
        assert ca.receive(wa) == "refused"  # local delivery is unaffected
        wait_until(lambda: _errors(redis, "NOPERM") >= 1)
        wait_until(lambda: a.metrics.drops.get("backplane", 0) >= 1)
        wait_until(lambda: ca.get("/readyz").status == 503)  # no probe echo comes back
    finally:
        redis.execute_command("ACL", "SETUSER", "default", "+publish")
    ready(ca, cb)
    wa.send("after")
    assert drain_gaps(cb, wb) == "after"  # broadcasts leave the node again
    assert ca.get("/readyz").status == 200


def test_rd02_restart_redis_nodes_resubscribe(redis_server: Any, chat_nodes: Any) -> None:
    (a, ca), (_, cb) = chat_nodes(redis_server.url), chat_nodes(redis_server.url)
    wa, wb = join_chat(ca), join_chat(cb)
    ready(ca, cb)
    wait_until(lambda: numsub(redis_server) == 2)
    redis_server.stop()
    wait_until(lambda: ca.get("/readyz").status == 503 and cb.get("/readyz").status == 503)
    redis_server.start()
    accepting = time.monotonic()
    ready(ca, cb)
    wait_until(lambda: numsub(redis_server) == 2)
    wa.send("after restart")
    assert drain_gaps(cb, wb) == "after restart"
    assert time.monotonic() - accepting < 5.0  # cross-node delivery back within 5 s
    assert a.cluster is not None and a.cluster.failures_total >= 1


def test_rd06_start_with_redis_down(redis_server: Any, chat_nodes: Any) -> None:
    redis_server.stop()
    a, ca = chat_nodes(redis_server.url)
    w1, w2 = join_chat(ca), join_chat(ca)
    assert ca.get("/readyz").status == 503
    w1.send("local only")
    assert ca.receive(w1) == "local only" and ca.receive(w2) == "local only"
    assert a.metrics.drops["backplane"] >= 1
    redis_server.start()
    ready(ca)  # backoff capped at 0.5 s here: ready soon after Redis accepts connections
    _, cb = chat_nodes(redis_server.url)
    wb = join_chat(cb)
    ready(cb)
    wait_until(lambda: numsub(redis_server) == 2)
    wb.send("cross")
    assert drain_gaps(ca, w1) == "cross"


# -- separate processes -------------------------------------------------------------------------


def _node_env(url: str) -> dict[str, str]:
    return {
        "WSFLASK_BACKPLANE": url,
        "WSFLASK_BACKPLANE_INTERVAL": "1.0",
        "WSFLASK_BACKPLANE_BACKOFF_MAX": "0.5",
        "WSFLASK_SHUTDOWN_GRACE": "3",
        "WSFLASK_CLOSE_TIMEOUT": "1",
    }


def _member(port: int, room: str = "t") -> tuple[Any, dict[str, Any]]:
    ws = connect(f"ws://127.0.0.1:{port}/r/{room}", timeout=10)
    hello = json.loads(str(ws.receive(timeout=10)))
    return ws, hello


def test_pr01_kill9_node_clients_move_and_presence_expires(
    redis_server: Any, wsflask_run: Any
) -> None:
    env = _node_env(redis_server.url)
    node_a, node_b = (
        wsflask_run("tests.backplane_node:app", "--port", "0", env=env) for _ in range(2)
    )
    port_a, port_b = node_a.wait_serving(), node_b.wait_serving()
    wa, hello_a = _member(port_a)
    wb, _ = _member(port_b)
    wait_until(lambda: numsub(redis_server) == 2)
    wait_until(lambda: _count(port_b) == 2)
    os.kill(node_a.proc.pid, signal.SIGKILL)
    node_a.proc.wait(timeout=10)
    assert wa.receive(timeout=10) is None and wa.close_code == 1006
    moved, _ = _member(port_b)  # A's client reconnects to B
    wait_until(lambda: _count(port_b) == 2)  # A's presence expired within its TTL (3 s)
    node = hello_a["hello"].split(".")[0]
    assert not redis_server.client().exists(f"wsflask:presence:{node}")
    wb.send("still here")
    assert moved.receive(timeout=10) == "still here"
    for ws in (moved, wb):
        ws.close()


def _count(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count/t", timeout=5) as answer:
        return int(answer.read())


def test_pr03_sigterm_drains_with_1001_and_leaves_redis(
    redis_server: Any, wsflask_run: Any
) -> None:
    node = wsflask_run("tests.backplane_node:app", "--port", "0", env=_node_env(redis_server.url))
    port = node.wait_serving()
    ws, hello = _member(port)
    wait_until(lambda: numsub(redis_server) == 1)
    node.proc.send_signal(signal.SIGTERM)
    assert ws.receive(timeout=10) is None and ws.close_code == 1001
    assert node.wait_exit(timeout=20) == 0
    assert numsub(redis_server) == 0
    node_id = hello["hello"].split(".")[0]
    assert not redis_server.client().exists(f"wsflask:presence:{node_id}")


def _status(port: int, path: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def _chat(ws: Any, timeout: float = 10.0) -> str:
    """The next message on ``ws`` that is not a gap notice (those must still be JSON)."""
    while True:
        message = ws.receive(timeout=timeout)
        assert isinstance(message, str), f"connection ended or wrong type: {message!r}"
        if not message.startswith('{"event":"_gap"'):
            return message
        json.loads(message)


def _collect(ws: Any, into: list[str], stop: list[bool]) -> None:
    """Append every message ``ws`` receives to ``into`` until ``stop[0]`` or the close."""
    while not stop[0]:
        try:
            message = ws.receive(timeout=0.5)
        except TimeoutError:
            continue
        if message is None:
            return
        into.append(str(message))


def test_pr02_kill9_during_publish_storm_no_corrupt_message(
    redis_server: Any, wsflask_run: Any
) -> None:
    env = _node_env(redis_server.url)
    node_a, node_b = (
        wsflask_run("tests.backplane_node:app", "--port", "0", env=env) for _ in range(2)
    )
    port_a, port_b = node_a.wait_serving(), node_b.wait_serving()
    senders = [_member(port_a)[0] for _ in range(3)]
    subscribers = [_member(port_b)[0] for _ in range(2)]
    fresh_sender, _ = _member(port_b)
    wait_until(lambda: numsub(redis_server) == 2)
    wait_until(lambda: _count(port_b) == 6)
    sent: dict[str, tuple[int, int]] = {}  # message -> (sender, sequence number)
    got: list[list[str]] = [[] for _ in subscribers]
    stop = [False]

    def storm(n: int, ws: Any) -> None:
        for i in range(1_000_000):
            body = json.dumps({"s": n, "i": i, "pad": chr(97 + (i + n) % 26) * (i * 37 % 3000)})
            sent[body] = (n, i)  # recorded before the send: it may or may not get out
            try:
                ws.send(body)
            except Exception:  # A died under us: the storm is over for this sender
                return
            gevent.sleep(0.002)

    workers = [
        gevent.spawn(_collect, ws, into, stop) for ws, into in zip(subscribers, got, strict=True)
    ]
    workers += [gevent.spawn(_collect, ws, [], stop) for ws in senders]  # drain A's echoes
    storms = [gevent.spawn(storm, n, ws) for n, ws in enumerate(senders)]
    try:
        wait_until(lambda: all(len(into) >= 100 for into in got))  # mid-storm
        # A dies while its clients are still sending: checked at the kill, not after the wait,
        # during which a storm may see A's reset and end (that flaked under load)
        assert not any(s.dead for s in storms)
        os.kill(node_a.proc.pid, signal.SIGKILL)
        node_a.proc.wait(timeout=10)
        gevent.joinall(storms, timeout=15, raise_error=True)
        assert _status(port_b, "/readyz") == 200
        fresh_sender.send("fresh")  # B keeps serving
        wait_until(lambda: all("fresh" in into for into in got))
        stop[0] = True
        gevent.joinall(workers, timeout=10)
        for ws, into in zip(subscribers, got, strict=True):  # anything of A's still in flight
            while True:
                try:
                    message = ws.receive(timeout=0.5)
                except TimeoutError:
                    break
                assert message is not None, "B closed a subscriber"
                into.append(str(message))
    finally:
        stop[0] = True
        gevent.killall(storms + workers, timeout=5)
        for ws in [*senders, *subscribers, fresh_sender]:
            ws.close()
    for into in got:
        assert into.count("fresh") == 1
        chat = [m for m in into if m != "fresh" and not m.startswith('{"event":"_gap"')]
        for message in chat:
            assert message in sent, f"partial or corrupt message: {message[:80]!r}"
            assert json.loads(message)["i"] == sent[message][1]
        assert len(chat) == len(set(chat)), "a message was delivered twice"
        for n in range(len(senders)):
            numbers = [sent[m][1] for m in chat if sent[m][0] == n]
            assert numbers == sorted(numbers), f"sender {n} out of order"


def test_pr04_restart_redis_and_node_together_converges(
    redis_server: Any, wsflask_run: Any
) -> None:
    env = _node_env(redis_server.url)
    node_a, node_b = (
        wsflask_run("tests.backplane_node:app", "--port", "0", env=env) for _ in range(2)
    )
    port_a, port_b = node_a.wait_serving(), node_b.wait_serving()
    wa, _ = _member(port_a)
    wb, _ = _member(port_b)
    members = [wa, wb]
    try:
        wait_until(lambda: numsub(redis_server) == 2)
        wait_until(lambda: _count(port_b) == 2)
        os.kill(node_a.proc.pid, signal.SIGKILL)  # the combined fault
        redis_server.stop()
        node_a.proc.wait(timeout=10)
        wait_until(lambda: _status(port_b, "/readyz") == 503)
        redis_server.start()
        node_a2 = wsflask_run("tests.backplane_node:app", "--port", "0", env=env)
        port_a2 = node_a2.wait_serving()
        wait_until(lambda: _status(port_b, "/readyz") == 200)
        wait_until(lambda: _status(port_a2, "/readyz") == 200)
        wa2, _ = _member(port_a2)
        members.append(wa2)
        wait_until(lambda: numsub(redis_server) == 2)  # B resubscribed, A's new process too
        wa2.send("from new A")
        assert _chat(wb) == "from new A"
        wb.send("from B")
        assert _chat(wa2) == "from new A" and _chat(wa2) == "from B"
        # presence: the old A is gone, B re-wrote its memberships into the new Redis
        wait_until(lambda: _count(port_b) == 2 and _count(port_a2) == 2)
        extra, _ = _member(port_a2)
        members.append(extra)
        wait_until(lambda: _count(port_b) == 3 and _count(port_a2) == 3)
    finally:
        for ws in members:
            ws.close()
