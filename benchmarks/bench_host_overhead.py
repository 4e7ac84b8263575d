"""Benchmark: what a split layer's call costs around its kernels, against the dense layer's call.

At shapes whose arithmetic is negligible a call's time is the host path: Python, dispatch, autograd
and the launches. Cases (balanced random groups: ``SplitLinear.from_dense`` / ``SplitConv2d.from_dense``
of a dense layer with a permutation of group ids, so the layers gather and scatter their features):

* ``linear-64-M1-G4``: ``SplitLinear`` 64 -> 64 in 4 groups on a 1x64 input, against ``nn.Linear``;
* ``conv3x3-64-1x4x4-G4``: ``SplitConv2d`` 3x3, padding 1, 64 -> 64 channels in 4 groups on a
  1x64x4x4 input, against ``nn.Conv2d``.

Modes: ``fwd`` (no-grad forward), ``fwd+bwd`` (forward, then backward of the output, the input
requiring grad), and both under ``torch.autocast(dtype=bfloat16)`` (``fwd-autocast``,
``fwd+bwd-autocast``). Each call enters its own contexts (no_grad, autocast) as a user's call does;
gradients accumulate across calls, for both layers alike.

``python benchmarks/bench_host_overhead.py`` runs on 1 thread (``--threads``), warms every layer up
(the split layers choose their execution strategy on their first calls), then times the split and the
dense layer round-robin: per round, the median of ``--calls`` single calls (``perf_counter``, garbage
collection off), and the best of ``--rounds`` rounds' medians. The spread of the rounds' medians is in
the CSV (``worst_round_us``): a loaded machine shows there.

On CUDA every line also gets its CUDA-event time (one call per event pair, L2 flushed, median) and the
profiler's kernel time per call (the sum of the kernels it launched), and three layer-level cases
(bf16) are timed that way: ``SplitLinear`` 4096 -> 4096 in 4 groups at M = 32 and M = 4096, and a
WRN-16-8 stage-2 ``SplitConv2d`` (256 channels at 16x16, batch 128, channels_last), each against its
dense layer. ``host_us`` = event time - kernel time: what the call costs beyond its kernels.

Writes ``results/host_overhead-<cpu|gpu-chip>-<date>[-<suffix>].csv`` and a Markdown table beside it
(split / dense per case and mode, the targets below, the commit of splitkern measured and the machine's
load). A table of a later run shows the ratios of the newest ``*-before.csv`` of the same device beside
its own. Nothing asserts a speed.

Targets: CPU, 1 thread: split / dense <= 1.5 for a no-grad forward, <= 2.0 for forward +
backward, fp32 and bf16 autocast. GPU (bf16): a SplitLinear call within 1.2x of its kernels' time at
M = 4096 (forward and forward + backward), <= 15 us of host time per forward at M = 32, and at M = 4096
>= 2.2x faster than the dense layer forward, >= 1.5x forward + backward.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import common  # benchmarks/ is on sys.path: the script's folder, or pytest's rootdir-less prepend
from common import DEVICE

from splitkern.nn import SplitConv2d, SplitLinear

GROUPS = 4


@dataclass(frozen=True)
class Case:
    name: str
    layer: str  # "linear" or "conv"
    batch: int  # rows (linear) or images (conv)
    features: int  # in = out features (linear) or channels (conv)
    hw: int  # the conv input's height = width; 0 for linear
    dtype: torch.dtype  # the layers' parameters and the input
    kind: str  # "host": tiny shapes, timed per call; "layer": CUDA events + kernel time only (GPU)


HOST_CASES = [
    Case("linear-64-M1-G4", "linear", 1, 64, 0, torch.float32, "host"),
    Case("conv3x3-64-1x4x4-G4", "conv", 1, 64, 4, torch.float32, "host"),
]
LAYER_CASES = [
    Case("linear-4096-M32-G4", "linear", 32, 4096, 0, torch.bfloat16, "layer"),
    Case("linear-4096-M4096-G4", "linear", 4096, 4096, 0, torch.bfloat16, "layer"),
    Case("conv3x3-256-128x16x16-G4", "conv", 128, 256, 16, torch.bfloat16, "layer"),
]
if common.TINY:
    LAYER_CASES = [Case("linear-256-M32-G4", "linear", 32, 256, 0, torch.bfloat16, "layer")]
CASES = HOST_CASES + (LAYER_CASES if DEVICE.type == "cuda" else [])
LINES = {"dense": None, "split": None}
MODES = ("fwd", "fwd+bwd", "fwd-autocast", "fwd+bwd-autocast")
ROUNDS, CALLS, WARMUP = (2, 20, 5) if common.TINY else (9, 400, 40)
PROFILE = DEVICE.type == "cuda"  # event and kernel time of every line
# split / dense targets of the host cases (CPU, 1 thread), per mode
TARGETS = {"fwd": 1.5, "fwd-autocast": 1.5, "fwd+bwd": 2.0, "fwd+bwd-autocast": 2.0}
_LAYERS: dict = {}


def layers(case: Case) -> tuple[nn.Module, nn.Module]:
    """(dense, split) of ``case`` on :data:`DEVICE`, built once: the split layer is
    ``from_dense(dense, in_groups, out_groups)`` with balanced groups in random order."""
    if case.name not in _LAYERS:
        torch.manual_seed(0)
        f = case.features
        if case.layer == "linear":
            dense = nn.Linear(f, f)
        else:
            dense = nn.Conv2d(f, f, 3, padding=1)
        in_groups = torch.randperm(f) % GROUPS
        out_groups = torch.randperm(f) % GROUPS
        kind = SplitLinear if case.layer == "linear" else SplitConv2d
        split = kind.from_dense(dense, in_groups, out_groups)
        fmt = torch.channels_last if case.layer == "conv" and case.kind == "layer" else torch.preserve_format
        _LAYERS[case.name] = tuple(m.to(DEVICE, case.dtype, memory_format=fmt) for m in (dense, split))
    return _LAYERS[case.name]


def example(case: Case, requires_grad: bool) -> torch.Tensor:
    torch.manual_seed(1)
    if case.layer == "linear":
        x = torch.randn(case.batch, case.features, device=DEVICE, dtype=case.dtype)
    else:
        x = torch.randn(case.batch, case.features, case.hw, case.hw, device=DEVICE, dtype=case.dtype)
        if case.kind == "layer":
            x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def make_runner(case: Case, line: str, mode: str):
    """The zero-argument call of ``line``'s layer in ``mode`` (see the module docstring)."""
    dense, split = layers(case)
    layer = dense if line == "dense" else split
    backward = "bwd" in mode
    x = example(case, backward)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return layer(x)
    elif mode == "fwd-autocast":
        def run():
            with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
                return layer(x)
    elif mode == "fwd+bwd":
        grad = torch.ones_like(layer(x))

        def run():
            y = layer(x)
            y.backward(grad)
            return y
    elif mode == "fwd+bwd-autocast":
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            grad = torch.ones_like(layer(x))

        def run():
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
                y = layer(x)
            y.backward(grad)
            return y
    else:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    return run


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _round_median(fn, calls: int) -> float:
    """Median seconds of ``calls`` single calls (on CUDA: unsynchronised, the host's time per call)."""
    clock = time.perf_counter
    times = []
    for _ in range(calls):
        start = clock()
        fn()
        times.append(clock() - start)
    _sync()
    return statistics.median(times)


