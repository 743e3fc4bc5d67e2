"""wsflask against its Python peers, in one run, on pinned cores (issue 7).

Each server (``loadtests/servers/``) runs alone on core 0 (``taskset -c 0``) and the C load
generator ``wsload`` on core 1 (``taskset -c 1``); every scenario gets a fresh server process.
Prints a table with each rival's ratio to wsflask and writes ``loadtests/RESULTS.md``,
``loadtests/results.svg`` and ``loadtests/results.json``. Benchmarks are never tests: nothing
here asserts a speed. See loadtests/README.md.

    python loadtests/rivals.py              # the full run (about 10 minutes)
    python loadtests/rivals.py --quick      # smoke run: short, few connections
    python loadtests/rivals.py --only wsflask,aiohttp --duration 10
    python loadtests/rivals.py --compare OLD.json   # and exit 1 on a wsflask regression

Every process it starts (servers, generator, pip) it stops, also on Ctrl-C or an exception.
Targets are loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS = HERE / "servers"
BUILD = HERE / "build"
WSLOAD_SRC = HERE / "wsload.c"
WSLOAD = BUILD / "wsload"
RIVALS_VENV = HERE / ".venv-rivals"
RIVALS_REQUIREMENTS = HERE / "requirements-rivals.txt"
OPTIONAL_PACKAGES = ("picows",)  # installed on its own: a rival that cannot install is skipped
CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_TARGET = 15_000


@dataclass(frozen=True)
class ServerSpec:
    name: str
    script: str
    package: str  # the PyPI distribution whose version the results name
    venv: str = "rivals"  # "main": the repository's .venv (wsflask, gevent); else .venv-rivals


SERVER_SPECS: tuple[ServerSpec, ...] = (
    ServerSpec("wsflask", "wsflask_server.py", "wsflask", venv="main"),
    # the thinnest gevent echo, on wsflask's own gevent: the floor of any gevent framework
    ServerSpec("calibration", "calibration.py", "gevent", venv="main"),
    ServerSpec("gevent-websocket", "rival_gevent_websocket.py", "gevent-websocket"),
    ServerSpec("websockets", "rival_websockets.py", "websockets"),
    ServerSpec("aiohttp", "rival_aiohttp.py", "aiohttp"),
    ServerSpec("tornado", "rival_tornado.py", "tornado"),
    ServerSpec("picows", "rival_picows.py", "picows"),
    ServerSpec("flask-sock", "rival_flask_sock.py", "flask-sock"),
)


@dataclass(frozen=True)
class Extra:
    """A further table row from the same cell: one statistic of a wsload latency object."""

    field: str  # "latency_us" or "handshake_latency_us"
    stat: str  # "mean", "p99", "max", ...
    title: str  # appended to the scenario's title


P99_DELIVERY = (Extra("latency_us", "p99", "p99 delivery latency"),)
HANDSHAKE_LATENCY = tuple(
    Extra("handshake_latency_us", stat, f"latency {stat} (connect to 101)")
    for stat in ("mean", "p99", "max")
)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    args: tuple[str, ...]  # wsload arguments besides host/port/duration
    quick_args: tuple[str, ...]
    metric: str  # "msg_per_s", "handshakes_per_s", "latency_p99", "rss_per_conn_kib"
    unit: str
    higher_is_better: bool = True
    extra: tuple[Extra, ...] = ()  # more rows (all lower-is-better latencies, in us)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "echo20",
        "echo 100 x 20 B",
        ("--mode", "echo", "-c", "100", "-s", "20"),
        ("--mode", "echo", "-c", "10", "-s", "20"),
        "msg_per_s",
        "msg/s",
    ),
    Scenario(
        "echo16k",
        "echo 100 x 16 KiB",
        ("--mode", "echo", "-c", "100", "-s", "16384", "--binary"),
        ("--mode", "echo", "-c", "10", "-s", "16384", "--binary"),
        "msg_per_s",
        "msg/s",
    ),
    # 1 MiB is wsflask's default max_message_size (accepted: the limit is inclusive); few
    # connections, one message in flight each, so a few MiB are in flight in all
    Scenario(
        "echo1m",
        "echo 4 x 1 MiB",
        ("--mode", "echo", "-c", "4", "-s", "1048576", "--binary"),
        ("--mode", "echo", "-c", "2", "-s", "1048576", "--binary"),
        "msg_per_s",
        "msg/s",
    ),
    Scenario(
        "echo_rate",
        "echo 100 x 20 B at 2,000 msg/s: p99",
        ("--mode", "echo", "-c", "100", "-s", "20", "--rate", "2000"),
        ("--mode", "echo", "-c", "10", "-s", "20", "--rate", "200"),
        "latency_p99",
        "us",
        higher_is_better=False,
    ),
    Scenario(
        "bcast100",
        "broadcast to 100",
        ("--mode", "broadcast", "-c", "100", "-s", "32", "--delack"),
        ("--mode", "broadcast", "-c", "10", "-s", "32", "--delack"),
        "msg_per_s",
        "deliveries/s",
        extra=P99_DELIVERY,
    ),
    Scenario(
        "bcast1000",
        "broadcast to 1,000",
        ("--mode", "broadcast", "-c", "1000", "-s", "32", "--delack"),
        ("--mode", "broadcast", "-c", "50", "-s", "32", "--delack"),
        "msg_per_s",
        "deliveries/s",
        extra=P99_DELIVERY,
    ),
    Scenario(
        "fanout",
        "fan-out to 100",
        ("--mode", "fanout", "-c", "100", "-s", "4096", "--delack"),
        ("--mode", "fanout", "-c", "10", "-s", "4096", "--delack"),
        "msg_per_s",
        "deliveries/s",
        extra=P99_DELIVERY,
    ),
    Scenario(
        "fanout_slow",
        "fan-out to 100, one not reading",
        ("--mode", "fanout", "-c", "100", "-s", "4096", "--slow", "1", "--delack"),
        ("--mode", "fanout", "-c", "10", "-s", "4096", "--slow", "1", "--delack"),
        "msg_per_s",
        "deliveries/s",
        extra=P99_DELIVERY,
    ),
    Scenario(
        "idle",
        "idle connections: RSS each",
        ("--mode", "idle", "-c", str(IDLE_TARGET), "--concurrency", "128"),
        ("--mode", "idle", "-c", "300"),
        "rss_per_conn_kib",
        "KiB",
        higher_is_better=False,
    ),
    Scenario(
        "handshake",
        "handshakes",
        ("--mode", "handshake", "--concurrency", "32"),
        ("--mode", "handshake", "--concurrency", "4"),
        "handshakes_per_s",
        "/s",
        extra=HANDSHAKE_LATENCY,
    ),
)


# --------------------------------------------------------------------- processes


class Processes:
    """Every process this script starts; ``stop_all()`` ends each of them by its id."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(list(argv), **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


