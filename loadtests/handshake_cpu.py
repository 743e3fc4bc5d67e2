"""Handshake cost on a shared machine: server CPU time per handshake, rounds interleaved.

``rivals.py`` reports handshakes per second, which on a machine other people load moves
with their work. This script runs the same ``wsload --mode handshake`` cell against each
server several times, the servers interleaved round by round (server on core 0, wsload on
core 1), and reports, besides handshakes/s and p99, the server's CPU time (utime + stime from
/proc) per completed handshake: what one handshake costs, however much CPU was left over.

    python loadtests/handshake_cpu.py                         # wsflask, calibration, aiohttp
    python loadtests/handshake_cpu.py --wsflask old=/tmp/old --wsflask new=.   # two trees

``--wsflask NAME=TREE`` runs ``TREE/loadtests/servers/wsflask_server.py`` with ``TREE`` first
on PYTHONPATH (a checkout or ``git archive`` of another commit; build its speedups or copy
the .so). Rivals come from ``loadtests/.venv-rivals`` (``rivals.py`` creates it). Every
process it starts it stops. Benchmarks are never tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rivals import WSLOAD, cpu_ticks, free_port, wait_port  # this folder: run as a script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RIVALS_PYTHON = HERE / ".venv-rivals" / "bin" / "python"


@dataclass(frozen=True)
class Target:
    name: str
    python: str
    script: Path
    pythonpath: str = ""


@dataclass(frozen=True)
class Cell:
    rate: float  # handshakes/s
    cpu_us: float  # server CPU microseconds per handshake
    p99_us: float


def measure(target: Target, wsload: Path, duration: float, concurrency: int) -> Cell:
    """One cell: a fresh server, one wsload run, the server's CPU over exactly that run."""
    port = free_port()
    env = dict(os.environ)
    if target.pythonpath:
        env["PYTHONPATH"] = target.pythonpath
    server = subprocess.Popen(
        ["taskset", "-c", "0", target.python, str(target.script), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_port(port, server):
            raise SystemExit(f"server did not listen on {port}")
        time.sleep(0.3)  # imports settled
        before = cpu_ticks(server.pid)
        out = subprocess.run(
            ["taskset", "-c", "1", str(wsload), "--port", str(port), "-d", str(duration),
             "--warmup", "0", "--label", "handshake", "--mode", "handshake",
             "--concurrency", str(concurrency)],
            capture_output=True, text=True, timeout=duration + 60, check=True,
        ).stdout  # fmt: skip
        after = cpu_ticks(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    result = json.loads(out.strip().splitlines()[-1])
    done = max(int(result["handshakes"]), 1)
    cpu = (after - before) / os.sysconf("SC_CLK_TCK") * 1e6
    return Cell(result["handshakes_per_s"], cpu / done, result["handshake_latency_us"]["p99"])


def _targets(args: argparse.Namespace) -> list[Target]:
    python = sys.executable
    trees = args.wsflask or [f"wsflask={ROOT}"]
    targets = []
    for spec in trees:
        name, _, tree = spec.partition("=")
        root = Path(tree or ".").resolve()
        script = root / "loadtests" / "servers" / "wsflask_server.py"
        targets.append(Target(name, python, script, str(root)))
    servers = ROOT / "loadtests" / "servers"
    if not args.no_calibration:
        targets.append(Target("calibration", python, servers / "calibration.py"))
    if not args.no_aiohttp and RIVALS_PYTHON.exists():
        targets.append(Target("aiohttp", str(RIVALS_PYTHON), servers / "rival_aiohttp.py"))
    return targets


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wsflask", action="append", metavar="NAME=TREE", help="repeatable")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--no-calibration", action="store_true")
    p.add_argument("--no-aiohttp", action="store_true")
    args = p.parse_args(argv)
    wsload = WSLOAD
    if not wsload.exists():
        raise SystemExit("build loadtests/build/wsload first (rivals.py does)")
    targets = _targets(args)
    cells: dict[str, list[Cell]] = {t.name: [] for t in targets}
    for round_ in range(args.rounds):
        for target in targets:
            cell = measure(target, wsload, args.duration, args.concurrency)
            cells[target.name].append(cell)
            print(f"round {round_ + 1} {target.name:12} {cell.rate:8.0f} /s "
                  f"{cell.cpu_us:7.1f} us CPU/handshake  p99 {cell.p99_us:8.0f} us",
                  file=sys.stderr, flush=True)  # fmt: skip
    print(f"{'server':12} {'handshakes/s median (range)':>30} "
          f"{'CPU us/handshake median (range)':>34} {'p99 us median':>14}")  # fmt: skip
    for name, rows in cells.items():
        rates = [c.rate for c in rows]
        cpus = [c.cpu_us for c in rows]
        p99 = statistics.median(c.p99_us for c in rows)
        print(f"{name:12} {statistics.median(rates):10.0f} ({min(rates):6.0f}-{max(rates):6.0f})"
              f"      {statistics.median(cpus):10.1f} ({min(cpus):6.1f}-{max(cpus):6.1f})"
              f"        {p99:8.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