def interleaved_us(runners: dict, rounds: int, calls: int) -> dict[str, tuple[float, float]]:
    """``{line: (best, worst)}`` of the rounds' median µs per call, the lines timed round-robin (the order
    alternating between rounds), garbage collection off."""
    medians = {line: [] for line in runners}
    order = list(runners)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for line in order if r % 2 == 0 else order[::-1]:
                medians[line].append(_round_median(runners[line], calls))
    finally:
        if enabled:
            gc.enable()
    return {line: (1e6 * min(m), 1e6 * max(m)) for line, m in medians.items()}


def strategy_note(layer: nn.Module) -> str:
    """The execution strategies the split layer chose (``"masked_dense"``), or "" where it does not say."""
    try:
        from splitkern.nn import strategies

        chosen = next(iter(strategies(layer).values()), {})
        return " ".join(sorted(set(map(str, chosen.values()))))
    except Exception:  # the strategy API is not what this reads: the note is only informative
        return ""


def _cuda_profile(fn) -> tuple[float, float, int, str]:
    """(event µs, kernel µs, launches, the longest kernels) of one call."""
    event = common.median_seconds(fn, DEVICE) * 1e6
    kernel_ms, launches, top = common.kernel_times(fn)
    return event, kernel_ms * 1e3, launches, "; ".join(f"{name} {ms * 1e3:.1f}us" for name, ms in top)