PROCS = Processes()


def pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    if cpu is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (/proc/PID/stat fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------- setup


def build_wsload() -> Path:
    """Compile the generator with the machine's gcc when the source is newer."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("gcc is needed to build loadtests/wsload.c")
    BUILD.mkdir(exist_ok=True)
    if not WSLOAD.exists() or WSLOAD.stat().st_mtime < WSLOAD_SRC.stat().st_mtime:
        subprocess.run([gcc, "-O2", "-o", str(WSLOAD), str(WSLOAD_SRC)], check=True, timeout=120)
    return WSLOAD


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_rivals_venv(base_python: str) -> tuple[Path, set[str]]:
    """Create loadtests/.venv-rivals and pip-install the rivals; returns python, skipped."""
    python = venv_python(RIVALS_VENV)
    stamp = RIVALS_VENV / ".installed"
    skipped: set[str] = set()
    if not python.exists():
        subprocess.run([base_python, "-m", "venv", str(RIVALS_VENV)], check=True, timeout=300)
    if not stamp.exists() or stamp.stat().st_mtime < RIVALS_REQUIREMENTS.stat().st_mtime:
        required: list[str] = []
        optional: list[str] = []
        for line in RIVALS_REQUIREMENTS.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name = line.split("=")[0].split(">")[0].split("<")[0].strip().lower()
            (optional if name in OPTIONAL_PACKAGES else required).append(line)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *required], check=True, timeout=900)
        for requirement in optional:
            result = subprocess.run([*pip, requirement], timeout=900, check=False)
            if result.returncode != 0:
                print(
                    f"  {requirement} does not install here: its rival is skipped", file=sys.stderr
                )
                skipped.add(requirement.split("=")[0].strip().lower())
        stamp.write_text("\n".join(sorted(skipped)) + "\n")
    else:
        skipped = {s for s in stamp.read_text().split() if s}
    return python, skipped


def package_versions(python: Path, names: Sequence[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, timeout=60, check=False
    )
    try:
        versions: dict[str, str] = json.loads(result.stdout)
    except ValueError:
        return {}
    return versions


def open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


# --------------------------------------------------------------------- one measurement


@dataclass
class Measurement:
    server: str
    scenario: str
    ok: bool
    value: float | None = None
    note: str = ""
    server_cpu_pct: float | None = None
    generator_cpu_pct: float | None = None
    server_rss_kib: int | None = None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    quick: bool
    duration: float
    warmup: float
    server_cpu: int | None
    generator_cpu: int | None
    idle_connections: int
    logs: Path
    window: int | None = None  # wsload --window for the room rows (None: its default, 4)
    repeat: int = 1  # rounds per cell, servers interleaved within a row; the median is kept
    when: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M %Z"))


def run_generator(
    wsload: Path, port: int, server_pid: int, scenario: Scenario, cfg: Config
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run wsload once; sample the server's CPU and RSS at its phase lines."""
    args = list(scenario.quick_args if cfg.quick else scenario.args)
    duration = cfg.duration
    if scenario.key == "idle":
        args[args.index("-c") + 1] = str(cfg.idle_connections)
    if cfg.window is not None and ("broadcast" in args or "fanout" in args):
        args += ["--window", str(cfg.window)]
        duration = max(duration, 3.0)  # the hold: RSS is read 1.5 s into it
    argv = pinned(
        cfg.generator_cpu,
        [
            str(wsload),
            "--port",
            str(port),
            "-d",
            str(duration),
            "--warmup",
            str(cfg.warmup),
            "--label",
            scenario.key,
            *args,
        ],
    )
    samples: dict[str, float] = {}
    proc = PROCS.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def follow() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            parts = line.split()
            try:
                if parts[:2] == ["#", "phase"] and parts[2] == "measure":
                    samples["t0"] = time.monotonic()
                    samples["ticks0"] = cpu_ticks(server_pid)
                elif parts[:2] == ["#", "phase"] and parts[2] == "done":
                    samples["t1"] = time.monotonic()
                    samples["ticks1"] = cpu_ticks(server_pid)
                    samples["rss_end"] = rss_kib(server_pid)
                elif parts[:2] == ["#", "phase"] and parts[2] == "ready" and scenario.key == "idle":
                    time.sleep(1.5)
                    samples["rss_ready"] = rss_kib(server_pid)
                elif not line.startswith("#"):
                    samples.setdefault("stderr_lines", 0)
                    samples["stderr_lines"] += 1
                    print(f"    wsload: {line.rstrip()}", file=sys.stderr)
            except (OSError, IndexError, ValueError):
                pass

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    limit = duration + cfg.warmup + 90
    try:
        proc.wait(timeout=limit)  # stdout is one short JSON line: the pipe cannot fill
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"wsload did not finish in {limit:.0f} s") from None
    finally:
        PROCS.stop(proc)
    reader.join(5)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wsload printed no result (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result, samples


def measure(
    spec: ServerSpec, python: Path, wsload: Path, scenario: Scenario, cfg: Config
) -> Measurement:
    port = free_port()
    log = cfg.logs / f"{spec.name}-{scenario.key}.log"
    script = SERVERS / spec.script
    with log.open("w") as log_file:
        env = dict(os.environ)
        if spec.venv == "main":  # the repository's wsflask, whatever the venv's install says
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
            )
        server = PROCS.start(
            pinned(cfg.server_cpu, [str(python), str(script), str(port)]),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=env,
        )
        try:
            if not wait_port(port, server):
                tail = log.read_text()[-400:].strip().replace("\n", " | ")
                return Measurement(
                    spec.name, scenario.key, False, note=f"server did not start: {tail}"
                )
            time.sleep(0.3)
            rss_base = rss_kib(server.pid)
            result, samples = run_generator(wsload, port, server.pid, scenario, cfg)
        finally:
            PROCS.stop(server)
    m = Measurement(spec.name, scenario.key, True, result=result)
    m.generator_cpu_pct = result.get("cpu", {}).get("pct")
    if "t1" in samples and "t0" in samples and samples["t1"] > samples["t0"]:
        m.server_cpu_pct = (
            100.0
            * (samples["ticks1"] - samples["ticks0"])
            / CLK_TCK
            / (samples["t1"] - samples["t0"])
        )
    m.server_rss_kib = int(samples.get("rss_end", 0)) or None
    opened = int(result.get("connections_open", 0))
    notes = []
    if result.get("errors"):
        notes.append(f"{result['errors']} errors {result.get('error_detail')}")
    if scenario.metric == "msg_per_s":
        m.value = float(result.get("msg_per_s", 0.0))
    elif scenario.metric == "handshakes_per_s":
        m.value = float(result.get("handshakes_per_s", 0.0))
    elif scenario.metric == "latency_p99":
        lat = result.get("latency_us")
        m.value = float(lat["p99"]) if lat else None
        if result.get("skipped"):
            notes.append(f"{result['skipped']} sends skipped (server behind)")
    elif scenario.metric == "rss_per_conn_kib":
        rss_ready = samples.get("rss_ready")
        if rss_ready and opened:
            m.value = (rss_ready - rss_base) / opened
            m.server_rss_kib = int(rss_ready)
        requested = int(result.get("connections", 0))
        if opened < requested:
            notes.append(f"only {opened} of {requested} connections opened")
    if scenario.key == "fanout_slow":
        notes.append(f"slow subscriber closed by server: {result.get('slow_closed', 0)}")
        if result.get("lost"):
            notes.append(f"{result['lost']} publishes never came back")
    m.note = "; ".join(notes)
    if m.value is None:
        m.ok = False
    return m


