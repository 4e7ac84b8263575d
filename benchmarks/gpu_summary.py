"""summary.txt of a GPU session folder: environment, steps, build check, host cost, test counts,
headline speedups, event vs kernel time.

    python benchmarks/gpu_summary.py WORK_DIR      (benchmarks/gpu_session.sh calls it)

WORK_DIR holds ``steps.txt`` (one ``name rc seconds`` line per step), ``logs/*.log``,
``tests.xml`` (pytest's JUnit report) and ``results/*.csv`` (benchmark rows, see common.Row; the
host-cost rows of bench_host_overhead.py; the event/kernel rows of gpu_profile.py).
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


def build_check(work: Path) -> list[str]:
    """The build step's own verdict lines (``build check: ...``, the build's duration)."""
    log = work / "logs" / "build.log"
    if not log.exists():
        return ["(no build log)"]
    found = [line for line in log.read_text(errors="replace").splitlines()
             if line.startswith(("build check:", "build: "))]
    return found or ["(the build step wrote no check: see logs/build.log)"]


def _num(value: str, spec: str = ".1f") -> str:
    return format(float(value), spec) if value not in (None, "") else "-"


def host_cost(rows: list[dict]) -> list[str]:
    """Per (case, mode) of bench_host_overhead: dense and split µs per call, split / dense, and where the
    GPU timed them, the split call's event, kernel and host µs."""
    out = []
    for r in rows:
        if r["line"] != "split":
            continue
        dense = next((d for d in rows if d["line"] == "dense" and (d["case"], d["mode"]) == (r["case"], r["mode"])), {})
        out.append(f"| {r['case']} | {r['mode']} | {_num(dense.get('median_us'))} | {_num(r['median_us'])} | "
                   f"{_num(r['ratio'], '.2f')} | {_num(r.get('event_us'))} | {_num(r.get('kernel_us'))} | "
                   f"{_num(r.get('host_us'))} |")
    return out


def profile_lines(op: str, rows: list[dict]) -> list[str]:
    """gpu_profile.py's rows: every line's event, kernel and host ms."""
    return [f"| {op} | {r['case']} | {r['mode']} | {r['line']} | {_num(r['event_ms'], '.3f')} | "
            f"{_num(r.get('kernel_ms'), '.3f')} | {_num(r.get('host_ms'), '.3f')} | {r.get('launches') or '-'} |"
            for r in rows if "event_ms" in r]


def summary(work: Path) -> str:
    parts = ["# GPU session summary", ""]
    env = work / "logs" / "env.log"
    parts += ["## Environment", "```", env.read_text().strip() if env.exists() else "(no env log)", "```", ""]
    steps = work / "steps.txt"
    parts += ["## Steps (name, exit code, seconds; 124 = stopped by its timeout)", "```",
              steps.read_text().strip() if steps.exists() else "(none ran)", "```", ""]
    parts += ["## Build", "```", *build_check(work), "```", ""]
    results = sorted((work / "results").glob("*.csv"))
    parts += ["## Host cost per call (bench_host_overhead; split / dense, µs)",
              "| case | mode | dense | split | split / dense | split event | split kernels | split host |",
              "|---|---|---|---|---|---|---|---|"]
    for path in results:
        if path.name.startswith("host_overhead-"):
            parts += host_cost(read_rows(path))
    parts += ["", "## GPU tests", test_counts(work / "tests.xml"), ""]
    parts += ["## Speedups over the dense baseline (measured)",
              "| op | case | mode | dense ms | best line | all lines |", "|---|---|---|---|---|---|"]
    for path in results:
        rows = read_rows(path)
        if rows and "speedup" in rows[0]:
            parts += headline(rows)
    parts += ["", "## Event time vs kernel time per call (gpu_profile; host = event - kernels, ms)",
              "| op | case | mode | line | event | kernels | host | launches |", "|---|---|---|---|---|---|---|---|"]
    for path in results:
        if path.name.startswith("profile-"):
            op = path.name.removeprefix("profile-").split("-gpu-")[0].split("-cpu-")[0]
            parts += profile_lines(op, read_rows(path))
    return "\n".join(parts) + "\n"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: gpu_summary.py WORK_DIR")
    print(summary(Path(sys.argv[1])), end="")


if __name__ == "__main__":
    main()
