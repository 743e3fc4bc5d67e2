"""Run the Autobahn TestSuite (through kosoku) against wsflask and compare with expected.json.

What it does, in order:

1. normalises kosoku 0.1.0's compression case file (ARCHITECTURE.md §5; ``kosoku_fix.py``)
   and prints what it did (applied, already applied, or not needed for this version);
2. starts ``server.py`` (wsflask's ``App``, conformance profile, ``/echo``) on a free port in
   a child process, and stops it in ``finally`` (also on SIGTERM);
3. runs ``kosoku -p 4 ws://127.0.0.1:PORT/echo`` with its reports in ``build/autobahn``
   (``index.html`` there is kosoku's browsable report);
4. reads every per-case JSON report, takes one verdict per case, compares them with
   ``expected.json`` (``verdicts.py``) and prints one summary line, e.g.
   ``autobahn: 517 cases, 286 OK, 12 NON-STRICT, 3 INFORMATIONAL, 216 UNIMPLEMENTED, 0 FAILED``.

A few timing-sensitive problem cases (at most ``MAX_RETRIES``) are rerun once, alone; the
output names every retried case and its first verdict. If kosoku hangs (seen under heavy load)
it is killed after ``--timeout`` seconds and the run starts over once with a fresh server.
Concurrent runs on one machine queue on ``build/autobahn.lock``.

Exit status: 0 when no case FAILED and none is worse than expected; 1 otherwise (each problem
is listed with kosoku's explanation and the report to open); 2 when the run itself broke.

By default the long permessage-deflate cases (``verdicts.HEAVY``: 1000 messages of 8-128 KiB
each, about 95% of a full run) are left out: about 1 minute instead of about 10. ``--full``
runs all 517 cases. ``-i/-x CASE`` pass a hand-picked selection to kosoku instead (only the
cases that ran are then compared).

``--update`` runs all cases once, then the timing-dependent ones ``--runs`` - 1 more times,
and records each case's worst verdict in expected.json; it refuses when a case FAILED or when
a case outside 12.*/13.* is UNIMPLEMENTED (the file never records a failure). Run it after a
change that alters verdicts, and commit the diff.

What it does not do: it is not imported by wsflask and does not monkey-patch; it does not
judge cases itself (kosoku does); speed is not measured here.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# run as a script: this folder is sys.path[0], so its siblings import as top-level modules
from kosoku_fix import case_file, normalise
from verdicts import (
    EXPECTED,
    HEAVY,
    HEAVY_ROWS,
    RANK,
    Reports,
    allowed,
    compare,
    explain,
    load_expected,
    read_reports,
    summary,
    verdict,
    write_expected,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SERVER = HERE / "server.py"
OUTDIR = ROOT / "build" / "autobahn"

SERVER_START_TIMEOUT = 30.0
#: The default run takes about 45 s on 2 loaded cores, ``--full`` about 630 s. kosoku was seen
#: to stall under heavy machine load (two idle connections, nothing in flight; see server.py
#: IDLE_TIMEOUT): past this bound it is killed and the run starts over once, fresh server.
KOSOKU_TIMEOUT = 300.0
FULL_TIMEOUT = 1800.0
#: Concurrent runs (several engineers, one machine) queue on build/autobahn.lock this long.
LOCK_TIMEOUT = 300.0

# -- 2. the server under test ------------------------------------------------------------------


@contextmanager
def echo_server() -> Iterator[int]:
    """Start ``server.py`` on a free port; yield the port; stop it (SIGTERM, then kill)."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
    )
    try:
        yield _read_port(proc)
    finally:
        _stop(proc, grace=10.0)


def _read_port(proc: subprocess.Popen[str]) -> int:
    """Wait (bounded) for the server's ``listening on HOST:PORT`` line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"echo server exited with {proc.wait()} before listening")
            match = re.search(r"listening on \S+:(\d+)$", line.strip())
            if match:
                return int(match.group(1))
    raise RuntimeError(f"echo server did not listen within {SERVER_START_TIMEOUT} s")


def _stop(proc: subprocess.Popen[Any], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# -- 3. kosoku ---------------------------------------------------------------------------------


def kosoku_command() -> list[str]:
    """The ``kosoku`` console script of this interpreter's environment, else one on PATH."""
    script = Path(sys.executable).with_name("kosoku")
    found = str(script) if script.exists() else shutil.which("kosoku")
    if found is None:
        raise SystemExit("autobahn: the kosoku command is not installed (pip install kosoku)")
    return [found]


