"""Timing, roofline and result-writing helpers shared by the op benchmarks.

GPU timings use CUDA events with the L2 flushed before every run; CPU timings use
``perf_counter``. Both report the median. Nothing here asserts a speed.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# SPLITKERN_RESULTS_DIR redirects the CSVs and plots (the GPU session script collects them there);
# SPLITKERN_BENCH_TINY=1 swaps every benchmark's cases for tiny ones (the session script's dry run).
RESULTS = Path(os.environ.get("SPLITKERN_RESULTS_DIR") or Path(__file__).resolve().parent / "results")
TINY = os.environ.get("SPLITKERN_BENCH_TINY") == "1"
# The device every benchmark times on.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (dense bf16/fp16 tensor-core TFLOP/s, dense fp32 TFLOP/s (no tf32), HBM TB/s), public spec sheets.
PEAKS = {
    "H100": (989.0, 67.0, 3.35),
    "H200": (989.0, 67.0, 4.8),
    "A100": (312.0, 19.5, 2.04),
}


@dataclass
class Row:
    op: str
    case: str
    line: str
    dtype: str
    m: int
    k: int
    n: int
    groups: int
    mode: str
    median_ms: float
    tflops: float
    pct_roofline: float | None
    baseline: str = "dense"
    speedup: float | None = None  # baseline time / this time
    bound: float | None = None  # the speedup the useful FLOPs allow: the baseline's FLOPs / the useful FLOPs
    note: str = ""  # what the line ran (e.g. the split layers' execution strategies)
    of_dense_rate: float | None = None  # speedup / bound: this line's useful FLOP rate / the baseline's own rate


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def _peaks(device: torch.device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAKS.items() if k in name), None)


def roofline_pct(device, dtype, flops: float, bytes_moved: float, seconds: float) -> float | None:
    """Achieved fraction of min(compute, bandwidth) roofline time, in percent."""
    peaks = _peaks(device)
    if peaks is None:
        return None
    tc, fp32, tbs = peaks
    peak_flops = (fp32 if dtype == torch.float32 else tc) * 1e12
    bound = max(flops / peak_flops, bytes_moved / (tbs * 1e12))
    return 100.0 * bound / seconds


_L2_FLUSH = {}


def _flush_l2(device):
    buf = _L2_FLUSH.get(device)
    if buf is None:
        buf = _L2_FLUSH[device] = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device=device)
    buf.zero_()


def median_seconds(fn, device: torch.device, *, repeats: int = 25, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = []
        for _ in range(repeats):
            _flush_l2(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def synchronized(fn, device: torch.device):
    """``fn`` followed by a device sync, for pytest-benchmark's wall-clock timer."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return run


def splitkern_lines(op: str, bind) -> dict:
    """``{"splitkern-<backend>": builder}`` for every backend splitkern knows.

    ``bind(case, *tensors)`` returns the zero-argument call of ``op`` on those tensors; each
    builder returns that call run under its backend, or None where the backend cannot run ``op``
    in the case's dtype on :data:`DEVICE`.
    """
    from splitkern import backend

    return {f"splitkern-{name}": _backend_line(op, name, bind) for name in backend.BACKENDS}


def _backend_line(op: str, name: str, bind):
    """The line builder of :func:`splitkern_lines` for the backend ``name``."""
    import splitkern
    from splitkern import backend

    def build(case, *tensors):
        if backend.unsupported_reason(name, op, DEVICE, case.dtype):
            return None
        call = bind(case, *tensors)

        def run():
            with splitkern.use_backend(name):
                return call()
        return run
    return build


def benchmark_test(op: str, cases, lines, modes, make_runner):
    """The pytest-benchmark test of a benchmark, named ``test_<op>``: one run per (case, line, mode),
    timing ``make_runner(case, line, mode)`` in the group ``"<op> <case> <mode>"``; skipped where
    ``make_runner`` returns None."""
    import pytest

    @pytest.mark.parametrize("mode", modes)
    @pytest.mark.parametrize("line", list(lines))
    @pytest.mark.parametrize("case", cases, ids=lambda c: c.name)
    def test(benchmark, case, line, mode):
        fn = make_runner(case, line, mode)
        if fn is None:
            pytest.skip(f"{line} does not run {case.name} {mode} on {DEVICE}")
        benchmark.group = f"{op} {case.name} {mode}"
        benchmark(synchronized(fn, DEVICE))

    test.__name__ = test.__qualname__ = f"test_{op}"
    return test


def add_speedups(rows: list[Row], baseline: str = "dense") -> None:
    """Each row's speedup over the ``baseline`` line of its case and mode and, where the row has a FLOP bound,
    the share of the baseline's FLOP rate it reaches (``speedup / bound``: 1.0 = as fast per FLOP as dense)."""
    base_ms = {(r.case, r.mode): r.median_ms for r in rows if r.line == baseline}
    for r in rows:
        base = base_ms.get((r.case, r.mode))
        r.baseline = baseline
        r.speedup = round(base / r.median_ms, 3) if base else None
        r.of_dense_rate = round(r.speedup / r.bound, 3) if r.speedup and r.bound else None


def result_kind(device: torch.device) -> str:
    """``cpu`` or ``gpu-<chip>`` (``gpu-H200``): the device part of a results file's name."""
    return "gpu-" + torch.cuda.get_device_name(device).split()[-1] if device.type == "cuda" else "cpu"


