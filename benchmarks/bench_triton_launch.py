"""Benchmark: Triton's Python launch path per launch, ``kernel[grid]`` against the cached direct launch.

What a launch costs on the host before the driver sees it: binding ~15 arguments and 10-13
constexprs and computing their specialization (``kernel[grid](*args, **kwargs)``), against
:func:`splitkern.triton._launch.launch` on a repeated signature. Measured without a GPU: the kernels
compile for sm_90 for real, the driver is the recording one of ``tests/triton/launch_checks.py``
(its launcher appends the arguments to a list, ~0.1 µs), so both columns are Python only; on a GPU
the driver's own launch (a few µs) adds to both.

``python benchmarks/bench_triton_launch.py`` (from the repository root; no ``TRITON_INTERPRET``):
per real launch variant, the best of ``--rounds`` medians of ``--calls`` launches each (both paths timed
round-robin, garbage collection off: ``bench_host_overhead.interleaved_us``), and writes
``results/triton_launch-cpu-<date>.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
from pathlib import Path

if os.environ.pop("TRITON_INTERPRET", None):
    raise SystemExit("bench_triton_launch.py measures the compiled path: run it without TRITON_INTERPRET")

import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.triton
import triton  # noqa: E402

from bench_host_overhead import interleaved_us  # noqa: E402
from common import source_commit  # noqa: E402

from splitkern.triton import _launch  # noqa: E402
from tests.triton import launch_checks  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def measure(calls: int, rounds: int) -> list[dict]:
    driver = launch_checks.RecordingDriver()
    triton.runtime.driver.set_active(driver)
    rows = []
    for name, (kernel, label, args, kwargs, _) in zip(launch_checks.LAUNCH_NAMES, launch_checks.real_launches()):
        fn = launch_checks.jit_function(kernel)
        grid = (3, 2)
        cache = _launch.CachedLaunches(fn)
        cache(grid, args, kwargs)  # compiles, fills the cache
        timed = interleaved_us({"own": lambda: fn[grid](*args, **kwargs), "direct": lambda: cache(grid, args, kwargs)},
                               rounds, calls)
        own, direct = timed["own"][0], timed["direct"][0]
        driver.launches.clear()
        rows.append({"case": name, "variant": label, "arguments": len(args) + len(kwargs),
                     "kernel_grid_us": round(own, 2), "direct_us": round(direct, 2),
                     "saved_us": round(own - direct, 2)})
    return rows


def write(rows: list[dict], suffix: str, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"triton_launch-cpu-{datetime.date.today()}{suffix}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Triton launch path per launch, CPU (Triton {triton.__version__}, splitkern {source_commit()}, "
             f"load {os.getloadavg()[0]:.1f})", "",
             "Python only: sm_90 kernels compiled for real, a recording launcher instead of the driver "
             "(`benchmarks/bench_triton_launch.py`).", "",
             "| case | variant | arguments | kernel[grid] µs | direct µs | saved µs |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['variant']} | {r['arguments']} | {r['kernel_grid_us']} | {r['direct_us']} | "
              f"{r['saved_us']} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--suffix", default="", help="appended to the result files' names")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    args = parser.parse_args()
    rows = measure(args.calls, args.rounds)
    for row in rows:
        print(row)
    print(f"wrote {write(rows, args.suffix, args.out)}.csv/.md")


if __name__ == "__main__":
    main()
