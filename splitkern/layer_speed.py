"""`splitkern layer-speed`: SplitLinear against nn.Linear on random data.

Builds a dense layer, splits it with random unequal groups, checks that the split
layer equals the masked dense layer, and times forward+backward of dense
``nn.Linear``, a per-group loop of ``nn.Linear`` and ``SplitLinear``.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from splitkern.nn import SplitLinear


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def _per_group_loop(split: SplitLinear):
    blocks = [split.block(g) for g in range(split.layout.groups)]
    in_off = split.layout.in_offsets

    def run(x):
        xg = x[:, split.in_index]
        parts = [xg[:, in_off[g]:in_off[g + 1]] @ blocks[g].t() for g in range(len(blocks))]
        return torch.cat(parts, 1)
    return run


def run_layer_speed(features: int = 2048, batch: int = 256, groups: int = 4, repeats: int = 10,
             seed: int = 0, device: str = "cpu") -> dict:
    gen = torch.Generator().manual_seed(seed)
    dense = nn.Linear(features, features).to(device)
    in_groups = torch.randint(0, groups, (features,), generator=gen)
    out_groups = torch.randint(0, groups, (features,), generator=gen)
    split = SplitLinear.from_dense(dense, in_groups, out_groups, num_groups=groups)
    x = torch.randn(batch, features, generator=gen).to(device)
    masked = split.to_dense()
    err = (split(x) - masked(x)).abs().max().item()
    print(split)
    print(f"max |SplitLinear - masked nn.Linear| = {err:.2e}")

    def step(layer):
        def run():
            xr = x.detach().requires_grad_()
            layer(xr).sum().backward()
        return run
    loop = _per_group_loop(split)
    results = {
        "nn.Linear (dense)": _median_ms(step(dense), repeats),
        "per-group loop": _median_ms(step(loop), repeats),
        "SplitLinear": _median_ms(step(split), repeats),
    }
    base = results["nn.Linear (dense)"]
    print(f"\nforward+backward, batch {batch}, {features}->{features}, {groups} random groups, {device}:")
    for name, ms in results.items():
        print(f"  {name:<20} {ms:8.2f} ms   {base / ms:5.2f}x vs dense")
    return {"max_abs_err": err, **results}
