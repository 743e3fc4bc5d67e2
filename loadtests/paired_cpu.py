"""Paired A/B: two servers measured at the same time, for changes of a few per cent.

``rivals.py`` and ``handshake_cpu.py`` run one server after the other; on a shared machine
the same code then moves by 5-10 % between rounds, so a 2 % change cannot be seen. Here both
servers run at once, pinned to the same core (``--server-cpu``), each loaded by its own
``wsload`` on the other core for the same seconds: whatever the machine does, it does to
both. Each round reports the server CPU time (utime + stime from /proc) per handshake, or
per echoed message, of A and of B, and their ratio B/A; the rounds alternate which server
starts first. The median ratio resolves about 1 %.

    python loadtests/paired_cpu.py old=/tmp/old new=.             # two trees, handshakes
    python loadtests/paired_cpu.py wsflask=. aiohttp --rounds 5   # against a rival
    python loadtests/paired_cpu.py a=. b=/tmp/b --mode echo --size 16384

A side is ``NAME=TREE`` (``TREE/loadtests/servers/wsflask_server.py`` with ``TREE`` first on
``PYTHONPATH``: a checkout or worktree of another commit, its speedups built or copied) or
the name of a script in ``servers/`` (``aiohttp``, ``picows``, ``calibration``...; the
rivals run from ``loadtests/.venv-rivals``, which ``rivals.py`` creates). The ratio is CPU
per unit of work, not throughput: two servers sharing a core each run at about half speed.
Benchmarks are never tests: nothing here asserts a speed. Every process it starts it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rivals import (  # this folder: run as a script
    PROCS,
    WSLOAD,
    cpu_ticks,
    free_port,
    pinned,
    wait_port,
)

HERE = Path(__file__).resolve().parent
RIVALS_PYTHON = HERE / ".venv-rivals" / "bin" / "python"
MAIN_PYTHONS = ("calibration",)  # scripts in servers/ that run on wsflask's own venv


@dataclass(frozen=True)
class Side:
    name: str
    command: tuple[str, ...]
    pythonpath: str = ""


def side(spec: str) -> Side:
    """``NAME=TREE`` (a wsflask tree) or a server script's name (``aiohttp``...)."""
    name, eq, tree = spec.partition("=")
    if eq:
        root = Path(tree or ".").resolve()
        script = root / "loadtests" / "servers" / "wsflask_server.py"
        return Side(name, (sys.executable, str(script)), str(root))
    script = HERE / "servers" / ("calibration.py" if name == "calibration" else f"rival_{name}.py")
    if not script.exists():
        raise SystemExit(f"no server script for {name!r} ({script.name})")
    python = sys.executable if name in MAIN_PYTHONS else str(RIVALS_PYTHON)
    return Side(name, (python, str(script)))


def _start(server: Side, cpu: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ)
    if server.pythonpath:
        env["PYTHONPATH"] = server.pythonpath
    proc = PROCS.start(
        pinned(cpu, [*server.command, str(port)]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_port(port, proc):
        PROCS.stop(proc)
        raise SystemExit(f"{server.name} did not listen on {port}")
    return proc, port


def _load(port: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    if args.mode == "handshake":
        extra = ["--mode", "handshake", "--concurrency", str(args.concurrency)]
    else:
        extra = ["--mode", "echo", "--connections", "100", "--size", str(args.size),
                 "--window", "16"]  # fmt: skip
    return PROCS.start(
        pinned(args.generator_cpu, [str(args.wsload), "--port", str(port), "-d",
               str(args.duration), "--warmup", "0", "--label", "paired", *extra]),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def _work(output: str, mode: str) -> int:
    """Handshakes, or echoed messages received back, from wsload's JSON line."""
    result = json.loads(output.strip().splitlines()[-1])
    return int(result["handshakes"] if mode == "handshake" else result["received"])


def one_round(pair: Sequence[Side], args: argparse.Namespace) -> list[float]:
    """Both servers at once; each one's CPU microseconds per unit of work, in ``pair`` order."""
    started = [_start(s, args.server_cpu) for s in pair]
    loads: list[subprocess.Popen[str]] = []
    try:
        time.sleep(0.5)  # imports settled
        before = [cpu_ticks(proc.pid) for proc, _ in started]
        loads = [_load(port, args) for _, port in started]
        outputs = [load.communicate(timeout=args.duration + 60)[0] for load in loads]
        after = [cpu_ticks(proc.pid) for proc, _ in started]
    finally:
        for load in loads:
            PROCS.stop(load)
        for proc, _ in started:
            PROCS.stop(proc, timeout=10)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return [
        (end - begin) * tick_us / max(_work(out, args.mode), 1)
        for begin, end, out in zip(before, after, outputs, strict=True)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="NAME=TREE or a server name")
    p.add_argument("b", help="NAME=TREE or a server name")
    p.add_argument("--mode", choices=("handshake", "echo"), default="handshake")
    p.add_argument("--size", type=int, default=20, help="echo payload bytes")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--generator-cpu", type=int, default=1)
    p.add_argument("--wsload", type=Path, default=WSLOAD, help="the load generator binary")
    args = p.parse_args(argv)
    if not args.wsload.exists():
        raise SystemExit(f"build {args.wsload} first (rivals.py builds loadtests/build/wsload)")
    a, b = side(args.a), side(args.b)
    if a.name == b.name:
        raise SystemExit(f"both sides are named {a.name!r}: name them apart (old=... new=...)")
    try:
        _compare(a, b, args)
    finally:  # an exception or Ctrl-C: no server or generator is left behind
        PROCS.stop_all()


def _compare(a: Side, b: Side, args: argparse.Namespace) -> None:
    unit = "handshake" if args.mode == "handshake" else "message"
    ratios = []
    for n in range(args.rounds):
        first, second = (a, b) if n % 2 == 0 else (b, a)  # who starts first alternates
        cost = dict(zip((first.name, second.name), one_round((first, second), args), strict=True))
        ratios.append(cost[b.name] / cost[a.name])
        print(f"round {n + 1}: {a.name} {cost[a.name]:7.2f} us/{unit}, {b.name} "
              f"{cost[b.name]:7.2f} us/{unit}, B/A {ratios[-1]:.3f}", flush=True)  # fmt: skip
    middle = statistics.median(ratios)
    print(f"median B/A {middle:.3f} (range {min(ratios):.3f}-{max(ratios):.3f}) over "
          f"{len(ratios)} rounds: {b.name} per {unit} vs {a.name}")  # fmt: skip


if __name__ == "__main__":
    main()
