"""Benchmark: split WRN inference, dense vs split, sequential vs streams/graphs, and gloo processes.

Single-process lines: ``dense`` (the unsplit WRN), ``split`` (sequential split model),
``streams`` and ``graph`` (:class:`~splitkern.parallel.StreamParallel`, GPU only).
``python benchmarks/bench_split_inference.py`` also times :class:`DistributedSplit` over
gloo with 1 and 2 CPU processes. GPU: WRN-16-8 ``2-2-2`` in bf16 at batch 1, 32, 256;
CPU: WRN-16-2 ``2-2-2`` fp32 at batch 1 and 64 and WRN-16-8 at batch 1, 32 and 256 (about
4 s per call on a 2-core machine). Writes ``results/split_inference-*.csv``.
Nothing asserts a speed.
"""

from __future__ import annotations

import copy
import functools
import itertools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import common  # benchmarks/ is on sys.path: the script's folder, or pytest's rootdir-less prepend
from common import DEVICE

from splitkern.models import wrn
from splitkern.parallel import StreamParallel
from splitkern.parallel.subtrees import count_flops
from splitkern.splitnet import count_parameters, split


@dataclass(frozen=True)
class Case:
    name: str
    widen: int
    batch: int
    dtype: torch.dtype


CASES = ([Case(f"wrn16-8-2-2-2-b{b}", 8, b, torch.bfloat16) for b in (1, 32, 256)] if DEVICE.type == "cuda"
         else [Case(f"wrn16-2-2-2-2-b{b}", 2, b, torch.float32) for b in (1, 64)]
         + [Case(f"wrn16-8-2-2-2-b{b}", 8, b, torch.float32) for b in (1, 32, 256)])
if common.TINY:
    CASES = [Case("wrn16-1-2-2-2-b2", 1, 2, torch.float32)]
GLOO_CASES = () if common.TINY else ((2, 64), (8, 32))  # (widen, batch) on CPU
MODES = ("inference",)
_MODELS: dict = {}


def models(widen: int):
    """(dense, split) WRN-16-k with balanced 2-2-2 groups, cached."""
    if widen not in _MODELS:
        torch.manual_seed(0)
        dense = wrn(16, widen, 100)
        with_groups = wrn(16, widen, 100, split="2-2-2")
        with_groups.load_state_dict(dense.state_dict(), strict=False)
        for assignment in with_groups.assignments.values():
            assignment.set_hard(torch.arange(assignment.features) % assignment.groups)
        _MODELS[widen] = (dense.eval(), split(with_groups).eval())
    return _MODELS[widen]


def make_runner(case: Case, line: str, mode: str = "inference"):
    dense, split_model = models(case.widen)
    if line in ("streams", "graph") and DEVICE.type != "cuda":
        return None
    model = {"dense": dense, "split": split_model}.get(line, split_model)
    model = model.to(DEVICE, case.dtype, memory_format=torch.channels_last)
    x = torch.randn(case.batch, 3, 32, 32, device=DEVICE, dtype=case.dtype).contiguous(
        memory_format=torch.channels_last)
    if line in ("streams", "graph"):
        model = StreamParallel(model, capture=line == "graph", example=x)
    with torch.no_grad():
        model(x)

    def run():
        with torch.no_grad():
            return model(x)
    return run


LINES = {"dense": None, "split": None, "streams": None, "graph": None}


def describe(case: Case, mode: str):
    """Useful work = the split model's FLOPs (same for every line); k, n = dense and split parameter counts."""
    dense, split_model = models(case.widen)
    flops = float(case.batch * flops_per_image(case.widen))
    traffic = 2.0 * count_parameters(split_model) * torch.finfo(case.dtype).bits / 8
    return case.dtype, case.batch, count_parameters(dense), count_parameters(split_model), 8, flops, traffic


@functools.lru_cache(maxsize=None)
def flops_per_image(widen: int) -> int:
    return count_flops(copy.deepcopy(models(widen)[1]).float().cpu(), torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("line", list(LINES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_split_inference(benchmark, case, line):
    fn = make_runner(case, line)
    if fn is None:
        pytest.skip(f"{line} needs CUDA")
    benchmark.group = f"split inference {case.name}"
    benchmark(common.synchronized(fn, DEVICE))


def _gloo_worker(rank, world, widen, batch, iters, store, result):
    import torch.distributed as dist

    from splitkern.parallel import DistributedSplit

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    _, split_model = models(widen)
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


def gloo_throughput(world: int, widen: int, batch: int, iters: int = 5) -> float:
    """Images/s of DistributedSplit(WRN-16-<widen> 2-2-2) over ``world`` gloo processes on this machine."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result")
        mp.spawn(_gloo_worker, args=(world, widen, batch, iters, os.path.join(tmp, "store"), result), nprocs=world)
        return float(Path(result).read_text())


def main() -> None:
    rows = common.run_and_report("split_inference", CASES, LINES, MODES, make_runner, describe, DEVICE)
    if DEVICE.type == "cpu":
        for (widen, batch), world in itertools.product(GLOO_CASES, (1, 2)):
            ips = gloo_throughput(world, widen, batch)
            print(f"DistributedSplit over gloo, {world} process(es), WRN-16-{widen} 2-2-2, batch {batch}: "
                  f"{ips:.1f} images/s")
            rows.append(common.Row("split_inference", f"wrn16-{widen}-2-2-2-b{batch}", f"gloo-{world}proc", "float32",
                                   batch, 0, 0, 2, "inference", round(batch * 1e3 / ips, 3), 0.0, None))
        common.add_speedups(rows, "dense")
        common.write_csv(rows, "split_inference", DEVICE)


if __name__ == "__main__":
    main()
