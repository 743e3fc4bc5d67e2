"""Graceful degradation: the resource monitor's levels, quality levels, load shedding, the
handshake circuit breaker, the error classifier, partition counting, and the checkpoint that
drives a server over its limits and back.

Pressure comes from an injected probe and the monitors are stepped by hand (``run_once``);
the breaker's clock is injected. Servers bind 127.0.0.1:0.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable
from typing import Any, cast

import pytest
from helpers import SERVER_FAST, wait_until

from wsflask import App
from wsflask.admission import Admission
from wsflask.breaker import Breaker, CircuitBreaker
from wsflask.classify import classify
from wsflask.client import connect
from wsflask.config import Config
from wsflask.degradation import Degrader, Level, ResourceMonitor
from wsflask.errors import ConnectionClosed, HandshakeRejected, Reject
from wsflask.heartbeat import Heartbeat
from wsflask.metrics import Metrics
from wsflask.protocol import CloseCode, InvalidPayloadData, NotFound, ProtocolError
from wsflask.resources import system_probe
from wsflask.server import Upgrade
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Pressure:
    """An injected probe: set ``memory`` to simulate pressure."""

    def __init__(self) -> None:
        self.memory = 0.1

    def __call__(self) -> dict[str, float]:
        return {"memory": self.memory, "fds": 0.01}


def echo(ws: WebSocket) -> None:
    for message in ws:
        ws.send(message)


def url(server: Any, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.server_port}{path}"


# -- ResourceMonitor (ER-20 / ER-22) ---------------------------------------------------------------


def test_resource_monitor_emits_warning_and_critical(caplog: pytest.LogCaptureFixture) -> None:
    probe = Pressure()
    monitor = ResourceMonitor(probe, threshold=0.85)
    caplog.set_level(logging.WARNING, "wsflask.degradation")
    seen = []
    for memory in (0.8, 0.9, 1.0, 0.88, 0.82, 0.79):
        probe.memory = memory
        seen.append(monitor.update())
    assert seen == [
        Level.NORMAL, Level.WARNING, Level.CRITICAL,  # 1.0 > 1.1 x 0.85
        Level.WARNING,  # 0.88 is below the critical exit point (1.1 x 0.85 - 0.05)
        Level.WARNING,  # 0.82: inside the hysteresis band, stays
        Level.NORMAL,
    ]  # fmt: skip
    levels = [r.levelno for r in caplog.records if r.name == "wsflask.degradation"]
    assert levels == [logging.WARNING, logging.CRITICAL, logging.WARNING, logging.WARNING]
    assert monitor.pressure({"memory": 0.5, "fds": 0.6}) == pytest.approx(0.6 / 0.85)
    assert monitor.pressure({"loop_lag": 0.2}) == pytest.approx(2.0)  # lag: 0.1 s scale


def test_system_probe_reads_real_ratios() -> None:
    sample = system_probe()
    assert 0.0 < sample["memory"] < 1.0
    assert 0.0 < sample["fds"] < 1.0


# -- quality levels (ER-21 / ER-25) ----------------------------------------------------------------


def test_elevated_level_doubles_ping_interval_and_delays_accepts() -> None:
    probe = Pressure()
    heartbeat = Heartbeat(10.0, 5.0)
    admission = Admission(Config(), probe=lambda: {}, clock=Clock())
    degrader = Degrader(
        ResourceMonitor(probe, threshold=0.85),
        connections=set(),
        admission=admission,
        heartbeat=heartbeat,
        slow_accept=0.05,
    )
    assert degrader.run_once() is Level.NORMAL
    assert (heartbeat.interval, admission.handshake_delay(0)) == (10.0, 0.0)
    probe.memory = 0.9
    assert degrader.run_once() is Level.WARNING
    assert (heartbeat.interval, admission.handshake_delay(0)) == (20.0, 0.05)
    assert admission.check("127.0.0.1", 0) is None  # slowed, not refused
    probe.memory = 0.5
    assert degrader.run_once() is Level.NORMAL
    assert (heartbeat.interval, admission.handshake_delay(0)) == (10.0, 0.0)


# -- load shedding (ER-23 / ER-24) -----------------------------------------------------------------


def priority_resolver(request: Any, address: Any) -> Upgrade:
    return Upgrade(echo, session={"priority": request.path == "/critical"})


def test_shedding_closes_low_priority_idle_first_and_stops_below_threshold(serve: Any) -> None:
    probe = Pressure()
    server = serve(resolve=priority_resolver, config=Config(**SERVER_FAST))
    critical = [connect(url(server, "/critical"), timeout=5) for _ in range(5)]
    low = [connect(url(server), timeout=5) for _ in range(15)]
    wait_until(lambda: len(server.connections) == 20, timeout=5)
    for client in low[10:]:  # the last five are busy: they are shed last
        client.send("busy")
        assert client.receive(timeout=5) == "busy"
    degrader = Degrader(
        ResourceMonitor(probe, threshold=0.85),
        connections=server.connections,
        admission=server.admission,
        shed_batch=5,
    )
    probe.memory = 0.99  # critical
    assert degrader.run_once() is Level.CRITICAL
    assert degrader.shed == 5
    probe.memory = 0.9  # warning: shedding goes on until pressure is below the threshold
    degrader.run_once()
    assert degrader.shed == 10
    for client in low[:10]:  # the idle ones went first, with 1013
        assert client.receive(timeout=5) is None
        assert client.close_code == CloseCode.TRY_AGAIN_LATER
    probe.memory = 0.5  # normal: shedding stops
    assert degrader.run_once() is Level.NORMAL and not degrader.shedding
    assert degrader.shed == 10
    for client in critical + low[10:]:
        client.send("still here")
        assert client.receive(timeout=5) == "still here"
        client.close()


# -- circuit breaker (ER-26) -----------------------------------------------------------------------


def test_handshake_circuit_opens_on_error_rate_and_half_opens(serve: Any) -> None:
    clock = Clock()
    calls: list[str] = []
    broken = [True]

    def resolve(request: Any, address: Any) -> Upgrade:
        calls.append(request.path)
        if broken[0]:
            raise Reject(500, "auth backend down")
        return Upgrade(echo)

    metrics = Metrics()
    breaker = CircuitBreaker(3, 5.0, clock=clock)
    server = serve(resolve=resolve, config=Config(**SERVER_FAST), breaker=breaker, metrics=metrics)
    statuses = []
    for _ in range(5):
        with pytest.raises(HandshakeRejected) as info:
            connect(url(server), timeout=5)
        statuses.append(info.value.status)
    assert statuses == [500, 500, 500, 503, 503]
    assert len(calls) == 3  # open: answered at once, the resolver is not asked
    assert breaker.state is Breaker.OPEN
    clock.now += 5.0  # half-open: one trial, which fails: open again
    with pytest.raises(HandshakeRejected):
        connect(url(server), timeout=5)
    assert breaker.state is Breaker.OPEN and len(calls) == 4
    clock.now += 5.0
    broken[0] = False
    client = connect(url(server), timeout=5)  # the trial succeeds: closed
    assert breaker.state is Breaker.CLOSED  # type: ignore[comparison-overlap]  # mypy keeps the OPEN narrowed above
    connect(url(server), timeout=5).close()
    assert metrics.degradations["breaker_open"] == 2
    client.close()


def test_client_errors_do_not_trip_the_breaker(serve: Any) -> None:
    def resolve(request: Any, address: Any) -> Upgrade:
        raise NotFound("nothing here")

    breaker = CircuitBreaker(2, 5.0, clock=Clock())
    server = serve(resolve=resolve, config=Config(**SERVER_FAST), breaker=breaker)
    for _ in range(4):
        with pytest.raises(HandshakeRejected) as info:
            connect(url(server), timeout=5)
        assert info.value.status == 404
    assert breaker.state is Breaker.CLOSED


# -- classifier (ER-03) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "category", "severity", "code"),
    [
        (ProtocolError("x"), "protocol", logging.WARNING, 1002),
        (InvalidPayloadData("x"), "protocol", logging.WARNING, 1007),
        (NotFound("x"), "client", logging.INFO, 1008),
        (MemoryError(), "resource", logging.CRITICAL, 1013),
        (OSError(errno.EMFILE, "too many open files"), "resource", logging.ERROR, 1013),
        (ConnectionResetError(), "network", logging.INFO, 1006),
        (ConnectionClosed(1000, ""), "network", logging.INFO, 1006),
        (OSError(errno.EIO, "io"), "network", logging.WARNING, 1006),
        (KeyError("x"), "internal", logging.ERROR, 1011),
    ],
)
def test_classify_maps_errors_to_category_severity_code(
    exc: BaseException, category: str, severity: int, code: int
) -> None:
    result = classify(exc)
    assert (result.category, result.severity, result.code) == (category, severity, code)


# -- partition detection (ER-27) -------------------------------------------------------------------


def test_partitioned_peer_is_detected_and_counted(
    app_factory: Callable[..., App], raw_peer: Any
) -> None:
    app = app_factory(ping_interval=0.2, pong_timeout=0.2)
    route = app.route("/")

    @route.on("message")
    def on_message(ws: WebSocket, message: Any) -> None:
        pass

    with app.test_client() as client:
        peer = raw_peer(client.port)  # stops reading and writing, socket left open
        assert peer.request().startswith(b"HTTP/1.1 101")
        wait_until(lambda: app.metrics.degradations.get("partition") == 1, timeout=5)
        assert app.metrics.close_codes[CloseCode.INTERNAL_ERROR] == 1
        assert 'websocket_degradation_events_total{event="partition"} 1' in app.metrics.render()


# -- the checkpoint (TS-17) ------------------------------------------------------------------------


def test_low_limits_shed_low_priority_keep_critical_and_recover(
    app_factory: Callable[..., App], raw_peer: Any
) -> None:
    probe = Pressure()
    app = app_factory(max_connections=20, circuit_breaker_failures=2, circuit_breaker_reset=5.0)
    route = app.route("/room/<name>", json=True)
    auth_down = [False]

    @app.before_upgrade
    def login(request: Any) -> dict[str, Any]:
        if auth_down[0]:
            raise RuntimeError("auth backend down")  # a hook failure: 500
        return {"priority": "critical=1" in request.query}

    @route.on("connect")
    def joined(ws: WebSocket, name: str) -> None:
        app.rooms.join(name, ws)

    @route.on("say")
    def say(ws: WebSocket, data: Any, name: str) -> None:
        app.emit("said", data, to=name)

    with app.test_client() as client:
        assert client.port  # starts the server
        server = app.server
        assert server is not None
        clock = Clock()
        server.breaker = CircuitBreaker(2, 5.0, clock=clock)
        server.admission = Admission(app.config, probe=lambda: {}, clock=clock)
        degrader = Degrader(
            ResourceMonitor(probe, threshold=0.85),
            connections=server.connections,
            admission=server.admission,
            heartbeat=app.heartbeat,
            shed_batch=100,
            note=server._note,
        )
        critical = [client.connect("/room/a?critical=1") for _ in range(4)]
        low = [client.connect("/room/a") for _ in range(8)]
        wait_until(lambda: len(server.connections) == 12, timeout=5)

        # 1. pressure: new handshakes are rejected
        probe.memory = 0.99
        assert degrader.run_once() is Level.CRITICAL
        with pytest.raises(HandshakeRejected) as info:
            client.connect("/room/a")
        assert info.value.status == 503 and b"overloaded" in info.value.body

        # 2. the low-priority connections were shed with 1013, the critical ones survive
        for ws in low:
            assert ws.receive(timeout=5) is None and ws.close_code == CloseCode.TRY_AGAIN_LATER
        wait_until(lambda: len(server.connections) == 4, timeout=5)
        critical[0].send(json.dumps({"event": "say", "data": "under pressure"}))
        for ws in critical:
            assert json.loads(cast(str, ws.receive(timeout=5))) == {
                "event": "said",
                "data": "under pressure",
            }

        # 3. pressure eases to a warning (handshakes admitted, slowed); the auth backend
        #    fails: the breaker trips and answers 503 without asking the hooks
        probe.memory = 0.86
        assert degrader.run_once() is Level.WARNING
        auth_down[0] = True
        statuses = []
        for _ in range(3):
            with pytest.raises(HandshakeRejected) as info:
                client.connect("/room/a")
            statuses.append(info.value.status)
        assert statuses == [500, 500, 503]
        assert server.breaker.state is Breaker.OPEN

        # 4. everything recovers once pressure and the failure are gone
        probe.memory = 0.3
        auth_down[0] = False
        clock.now += 5.0
        assert degrader.run_once() is Level.NORMAL
        assert app.heartbeat.interval == app.config.ping_interval
        again = [client.connect("/room/a") for _ in range(8)]
        assert server.breaker.state is Breaker.CLOSED  # type: ignore[comparison-overlap]  # mypy keeps the OPEN narrowed above
        again[0].send(json.dumps({"event": "say", "data": "back"}))
        for ws in critical + again:
            assert json.loads(cast(str, ws.receive(timeout=5))) == {"event": "said", "data": "back"}

        # 5. nothing accepted was lost silently: every message the server took in was
        #    answered, and what it discarded or refused is counted in /metrics
        text = app.metrics.render()
        assert app.metrics.messages_in == 2
        assert app.metrics.messages_out == 4 + 12  # both "said" fan-outs, all delivered
        assert app.metrics.degradations == {"shed": 8, "breaker_open": 1}
        assert 'websocket_degradation_events_total{event="shed"} 8' in text
        assert app.metrics.handshakes[503] == 2 and app.metrics.handshakes[500] == 2
        for ws in critical + again:
            ws.close()
