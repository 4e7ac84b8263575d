"""Benchmark: split models' inference vs the dense models they came from.

Models: WRN-16-2 and WRN-16-8 ``2-2-2`` and the 32x32 AlexNet ``2-2-2`` (fc6-fc8), balanced
groups, eval mode, no autograd, channels_last. Lines per (model, batch):

* ``dense``: the unsplit model, as a user has it.
* ``dense-folded``: the unsplit model with every BatchNorm that only follows a conv folded into it
  (``fuse_conv_bn_eval``): the same folding the split model does, so the comparison stays fair.
* ``split``: the split model as ``split()`` returns it, each split layer on the execution strategy it
  chose (:mod:`splitkern.nn.strategy`, ``"auto"``: measured on the first call), the BatchNorms after
  split layers folded (:mod:`splitkern.nn.fold`).
* ``accelerated``: ``splitkern.accelerate(split model, example)`` (on CUDA: a CUDA graph replayed).
* ``split-op``: the split model with every split layer on the splitkern op (``strategy="op"``,
  what autograd runs; the only path before strategies existed).
* ``streams`` and ``graph``: :class:`~splitkern.parallel.StreamParallel` (GPU only).

CPU: fp32 at batch 1, 32 and 128; GPU: bf16 at batch 1, 32 and 256.
``python benchmarks/bench_split_inference.py`` times the lines interleaved (round-robin, the
fastest of several rounds each: a loaded machine slows every line alike), prints per case the
speedup over dense, the FLOP bound (dense FLOPs / split FLOPs: the speedup the arithmetic allows)
and the strategies the split layers took, writes ``results/split_inference-*.csv``, its plot (``.png``), a Markdown
table beside it and the choices as a strategy table (``split_inference-strategies-*.json``, for
``SPLITKERN_STRATEGY_TABLE``), then (CPU) times :class:`DistributedSplit` over gloo with 1 and 2 processes.
Nothing asserts a speed.
"""

from __future__ import annotations

import collections
import copy
import datetime
import functools
import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import common  # benchmarks/ is on sys.path: the script's folder, or pytest's rootdir-less prepend
from common import DEVICE

from splitkern.models import alexnet, wrn
import splitkern
from splitkern.nn import plan_strategies, set_strategy
from splitkern.nn.fold import batchnorm_pairs
from splitkern.nn.strategy import choice_table
from splitkern.parallel import StreamParallel
from splitkern.parallel.subtrees import count_flops
from splitkern.splitnet import count_parameters, split


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # "wrn16-<widen>" or "alexnet"
    batch: int
    dtype: torch.dtype


MODELS = ("wrn16-2", "wrn16-8", "alexnet")
BATCHES = (1, 32, 256) if DEVICE.type == "cuda" else (1, 32, 128)
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
CASES = [Case(f"{m}-2-2-2-b{b}", m, b, DTYPE) for m in MODELS for b in BATCHES]
if common.TINY:
    CASES = [Case("wrn16-1-2-2-2-b2", "wrn16-1", 2, torch.float32)]
GLOO_CASES = () if common.TINY else (("wrn16-2", 64), ("wrn16-8", 32))  # (model, batch) on CPU
MODES = ("inference",)
_MODELS: dict = {}


def _build(name: str, split_spec=None):
    if name == "alexnet":
        return alexnet(100, split=split_spec, variant="cifar")
    return wrn(16, int(name.removeprefix("wrn16-")), 100, split=split_spec)


def models(name: str):
    """(dense, split) ``name`` with balanced 2-2-2 groups, cached (eval mode, fp32, CPU)."""
    if name not in _MODELS:
        torch.manual_seed(0)
        dense = _build(name)
        with_groups = _build(name, "2-2-2")
        with_groups.load_state_dict(dense.state_dict(), strict=False)
        for assignment in with_groups.assignments.values():
            assignment.set_hard(torch.arange(assignment.features) % assignment.groups)
        _MODELS[name] = (dense.eval(), split(with_groups).eval())
    return _MODELS[name]


def _example(case: Case) -> torch.Tensor:
    x = torch.randn(case.batch, 3, 32, 32, device=DEVICE, dtype=case.dtype)
    return x.contiguous(memory_format=torch.channels_last)


