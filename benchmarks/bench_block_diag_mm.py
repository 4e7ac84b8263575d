"""Benchmark: ragged block-diagonal matmul vs the dense layer it replaces.

Lines: ``dense`` (cuBLAS/MKL ``F.linear`` on the full weight), ``loop`` (one
``F.linear`` per group + cat), ``bmm`` (equal groups only), ``grouped_mm_padded``
(``torch._grouped_mm`` on blocks zero-padded to (k_max, n_max); bf16 on sm90),
``splitkern-<backend>`` for every backend usable on the device, ``splitkern-cuda-cublas``
(forward only: the extension's ``cublasGemmGroupedBatchedEx`` path) and ``splitkern-cuda-cutlass``
(the extension's CUTLASS sm90 grouped GEMMs, forward and backward, where they serve the layout:
an sm_90 GPU, 16-bit, group sizes multiples of 8; ``splitkern-extension`` is the same call, and
the wmma kernels where CUTLASS does not serve it).

``pytest benchmarks --benchmark-only`` times them with pytest-benchmark;
``python benchmarks/bench_block_diag_mm.py`` writes ``results/block_diag_mm-*.csv``
(median, useful TFLOP/s, % of roofline, speedup vs dense) and a plot.
Nothing asserts a speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import common  # benchmarks/ is on sys.path: the script's folder, or pytest's rootdir-less prepend
from common import DEVICE

import splitkern
from splitkern import backend
from splitkern.layout import block_layout


@dataclass(frozen=True)
class Case:
    name: str
    m: int
    in_sizes: tuple[int, ...]
    out_sizes: tuple[int, ...]
    dtype: torch.dtype

    @property
    def layout(self):
        return block_layout(self.in_sizes, self.out_sizes)


EQ4 = (1024,) * 4
# Same K, N and FLOPs as EQ4: sum(k) = sum(n) = 4096, sum(n_g * k_g) = 4 * 1024^2.
RAGGED_IN, RAGGED_OUT = (512, 2048, 1024, 512), (512, 512, 2560, 512)
ODD_IN, ODD_OUT = (1000, 1100, 900, 1096), (1100, 900, 1096, 1000)

CPU_CASES = [
    Case("equal-M256", 256, EQ4, EQ4, torch.float32),
    Case("ragged-M256", 256, RAGGED_IN, RAGGED_OUT, torch.float32),
    Case("odd-M256", 256, ODD_IN, ODD_OUT, torch.float32),
    Case("equal-M32", 32, EQ4, EQ4, torch.float32),
]
GPU_CASES = [
    Case(f"{kind}-M{m}", m, ins, outs, torch.bfloat16)
    for m in (4096, 32)
    for kind, ins, outs in (("equal", EQ4, EQ4), ("ragged", RAGGED_IN, RAGGED_OUT), ("odd", ODD_IN, ODD_OUT))
] + [Case("equal-M4096-fp16", 4096, EQ4, EQ4, torch.float16),
     Case("equal-M4096-fp32", 4096, EQ4, EQ4, torch.float32)]
TINY_CASES = [Case("tiny-ragged-M5", 5, (3, 9, 0), (6, 2, 7), torch.float32)]
CASES = TINY_CASES if common.TINY else GPU_CASES if DEVICE.type == "cuda" else CPU_CASES
MODES = ("fwd", "fwd+bwd")


def _tensors(case: Case, requires_grad: bool):
    layout = case.layout
    opts = dict(device=DEVICE, dtype=case.dtype)
    x = torch.randn(case.m, layout.in_features, **opts).requires_grad_(requires_grad)
    w = (torch.randn(layout.weight_numel, **opts) * 0.02).requires_grad_(requires_grad)
    b = torch.zeros(layout.out_features, **opts).requires_grad_(requires_grad)
    return x, w, b


def _dense(case, x, w, b):
    weight = torch.block_diag(*(case.layout.block(w.detach(), g) for g in range(case.layout.groups)))
    weight = weight.contiguous().requires_grad_(w.requires_grad)
    return lambda: F.linear(x, weight, b)


def _loop(case, x, w, b):
    lay = case.layout

    def run():
        return torch.cat([F.linear(x[:, lay.in_offsets[g]:lay.in_offsets[g + 1]], lay.block(w, g),
                                   b[lay.out_offsets[g]:lay.out_offsets[g + 1]])
                          for g in range(lay.groups)], dim=1)
    return run


def _bmm(case, x, w, b):
    lay = case.layout
    if len(set(lay.in_sizes)) != 1 or len(set(lay.out_sizes)) != 1:
        return None
    g, k, n = lay.groups, lay.in_sizes[0], lay.out_sizes[0]
    blocks = w.view(g, n, k)
    return lambda: torch.baddbmm(b.view(g, 1, n), x.view(-1, g, k).transpose(0, 1),
                                 blocks.transpose(1, 2)).transpose(0, 1).reshape(-1, g * n)


def _grouped_mm_padded(case, x, w, b):
    if not (DEVICE.type == "cuda" and case.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_capability(DEVICE) >= (9, 0)):
        return None
    lay = case.layout
    k_max, n_max = max(lay.in_sizes), max(lay.out_sizes)
    pad_w = torch.zeros(lay.groups, k_max, n_max, device=DEVICE, dtype=case.dtype)
    pad_x = torch.zeros(lay.groups, case.m, k_max, device=DEVICE, dtype=case.dtype)
    for g in range(lay.groups):
        pad_w[g, :lay.in_sizes[g], :lay.out_sizes[g]] = lay.block(w.detach(), g).t()
        pad_x[g, :, :lay.in_sizes[g]] = x.detach()[:, lay.in_offsets[g]:lay.in_offsets[g + 1]]
    return lambda: torch._grouped_mm(pad_x, pad_w)


def _call_block_diag_mm(case, x, w, b):
    """The ``splitkern.ops.block_diag_mm`` call on ``case``'s tensors that the ``splitkern-<backend>`` lines time."""
    lay = case.layout
    return lambda: splitkern.ops.block_diag_mm(x, w, b, in_sizes=lay.in_sizes, out_sizes=lay.out_sizes)