def time_case(case: Case, mode: str, lines, rounds: int, calls: int, warmup: int) -> list[dict]:
    """One row per line of (``case``, ``mode``)."""
    runners = {line: make_runner(case, line, mode) for line in lines}
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    _sync()
    timed = interleaved_us(runners, rounds, calls) if case.kind == "host" else {}
    rows = []
    for line, fn in runners.items():
        row = dict(case=case.name, layer=case.layer, line=line, mode=mode, dtype=str(case.dtype).removeprefix("torch."),
                   batch=case.batch, features=case.features, groups=GROUPS, median_us=None, worst_round_us=None,
                   ratio=None, event_us=None, kernel_us=None, host_us=None, launches=None, top_kernels="",
                   note=strategy_note(layers(case)[1]) if line == "split" else "")
        if line in timed:
            row["median_us"], row["worst_round_us"] = (round(t, 2) for t in timed[line])
        if PROFILE:
            event, kernel, launches, top = _cuda_profile(fn)
            row.update(event_us=round(event, 2), kernel_us=round(kernel, 2), host_us=round(event - kernel, 2),
                       launches=launches, top_kernels=top)
            if row["median_us"] is None:
                row["median_us"] = row["event_us"]
        rows.append(row)
    dense = next((r for r in rows if r["line"] == "dense"), None)
    for r in rows:
        if dense and dense["median_us"] and r["median_us"] is not None:
            r["ratio"] = round(r["median_us"] / dense["median_us"], 3)
    return rows


FIELDS = ["case", "layer", "line", "mode", "dtype", "batch", "features", "groups", "median_us", "worst_round_us",
          "ratio", "event_us", "kernel_us", "host_us", "launches", "top_kernels", "note"]


def write_csv(rows: list[dict], path: Path, header: str) -> None:
    with path.open("w", newline="") as f:
        f.write(f"# {header}\n")
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def before_ratios(current: Path) -> tuple[Path | None, dict]:
    """The newest ``*-before.csv`` of this device beside ``current`` and its split rows' ratios by (case, mode)."""
    kind = common.result_kind(DEVICE)
    found = sorted(p for p in current.parent.glob(f"host_overhead-{kind}-*-before.csv") if p != current)
    if not found:
        return None, {}
    rows = read_csv(found[-1])
    return found[-1], {(r["case"], r["mode"]): float(r["ratio"]) for r in rows if r["line"] == "split" and r["ratio"]}


def _fmt(value, spec=".1f") -> str:
    return "-" if value in (None, "") else format(float(value), spec)


def gpu_target(r: dict, over: float | None, speedup: float | None) -> tuple[str, str]:
    """(target, met) of a split row of the CUDA table: the GPU targets above, bf16."""
    if r["line"] != "split":
        return "-", "-"
    if r["case"] == "linear-4096-M4096-G4" and r["mode"] in ("fwd", "fwd+bwd"):
        need = 2.2 if r["mode"] == "fwd" else 1.5
        met = over is not None and over <= 1.2 and speedup is not None and speedup >= need
        return f"event <= 1.2x kernels, dense / split >= {need}", "yes" if met else "no"
    if r["case"] == "linear-4096-M32-G4" and r["mode"] == "fwd":
        return "host <= 15 µs", "yes" if r["host_us"] is not None and r["host_us"] <= 15 else "no"
    return "-", "-"


