"""summary.txt of a GPU session folder: environment, steps, test counts, headline speedups.

    python benchmarks/gpu_summary.py WORK_DIR      (benchmarks/gpu_session.sh calls it)

WORK_DIR holds ``steps.txt`` (one ``name rc seconds`` line per step), ``logs/*.log``,
``tests.xml`` (pytest's JUnit report) and ``results/*.csv`` (benchmark rows, see common.Row).
Speedups are measured ones, read from the CSVs; nothing is estimated here.
"""

from __future__ import annotations

import csv
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def test_counts(xml_path: Path) -> str:
    if not xml_path.exists():
        return "no test report (the test step did not finish)"
    root = ET.parse(xml_path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    get = lambda key: int(suite.get(key, 0))  # noqa: E731
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    lines = [f"{get('tests')} tests: {get('tests') - get('failures') - get('errors') - get('skipped')} passed, "
             f"{get('failures')} failed, {get('errors')} errors, {get('skipped')} skipped"]
    lines += [f"  FAILED {name}" for name in failed]
    return "\n".join(lines)


def headline(rows: list[dict]) -> list[str]:
    """Per (op, case, mode): the dense time and every other line's measured speedup over it."""
    out = []
    keys = dict.fromkeys((r["op"], r["case"], r["mode"]) for r in rows)
    for op, case, mode in keys:
        group = [r for r in rows if (r["op"], r["case"], r["mode"]) == (op, case, mode)]
        dense = next((r for r in group if r["line"] == r.get("baseline", "dense")), None)
        others = [r for r in group if r is not dense]
        best = max(others, key=lambda r: float(r["speedup"] or 0), default=None)
        cells = ", ".join(f"{r['line']} {float(r['speedup']):.2f}x" for r in others if r["speedup"])
        dense_ms = f"{float(dense['median_ms']):.3f}" if dense else "-"
        best_line = f"{best['line']} {float(best['speedup']):.2f}x" if best and best["speedup"] else "-"
        out.append(f"| {op} | {case} | {mode} | {dense_ms} | {best_line} | {cells} |")
    return out


def summary(work: Path) -> str:
    parts = ["# GPU session summary", ""]
    env = work / "logs" / "env.log"
    parts += ["## Environment", "```", env.read_text().strip() if env.exists() else "(no env log)", "```", ""]
    steps = work / "steps.txt"
    parts += ["## Steps (name, exit code, seconds; 124 = stopped by its timeout)", "```",
              steps.read_text().strip() if steps.exists() else "(none ran)", "```", ""]
    parts += ["## GPU tests", test_counts(work / "tests.xml"), ""]
    parts += ["## Speedups over the dense baseline (measured)",
              "| op | case | mode | dense ms | best line | all lines |", "|---|---|---|---|---|---|"]
    for path in sorted((work / "results").glob("*.csv")):
        rows = read_rows(path)
        if rows and "speedup" in rows[0]:
            parts += headline(rows)
    return "\n".join(parts) + "\n"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: gpu_summary.py WORK_DIR")
    print(summary(Path(sys.argv[1])), end="")


if __name__ == "__main__":
    main()
