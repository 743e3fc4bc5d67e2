"""Run the Autobahn TestSuite (through kosoku) against wsflask and compare with expected.json.

What it does, in order:

1. normalises kosoku 0.1.0's compression case file (ARCHITECTURE.md §5; ``normalise()``):
   kosoku 0.1.0 hands some messages of cases 12.* and 13.* to ``onMessage`` as ``str``, and
   the case's SHA-1 check then raises "Strings must be encoded before hashing". The patch
   turns text ``str`` into UTF-8 bytes and binary ``str`` into latin-1 bytes before hashing.
   It is idempotent (a marker line), says what it did, and does nothing for other versions;
2. starts ``tests/autobahn/server.py`` (wsflask's ``App``, conformance profile, ``/echo``) on
   a free port in a child process, and stops it in ``finally``;
3. runs ``kosoku -p 4 ws://127.0.0.1:PORT/echo`` with reports under ``build/autobahn``;
4. reads every per-case JSON report, takes each case's verdict (``verdict()``), compares it
   with ``tests/autobahn/expected.json`` and prints one summary line, e.g.
   ``autobahn: 517 cases, 301 OK, ... 0 FAILED``.

Exit status 0 when no case FAILED and none is worse than expected; 1 otherwise (the worse
cases are listed with kosoku's explanation and the report file to open); 2 when the run
itself broke (server did not start, kosoku crashed or timed out, reports missing).

``--update`` rewrites expected.json from this run (refused if a case FAILED, or if a case
outside 12.*/13.* is UNIMPLEMENTED: the file never records a failure). Run it after a change
that improves verdicts, e.g. once permessage-deflate is wired into the server, and commit the
diff. ``-i/-x CASE`` pass a case selection to kosoku (then only those cases are compared).

What it does not do: it is not imported by wsflask and does not monkey-patch; it does not
judge verdicts itself (kosoku does); speed is not measured here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SERVER = HERE / "server.py"
EXPECTED = HERE / "expected.json"
OUTDIR = ROOT / "build" / "autobahn"

#: Verdicts from best to worst; a case may not move to a higher rank than expected.json's.
RANK = {"OK": 0, "NON-STRICT": 1, "INFORMATIONAL": 1, "UNIMPLEMENTED": 2, "FAILED": 3}
#: What expected.json may record: kosoku's passing verdicts ...
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
#: ... plus UNIMPLEMENTED for the permessage-deflate cases, until the server negotiates it.
MAY_BE_UNIMPLEMENTED = re.compile(r"^1[23]\.")
CLOSE_PASSING = ("OK", "INFORMATIONAL")
SUMMARY_ORDER = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")

SERVER_START_TIMEOUT = 30.0
KOSOKU_TIMEOUT = 600.0

# -- 1. the kosoku 0.1.0 normalisation (ARCHITECTURE.md §5) -----------------------------------

AFFECTED_VERSIONS = ("0.1.0",)
MARKER = "# wsflask: kosoku 0.1.0 normalisation (ARCHITECTURE.md section 5)"
BUGGY = "def onMessage(self, msg, binary):\n   m = hashlib.sha1()\n   m.update(msg)\n"
FIXED = (
    "def onMessage(self, msg, binary):\n"
    f"   {MARKER}: hash bytes, never str\n"
    "   if isinstance(msg, str):\n"
    "      msg = msg.encode('latin-1' if binary else 'utf-8')\n"
    "   m = hashlib.sha1()\n"
    "   m.update(msg)\n"
)


def case_file() -> Path:
    """The installed ``kosoku/cases/case12_x_x.py`` (found without importing kosoku)."""
    spec = importlib.util.find_spec("kosoku")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("autobahn: kosoku is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "cases" / "case12_x_x.py"


def normalise(path: Path, version: str) -> str:
    """Apply the §5 normalisation to ``path`` once; return what was done, for the output.

    No-op (and says why) when it is already there, when kosoku is not an affected version,
    or when ``onMessage`` no longer has the shape it patches.
    """
    text = path.read_text(encoding="utf-8")
    if MARKER in text:
        return f"kosoku {version}: compression case normalisation already applied ({path})"
    if version not in AFFECTED_VERSIONS:
        return f"kosoku {version}: no normalisation needed (only {AFFECTED_VERSIONS} hash str)"
    if text.count(BUGGY) != 1:
        return (
            f"kosoku {version}: onMessage in {path} has changed shape; normalisation "
            "NOT applied (12.*/13.* may fail with 'Strings must be encoded')"
        )
    tmp = path.with_suffix(".py.wsflask-tmp")
    tmp.write_text(text.replace(BUGGY, FIXED), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a concurrent kosoku sees the old or the new file
    return (
        f"kosoku {version}: normalised {path}: onMessage encodes text str as UTF-8 and "
        "binary str as latin-1 before hashing (ARCHITECTURE.md section 5)"
    )


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


def run_kosoku(url: str, outdir: Path, parallelism: int, selection: list[str]) -> float:
    """Run kosoku into ``outdir`` (emptied first); return its wall time in seconds.

    kosoku exits 1 whenever a case did not pass (UNIMPLEMENTED included): the verdicts are
    judged from the reports, so only a crash, a timeout or missing reports break the run.
    """
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    command = [*kosoku_command(), "-p", str(parallelism), "-o", str(outdir), *selection, url]
    started = time.monotonic()
    with open(outdir / "kosoku.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=outdir)
        try:
            code = proc.wait(KOSOKU_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"kosoku did not finish within {KOSOKU_TIMEOUT} s") from None
        finally:
            _stop(proc, grace=5.0)
    if code not in (0, 1):
        raise RuntimeError(f"kosoku exited with {code}; see {outdir / 'kosoku.log'}")
    return time.monotonic() - started


# -- 4. verdicts -------------------------------------------------------------------------------


def case_key(case_id: str) -> list[int]:
    """Numeric order: 1.2.10 after 1.2.9."""
    return [int(part) for part in case_id.split(".")]


def verdict(report: dict[str, Any]) -> str:
    """One verdict per case: kosoku's ``behavior``, or FAILED when the close went wrong.

    kosoku passes a case when ``behavior`` is OK/NON-STRICT/INFORMATIONAL and
    ``behaviorClose`` is OK/INFORMATIONAL; ERROR (the case could not run) counts as FAILED.
    """
    behavior = str(report["behavior"])
    if behavior in PASSING and report["behaviorClose"] not in CLOSE_PASSING:
        return "FAILED"
    return behavior if behavior in RANK else "FAILED"


def read_reports(outdir: Path) -> dict[str, dict[str, Any]]:
    """Every per-case report of the run, by case id."""
    reports: dict[str, dict[str, Any]] = {}
    for path in outdir.glob("*_case_*.json"):
        report = json.loads(path.read_text(encoding="utf-8"))
        report["_file"] = str(path)
        reports[report["id"]] = report
    return dict(sorted(reports.items(), key=lambda item: case_key(item[0])))


def load_expected() -> dict[str, str]:
    """expected.json's ``cases`` (case id -> verdict), checked against the policy."""
    if not EXPECTED.exists():
        return {}
    cases: dict[str, str] = json.loads(EXPECTED.read_text(encoding="utf-8"))["cases"]
    bad = {cid: v for cid, v in cases.items() if not allowed(cid, v)}
    if bad:
        raise SystemExit(f"autobahn: {EXPECTED} records verdicts the policy forbids: {bad}")
    return cases