# --------------------------------------------------------------------- report


def fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    if metric == "rss_per_conn_kib":
        return f"{value:.1f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


@dataclass(frozen=True)
class Row:
    """One line of the table: a scenario's main metric, or one of its cell's extra latencies."""

    scenario: str
    title: str
    unit: str
    metric: str
    higher_is_better: bool
    extra: Extra | None = None

    def value(self, m: Measurement | None) -> float | None:
        if m is None or not m.ok:
            return None
        if self.extra is None:
            return m.value
        lat = m.result.get(self.extra.field)
        return float(lat[self.extra.stat]) if lat else None

    @property
    def kind(self) -> str:
        """Which noise band ``--compare`` applies: throughput, latency or memory."""
        if self.higher_is_better:
            return "throughput"
        return "memory" if self.metric == "rss_per_conn_kib" else "latency"


def table_spec(scenarios: Sequence[Scenario]) -> list[Row]:
    rows = []
    for sc in scenarios:
        rows.append(Row(sc.key, sc.title, sc.unit, sc.metric, sc.higher_is_better))
        for extra in sc.extra:
            rows.append(Row(sc.key, f"{sc.title}: {extra.title}", "us", "latency", False, extra))
    return rows


def advantage(row: Row, ours: float | None, theirs: float | None) -> float | None:
    """How many times better wsflask is than a rival in this row (> 1: wsflask ahead)."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return None
    return ours / theirs if row.higher_is_better else theirs / ours


def table_rows(
    results: dict[tuple[str, str], Measurement],
    servers: Sequence[str],
    scenarios: Sequence[Scenario],
) -> list[list[str]]:
    rows = [["scenario", *servers]]
    for spec in table_spec(scenarios):
        ours = spec.value(results.get(("wsflask", spec.scenario)))
        better = "higher" if spec.higher_is_better else "lower"
        row = [f"{spec.title} ({spec.unit}, {better} is better)"]
        for name in servers:
            m = results.get((name, spec.scenario))
            if m is None:
                row.append("-")
                continue
            value = spec.value(m)
            cell = fmt(value, spec.metric)
            if name != "wsflask":
                adv = advantage(spec, ours, value)
                if adv is not None:
                    cell += f" (x{adv:.2f})"
            row.append(cell)
        rows.append(row)
    return rows


def cpu_rows(
    results: dict[tuple[str, str], Measurement],
    servers: Sequence[str],
    scenarios: Sequence[Scenario],
) -> list[list[str]]:
    rows = [["scenario: server CPU % / generator CPU %", *servers]]
    for sc in scenarios:
        row = [sc.title]
        for name in servers:
            m = results.get((name, sc.key))
            if m is None or not m.ok:
                row.append("-")
                continue
            s = "?" if m.server_cpu_pct is None else f"{m.server_cpu_pct:.0f}"
            g = "?" if m.generator_cpu_pct is None else f"{m.generator_cpu_pct:.0f}"
            row.append(f"{s} / {g}")
        rows.append(row)
    return rows


def render_text(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render_markdown(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


COLORS = {
    "wsflask": "#d6336c",
    "calibration": "#212529",
    "gevent-websocket": "#868e96",
    "websockets": "#4c6ef5",
    "aiohttp": "#15aabf",
    "tornado": "#f59f00",
    "picows": "#37b24d",
    "flask-sock": "#7950f2",
}


def render_svg(
    results: dict[tuple[str, str], Measurement],
    servers: Sequence[str],
    scenarios: Sequence[Scenario],
) -> str:
    """Horizontal bars, one group per scenario, each server relative to wsflask (= 1.0).

    Bars show "how good" relative to wsflask: for lower-is-better rows the ratio is inverted
    so a longer bar is always better.
    """
    bar_h, gap, label_w, plot_w, top = 14, 22, 250, 520, 60
    rows: list[tuple[Row, list[tuple[str, float | None, str]]]] = []
    for spec in table_spec(scenarios):
        ours = spec.value(results.get(("wsflask", spec.scenario)))
        bars = []
        for name in servers:
            m = results.get((name, spec.scenario))
            if m is None:
                continue
            value = spec.value(m)
            rel: float | None
            if name == "wsflask":
                rel = 1.0 if ours is not None else None
            else:
                adv = advantage(spec, ours, value)
                rel = 1.0 / adv if adv else None
            bars.append((name, rel, fmt(value, spec.metric)))
        rows.append((spec, bars))
    rels = [r for _, bars in rows for _, r, _ in bars if r is not None]
    cap = 3.0  # one outlier must not squash every other row: longer bars are cut at 3x
    scale_max = min(max([1.0, *rels]), cap) * 1.1
    height = top + sum(len(b) * bar_h + gap + 18 for _, b in rows) + 40
    width = label_w + plot_w + 140
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="22" font-size="16" font-weight="bold">wsflask vs Python WebSocket '
        "servers (one pinned core each)</text>",
        '<text x="10" y="42" fill="#555">bar = each server relative to wsflask (= 1.0; '
        "longer is better, lower-is-better rows inverted); label = measured value</text>",
    ]
    x0 = label_w
    one = x0 + plot_w / scale_max
    y = top
    for spec, bars in rows:
        out.append(
            f'<text x="10" y="{y + 12}" font-weight="bold">'
            f"{html.escape(spec.title)} ({html.escape(spec.unit)})</text>"
        )
        y += 18
        for name, rel, label in bars:
            color = COLORS.get(name, "#495057")
            out.append(
                f'<text x="{x0 - 8}" y="{y + bar_h - 3}" text-anchor="end">'
                f"{html.escape(name)}</text>"
            )
            if rel is None:
                out.append(f'<text x="{x0 + 4}" y="{y + bar_h - 3}" fill="#999">n/a</text>')
            else:
                w = max(1.0, plot_w * min(rel, cap) / scale_max)
                out.append(
                    f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{color}"/>'
                )
                if rel > cap:
                    label = f"{label} (x{rel:.0f}, bar cut)"
                out.append(
                    f'<text x="{x0 + w + 4:.1f}" y="{y + bar_h - 3}">{html.escape(label)}</text>'
                )
            y += bar_h
        y += gap
    out.insert(
        4,
        f'<line x1="{one:.1f}" y1="{top}" x2="{one:.1f}" y2="{y - gap}" '
        'stroke="#000" stroke-dasharray="4 3"/>',
    )  # under the bars and labels
    out.append(f'<text x="{one:.1f}" y="{y - gap + 14}" text-anchor="middle">wsflask = 1.0</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


#: RESULTS.md below this line is written by hand (targets, the soak) and kept across runs
KEEP_MARKER = "<!-- rivals.py keeps everything below this line -->"


def kept_tail(path: Path) -> str:
    """The hand-written end of an existing RESULTS.md (from ``KEEP_MARKER`` on), or ""."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    at = old.find(KEEP_MARKER)
    return "" if at < 0 else "\n" + old[at:]


