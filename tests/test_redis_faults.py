"""Redis faults the backplane must survive: RD-04 (output-buffer limits) and RD-05 (Cluster).

RD-04 runs a real ``redis-server`` with ``client-output-buffer-limit pubsub`` lowered: a burst
published by another process while slow WebSocket members never read must not stall the node's
subscriber (Redis never disconnects it, every healthy member gets every message); a node frozen
while Redis overflows its buffer is disconnected by Redis and recovers as in RD-01
(resubscribed, a gap notice, delivery resumes). RD-05: Redis Cluster is unsupported, and
``open_backplane`` must refuse a cluster URL with an error that says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import gevent.monkey
import gevent.subprocess
import pytest
from helpers import join_chat, wait_until

from wsflask.backplane import Emitter, open_backplane
from wsflask.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ROOM = "wsflask:room:t"
GAP = '{"event":"_gap"'

#: Publishes argv[2] messages of argv[3] bytes to room "t" from a process without gevent.
PUBLISHER = """
    import sys
    from wsflask.backplane import Emitter
    url, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Emitter(url) as emitter:
        for i in range(count):
            emitter.send(f"{i}:".ljust(size, "x"), to="t")
    print("published", count, flush=True)
"""


def _publisher_argv(url: str, count: int, size: int) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(PUBLISHER), url, str(count), str(size)]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ, PYTHONPATH=str(ROOT))


def numsub(redis_server: Any) -> int:
    return int(dict(redis_server.client().pubsub_numsub(ROOM))[ROOM.encode()])


def subscribers(redis_server: Any) -> set[int]:
    """Ids of the pub/sub connections Redis holds (the node's subscriber): a connection Redis
    dropped for its output buffer disappears and its successor has a new id."""
    return {int(c["id"]) for c in redis_server.client().client_list(_type="pubsub")}


def test_rd04_slow_members_never_stall_the_subscriber_during_a_burst(
    redis_server: Any, chat_nodes: Any, raw_peer: Any
) -> None:
    redis_server.client().config_set("client-output-buffer-limit", "pubsub 1mb 512kb 5")
    app, client = chat_nodes(redis_server.url)
    healthy = join_chat(client)
    port = app.server.server_port
    slow = [raw_peer(port, rcvbuf=4096) for _ in range(20)]
    for peer in slow:  # upgraded, then never read again
        assert peer.request("/r/t").startswith(b"HTTP/1.1 101")
    wait_until(lambda: client.get("/readyz").status == 200)
    wait_until(lambda: numsub(redis_server) == 1)
    assert app.cluster is not None
    before, failures = subscribers(redis_server), app.cluster.failures_total
    assert len(before) == 1
    count, size = 1500, 1024  # 1.5 MiB in one burst: over the 1 MiB hard limit
    publisher = gevent.subprocess.Popen(
        _publisher_argv(redis_server.url, count, size), env=_env(), stdout=subprocess.PIPE
    )
    try:
        got = [str(client.receive(healthy)) for _ in range(count)]
        assert publisher.wait(timeout=60) == 0
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()
    assert [int(m.partition(":")[0]) for m in got] == list(range(count))  # none lost, in order
    assert subscribers(redis_server) == before, "Redis dropped the node's subscriber"
    assert app.cluster.failures_total == failures and numsub(redis_server) == 1
    for peer in slow:  # each slow member got every message in order, or a Close 1013
        assert _rest_of(peer, count) in ("all", "1013")


def _rest_of(peer: Any, count: int) -> str:
    """Read a slow member's stream: "all" if every message came in order, "1013" if it was
    closed with 1013 after an in-order prefix (its outbox bound); fails on anything else."""
    opcode, _ = peer.read_frame(timeout=10)  # the hello
    assert opcode == 1
    for n in range(count):
        opcode, payload = peer.read_frame(timeout=10)
        if opcode == 8:
            assert payload[:2] == (1013).to_bytes(2, "big"), payload
            return "1013"
        assert (opcode, payload.partition(b":")[0]) == (1, str(n).encode())
    return "all"


def _run_blocking(argv: list[str], env: dict[str, str]) -> bytes:
    """Run ``argv`` and block the whole process (the hub too) until it exits.

    The child is started as usual; the wait uses the original ``os.waitpid`` and
    ``time.sleep``, which block even after an earlier test monkey-patched this process
    (locust on import, ``wsflask run`` in-process), so the node reads nothing meanwhile.
    """
    waitpid = gevent.monkey.get_original("os", "waitpid")
    sleep = gevent.monkey.get_original("time", "sleep")
    clock = gevent.monkey.get_original("time", "monotonic")
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = clock() + 120
        while True:
            pid, status = waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            assert clock() < deadline, "the publisher did not finish in 120 s"
            sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        assert proc.returncode == 0, f"publisher exited {proc.returncode}"
        out.seek(0)
        return out.read()


def test_rd04_a_node_redis_disconnects_for_its_buffer_recovers_as_rd01(
    redis_server: Any, chat_nodes: Any
) -> None:
    redis_server.client().config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
    app, client = chat_nodes(redis_server.url)
    healthy = join_chat(client)
    wait_until(lambda: client.get("/readyz").status == 200)
    wait_until(lambda: numsub(redis_server) == 1)
    assert app.cluster is not None
    before, failures = subscribers(redis_server), app.cluster.failures_total
    # Blocking this whole process, node included: its subscriber reads nothing while 40 MiB
    # are published, so Redis must hit the limit and drop it.
    output = _run_blocking(_publisher_argv(redis_server.url, 10_000, 4096), _env())
    assert b"published 10000" in output
    assert not subscribers(redis_server) & before, "the freeze did not overflow the buffer"
    wait_until(lambda: app.cluster is not None and app.cluster.failures_total > failures)
    wait_until(lambda: client.get("/readyz").status == 200)  # reconnected, probe echoed
    wait_until(lambda: numsub(redis_server) == 1)  # resubscribed
    with Emitter(redis_server.url) as emitter:
        assert emitter.send("after", to="t") == 1
    seen_gap = False
    while (message := str(client.receive(healthy))) != "after":
        seen_gap = seen_gap or message.startswith(GAP)  # what got through before the cut
    assert seen_gap, "the member was never told that messages were lost"


# -- RD-05: Redis Cluster is refused ---------------------------------------------------------


def test_rd05_a_cluster_scheme_is_refused() -> None:
    with pytest.raises(ConfigError):
        open_backplane("redis+cluster://127.0.0.1:7000/0")


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://127.0.0.1:7000/0",
        "rediss+cluster://127.0.0.1:7000/0",
        "redis://127.0.0.1:7000/0?cluster=true",
    ],
)
def test_rd05_a_cluster_url_is_refused_with_a_clear_error(url: str) -> None:
    try:
        bus = open_backplane(url)
    except ConfigError as exc:
        if "Redis Cluster is not supported" not in str(exc):
            pytest.fail(f"refused, but the error does not say why: {exc}")
        return
    bus.close()
    pytest.fail(f"{url} was accepted")