def allowed(case_id: str, value: str) -> bool:
    """What expected.json may hold: passing verdicts; UNIMPLEMENTED only for 12.*/13.*."""
    return value in PASSING or (
        value == "UNIMPLEMENTED" and bool(MAY_BE_UNIMPLEMENTED.match(case_id))
    )


def compare(
    verdicts: dict[str, str], expected: dict[str, str], full_run: bool
) -> tuple[dict[str, str], list[str]]:
    """Return (problems by case id, improvements as printable lines).

    A problem: a FAILED case, a case worse than expected, a case kosoku ran that
    expected.json does not know, or (full runs) an expected case that did not run.
    """
    problems: dict[str, str] = {}
    better: list[str] = []
    for case_id, got in verdicts.items():
        want = expected.get(case_id)
        if got == "FAILED":
            problems[case_id] = f"FAILED (expected {want or 'nothing'})"
        elif want is None:
            problems[case_id] = f"{got}, not in expected.json (a new case? see --update)"
        elif RANK[got] > RANK[want]:
            problems[case_id] = f"{got}, worse than the expected {want}"
        elif RANK[got] < RANK[want]:
            better.append(f"{case_id} {got} (expected {want})")
    if full_run:
        for case_id, want in expected.items():
            if case_id not in verdicts:
                problems[case_id] = f"expected {want}, but kosoku did not run it"
    return problems, better


def summary(verdicts: dict[str, str]) -> str:
    """``autobahn: N cases, a OK, b NON-STRICT, c INFORMATIONAL[, d UNIMPLEMENTED], e FAILED``."""
    counts = Counter(verdicts.values())
    parts = [f"{counts[v]} {v}" for v in SUMMARY_ORDER if counts[v] or v != "UNIMPLEMENTED"]
    return f"autobahn: {len(verdicts)} cases, " + ", ".join(parts)


def explain(report: dict[str, Any] | None) -> str:
    """kosoku's reason for a verdict, and the report to open."""
    if report is None:
        return ""
    html = report["_file"].removesuffix(".json") + ".html"
    return (
        f"\n    kosoku: {report['behavior']}/{report['behaviorClose']}: "
        f"{report.get('result', '')} / {report.get('resultClose', '')}\n    report: {html}"
    )