def write_results(
    results: dict[tuple[str, str], Measurement],
    servers: Sequence[str],
    scenarios: Sequence[Scenario],
    cfg: Config,
    versions: dict[str, str],
    extra_notes: Sequence[str],
    out_dir: Path,
    *,
    write_json: bool = True,
) -> dict[str, Any]:
    """Write RESULTS.md, results.svg and (unless told not to) results.json; return the JSON."""
    main_rows = table_rows(results, servers, scenarios)
    cpu = cpu_rows(results, servers, scenarios)
    notes = [f"- {m.server} / {m.scenario}: {m.note}" for m in results.values() if m.note]
    machine = (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    vers = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    pin = (
        "server on CPU " + str(cfg.server_cpu) + ", wsload on CPU " + str(cfg.generator_cpu)
        if cfg.server_cpu is not None
        else "not pinned (taskset or a 2nd CPU is missing)"
    )
    text = f"""# wsflask vs its Python peers: results

Produced by `python loadtests/rivals.py{" --quick" if cfg.quick else ""}` on
{cfg.when}: {machine}; {pin}; {cfg.duration:g} s measured per cell
after {cfg.warmup:g} s of warm-up; a fresh server process per cell.{repeated(cfg.repeat)}
Versions: {vers}.
{"**Quick smoke run: these numbers are not a benchmark.**" if cfg.quick else ""}
{chr(10).join(f"**{n}**" for n in extra_notes if n.startswith("PRELIMINARY"))}

Each cell is the measured value; `(xN)` is how many times better wsflask is than that rival
in that row (throughput: wsflask / rival; latency and memory: rival / wsflask). So `x1.50`
means wsflask is 1.5 times ahead, `x0.80` means it is behind.

{render_markdown(main_rows)}

![chart](results.svg)

## Was the server the bottleneck?

A cell is valid when the server used ~95-100 % of its core and the generator stayed below
90 % of its own (the idle row is memory only; the fixed-rate row is not meant to saturate).

{render_markdown(cpu)}

## Notes

{chr(10).join(notes + [f"- {n}" for n in extra_notes]) or "- none"}

## How to reproduce

```sh
make test                                  # creates .venv with wsflask (the first time)
python3 loadtests/rivals.py                # builds wsload with gcc, creates loadtests/.venv-rivals,
                                           # runs every cell, rewrites this file
python3 loadtests/rivals.py --only aiohttp --scenarios echo20 --duration 10   # one comparison
```

Needs gcc, taskset, two cores and a quiet machine. Raw generator output for every cell is in
`results.json`; `python3 loadtests/rivals.py --from-json loadtests/results.json` redraws this
file and the chart from it.

## How the run is pinned

Each server runs alone on one core (`taskset -c {cfg.server_cpu}`), fresh for every cell; the
C generator `wsload` runs on the other (`taskset -c {cfg.generator_cpu}`). Nothing else should
run meanwhile: numbers from a busy machine are noise. Compare ratios within one run, not
absolute values across machines.

## How to read the numbers

- Throughput rows are closed loop (one message in flight per connection): what the server
  sustains. Broadcast rows count deliveries (messages received by all members together).
- The fixed-rate row's latency is measured from each message's scheduled send time, so stalls
  are charged in full; delivery latencies come from a send timestamp inside each message.
- Idle RSS per connection: server VmRSS with all connections open minus VmRSS before the
  first, divided by the connections open.
- A throughput cell is trustworthy when its server CPU is ~95-100 % and the generator's is
  below 90 % (second table). More in [README.md](README.md).
"""
    (out_dir / "RESULTS.md").write_text(text + kept_tail(out_dir / "RESULTS.md"))
    (out_dir / "results.svg").write_text(render_svg(results, servers, scenarios))
    raw = {
        "config": {
            "quick": cfg.quick,
            "duration": cfg.duration,
            "warmup": cfg.warmup,
            "server_cpu": cfg.server_cpu,
            "generator_cpu": cfg.generator_cpu,
            "idle_connections": cfg.idle_connections,
            "window": cfg.window,
            "repeat": cfg.repeat,
            "when": cfg.when,
        },
        "versions": versions,
        "notes": list(extra_notes),
        "cells": [m.__dict__ for m in results.values()],
    }
    if write_json:
        (out_dir / "results.json").write_text(json.dumps(raw, indent=1) + "\n")
    return raw


# --------------------------------------------------------------------- comparison

# How far a row may move the wrong way before --compare calls it a regression: well outside
# the run-to-run spread seen so far (loadtests/README.md, "Compare two runs").
BANDS = {"throughput": 0.25, "latency": 0.50, "memory": 0.50}
GATING = ("wsflask",)  # other columns are shown for context: did the machine move?
BAD = ("REGRESSED", "FAILED")


def load_cells(raw: dict[str, Any]) -> dict[tuple[str, str], Measurement]:
    results: dict[tuple[str, str], Measurement] = {}
    for cell in raw["cells"]:
        m = Measurement(**cell)
        results[(m.server, m.scenario)] = m
    return results


def read_run(path: Path) -> dict[str, Any]:
    """A results.json written by an earlier run; exit 2 with a message when it is not one."""
    try:
        raw = json.loads(path.read_text())
        load_cells(raw)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"rivals.py: {path} is not a readable results.json: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    result: dict[str, Any] = raw
    return result


def verdict(row: Row, old: float | None, new: float | None) -> tuple[str, str]:
    """The word for one cell's move from ``old`` to ``new`` and the change in percent."""
    if new is None:
        return ("FAILED" if old is not None else "no data"), ""
    if old is None or old <= 0:
        return "new", ""
    ratio = new / old
    band = BANDS[row.kind]
    worse = ratio < 1 - band if row.higher_is_better else ratio > 1 + band
    better = ratio > 1 + band if row.higher_is_better else ratio < 1 / (1 + band)
    word = "REGRESSED" if worse else "improved" if better else "ok"
    return word, f"{ratio - 1:+.1%}"


def comparable(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Warnings when the two runs were not made the same way."""
    warnings = []
    for key in ("quick", "duration", "window", "idle_connections"):
        a, b = old.get("config", {}).get(key), new.get("config", {}).get(key)
        if a != b:
            warnings.append(
                f"warning: {key} was {a} in the old run and is {b} now: the bands "
                "assume runs made the same way"
            )
    return warnings


def compare_runs(old_raw: dict[str, Any], new_raw: dict[str, Any]) -> tuple[list[str], int]:
    """One line per (row, server) of the new run against the old; returns them and the number
    of regressions in the gating columns (a row that had a value and now fails counts)."""
    old, new = load_cells(old_raw), load_cells(new_raw)
    scenarios = [sc for sc in SCENARIOS if any(k[1] == sc.key for k in new)]
    servers = [s.name for s in SERVER_SPECS if any(k[0] == s.name for k in new)]
    lines = comparable(old_raw, new_raw)
    bad = 0
    for row in table_spec(scenarios):
        words: dict[str, str] = {}
        for server in servers:
            if (server, row.scenario) not in new:
                continue
            before = row.value(old.get((server, row.scenario)))
            after = row.value(new.get((server, row.scenario)))
            if before is None and after is None:
                continue  # e.g. a row older runs did not measure
            word, change = verdict(row, before, after)
            words[server] = word
            gating = server in GATING
            if gating and word in BAD:
                bad += 1
            lines.append(
                f"{word:<9} {row.title} [{server}]: {fmt(before, row.metric)} -> "
                f"{fmt(after, row.metric)} {row.unit} {change}".rstrip()
                + ("" if gating else " (context, not gating)")
            )
        if words.get("wsflask") == "REGRESSED" and words.get("calibration") == "REGRESSED":
            lines.append(
                "          calibration moved the same way in this row: the machine "
                "may be slower, not wsflask"
            )
    bands = ", ".join(f"{k} {'-' if k == 'throughput' else '+'}{v:.0%}" for k, v in BANDS.items())
    lines.append(f"{bad} regression(s) in {', '.join(GATING)} past the noise bands ({bands})")
    return lines, bad


def report_comparison(old_raw: dict[str, Any], new_raw: dict[str, Any], old_path: Path) -> int:
    lines, bad = compare_runs(old_raw, new_raw)
    print(f"\ncompared with {old_path} ({old_raw.get('config', {}).get('when', '?')}):")
    for line in lines:
        print(line)
    return 1 if bad else 0


# --------------------------------------------------------------------- main


def redraw(path: Path, out: Path) -> int:
    """Rewrite RESULTS.md and results.svg from a results.json written by an earlier run."""
    raw = json.loads(path.read_text())
    c = raw["config"]
    results = load_cells(raw)
    servers = [s.name for s in SERVER_SPECS if any(k[0] == s.name for k in results)]
    scenarios = [sc for sc in SCENARIOS if any(k[1] == sc.key for k in results)]
    cfg = Config(
        c["quick"],
        c["duration"],
        c["warmup"],
        c["server_cpu"],
        c["generator_cpu"],
        c["idle_connections"],
        BUILD / "logs",
        c.get("window"),
        c.get("repeat", 1),
        c.get("when", "(date not recorded)"),
    )
    same = out.resolve() == path.resolve().parent
    write_results(
        results,
        servers,
        scenarios,
        cfg,
        raw.get("versions", {}),
        raw.get("notes", []),
        out,
        write_json=not same,
    )
    print(render_text(table_rows(results, servers, scenarios)))
    print(f"\nwrote {out / 'RESULTS.md'} and results.svg from {path}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 s per cell, few connections (numbers mean nothing)",
    )
    p.add_argument(
        "--only",
        default="",
        help="comma-separated servers to run (wsflask is always added for ratios) "
        f"from: {', '.join(s.name for s in SERVER_SPECS)}",
    )
    p.add_argument(
        "--scenarios",
        default="",
        help=f"comma-separated scenarios from: {', '.join(s.key for s in SCENARIOS)}",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per cell (default 5; 1 with --quick)",
    )
    p.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="messages in flight room-wide in the broadcast/fan-out rows (wsload "
        "default 4): raise it if the servers' CPU stays below 95%% there",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="measure every cell N times, the servers taking turns within each row (so a "
        "slow minute of the machine hits all of them), and keep each cell's median",
    )
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--generator-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument(
        "--idle-connections",
        type=int,
        default=None,
        help=f"connections for the idle row (default {IDLE_TARGET:,}, capped by "
        "the open-file limit)",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="do not measure: redraw RESULTS.md and results.svg from a results.json",
    )
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="OLD.json",
        help="after the run (or on --from-json's file, then nothing is redrawn), "
        "compare with an older results.json; exit 1 when a wsflask row is "
        "worse than the noise band (throughput -25%%, latency and memory +50%%)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where RESULTS.md, results.svg and results.json go (default loadtests/; "
        "loadtests/build/quick/ with --quick)",
    )
    return p.parse_args(argv)


def selected(names: str, choices: Sequence[str], what: str) -> list[str]:
    if not names:
        return list(choices)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in choices]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(choices)})")
    return wanted


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so the finally-clauses stop every child."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        PROCS.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    old_run = read_run(args.compare) if args.compare is not None else None  # before any work
    if args.from_json is not None and old_run is not None:
        return report_comparison(old_run, read_run(args.from_json), args.compare)
    server_names = selected(args.only, [s.name for s in SERVER_SPECS], "server")
    if "wsflask" not in server_names:
        server_names.insert(0, "wsflask")
    scenario_keys = selected(args.scenarios, [s.key for s in SCENARIOS], "scenario")
    scenarios = [s for s in SCENARIOS if s.key in scenario_keys]
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    notes: list[str] = []
    limit = open_file_limit()
    idle = args.idle_connections or (300 if args.quick else IDLE_TARGET)
    if idle > limit - 100:
        notes.append(
            f"idle row: {idle:,} connections asked, the open-file limit ({limit:,}) "
            f"allows {limit - 100:,}: that is what was used"
        )
        idle = limit - 100
    if args.out is None:
        args.out = BUILD / "quick" if args.quick else HERE
    args.out.mkdir(parents=True, exist_ok=True)
    logs = BUILD / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cfg = Config(
        args.quick,
        duration,
        warmup,
        args.server_cpu if pin else None,
        args.generator_cpu if pin else None,
        idle,
        logs,
        args.window,
        repeat=max(1, args.repeat),
    )
    if args.from_json is not None:
        return redraw(args.from_json, args.out)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(
            f"warning: load average {load_before:.2f} before the run: this machine is busy, "
            "the numbers will be noise",
            file=sys.stderr,
        )
    with stop_on_signals():
        specs = [s for s in SERVER_SPECS if s.name in server_names]
        results, names, versions = run_all(specs, scenarios, cfg, notes)
    load_after = os.getloadavg()[0]
    notes.append(
        f"1-minute load average {load_before:.2f} before the run, {load_after:.2f} "
        "after (the run itself adds about 1-2; above that, something else ran)"
    )
    print()
    print(render_text(table_rows(results, names, scenarios)))
    print()
    print(render_text(cpu_rows(results, names, scenarios)))
    raw = write_results(results, names, scenarios, cfg, versions, notes, args.out)
    for note in notes:
        print(f"note: {note}")
    print(f"\nwrote {args.out / 'RESULTS.md'}, results.svg, results.json")
    gate = handshake_latency_gate(results)
    compared = report_comparison(old_run, raw, args.compare) if old_run is not None else 0
    return 1 if gate or compared else 0


#: the design document's handshake latency bounds (seed audit item 50, HS-33/NF-03), in us
HANDSHAKE_MEAN_MAX_US = 100_000
HANDSHAKE_ANY_MAX_US = 500_000


def handshake_latency_gate(results: dict[tuple[str, str], Measurement]) -> int:
    """1 (and a line saying why) when wsflask's handshakes broke the absolute bounds: a mean
    over 100 ms or any one over 500 ms, connect to 101; else 0. Unlike ``--compare`` this
    needs no older run."""
    m = results.get(("wsflask", "handshake"))
    latency = m.result.get("handshake_latency_us") if m is not None and m.ok else None
    if not isinstance(latency, dict):
        return 0
    mean, worst = float(latency.get("mean", 0.0)), float(latency.get("max", 0.0))
    ok = mean <= HANDSHAKE_MEAN_MAX_US and worst <= HANDSHAKE_ANY_MAX_US
    print(
        f"handshake latency gate: mean {mean / 1000:.1f} ms (bound 100), max "
        f"{worst / 1000:.1f} ms (bound 500): {'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


def run_all(
    specs: Sequence[ServerSpec], scenarios: Sequence[Scenario], cfg: Config, notes: list[str]
) -> tuple[dict[tuple[str, str], Measurement], list[str], dict[str, str]]:
    """Measure every (scenario, server) cell; the rivals' venv is made only when one runs."""
    wsload = build_wsload()
    main_python = venv_python(ROOT / ".venv")
    if not main_python.exists():
        main_python = Path(sys.executable)
    rivals_python = main_python
    versions: dict[str, str] = {}
    if any(s.venv == "rivals" for s in specs):
        rivals_python, skipped = ensure_rivals_venv(sys.executable)
        for s in specs:
            if s.package in skipped:
                notes.append(f"{s.name}: not installable on this machine, skipped")
        specs = [s for s in specs if s.package not in skipped]
        versions = package_versions(rivals_python, [s.package for s in specs if s.venv == "rivals"])
    versions.update(package_versions(main_python, ["wsflask", "gevent"]))
    results: dict[tuple[str, str], Measurement] = {}
    total = len(specs) * len(scenarios) * cfg.repeat
    n = 0
    for sc in scenarios:
        rounds: dict[str, list[Measurement]] = {spec.name: [] for spec in specs}
        for _ in range(cfg.repeat):  # the servers take turns: a slow minute hits them all
            for spec in specs:
                n += 1
                python = main_python if spec.venv == "main" else rivals_python
                print(f"[{n}/{total}] {sc.title}: {spec.name} ...", end=" ", flush=True)
                try:
                    m = measure(spec, python, wsload, sc, cfg)
                except RuntimeError as exc:
                    m = Measurement(spec.name, sc.key, False, note=str(exc))
                rounds[spec.name].append(m)
                shown = fmt(m.value, sc.metric) if m.ok else "failed"
                cpu = (
                    f" (server {m.server_cpu_pct:.0f}% / wsload {m.generator_cpu_pct:.0f}%)"
                    if m.server_cpu_pct is not None and m.generator_cpu_pct is not None
                    else ""
                )
                print(f"{shown} {sc.unit}{cpu}{'  ' + m.note if m.note else ''}", flush=True)
        for spec in specs:
            results[(spec.name, sc.key)] = median_of(rounds[spec.name], sc.metric)
    return results, [s.name for s in specs], versions


def median_of(rounds: Sequence[Measurement], metric: str) -> Measurement:
    """The round with the median value (the lower middle one of an even count), whole: its
    latency rows, CPU and notes come from the same measurement. Every round's value is kept
    in ``result["rounds"]``; a round that failed is named in the note. One round: itself."""
    if len(rounds) == 1:
        return rounds[0]
    good = sorted(
        (m for m in rounds if m.ok and m.value is not None), key=lambda m: float(m.value or 0)
    )
    if not good:
        return rounds[0]
    chosen = good[(len(good) - 1) // 2]
    values = [m.value if m.ok else None for m in rounds]
    chosen.result = dict(chosen.result, rounds=values)
    spread = f"median of {len(good)} rounds: {fmt(good[0].value, metric)} to " + fmt(
        good[-1].value, metric
    )
    failed = len(rounds) - len(good)
    note = spread + (f"; {failed} of {len(rounds)} rounds failed" if failed else "")
    chosen.note = f"{chosen.note}; {note}" if chosen.note else note
    return chosen


def repeated(repeat: int) -> str:
    """RESULTS.md's words for ``--repeat``."""
    if repeat <= 1:
        return ""
    return (
        f" Every cell was measured {repeat} times, the servers taking turns within each"
        " row; the table shows each cell's median round (its range is in the notes)."
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every process started was stopped", file=sys.stderr)
        sys.exit(130)
