"""Verdicts of an Autobahn run: one per case, compared with the checked-in expected.json.

``verdict()`` reduces kosoku's two verdicts of a case (message exchange, closing handshake)
to one; ``compare()`` finds FAILED cases and cases worse than expected.json; ``allowed()``
is the policy expected.json must follow (passing verdicts; UNIMPLEMENTED only for the
permessage-deflate cases 12.* and 13.*); ``summary()`` is the one-line summary.
What it does not do: no processes, no kosoku: ``run.py`` drives those.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

EXPECTED = Path(__file__).resolve().parent / "expected.json"
Reports = dict[str, dict[str, Any]]

#: Verdicts from best to worst; a case may not move to a higher rank than expected.json's.
RANK = {"OK": 0, "NON-STRICT": 1, "INFORMATIONAL": 1, "UNIMPLEMENTED": 2, "FAILED": 3}
#: What expected.json may record: kosoku's passing verdicts ...
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
#: ... plus UNIMPLEMENTED for the permessage-deflate cases, until the server negotiates it.
MAY_BE_UNIMPLEMENTED = re.compile(r"^1[23]\.")
CLOSE_PASSING = ("OK", "INFORMATIONAL")
#: The long permessage-deflate cases: 1000 messages of 8-128 KiB each (rows 6-10 and 12-18
#: of every 12.x/13.x group), about 95% of a full run's time. Only ``run.py --full`` runs
#: them; the default run keeps rows 1-5 (16 B-4 KiB) and 11 (8 KiB in 256-byte fragments).
HEAVY_ROWS = (6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18)
HEAVY = re.compile(r"^1[23]\.\d+\.(?:" + "|".join(map(str, HEAVY_ROWS)) + ")$")
SUMMARY_ORDER = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")


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
    verdicts: dict[str, str], expected: dict[str, str], must_run: set[str]
) -> tuple[dict[str, str], list[str]]:
    """Return (problems by case id, improvements as printable lines).

    A problem: a FAILED case, a case worse than expected, a case kosoku ran that
    expected.json does not know, or a case of ``must_run`` that did not run.
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
    for case_id in sorted(must_run - verdicts.keys(), key=case_key):
        problems[case_id] = f"expected {expected.get(case_id)}, but kosoku did not run it"
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
        "about": "Autobahn TestSuite verdicts of tests/autobahn/server.py, one per case (the "
        "worst of `runs` runs for timing-dependent cases); tests/autobahn/run.py fails on "
        "FAILED or on any case worse than this. "
        "Regenerate: .venv/bin/python tests/autobahn/run.py --update",
        "kosoku": version,
        "runs": runs,
        "counts": dict(Counter(verdicts.values())),
        "cases": verdicts,
    }
    tmp = EXPECTED.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, EXPECTED)
