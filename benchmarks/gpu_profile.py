"""Where a benchmark line's time goes on the GPU: kernels vs everything around them.

    python benchmarks/gpu_profile.py [--case SUBSTR] [--line NAME] [--op block_diag_mm|grouped_conv]

For each (case, mode, line) of the op's benchmark it reports the event-timed median (what the
benchmark CSV holds), the CUDA kernel time per call read off torch.profiler (the sum of every
kernel the call launched), the number of launches, and the three longest kernels. Event time far
above kernel time means the call is bound by host work (Python, dispatch, launches), not by its
kernels. Writes ``results/profile-<op>-<device>-<date>.csv``. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
from collections import Counter

import torch
from torch.autograd import DeviceType

import common

CALLS = 10


def kernel_times(fn) -> tuple[float, int, list[tuple[str, float]]]:
    """(kernel ms per call, launches per call, [(kernel, ms per call)] of the three longest)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    per_kernel: Counter = Counter()
    for e in kernels:
        per_kernel[e.name[:60]] += e.time_range.elapsed_us() / 1e3 / CALLS
    total = sum(per_kernel.values())
    return total, len(kernels) // CALLS, per_kernel.most_common(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", default="block_diag_mm", choices=["block_diag_mm", "grouped_conv"])
    args, rest = parser.parse_known_args()  # --case/--line: the benchmark's own selection (common.select)
    bench = importlib.import_module(f"bench_{args.op}")
    device = bench.DEVICE
    if device.type != "cuda":
        raise SystemExit("gpu_profile.py needs a CUDA device")
    _, cases, lines = common.select(args.op, bench.CASES, bench.LINES, rest)
    rows = []
    for case in cases:
        for mode in bench.MODES:
            for line in lines:
                try:
                    fn = bench.make_runner(case, line, mode)
                    if fn is None:
                        continue
                    event_ms = common.median_seconds(fn, device) * 1e3
                    kernel_ms, launches, top = kernel_times(fn)
                except Exception as exc:  # report and go on: one line must not cost the others
                    print(f"SKIPPED {case.name} {mode} {line}: {type(exc).__name__}: {exc}")
                    continue
                top_text = "; ".join(f"{name} {ms:.3f}" for name, ms in top)
                rows.append(dict(case=case.name, mode=mode, line=line, event_ms=round(event_ms, 4),
                                 kernel_ms=round(kernel_ms, 4), launches=launches, top_kernels=top_text))
                print(f"{case.name:<24} {mode:<8} {line:<22} event {event_ms:8.3f} ms  kernels {kernel_ms:8.3f} ms "
                      f"({launches:3d} launches)  {top_text}")
    kind = "gpu-" + torch.cuda.get_device_name(device).split()[-1]
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    path = common.RESULTS / f"profile-{args.op}-{kind}-{datetime.date.today().isoformat()}.csv"
    with path.open("w", newline="") as f:
        f.write(f"# {common.device_label(device)}, torch {torch.__version__}\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