def folded_dense(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a dense eval model with each BatchNorm that only follows a conv/linear folded into it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    model = copy.deepcopy(model).eval()
    for layer_name, bn_name in batchnorm_pairs(model, (torch.nn.Conv2d, torch.nn.Linear)).items():
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        fuse = fuse_conv_bn_eval if isinstance(layer, torch.nn.Conv2d) else fuse_linear_bn_eval
        model.set_submodule(layer_name, fuse(layer, bn))
        model.set_submodule(bn_name, torch.nn.Identity())
    return model


def make_runner(case: Case, line: str, mode: str = "inference"):
    dense, split_model = models(case.model)
    if line in ("streams", "graph") and DEVICE.type != "cuda":
        return None
    model = {"dense": lambda: dense, "dense-folded": lambda: folded_dense(dense)}.get(
        line, lambda: copy.deepcopy(split_model))()
    model = model.to(DEVICE, case.dtype, memory_format=torch.channels_last)
    x = _example(case)
    if line == "split-op":
        set_strategy(model, "op")
    if line in ("streams", "graph"):
        model = StreamParallel(model, capture=line == "graph", example=x)
    if line == "accelerated":
        model = splitkern.accelerate(model, x)
    with torch.no_grad():
        model(x)  # "auto" layers choose their strategy here

    def run():
        with torch.no_grad():
            return model(x)
    run.model = model
    return run


LINES = {"dense": None, "dense-folded": None, "split": None, "accelerated": None, "split-op": None, "streams": None,
         "graph": None}


def describe(case: Case, mode: str):
    """Useful work = the split model's FLOPs (same for every line); k, n = dense and split parameter counts."""
    dense, split_model = models(case.model)
    flops = float(case.batch * flops_per_image(case.model)[1])
    traffic = 2.0 * count_parameters(split_model) * torch.finfo(case.dtype).bits / 8
    return case.dtype, case.batch, count_parameters(dense), count_parameters(split_model), 8, flops, traffic


@functools.lru_cache(maxsize=None)
def flops_per_image(name: str) -> tuple[int, int]:
    """(dense, split) multiply-adds x2 per 32x32 image."""
    example = torch.zeros(1, 3, 32, 32)
    return tuple(count_flops(copy.deepcopy(m).float().cpu(), example) for m in models(name))


def flop_bound(name: str) -> float:
    """The split model's speedup over dense if time were proportional to FLOPs."""
    dense, split_flops = flops_per_image(name)
    return dense / split_flops


def strategy_summary(model) -> str:
    """``"grouped:8 per_group:2"``: how many split layers took each strategy for the example's shapes."""
    return " ".join(f"{k}:{v}" for k, v in sorted(collections.Counter(model.chosen_strategies.values()).items()))


@pytest.mark.parametrize("line", list(LINES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_split_inference(benchmark, case, line):
    fn = make_runner(case, line)
    if fn is None:
        pytest.skip(f"{line} needs CUDA")
    benchmark.group = f"split inference {case.name}"
    benchmark(common.synchronized(fn, DEVICE))


def _fastest_call(fn, calls: int) -> float:
    run = common.synchronized(fn, DEVICE)  # each call ends synchronised: none is timed with another's work
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_ms(runners: dict, calls: int, rounds: int = 5, samples: int = 12) -> dict[str, float]:
    """Fastest of ``calls`` calls of each runner over ``rounds`` round-robin rounds (more rounds where ``calls`` is
    small, so each line's fastest is taken over at least ``samples`` calls), in ms."""
    rounds = max(rounds, -(-samples // calls))
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(rounds):
        for name, fn in runners.items():
            best[name] = min(best[name], _fastest_call(fn, calls))
    return {name: 1e3 * s for name, s in best.items()}


def time_case(case: Case, lines, choices: list | None = None) -> list[common.Row]:
    """Rows of every line of ``case``; the split model's strategy choices are appended to ``choices``."""
    runners = {line: fn for line in lines if (fn := make_runner(case, line)) is not None}
    if "split" in runners:
        model = runners["split"].model
        model.chosen_strategies = plan_strategies(model, _example(case))
        if choices is not None:
            choices += choice_table(model)
    ms = interleaved_ms(runners, calls=max(1, 16 // case.batch))
    dtype, m, k, n, groups, flops, traffic, *_ = describe(case, "inference")
    rows = []
    for line, t in ms.items():
        note = strategy_summary(runners[line].model) if line == "split" else ""
        rows.append(common.Row("split_inference", case.name, line, str(dtype).replace("torch.", ""), m, k, n, groups,
                               "inference", round(t, 4), round(flops / t / 1e9, 4),
                               common.roofline_pct(DEVICE, dtype, flops, traffic, t / 1e3),
                               bound=round(flop_bound(case.model), 3), note=note))
    return rows


def markdown_table(rows: list[common.Row]) -> str:
    """Per case: dense ms, then each split line's ms with its speedup over dense (and over the BN-folded dense
    model where it was timed), the FLOP bound, the strategies."""
    by_case = collections.defaultdict(dict)
    for r in rows:
        by_case[r.case][r.line] = r
    head = ("| model, batch | dense ms | dense-folded ms | split ms (vs dense, vs dense-folded) | "
            "accelerated ms (vs dense, vs dense-folded) | split-op ms (vs dense) | FLOP bound | "
            "split layers' strategies |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for case, got in by_case.items():
        if "dense" not in got or "split" not in got:
            continue
        folded = got.get("dense-folded")

        def cell(line, bold=False, versus_folded=True):
            row = got.get(line)
            if row is None:
                return "n/a"
            speedup = f"**{row.speedup:.2f}x**" if bold else f"{row.speedup:.2f}x"
            extra = f", {folded.median_ms / row.median_ms:.2f}x" if folded and versus_folded else ""
            return f"{row.median_ms:.2f} ({speedup}{extra})"
        lines.append(f"| {case} | {got['dense'].median_ms:.2f} | {folded.median_ms if folded else float('nan'):.2f} | "
                     f"{cell('split', True)} | {cell('accelerated', True)} | {cell('split-op', versus_folded=False)} | "
                     f"{got['split'].bound:.2f}x | {got['split'].note} |")
    return "\n".join(lines)


def plot(rows: list[common.Row], path: Path, title: str | None = None) -> Path:
    """``path`` with ``.png``: every line's speedup over dense per case (the gloo lines, which have no dense line
    of their own batch, are left out). docs/make_results.py draws committed CSVs with it."""
    with_dense = {r.case for r in rows if r.line == "dense"}
    title = title or f"split vs dense inference, {common.device_label(DEVICE)}, torch {torch.__version__}"
    return common.plot_speedups([r for r in rows if r.case in with_dense], path, title)


def _gloo_worker(rank, world, name, batch, iters, store, result):
    import torch.distributed as dist

    from splitkern.parallel import DistributedSplit

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    _, split_model = models(name)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model = DistributedSplit(split_model, example=x[:1])
    with torch.no_grad():
        model(x)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        elapsed = time.perf_counter() - start
    if rank == 0:
        Path(result).write_text(str(batch * iters / elapsed))
    dist.barrier()  # no rank tears gloo down while a peer still uses it
    dist.destroy_process_group()


def gloo_throughput(world: int, name: str, batch: int, iters: int = 5) -> float:
    """Images/s of DistributedSplit(``name`` 2-2-2) over ``world`` gloo processes on this machine."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result")
        mp.spawn(_gloo_worker, args=(world, name, batch, iters, os.path.join(tmp, "store"), result), nprocs=world)
        return float(Path(result).read_text())


def main() -> None:
    from tqdm import tqdm

    name, cases, lines = common.select("split_inference", CASES, LINES)
    rows, choices = [], []
    for case in tqdm(cases, desc=name, unit="case"):
        rows += time_case(case, lines, choices)
    common.add_speedups(rows, "dense")
    common.print_rows(rows)
    if DEVICE.type == "cpu" and not common.TINY:
        for (model, batch), world in itertools.product(GLOO_CASES, (1, 2)):
            ips = gloo_throughput(world, model, batch)
            print(f"DistributedSplit over gloo, {world} process(es), {model} 2-2-2, batch {batch}: {ips:.1f} images/s")
            rows.append(common.Row("split_inference", f"{model}-2-2-2-b{batch}", f"gloo-{world}proc", "float32",
                                   batch, 0, 0, 2, "inference", round(batch * 1e3 / ips, 3), 0.0, None))
        common.add_speedups(rows, "dense")
    path = common.write_csv(rows, name, DEVICE)
    png = plot(rows, path)
    table = markdown_table(rows)
    path.with_suffix(".md").write_text(f"# {common.device_label(DEVICE)}, torch {torch.__version__}, "
                                       f"{datetime.date.today().isoformat()}\n\n{table}\n")
    strategies_path = path.with_name(path.stem.replace(name, f"{name}-strategies") + ".json")
    strategies_path.write_text("[\n" + ",\n".join(json.dumps(row) for row in choices) + "\n]\n")  # a row a line
    print(table)
    print(f"wrote {path}, {png}, {path.with_suffix('.md')} and {strategies_path} (SPLITKERN_STRATEGY_TABLE=that file: "
          "split layers take these choices without timing)")


if __name__ == "__main__":
    main()