def write_expected(verdicts: dict[str, str], version: str, runs: int) -> None:
    """Rewrite expected.json with ``verdicts``, the worst of ``runs`` runs (policy checked)."""
    body = {
        "about": "Autobahn TestSuite verdicts of tests/autobahn/server.py, the worst of "
        "`runs` runs per case; tests/autobahn/run.py fails on FAILED or on any case "
        "worse than this. Regenerate: .venv/bin/python tests/autobahn/run.py --update",
        "kosoku": version,
        "runs": runs,
        "counts": dict(Counter(verdicts.values())),
        "cases": verdicts,
    }
    tmp = EXPECTED.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, EXPECTED)


# -- main --------------------------------------------------------------------------------------

#: A run with at most this many problem cases retries them once (timing-sensitive cases).
MAX_RETRIES = 10
Reports = dict[str, dict[str, Any]]


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
        default=3,
        help="with --update: full runs to take the worst verdict from (3)",
    )
    parser.add_argument("-p", "--parallelism", type=int, default=4)
    parser.add_argument("-o", "--outdir", type=Path, default=OUTDIR)
    parser.add_argument("-i", "--include", action="append", default=[], metavar="CASE")
    parser.add_argument("-x", "--exclude", action="append", default=[], metavar="CASE")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # so that the finally blocks stop the children


def attempt(url: str, outdir: Path, parallelism: int, selection: list[str]) -> Reports:
    """One kosoku run; its reports (RuntimeError when it wrote none)."""
    shown = " ".join(["kosoku", "-p", str(parallelism), *selection, url])
    print(f"autobahn: {shown} -> {outdir}", flush=True)
    seconds = run_kosoku(url, outdir, parallelism, selection)
    reports = read_reports(outdir)
    if not reports:
        raise RuntimeError(f"kosoku wrote no case reports to {outdir}; see kosoku.log there")
    print(f"autobahn: {len(reports)} cases in {seconds:.1f} s", flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    """Run everything; return the exit status (0 pass, 1 verdicts, 2 broken run)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    version = importlib.metadata.version("kosoku")
    print("autobahn: " + normalise(case_file(), version), flush=True)
    selection = [f"-i{c}" for c in args.include] + [f"-x{c}" for c in args.exclude]
    full_run = not selection
    if args.update and not full_run:
        print("autobahn: --update needs the full suite (no -i/-x)")
        return 2
    try:
        with echo_server() as port:
            url = f"ws://127.0.0.1:{port}/echo"
            if args.update:
                return update(args, version, url)
            reports = attempt(url, args.outdir, args.parallelism, selection)
            verdicts = {cid: verdict(report) for cid, report in reports.items()}
            problems, _ = compare(verdicts, load_expected(), full_run)
            retried = retry(url, args.outdir, problems, reports, verdicts)
    except RuntimeError as exc:
        print(f"autobahn: run broken: {exc}", flush=True)
        return 2
    return report(verdicts, reports, retried, full_run)


def retry(
    url: str, outdir: Path, problems: dict[str, str], reports: Reports, verdicts: dict[str, str]
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
    again = attempt(url, outdir / "retry", 1, [f"-i{cid}" for cid in ids])
    reports.update(again)
    verdicts.update({cid: verdict(rep) for cid, rep in again.items()})
    return first


def report(
    verdicts: dict[str, str], reports: Reports, retried: dict[str, str], full_run: bool
) -> int:
    """Print the problems, the improvements and the summary line; return the exit status."""
    problems, better = compare(verdicts, load_expected(), full_run)
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
    print(summary(verdicts) + tail, flush=True)
    return 1 if problems else 0


def update(args: argparse.Namespace, version: str, url: str) -> int:
    """Run the suite ``--runs`` times; record each case's worst verdict in expected.json."""
    worst: dict[str, str] = {}
    for run in range(1, args.runs + 1):
        reports = attempt(url, args.outdir / f"update-{run}", args.parallelism, [])
        for case_id, rep in reports.items():
            got, had = verdict(rep), worst.get(case_id, "OK")
            worst[case_id] = got if RANK[got] >= RANK[had] else had
    worst = dict(sorted(worst.items(), key=lambda item: case_key(item[0])))
    print(summary(worst) + f" (worst of {args.runs} runs)")
    forbidden = {cid: v for cid, v in worst.items() if not allowed(cid, v)}
    if forbidden:
        print(f"autobahn: --update refused, these verdicts may not be recorded: {forbidden}")
        return 1
    write_expected(worst, version, args.runs)
    print(f"autobahn: wrote {EXPECTED.relative_to(ROOT)} ({len(worst)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
