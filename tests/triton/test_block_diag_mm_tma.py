"""The Hopper TMA GEMM (``grouped_mm_tma_kernel``): which launches it takes, and what it computes, against the
masked dense reference (interpreter on CPU, standing in for an sm_90 GPU)."""

import pytest
import torch

from splitkern.layout import block_layout
from splitkern.triton import block_diag_mm as tk
from tests.helpers import DEVICE, assert_close
from tests.ops.test_block_diag_mm import masked_dense_linear

pytestmark = pytest.mark.skipif(not tk.HAS_TMA, reason="this Triton has no tensor descriptors")

ALIGNED = {"equal": ((16,) * 4, (16,) * 4), "ragged": ((8, 24, 16), (32, 8, 16)), "odd_tiles": ((40, 8), (8, 72))}


def masked_dense(x, w, b, layout):
    """The masked dense oracle of the op tests, in fp32."""
    return masked_dense_linear(x.float(), w.float(), None if b is None else b.float(), layout, None, None)


@pytest.fixture
def hopper(monkeypatch):
    """Launches route as on an sm_90 GPU."""
    monkeypatch.setattr(tk, "on_hopper", lambda t: True)


def _operands(name, m, dtype=torch.float16):
    layout = block_layout(*ALIGNED[name])
    x = torch.randn(m, layout.in_features, device=DEVICE).to(dtype)
    w = (0.2 * torch.randn(layout.weight_numel, device=DEVICE)).to(dtype)
    b = torch.randn(layout.out_features, device=DEVICE).to(dtype)
    return layout, x, w, b


@pytest.mark.parametrize("m", [70, 130])  # not multiples of the row tile
@pytest.mark.parametrize("name", ALIGNED)
def test_forward_and_input_gradient_match_masked_dense(hopper, monkeypatch, name, m):
    layout, x, w, b = _operands(name, m)
    launched = []
    real = tk.launch
    monkeypatch.setattr(tk, "launch", lambda kernel, *rest: launched.append(kernel) or real(kernel, *rest))
    y = tk.block_diag_mm(x, w, b, layout)
    assert_close(y.float(), masked_dense(x, w, b, layout), atol=2e-2, rtol=2e-2)
    dy = torch.randn(m, layout.out_features, device=DEVICE).to(torch.float16)
    dx = tk.block_diag_mm_grad_input(dy, w, layout)
    dense = masked_dense(torch.eye(layout.in_features, device=DEVICE), w, None, layout)  # (in, out) = W^T
    assert_close(dx.float(), dy.float() @ dense.T, atol=2e-2, rtol=2e-2)
    assert launched == [tk.grouped_mm_tma_kernel] * 2


@pytest.mark.parametrize("case", ["fp32", "ragged", "empty_group", "indexed", "small_batch", "unaligned_rows",
                                  "not_hopper"])
def test_everything_else_keeps_the_pointer_kernels(hopper, monkeypatch, case):
    name = "equal"
    sizes = {"ragged": ((7, 9), (8, 8)), "empty_group": ((16, 0), (16, 8))}.get(case, ALIGNED[name])
    layout = block_layout(*sizes)
    m = 8 if case == "small_batch" else 130  # small batches take the swapped tiles
    dtype = torch.float32 if case == "fp32" else torch.float16
    x = torch.randn(m, layout.in_features + (4 if case == "unaligned_rows" else 0), device=DEVICE).to(dtype)
    x = x[:, :layout.in_features]
    c = x.new_empty(m, layout.out_features)
    index = torch.arange(layout.in_features, device=DEVICE) if case == "indexed" else None
    if case == "not_hopper":
        monkeypatch.setattr(tk, "on_hopper", lambda t: False)
    cfg = tk.pick_config(m, dtype, layout.aligned)
    assert not tk.tma_applies(x, c, layout, cfg, index, None)


def test_the_aligned_case_does_apply(hopper):
    layout, x, _, _ = _operands("equal", 130)
    c = x.new_empty(130, layout.out_features)
    assert tk.tma_applies(x, c, layout, tk.pick_config(130, x.dtype, True), None, None)


def test_an_environment_switch_turns_it_off(hopper, monkeypatch):
    monkeypatch.setattr(tk, "TMA", False)
    layout, x, _, _ = _operands("equal", 130)
    assert not tk.tma_applies(x, x.new_empty(130, layout.out_features), layout, tk.pick_config(130, x.dtype, True),
                              None, None)


@pytest.mark.gpu
def test_on_an_sm90_gpu_aligned_bf16_runs_the_tma_kernel(monkeypatch):
    if not tk.on_hopper(torch.empty(0, device="cuda")):
        pytest.skip("needs an sm_90 GPU")
    layout = block_layout((64, 128, 64), (128, 64, 64))
    x = torch.randn(300, layout.in_features, device="cuda", dtype=torch.bfloat16)
    w = (0.1 * torch.randn(layout.weight_numel, device="cuda")).to(torch.bfloat16)
    b = torch.randn(layout.out_features, device="cuda", dtype=torch.bfloat16)
    launched = []
    real = tk.launch
    monkeypatch.setattr(tk, "launch", lambda kernel, *rest: launched.append(kernel) or real(kernel, *rest))
    assert_close(tk.block_diag_mm(x, w, b, layout).float(), masked_dense(x, w, b, layout), atol=5e-2, rtol=2e-2)
    assert launched == [tk.grouped_mm_tma_kernel]
