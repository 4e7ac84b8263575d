"""Benchmark: ragged grouped convolution vs the dense conv it replaces.

Lines: ``dense`` (cuDNN/oneDNN ``F.conv2d`` on the full weight), ``groups`` (``F.conv2d(groups=G)``,
equal groups only), ``loop`` (one conv per group + cat), and ``splitkern-<backend>``
for every backend usable on the device. Shapes: WRN-16-8 stages (128/256/512
channels at 32x32/16x16/8x8, 3x3) and AlexNet convs; GPU runs bf16 channels_last.

``pytest benchmarks --benchmark-only`` times them with pytest-benchmark;
``python benchmarks/bench_grouped_conv.py`` writes ``results/grouped_conv-*.csv``
and a plot. Nothing asserts a speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import common  # benchmarks/ is on sys.path: the script's folder, or pytest's rootdir-less prepend
from common import DEVICE

import splitkern
from splitkern.layout import block_layout
from splitkern.reference.grouped_conv import output_shape


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    hw: int
    in_sizes: tuple[int, ...]
    out_sizes: tuple[int, ...]
    kernel: int
    stride: int
    padding: int
    dtype: torch.dtype
    channels_last: bool

    @property
    def layout(self):
        return block_layout(self.in_sizes, self.out_sizes)

    @property
    def conv(self):
        return dict(stride=self.stride, padding=self.padding)


def _equal(channels, groups):
    return (channels // groups,) * groups


def _ragged(channels, groups):
    """Unequal sizes with the same total (and, paired reversed, about the same FLOPs)."""
    base = channels // groups
    sizes = [base + (base // 4) * (1 if g % 2 else -1) for g in range(groups)]
    sizes[-1] += channels - sum(sizes)
    return tuple(sizes)


def _cases(batches, dtype, channels_last):
    cases = []
    for batch in batches:
        for ch, hw in ((128, 32), (256, 16), (512, 8)):
            cases.append(Case(f"wrn-{ch}@{hw}-N{batch}-G4", batch, hw, _equal(ch, 4), _equal(ch, 4), 3, 1, 1,
                              dtype, channels_last))
        ragged = _ragged(512, 4)
        cases.append(Case(f"wrn-512@8-N{batch}-G4-ragged", batch, 8, ragged, ragged[::-1], 3, 1, 1, dtype,
                          channels_last))
        cases.append(Case(f"alexnet-conv3-N{batch}-G2", batch, 13, _equal(256, 2), _equal(384, 2), 3, 1, 1, dtype,
                          channels_last))
        cases.append(Case(f"alexnet-conv2-N{batch}-G2", batch, 27, _equal(96, 2), _equal(256, 2), 5, 1, 2, dtype,
                          channels_last))
    return cases


CPU_CASES = [c for c in _cases((32,), torch.float32, False) if "128@32" not in c.name]
GPU_CASES = _cases((128, 256), torch.bfloat16, True)
TINY_CASES = [Case("tiny-16@6-N2-G2", 2, 6, _equal(16, 2), _equal(16, 2), 3, 1, 1, torch.float32, False)]
CASES = TINY_CASES if common.TINY else GPU_CASES if DEVICE.type == "cuda" else CPU_CASES
MODES = ("fwd", "fwd+bwd")


def _tensors(case: Case, requires_grad: bool):
    lay = case.layout
    opts = dict(device=DEVICE, dtype=case.dtype)
    x = torch.randn(case.batch, lay.in_features, case.hw, case.hw, **opts)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(lay.weight_numel * case.kernel ** 2, **opts) * 0.02
    b = torch.zeros(lay.out_features, **opts)
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


def _blocks(case, w):
    return [case.layout.block(w, g, (case.kernel, case.kernel)) for g in range(case.layout.groups)]


def _dense(case, x, w, b):
    lay, k = case.layout, case.kernel
    dense = w.new_zeros(lay.out_features, lay.in_features, k, k)
    for g, blk in enumerate(_blocks(case, w.detach())):
        dense[lay.out_offsets[g]:lay.out_offsets[g + 1], lay.in_offsets[g]:lay.in_offsets[g + 1]] = blk
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    dense = dense.contiguous(memory_format=fmt).requires_grad_(w.requires_grad)
    return lambda: F.conv2d(x, dense, b, **case.conv)


def _groups(case, x, w, b):
    lay = case.layout
    if len(set(lay.in_sizes)) != 1 or len(set(lay.out_sizes)) != 1:
        return None
    weight = w.view(lay.out_features, lay.in_sizes[0], case.kernel, case.kernel)
    return lambda: F.conv2d(x, weight, b, groups=lay.groups, **case.conv)


def _loop(case, x, w, b):
    lay = case.layout

    def run():
        return torch.cat([F.conv2d(x[:, lay.in_offsets[g]:lay.in_offsets[g + 1]], blk,
                                   b[lay.out_offsets[g]:lay.out_offsets[g + 1]], **case.conv)
                          for g, blk in enumerate(_blocks(case, w))], dim=1)
    return run


def _call_grouped_conv(case, x, w, b):
    """The ``splitkern.ops.grouped_conv`` call on ``case``'s tensors that the ``splitkern-<backend>`` lines time."""
    lay = case.layout
    return lambda: splitkern.ops.grouped_conv(x, w, b, in_sizes=lay.in_sizes, out_sizes=lay.out_sizes,
                                              kernel_size=case.kernel, **case.conv)


LINES = {"dense": _dense, "groups": _groups, "loop": _loop}
LINES.update(common.splitkern_lines("grouped_conv", _call_grouped_conv))


def make_runner(case: Case, line: str, mode: str):
    """A zero-argument callable running ``line`` on ``case`` in ``mode``, or None if n/a."""
    train = mode == "fwd+bwd"
    x, w, b = _tensors(case, requires_grad=train)
    fn = LINES[line](case, x, w, b)
    if fn is None or not train:
        return fn
    grad = torch.randn_like(fn())
    return lambda: fn().backward(grad)


test_grouped_conv = common.benchmark_test("grouped_conv", CASES, LINES, MODES, make_runner)


def describe(case: Case, mode: str):
    lay = case.layout
    n, _, ho, wo = output_shape((case.batch, lay.in_features, case.hw, case.hw), lay.out_features,
                                (case.kernel,) * 2, (case.stride,) * 2, (case.padding,) * 2, (1, 1))
    pixels, taps = n * ho * wo, case.kernel ** 2
    passes = 3 if mode == "fwd+bwd" else 1
    useful = 2.0 * pixels * lay.weight_numel * taps * passes
    size = torch.finfo(case.dtype).bits // 8
    traffic = size * (case.batch * case.hw ** 2 * lay.in_features + pixels * lay.out_features
                      + lay.weight_numel * taps) * passes
    dense = 2.0 * pixels * lay.in_features * lay.out_features * taps * passes
    return case.dtype, pixels, lay.in_features * taps, lay.out_features, lay.groups, useful, traffic, dense


def main() -> None:
    common.select_and_report("grouped_conv", CASES, LINES, MODES, make_runner, describe)


if __name__ == "__main__":
    main()
