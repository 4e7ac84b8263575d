"""Benchmark: the group weight regulariser R_W, fused (two GEMMs on W∘W) vs the literal formula.

Lines: ``literal`` (the formula as written: G masked copies of W per term, PyTorch),
``splitkern-<backend>`` for every backend usable on the device (``reference`` is the
two-GEMM formulation in PyTorch, the CPU path). Shapes: WRN-16-8 stage-3 conv weights
(512x512x3x3) and the logits layer (100x512) at G = 2, 4, 8.

``pytest benchmarks --benchmark-only`` or ``python benchmarks/bench_group_weight_reg.py``
(writes ``results/group_weight_reg-*.csv``). Nothing asserts a speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import common  # benchmarks/ is on sys.path: the script's folder, or pytest's rootdir-less prepend

import splitkern
from splitkern import backend
from splitkern.reference.group_weight_reg import literal_group_weight_reg

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, ...]
    groups: int
    dtype: torch.dtype = torch.float32


CASES = [Case(f"wrn-stage3-512x512x3x3-G{g}", (512, 512, 3, 3), g) for g in (2, 4, 8)]
CASES += [Case("logits-100x512-G4", (100, 512), 4)]
if common.TINY:
    CASES = [Case("tiny-12x10x3x3-G2", (12, 10, 3, 3), 2)]
MODES = ("fwd", "fwd+bwd")


def _splitkern(name):
    def build(case, w, p, q):
        if backend.unsupported_reason(name, "group_weight_reg", DEVICE, case.dtype):
            return None

        def run():
            with splitkern.use_backend(name):
                return splitkern.ops.group_weight_reg(w, p, q)
        return run
    return build


LINES = {"literal": lambda case, w, p, q: (lambda: literal_group_weight_reg(w, p, q))}
LINES.update({f"splitkern-{name}": _splitkern(name) for name in backend.BACKENDS})


def make_runner(case: Case, line: str, mode: str):
    train = mode == "fwd+bwd"
    w = torch.randn(case.shape, device=DEVICE, dtype=case.dtype).requires_grad_(train)
    logits_p = torch.randn(case.groups, case.shape[1], device=DEVICE).requires_grad_(train)
    logits_q = torch.randn(case.groups, case.shape[0], device=DEVICE).requires_grad_(train)
    fn = LINES[line](case, w, torch.softmax(logits_p, 0), torch.softmax(logits_q, 0))
    if fn is None or not train:
        return fn

    def step():
        # softmax is re-run each step so the graph is fresh; its cost is the same in every line.
        inner = LINES[line](case, w, torch.softmax(logits_p, 0), torch.softmax(logits_q, 0))
        inner().backward()
    return step


def describe(case: Case, mode: str):
    d_out, d_in = case.shape[:2]
    numel = torch.Size(case.shape).numel()
    passes = 2 if mode == "fwd+bwd" else 1
    flops = (4.0 * case.groups * d_out * d_in + 3 * numel) * passes  # the two G-row GEMMs + W∘W
    traffic = numel * torch.finfo(case.dtype).bits // 8 * passes
    return case.dtype, case.groups, d_out, d_in, case.groups, flops, traffic


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("line", list(LINES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_group_weight_reg(benchmark, case, line, mode):
    fn = make_runner(case, line, mode)
    if fn is None:
        pytest.skip(f"{line} does not run on {DEVICE}")
    benchmark.group = f"group_weight_reg {case.name} {mode}"
    benchmark(common.synchronized(fn, DEVICE))


def main() -> None:
    name, cases, lines = common.select("group_weight_reg", CASES, LINES)
    common.run_and_report(name, cases, lines, MODES, make_runner, describe, DEVICE, baseline="literal")


if __name__ == "__main__":
    main()