def markdown(rows: list[dict], before: tuple[Path | None, dict]) -> str:
    """The host cases' split / dense table (with the targets), and on CUDA the event / kernel table."""
    by_key = {(r["case"], r["mode"], r["line"]): r for r in rows}
    before_path, before = before
    host = [r for r in rows if r["line"] == "split" and any(r["case"] == c.name for c in HOST_CASES)]
    head = "| case | mode | dense µs | split µs | split / dense | target | met |"
    sep = "|---|---|---|---|---|---|---|"
    if before_path:
        head += f" before ({before_path.name}) |"
        sep += "---|"
    out = [head, sep]
    for r in host:
        dense = by_key.get((r["case"], r["mode"], "dense"), {})
        target = TARGETS.get(r["mode"])
        met = "-" if r["ratio"] is None or target is None else ("yes" if r["ratio"] <= target else "no")
        cells = [r["case"], r["mode"], _fmt(dense.get("median_us")), _fmt(r["median_us"]),
                 _fmt(r["ratio"], ".2f") + "x", f"<= {target}x" if target else "-", met]
        if before_path:
            old = before.get((r["case"], r["mode"]))
            cells.append(f"{old:.2f}x" if old is not None else "-")
        out.append("| " + " | ".join(cells) + " |")
    if PROFILE:
        out += ["", "CUDA: event time per call (one call per event pair, L2 flushed, median) against the profiler's "
                "kernel time per call; host = event - kernels.", "",
                "| case | mode | line | event µs | kernel µs | host µs | launches | event / kernels | dense / split "
                "| target | met |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["event_us"] is None:
                continue
            over = r["event_us"] / r["kernel_us"] if r["kernel_us"] else None
            dense = by_key.get((r["case"], r["mode"], "dense"))
            speedup = dense["event_us"] / r["event_us"] if dense and r["line"] != "dense" and r["event_us"] else None
            target, met = gpu_target(r, over, speedup)
            out.append(f"| {r['case']} | {r['mode']} | {r['line']} | {_fmt(r['event_us'])} | {_fmt(r['kernel_us'])} | "
                       f"{_fmt(r['host_us'])} | {r['launches']} | {_fmt(over, '.2f')}x | {_fmt(speedup, '.2f')} | "
                       f"{target} | {met} |")
    notes = sorted({f"{r['case']}: {r['note']}" for r in rows if r["line"] == "split" and r["note"]})
    if notes:
        out += ["", "Strategies the split layers chose: " + "; ".join(notes) + "."]
    return "\n".join(out)


def _load() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _busy() -> bool:
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        return False


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", default=[], help="keep cases whose name contains this")
    parser.add_argument("--mode", action="append", default=[], choices=MODES, help="keep these modes")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per round and line")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="calls per line and mode before timing")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--suffix", default="", help="appended to the file name: host_overhead-<device>-<date>-SUFFIX")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if not args.case or any(part in c.name for part in args.case)]
    modes = [m for m in MODES if not args.mode or m in args.mode]
    commit = common.source_commit()
    load_before, started = _load(), time.perf_counter()
    rows = []
    for case in cases:
        for mode in modes:
            try:
                got = time_case(case, mode, LINES, args.rounds, args.calls, args.warmup)
            except Exception as exc:  # one case that cannot run here must not lose the others; it is reported
                print(f"SKIPPED {case.name} {mode}: {type(exc).__name__}: {exc}")
                continue
            rows += got
            for r in got:
                cuda = (f"  event {r['event_us']:8.1f}  kernels {r['kernel_us']:8.1f}  host {r['host_us']:8.1f} us"
                        if r["event_us"] is not None else "")
                ratio = f"{r['ratio']:5.2f}x" if r["ratio"] is not None else "     "
                print(f"{r['case']:<26} {mode:<17} {r['line']:<6} {_fmt(r['median_us']):>9} us/call "
                      f"(worst round {_fmt(r['worst_round_us'])}) {ratio}{cuda}", flush=True)
    if not rows:
        raise SystemExit("no case ran")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    path = common.results_path("host_overhead", DEVICE, args.suffix)
    header = (f"{common.device_label(DEVICE)}, torch {torch.__version__}, triton {triton_version}, splitkern commit "
              f"{commit}, {torch.get_num_threads()} thread(s), {args.rounds} rounds x {args.calls} calls, "
              f"load average {load_before} -> {_load()} (1/5/15 min, {os.cpu_count()} cores), "
              f"{time.perf_counter() - started:.0f} s")
    write_csv(rows, path, header)
    table = markdown(rows, before_ratios(path))
    md = path.with_suffix(".md")
    title = f"Host cost per call, {datetime.date.today().isoformat()}" + (f" ({args.suffix})" if args.suffix else "")
    shared = (" The load average was above the core count (other jobs shared the machine): compare the ratios of "
              "one run, not absolute µs between runs." if _busy() else "")
    md.write_text(f"# {title}\n\n{header}.\n\nBest of the rounds' median µs per call (split and dense round-robin "
                  f"in one run); split / dense below 1 is faster.{shared}\n\n{table}\n")
    print(table)
    print(f"wrote {path} and {md}")


test_host_overhead = common.benchmark_test("host_overhead", CASES, LINES, MODES, make_runner)

if __name__ == "__main__":
    main()