class KosokuHung(RuntimeError):
    """kosoku did not finish within its timeout (it was killed; it wrote no reports)."""


def run_kosoku(
    url: str, outdir: Path, parallelism: int, selection: list[str], timeout: float
) -> float:
    """Run kosoku into ``outdir`` (emptied first); return its wall time in seconds.

    kosoku exits 1 whenever a case did not pass (UNIMPLEMENTED included): the verdicts are
    judged from the reports, so only a crash, a timeout or missing reports break the run.

    Raises:
        KosokuHung: it ran longer than ``timeout`` seconds.
        RuntimeError: it crashed.
    """
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    command = [*kosoku_command(), "-p", str(parallelism), "-o", str(outdir), *selection, url]
    started = time.monotonic()
    with open(outdir / "kosoku.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=outdir)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise KosokuHung(f"kosoku did not finish within {timeout:.0f} s") from None
        finally:
            _stop(proc, grace=5.0)
    if code not in (0, 1):
        raise RuntimeError(f"kosoku exited with {code}; see {outdir / 'kosoku.log'}")
    return time.monotonic() - started


# -- 4. verdicts -------------------------------------------------------------------------------


# -- main --------------------------------------------------------------------------------------

#: A run with at most this many problem cases retries them once (timing-sensitive cases).
MAX_RETRIES = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--update",
        action="store_true",
        help="rewrite expected.json with the worst verdict of --runs runs",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="with --update: runs of the timing-dependent cases, worst verdict kept (5)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="also the long permessage-deflate cases (about 10 min instead of about 1)",
    )
    parser.add_argument("-p", "--parallelism", type=int, default=4)
    parser.add_argument(
        "--timeout",
        type=float,
        help=f"seconds per kosoku run ({KOSOKU_TIMEOUT:.0f}, --full {FULL_TIMEOUT:.0f})",
    )
    parser.add_argument("-o", "--outdir", type=Path, default=OUTDIR)
    parser.add_argument("-i", "--include", action="append", default=[], metavar="CASE")
    parser.add_argument("-x", "--exclude", action="append", default=[], metavar="CASE")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # so that the finally blocks stop the children


def attempt(
    url: str, outdir: Path, args: argparse.Namespace, selection: list[str], parallelism: int = 0
) -> Reports:
    """One kosoku run (``-p parallelism``, default ``args.parallelism``); its reports.

    Raises:
        KosokuHung: see ``run_kosoku()``.
        RuntimeError: kosoku crashed or wrote no reports.
    """
    parallelism = parallelism or args.parallelism
    shown = " ".join(["kosoku", "-p", str(parallelism), *selection, url])
    print(f"autobahn: {shown} -> {outdir}", flush=True)
    seconds = run_kosoku(url, outdir, parallelism, selection, args.timeout)
    reports = read_reports(outdir)
    if not reports:
        raise RuntimeError(f"kosoku wrote no case reports to {outdir}; see kosoku.log there")
    print(f"autobahn: {len(reports)} cases in {seconds:.1f} s", flush=True)
    return reports


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold ``path`` locked: concurrent runs would share the output folder and the CPUs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path} stayed locked {LOCK_TIMEOUT:.0f} s") from None
                time.sleep(0.5)  # another run holds it: poll, bounded by the deadline
        yield  # closing the file releases the lock


