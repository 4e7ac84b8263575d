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

import torch

import common  # benchmarks/ is on sys.path: the script's folder, or pytest's rootdir-less prepend
from common import DEVICE

import splitkern
from splitkern.reference.group_weight_reg import literal_group_weight_reg


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


def _call_group_weight_reg(case, w, p, q):
    """The ``splitkern.ops.group_weight_reg`` call on ``case``'s tensors that the ``splitkern-<backend>`` lines time."""
    return lambda: splitkern.ops.group_weight_reg(w, p, q)


LINES = {"literal": lambda case, w, p, q: (lambda: literal_group_weight_reg(w, p, q))}
LINES.update(common.splitkern_lines("group_weight_reg", _call_group_weight_reg))


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


test_group_weight_reg = common.benchmark_test("group_weight_reg", CASES, LINES, MODES, make_runner)


def describe(case: Case, mode: str):
    d_out, d_in = case.shape[:2]
    numel = torch.Size(case.shape).numel()
    passes = 2 if mode == "fwd+bwd" else 1
    flops = (4.0 * case.groups * d_out * d_in + 3 * numel) * passes  # the two G-row GEMMs + W∘W
    traffic = numel * torch.finfo(case.dtype).bits // 8 * passes
    return case.dtype, case.groups, d_out, d_in, case.groups, flops, traffic


def main() -> None:
    common.select_and_report("group_weight_reg", CASES, LINES, MODES, make_runner, describe, baseline="literal")


if __name__ == "__main__":
    main()