def results_path(op: str, device: torch.device, suffix: str = "", ext: str = ".csv") -> Path:
    """``RESULTS/<op>-<cpu|gpu-chip>-<date>[-<suffix>]<ext>``, its folder created."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    tail = f"-{suffix}" if suffix else ""
    return RESULTS / f"{op}-{result_kind(device)}-{datetime.date.today().isoformat()}{tail}{ext}"


def source_commit() -> str:
    """The git commit of the splitkern package being measured (``<sha>``, ``<sha>+dirty`` when
    splitkern/ has uncommitted changes), or ``unknown`` outside a git checkout."""
    import subprocess

    import splitkern

    package = Path(splitkern.__file__).resolve().parent
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def kernel_times(fn, calls: int = 10) -> tuple[float, int, list[tuple[str, float]]]:
    """What ``fn`` runs on the GPU, read off torch.profiler over ``calls`` calls (after one unprofiled
    call): ``(kernel ms per call, launches per call, [(kernel, ms per call)] of the three longest)``.
    The kernel time is the sum of every kernel's duration (memsets and copies included)."""
    from collections import Counter

    from torch.autograd import DeviceType

    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    per_kernel: Counter = Counter()
    for e in kernels:
        per_kernel[e.name[:60]] += e.time_range.elapsed_us() / 1e3 / calls
    return sum(per_kernel.values()), len(kernels) // calls, per_kernel.most_common(3)


def write_csv(rows: list[Row], op: str, device: torch.device) -> Path:
    path = results_path(op, device)
    with path.open("w", newline="") as f:
        f.write(f"# {device_label(device)}, torch {torch.__version__}\n")
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
    return path


def plot_speedups(rows: list[Row], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r.case, r.mode) for r in rows})
    baseline = rows[0].baseline
    lines = [ln for ln in dict.fromkeys(r.line for r in rows) if ln != baseline]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys)), 4))
    width = 0.8 / max(1, len(lines))
    for i, line in enumerate(lines):
        vals = {(r.case, r.mode): r.speedup or 0 for r in rows if r.line == line}
        ax.bar([j + i * width for j in range(len(keys))], [vals.get(k, 0) for k in keys], width, label=line)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    ax.set_xticklabels([f"{c}\n{m}" for c, m in keys], fontsize=7)
    ax.set_ylabel(f"speedup vs {baseline}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def print_rows(rows: list[Row]) -> None:
    for r in rows:
        pct = f"{r.pct_roofline:5.1f}%" if r.pct_roofline is not None else "  n/a"
        speedup = f"{r.speedup:6.2f}x vs {r.baseline}" if r.speedup else ""
        rate = f" ({100 * r.of_dense_rate:5.1f}% of the {r.baseline} FLOP rate)" if r.of_dense_rate is not None else ""
        print(f"{r.case:<22} {r.mode:<8} {r.line:<20} {r.median_ms:9.3f} ms {r.tflops:8.3f} TFLOP/s "
              f"{pct}  {speedup}{rate}")


def select(op: str, cases, lines, argv=None):
    """Command-line subset of a benchmark: ``--case SUBSTR`` (repeatable), ``--line NAME`` (repeatable),
    ``--name NAME`` (results file prefix, default the op). Returns ``(name, cases, lines)``."""
    import argparse

    parser = argparse.ArgumentParser(description=f"time {op} and write benchmarks/results/<name>-<device>-<date>.csv")
    parser.add_argument("--case", action="append", default=[], help="keep cases whose name contains this")
    parser.add_argument("--line", action="append", default=[], help=f"keep these lines: {', '.join(lines)}")
    parser.add_argument("--name", default=op)
    args = parser.parse_args(argv)
    unknown = set(args.line) - set(lines)
    if unknown:
        parser.error(f"unknown --line {sorted(unknown)}; choose from {list(lines)}")
    cases = [c for c in cases if not args.case or any(part in c.name for part in args.case)]
    lines = {name: fn for name, fn in lines.items() if not args.line or name in args.line}
    return args.name, cases, lines


def run_and_report(op: str, cases, lines, modes, make_runner, describe, device: torch.device,
                   baseline: str = "dense") -> list[Row]:
    """Time every (case, mode, line) that ``make_runner`` can build; print, write CSV and plot.

    ``describe(case, mode)`` returns ``(dtype, m, k, n, groups, useful_flops, bytes_moved[, dense_flops])``
    of the case seen as a GEMM (useful = the block-diagonal work only; dense = what the dense baseline
    computes, which gives each row its FLOP bound and its share of the baseline's FLOP rate).
    """
    from tqdm import tqdm

    jobs = [(c, m, ln) for c in cases for m in modes for ln in lines]
    rows = []
    for case, mode, line in tqdm(jobs, desc=op, unit="run"):
        try:
            fn = make_runner(case, line, mode)
            if fn is None:
                continue
            seconds = median_seconds(fn, device)
        except Exception as exc:  # one line that cannot run here must not lose the others; it is reported
            print(f"SKIPPED {case.name} {mode} {line}: {type(exc).__name__}: {exc}")
            continue
        dtype, m, k, n, groups, flops, traffic, *dense = describe(case, mode)
        rows.append(Row(op, case.name, line, str(dtype).replace("torch.", ""), m, k, n, groups, mode,
                        round(seconds * 1e3, 4), round(flops / seconds / 1e12, 4),
                        roofline_pct(device, dtype, flops, traffic, seconds),
                        bound=round(dense[0] / flops, 3) if dense and flops else None))
    add_speedups(rows, baseline)
    print_rows(rows)
    path = write_csv(rows, op, device)
    png = plot_speedups(rows, path, f"{op} on {device_label(device)}")
    print(f"wrote {path} and {png}")
    return rows


def select_and_report(op: str, cases, lines, modes, make_runner, describe, baseline: str = "dense") -> list[Row]:
    """A benchmark's command line: the subset :func:`select` picks from ``sys.argv``, timed on
    :data:`DEVICE`, printed and written by :func:`run_and_report`."""
    name, cases, lines = select(op, cases, lines)
    return run_and_report(name, cases, lines, modes, make_runner, describe, DEVICE, baseline)