def _cublas_grouped(case, x, w, b):
    """The extension's forward as one cublasGemmGroupedBatchedEx call (vs its wmma kernel)."""
    ext = backend.extension()[0]
    if DEVICE.type != "cuda" or ext is None or "block_diag_mm_cublas:cuda" not in ext.kernels():
        return None
    from splitkern.extension.block_diag_mm import block_diag_mm_cublas
    return lambda: block_diag_mm_cublas(x, w, b, case.layout)


def _cutlass(case, x, w, b):
    """The extension backend where its CUTLASS sm90 kernels serve the case (None elsewhere)."""
    if DEVICE.type != "cuda" or backend.extension()[0] is None:
        return None
    from splitkern.extension.block_diag_mm import cutlass_reason
    if cutlass_reason(x, case.layout):
        return None
    return LINES["splitkern-extension"](case, x, w, b)


LINES = {"dense": _dense, "loop": _loop, "bmm": _bmm, "grouped_mm_padded": _grouped_mm_padded}
LINES.update(common.splitkern_lines("block_diag_mm", _call_block_diag_mm))
LINES["splitkern-cuda-cublas"] = _cublas_grouped
LINES["splitkern-cuda-cutlass"] = _cutlass
FWD_ONLY = {"bmm", "grouped_mm_padded", "splitkern-cuda-cublas"}


def make_runner(case: Case, line: str, mode: str):
    """A zero-argument callable running ``line`` on ``case`` in ``mode``, or None if n/a."""
    if mode != "fwd" and line in FWD_ONLY:
        return None
    train = mode == "fwd+bwd"
    x, w, b = _tensors(case, requires_grad=train)
    fn = LINES[line](case, x, w, b)
    if fn is None or not train:
        return fn
    grad = torch.randn(case.m, case.layout.out_features, device=DEVICE, dtype=case.dtype)
    return lambda: fn().backward(grad)


test_block_diag_mm = common.benchmark_test("block_diag_mm", CASES, LINES, MODES, make_runner)


def describe(case: Case, mode: str):
    lay = case.layout
    passes = 3 if mode == "fwd+bwd" else 1
    useful = 2.0 * case.m * lay.weight_numel * passes
    size = torch.finfo(case.dtype).bits // 8
    traffic = size * (case.m * (lay.in_features + lay.out_features) + lay.weight_numel) * passes
    dense = 2.0 * case.m * lay.in_features * lay.out_features * passes
    return case.dtype, case.m, lay.in_features, lay.out_features, lay.groups, useful, traffic, dense


def main() -> None:
    common.select_and_report("block_diag_mm", CASES, LINES, MODES, make_runner, describe)


if __name__ == "__main__":
    main()
