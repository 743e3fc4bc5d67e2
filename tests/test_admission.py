"""Admission control over real sockets: per-IP handshake rate (429), hysteresis on the cap,
the soft limit's delay, the resource check (503) and reserved priority slots.

Clocks and the resource probe are injected into ``Admission``; servers bind 127.0.0.1:0.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import SERVER_FAST, wait_until

from wsflask.admission import Admission
from wsflask.client import connect
from wsflask.config import Config
from wsflask.errors import HandshakeRejected
from wsflask.server import Upgrade
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


def url(server: Any, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.server_port}{path}"


def refused(server: Any, path: str = "/") -> HandshakeRejected:
    with pytest.raises(HandshakeRejected) as info:
        connect(url(server, path), timeout=5)
    return info.value


def start(serve: Any, config: Config, *, probe: Any = None, clock: Any = None, **kw: Any) -> Any:
    admission = Admission(config, probe=probe or (lambda: {}), clock=clock or Clock())
    return serve(echo, config=config, admission=admission, **kw)


def test_rate_limit_answers_429_then_recovers_after_the_window(serve: Any) -> None:
    clock = Clock()
    config = Config(**SERVER_FAST, connection_rate_per_ip=5, connection_rate_window=1.0)
    server = start(serve, config, clock=clock)
    clients = [connect(url(server), timeout=5) for _ in range(5)]
    rejection = refused(server)
    assert rejection.status == 429
    assert ("retry-after", "1") in rejection.headers
    clock.now += 1.1
    clients.append(connect(url(server), timeout=5))  # the window refilled
    for client in clients:
        client.close()


def test_full_server_accepts_again_only_below_95_percent(serve: Any) -> None:
    server = start(serve, Config(**SERVER_FAST, max_connections=20))
    clients = [connect(url(server), timeout=5) for _ in range(20)]
    assert refused(server).status == 503
    clients.pop().close()
    wait_until(lambda: len(server.pool) == 19, timeout=5)
    assert refused(server).status == 503  # 19 of 20 is not below 95 %
    clients.pop().close()
    wait_until(lambda: len(server.pool) == 18, timeout=5)
    clients.append(connect(url(server), timeout=5))
    for client in clients:
        client.close()


def _handshake_seconds(server: Any) -> float:
    started = time.monotonic()
    client = connect(url(server), timeout=5)
    elapsed = time.monotonic() - started
    client.close()
    return elapsed


def test_soft_limit_delays_acceptance_above_80_percent(serve: Any) -> None:
    delay = 0.2
    config = Config(**SERVER_FAST, max_connections=10, new_connection_delay=delay)
    server = start(serve, config)
    clients = [connect(url(server), timeout=5) for _ in range(8)]  # 8 of 10: not above 80 %
    clients.append(connect(url(server), timeout=5))  # 9: above 80 % from now on
    assert _handshake_seconds(server) >= delay
    for _ in range(2):  # 7 open: still at or over 70 %, still slow
        clients.pop().close()
    wait_until(lambda: len(server.pool) == 7, timeout=5)
    assert _handshake_seconds(server) >= delay
    clients.pop().close()  # 6: below 70 %
    wait_until(lambda: len(server.pool) == 6, timeout=5)
    assert _handshake_seconds(server) < delay
    for client in clients:
        client.close()


def test_memory_pressure_answers_503_insufficient_resources(serve: Any, raw_peer: Any) -> None:
    clock = Clock()
    sample = {"memory": 0.5, "fds": 0.1}
    config = Config(**SERVER_FAST, resource_threshold=0.85)
    server = start(serve, config, probe=lambda: dict(sample), clock=clock)
    connect(url(server), timeout=5).close()
    sample["memory"] = 0.9
    clock.now += 1.0  # the next sample is due
    answer = raw_peer(server.server_port).read_until_eof(timeout=5)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"insufficient resources: memory 0.90 >= 0.85" in answer
    assert b"Retry-After: 5" in answer
    sample["memory"] = 0.5
    clock.now += 1.0
    connect(url(server), timeout=5).close()


def test_resource_probe_is_sampled_at_most_once_a_second(serve: Any) -> None:
    calls: list[float] = []
    clock = Clock()

    def probe() -> dict[str, float]:
        calls.append(clock.now)
        return {"fds": 0.1}

    server = start(serve, Config(**SERVER_FAST), probe=probe, clock=clock)  # default threshold 0.95
    for _ in range(3):
        connect(url(server), timeout=5).close()
    assert len(calls) == 1
    clock.now += 1.0
    connect(url(server), timeout=5).close()
    assert len(calls) == 2


def test_reserved_slots_admit_priority_connections_when_full(serve: Any) -> None:
    def resolve(request: Any, address: Any) -> Upgrade:
        # a before_upgrade hook's session: {"priority": True} for operators
        return Upgrade(echo, session={"priority": request.path == "/ops"})

    config = Config(**SERVER_FAST, max_connections=10, reserved_connections=1)
    admission = Admission(config, probe=lambda: {}, clock=Clock())
    server = serve(resolve=resolve, config=config, admission=admission)
    clients = [connect(url(server), timeout=5) for _ in range(9)]
    rejection = refused(server)
    assert rejection.status == 503 and b"reserved" in rejection.body
    wait_until(lambda: len(server.pool) == 9, timeout=5)
    operator = connect(url(server, "/ops"), timeout=5)
    operator.send("hi")
    assert operator.receive(timeout=5) == "hi"
    clients.append(operator)
    for client in clients:
        client.close()


def test_per_ip_buckets_are_bounded() -> None:
    from wsflask import admission as module

    clock = Clock()
    gate = Admission(Config(connection_rate_per_ip=2, connection_rate_window=1.0),
                     probe=lambda: {}, clock=clock)  # fmt: skip
    for index in range(module.MAX_BUCKETS):
        assert gate.check(f"10.0.{index // 256}.{index % 256}", 0) is None
    clock.now += 5  # every bucket refilled: idle
    assert gate.check("192.0.2.1", 0) is None
    assert len(gate._buckets) == 1