def main(argv: list[str] | None = None) -> int:
    """Run everything; return the exit status (0 pass, 1 verdicts, 2 broken run)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    version = importlib.metadata.version("kosoku")
    print("autobahn: " + normalise(case_file(), version), flush=True)
    args.selection = [f"-i{c}" for c in args.include] + [f"-x{c}" for c in args.exclude]
    if args.update and args.selection:
        print("autobahn: --update needs the whole suite (no -i/-x)")
        return 2
    if args.update:
        args.full = True  # expected.json records every case
    if args.timeout is None:
        args.timeout = FULL_TIMEOUT if args.full else KOSOKU_TIMEOUT
    if not (args.full or args.selection):
        args.selection = [f"-x1{g}.*.{row}" for g in (2, 3) for row in HEAVY_ROWS]
    try:
        with exclusive(args.outdir.parent / f"{args.outdir.name}.lock"):
            return update(args, version) if args.update else check(args)
    except RuntimeError as exc:
        print(f"autobahn: run broken: {exc}", flush=True)
        return 2


def check(args: argparse.Namespace) -> int:
    """Run the suite (over again once if kosoku hangs), retry a few problems, report."""
    expected = load_expected()
    if args.full and not args.selection:
        must_run = set(expected)
    elif args.include or args.exclude:
        must_run = set()  # a hand-picked selection: compare what ran
    else:
        must_run = {cid for cid in expected if not HEAVY.match(cid)}
    for tries_left in (1, 0):
        try:
            with echo_server() as port:
                url = f"ws://127.0.0.1:{port}/echo"
                reports = attempt(url, args.outdir, args, args.selection)
                verdicts = {cid: verdict(rep) for cid, rep in reports.items()}
                problems, _ = compare(verdicts, expected, must_run)
                retried = retry(url, args, problems, reports, verdicts)
            return report(verdicts, reports, retried, expected, must_run)
        except KosokuHung as exc:
            if not tries_left:
                raise
            print(f"autobahn: {exc}; killed it, starting over with a fresh server", flush=True)
    raise AssertionError("unreachable")


def retry(
    url: str,
    args: argparse.Namespace,
    problems: dict[str, str],
    reports: Reports,
    verdicts: dict[str, str],
) -> dict[str, str]:
    """Rerun a few problem cases once, one at a time; update ``reports`` and ``verdicts``.

    Some cases give the server half a second (e.g. 6.7.1 to answer a Close): on a loaded
    2-core machine a stall of the client or the server can miss that. A real defect fails
    the rerun too. Returns the first verdict of every retried case, for the output.
    """
    ids = [cid for cid in problems if cid in reports]
    if not ids or len(ids) > MAX_RETRIES:
        return {}
    first = {cid: f"{verdicts[cid]} ({problems[cid]}){explain(reports[cid])}" for cid in ids}
    again = attempt(url, args.outdir / "retry", args, [f"-i{cid}" for cid in ids], 1)
    reports.update(again)
    verdicts.update({cid: verdict(rep) for cid, rep in again.items()})
    return first


def report(
    verdicts: dict[str, str],
    reports: Reports,
    retried: dict[str, str],
    expected: dict[str, str],
    must_run: set[str],
) -> int:
    """Print the problems, the improvements and the summary line; return the exit status."""
    problems, better = compare(verdicts, expected, must_run)
    for case_id, first in retried.items():
        now = "passed" if case_id not in problems else "failed again"
        print(f"autobahn: RETRIED {case_id}, {now} on retry; first run: {first}")
    if better:
        print(
            f"autobahn: {len(better)} cases better than expected.json (record them: "
            f"run.py --update): " + ", ".join(better[:8]) + (" ..." if len(better) > 8 else "")
        )
    for case_id, problem in list(problems.items())[:30]:
        print(f"autobahn: PROBLEM {case_id}: {problem}{explain(reports.get(case_id))}")
    if len(problems) > 30:
        print(f"autobahn: ... and {len(problems) - 30} more problems")
    flaky = sum(1 for cid in retried if cid not in problems)
    tail = f" ({flaky} passed on retry)" if flaky else ""
    worse = sum(1 for cid in problems if verdicts.get(cid) != "FAILED")
    tail = f", {worse} worse than expected or missing{tail}" if worse else tail
    print(summary(verdicts) + tail, flush=True)
    return 1 if problems else 0


def update(args: argparse.Namespace, version: str) -> int:
    """Record each case's verdict in expected.json: one full run, then ``--runs`` - 1 more
    runs of the timing-dependent cases (those for which Autobahn itself lists a NON-STRICT
    outcome: whether the server echoes a message before failing on the next frame depends
    on how TCP cut the bytes), keeping each case's worst verdict."""
    with echo_server() as port:
        url = f"ws://127.0.0.1:{port}/echo"
        reports = attempt(url, args.outdir / "update-1", args, [])
        worst = {cid: verdict(rep) for cid, rep in reports.items()}
        timing = [f"-i{cid}" for cid, rep in reports.items() if "NON-STRICT" in rep["expected"]]
        for run in range(2, args.runs + 1):
            for cid, rep in attempt(url, args.outdir / f"update-{run}", args, timing).items():
                got = verdict(rep)
                worst[cid] = got if RANK[got] >= RANK[worst[cid]] else worst[cid]
    print(summary(worst) + f" (timing-dependent cases: worst of {args.runs} runs)")
    forbidden = {cid: v for cid, v in worst.items() if not allowed(cid, v)}
    if forbidden:
        print(f"autobahn: --update refused, these verdicts may not be recorded: {forbidden}")
        return 1
    write_expected(worst, version, args.runs)
    print(f"autobahn: wrote {EXPECTED.relative_to(ROOT)} ({len(worst)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
