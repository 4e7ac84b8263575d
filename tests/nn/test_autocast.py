"""Split layers under torch.autocast behave like the dense layers they replace."""

import copy

import pytest
import torch
from torch import nn

import splitkern
from splitkern.nn import SplitConv2d, SplitLinear
from tests.helpers import DEVICE, fast_backends

LOW = torch.bfloat16


def linear_case():
    dense = nn.Linear(24, 20).to(DEVICE)
    split = SplitLinear.from_dense(dense, torch.arange(24) % 3, torch.arange(20) % 3, num_groups=3)
    return split, torch.randn(5, 24, device=DEVICE)


def conv_case():
    dense = nn.Conv2d(12, 10, 3, padding=1).to(DEVICE)
    split = SplitConv2d.from_dense(dense, torch.arange(12) % 2, torch.arange(10) % 2, num_groups=2)
    return split, torch.randn(2, 12, 6, 7, device=DEVICE)


CASES = {"linear": (linear_case, "block_diag_mm"), "conv": (conv_case, "grouped_conv")}
PARAMS = [(case, b) for case, (_, op) in CASES.items() for b in ["reference", *fast_backends(op, LOW)]]


@pytest.mark.parametrize("case,backend_name", PARAMS)
def test_autocast_casts_operands_like_the_dense_layer(case, backend_name):
    split, x = CASES[case][0]()
    fp32 = copy.deepcopy(split)
    masked_dense = split.to_dense().to(DEVICE)
    with splitkern.use_backend(backend_name):
        with torch.autocast(DEVICE.type, dtype=LOW):
            y = split(x)
            expected = masked_dense(x)
        y_fp32 = fp32(x)
    assert y.dtype == expected.dtype == LOW
    torch.testing.assert_close(y.float(), expected.float(), rtol=2e-2, atol=2e-2)

    y.float().square().mean().backward()
    y_fp32.square().mean().backward()
    for name in ("weight", "bias"):
        low_grad, fp32_grad = getattr(split, name).grad, getattr(fp32, name).grad
        assert low_grad.dtype == torch.float32  # flows back through the cast to the fp32 parameter
        torch.testing.assert_close(low_grad, fp32_grad, rtol=5e-2, atol=5e-2 * fp32_grad.abs().max().item())


def test_autocast_leaves_fp64_alone():
    split, x = linear_case()
    split = split.double()
    with torch.autocast(DEVICE.type, dtype=LOW):
        assert split(x.double()).dtype == torch.float64
