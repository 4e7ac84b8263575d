"""Where a benchmark line's time goes on the GPU: kernels vs everything around them.

    python benchmarks/gpu_profile.py --op block_diag_mm|grouped_conv|group_weight_reg|host_overhead|...
                                     [--case SUBSTR] [--line NAME]

For each (case, mode, line) of the op's benchmark (``benchmarks/bench_<op>.py``: its ``CASES``, ``LINES``,
``MODES`` and ``make_runner``) it reports the
event-timed median (what the benchmark CSV holds), the CUDA kernel time per call read off
torch.profiler (the sum of every kernel the call launched), the host time (event - kernels), the
number of launches and the three longest kernels. Event time far above kernel time means the call is
bound by host work (Python, dispatch, launches), not by its kernels. ``host_overhead``'s lines are the
split layers (SplitLinear / SplitConv2d) against the dense ones.

Writes ``results/profile-<op>-<device>-<date>.csv`` and, for an op benchmark, its usual
``results/<op>-<device>-<date>.csv`` (the same event times, with speedups over the baseline), so
one pass gives both. Without a CUDA device it times the lines on the CPU (no kernel times): the
GPU script's dry run. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import importlib
from pathlib import Path

import torch

import common

CALLS = 10
BASELINES = {"group_weight_reg": "literal"}  # the line speedups are measured against; "dense" otherwise


def kernel_times(fn) -> tuple[float, int, list[tuple[str, float]]]:
    """(kernel ms per call, launches per call, [(kernel, ms per call)] of the three longest)."""
    return common.kernel_times(fn, CALLS)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ops = sorted(path.stem.removeprefix("bench_") for path in Path(__file__).resolve().parent.glob("bench_*.py"))
    parser.add_argument("--op", default="block_diag_mm", choices=ops,
                        help="the benchmark whose lines to profile (benchmarks/bench_<op>.py)")
    args, rest = parser.parse_known_args(argv)  # --case/--line: the benchmark's own selection (common.select)
    bench = importlib.import_module(f"bench_{args.op}")
    device = bench.DEVICE
    cuda = device.type == "cuda"
    if not cuda:
        print("no CUDA device: event times are CPU wall times, no kernel times")
    _, cases, lines = common.select(args.op, bench.CASES, bench.LINES, rest)
    profiles, rows = [], []
    for case in cases:
        for mode in bench.MODES:
            for line in lines:
                try:
                    fn = bench.make_runner(case, line, mode)
                    if fn is None:
                        continue
                    seconds = common.median_seconds(fn, device)
                    kernel_ms, launches, top = kernel_times(fn) if cuda else (None, None, [])
                except Exception as exc:  # report and go on: one line must not cost the others
                    print(f"SKIPPED {case.name} {mode} {line}: {type(exc).__name__}: {exc}")
                    continue
                event_ms = seconds * 1e3
                host_ms = event_ms - kernel_ms if kernel_ms is not None else None
                top_text = "; ".join(f"{name} {ms:.3f}" for name, ms in top)
                profiles.append(dict(case=case.name, mode=mode, line=line, event_ms=round(event_ms, 4),
                                     kernel_ms=None if kernel_ms is None else round(kernel_ms, 4),
                                     host_ms=None if host_ms is None else round(host_ms, 4),
                                     launches=launches, top_kernels=top_text))
                kernels = (f"kernels {kernel_ms:8.3f} ms  host {host_ms:8.3f} ms ({launches:3d} launches)  {top_text}"
                           if kernel_ms is not None else "")
                print(f"{case.name:<24} {mode:<8} {line:<22} event {event_ms:8.3f} ms  {kernels}", flush=True)
                if hasattr(bench, "describe"):
                    dtype, m, k, n, groups, flops, traffic, *_ = bench.describe(case, mode)
                    rows.append(common.Row(args.op, case.name, line, str(dtype).replace("torch.", ""), m, k, n, groups,
                                           mode, round(event_ms, 4), round(flops / seconds / 1e12, 4),
                                           common.roofline_pct(device, dtype, flops, traffic, seconds)))
    path = common.results_path(f"profile-{args.op}", device)
    with path.open("w", newline="") as f:
        f.write(f"# {common.device_label(device)}, torch {torch.__version__}\n")
        writer = csv.DictWriter(f, fieldnames=list(profiles[0]) if profiles else ["case"])
        writer.writeheader()
        writer.writerows(profiles)
    print(f"wrote {path}")
    if rows:
        common.add_speedups(rows, BASELINES.get(args.op, "dense"))
        print(f"wrote {common.write_csv(rows, args.op, device)}")


if __name__ == "__main__":
    main()
