"""The CUDA kernels, run by their host emulation (``torch.ops.splitkern_emulated``).

CI has no GPU, so the CUDA kernels of ``csrc/cuda`` would otherwise only be compiled. The
emulation runs the same kernel code on the host, CTA by CTA and thread by thread between
barriers: for the tensor-core GEMMs (group tables, tile-shape choice, launches of 64 groups,
the operand loaders with their fused gathers and implicit im2col, bounds, the epilogue with
bias and scatter) with a scalar fp32 product standing in for the wmma fragments, and for the
fused regulariser (atomics become plain adds). What it cannot check: the wmma fragment calls
themselves, races, and anything about speed (the GPU-marked tests and compute-sanitizer
cover those on a GPU).

Expectations come from the independent masked-dense formulations of the op tests, computed in
fp32 on the same 16-bit inputs: the kernels accumulate in fp32 and round once, so one 16-bit
rounding of the result (rtol = eps) is the whole allowed error.
"""

import pytest
import torch

from splitkern import backend
from splitkern.layout import block_layout
from tests.helpers import expect_cuda_build, random_permutation
from tests.ops.test_block_diag_mm import LAYOUTS as MM_LAYOUTS
from tests.ops.test_block_diag_mm import masked_dense_linear
from tests.ops.test_grouped_conv import GEOMETRIES
from tests.ops.test_grouped_conv import LAYOUTS as CONV_LAYOUTS
from tests.ops.test_grouped_conv import masked_dense_conv

DTYPES = (torch.float16, torch.bfloat16)
ROWS = (0, 1, 16, 17, 70)  # 16-row small-M tiles up to 16, 64 x 64 tiles beyond; 70 spans two


def emulated():
    ext, why = backend.extension()
    assert ext is not None, why  # CI builds the extension
    if not ext.cuda_runtime_version():  # a C++-only build: a failure where CUDA kernels are expected (CI)
        assert not expect_cuda_build(), "the extension was built without its CUDA kernels (C++ only)"
        pytest.skip("the extension was built without nvcc (C++ CPU kernels only): no CUDA kernels to emulate")
    return torch.ops.splitkern_emulated


def assert_rounded_once(got, want, dtype):
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=torch.finfo(dtype).eps, atol=1e-3)


def mm_case(in_sizes, out_sizes, m, dtype, indices, seed=0):
    torch.manual_seed(seed)
    layout = block_layout(in_sizes, out_sizes)
    x = torch.randn(m, layout.in_features).to(dtype)
    w = torch.randn(layout.weight_numel).to(dtype)
    b = torch.randn(layout.out_features).to(dtype)
    dy = torch.randn(m, layout.out_features).to(dtype)
    ii = random_permutation(layout.in_features, "cpu") if indices else None
    oi = random_permutation(layout.out_features, "cpu") if indices else None
    return layout, x, w, b, dy, ii, oi


def mm_expected(layout, x, w, b, dy, ii, oi):
    """Forward and the x / W gradients of the masked dense linear, in fp32."""
    x32, w32 = x.float().requires_grad_(), w.float().requires_grad_()
    y = masked_dense_linear(x32, w32, b.float(), layout, ii, oi)
    dx, dw = torch.autograd.grad(y, (x32, w32), dy.float(), allow_unused=True, materialize_grads=True)
    return y.detach(), dx, dw


def mm_emulated(layout, x, w, b, dy, ii, oi):
    ops, sizes = emulated(), (list(layout.in_sizes), list(layout.out_sizes))
    return (ops.block_diag_mm(x, w, b, *sizes, ii, oi),
            ops.block_diag_mm_grad_input(dy, w, *sizes, ii, oi),
            ops.block_diag_mm_grad_weight(dy, x, *sizes, ii, oi))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("indices", [False, True])
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("name", MM_LAYOUTS)
def test_block_diag_mm_kernels_match_masked_dense(name, m, indices, dtype):
    case = mm_case(*MM_LAYOUTS[name], m, dtype, indices)
    for got, want in zip(mm_emulated(*case), mm_expected(*case)):
        assert_rounded_once(got, want, dtype)


def test_block_diag_mm_kernels_read_strided_operands():
    layout, x, w, b, dy, ii, oi = mm_case((5, 33, 12), (20, 3, 41), 19, torch.float16, indices=True)
    x_cols = x.t().contiguous().t()  # column-major: stride (1, M)
    dy_every_other = torch.stack([dy, torch.zeros_like(dy)], dim=2).flatten(1)[:, ::2]  # column stride 2
    assert not x_cols.is_contiguous() and dy_every_other.stride(1) == 2
    got = mm_emulated(layout, x_cols, w, b, dy_every_other, ii, oi)
    for g, want in zip(got, mm_expected(layout, x, w, b, dy, ii, oi)):
        assert_rounded_once(g, want, torch.float16)


def test_more_groups_than_one_launch_takes():
    gen = torch.Generator().manual_seed(1)
    in_sizes = torch.randint(0, 6, (150,), generator=gen).tolist()  # > 64 non-empty groups per pass: 2 launches
    out_sizes = torch.randint(0, 6, (150,), generator=gen).tolist()
    case = mm_case(in_sizes, out_sizes, 23, torch.bfloat16, indices=True)
    for got, want in zip(mm_emulated(*case), mm_expected(*case)):
        assert_rounded_once(got, want, torch.bfloat16)


def conv_case(in_sizes, out_sizes, geometry, dtype, channels_last, indices):
    torch.manual_seed(0)
    layout = block_layout(in_sizes, out_sizes)
    ks, stride, padding, dilation = geometry
    kh, kw = (ks, ks) if isinstance(ks, int) else ks
    x = torch.randn(3, layout.in_features, 7, 9).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(layout.weight_numel * kh * kw).to(dtype)
    b = torch.randn(layout.out_features).to(dtype)
    ii = random_permutation(layout.in_features, "cpu") if indices else None
    oi = random_permutation(layout.out_features, "cpu") if indices else None
    conv = dict(kernel_size=ks, stride=stride, padding=padding, dilation=dilation)
    y_shape = masked_dense_conv(x.float(), w.float(), b.float(), layout, ii, oi, conv).shape
    dy = torch.randn(y_shape).to(dtype)
    return layout, x, w, b, dy, ii, oi, conv


def conv_expected(layout, x, w, b, dy, ii, oi, conv):
    """Forward and the x / W gradients of the masked dense conv, in fp32."""
    x32, w32 = x.float().requires_grad_(), w.float().requires_grad_()
    y = masked_dense_conv(x32, w32, b.float(), layout, ii, oi, conv)
    dx, dw = torch.autograd.grad(y, (x32, w32), dy.float(), allow_unused=True, materialize_grads=True)
    return y.detach(), dx, dw


def conv_emulated(layout, x, w, b, dy, ii, oi, conv):
    def pair(v):
        return list(v) if isinstance(v, tuple) else [v, v]
    args = (list(layout.in_sizes), list(layout.out_sizes),
            *(pair(conv[k]) for k in ("kernel_size", "stride", "padding", "dilation")), ii, oi)
    ops = emulated()
    return (ops.grouped_conv(x, w, b, *args), ops.grouped_conv_grad_input(dy, w, x, *args),
            ops.grouped_conv_grad_weight(dy, x, w, *args))


@pytest.mark.parametrize("indices", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("name", CONV_LAYOUTS)
def test_grouped_conv_kernels_match_masked_dense(name, geometry, channels_last, indices):
    for dtype in DTYPES:
        case = conv_case(*CONV_LAYOUTS[name], GEOMETRIES[geometry], dtype, channels_last, indices)
        got = conv_emulated(*case)
        for g, want in zip(got, conv_expected(*case)):
            assert_rounded_once(g, want, dtype)
        expected_format = torch.channels_last if channels_last else torch.contiguous_format
        y, dx, _ = got
        assert y.is_contiguous(memory_format=expected_format) and dx.is_contiguous(memory_format=expected_format)


def test_emulation_rejects_dtypes_without_a_cuda_kernel():
    with pytest.raises(RuntimeError, match="fp16/bf16"):
        emulated().block_diag_mm(torch.randn(2, 3), torch.randn(6), None, [3], [2], None, None)
    with pytest.raises(RuntimeError, match="fp32/fp16/bf16"):
        w = torch.randn(3, 2, dtype=torch.float64)
        emulated().group_weight_reg_gemms(w, torch.rand(1, 2), torch.rand(1, 3))


REG_SHAPES = {  # weight shape, groups
    "conv_3x3": ((8, 6, 3, 3), 2),
    "linear_multi_tile": ((70, 33), 3),  # 3 x 2 CTAs of 32 x 32
    "one_weight": ((1, 1), 1),
    "1x1_odd": ((37, 40, 1, 1), 5),
    "no_groups": ((5, 4), 0),
}


@pytest.mark.parametrize("dtype", [torch.float32, *DTYPES])
@pytest.mark.parametrize("name", REG_SHAPES)
def test_group_weight_reg_kernels_match_reference(name, dtype):
    from splitkern.reference import group_weight_reg as ref

    shape, groups = REG_SHAPES[name]
    torch.manual_seed(0)
    w = torch.randn(shape).to(dtype)
    p, q = torch.rand(groups, shape[1]), torch.rand(groups, shape[0])
    grad_a, grad_b = torch.randn(groups, shape[1]), torch.randn(groups, shape[0])
    ops = emulated()
    got = (*ops.group_weight_reg_gemms(w, p, q), *ops.group_weight_reg_gemms_backward(w, p, q, grad_a, grad_b))
    want = (*ref.group_weight_reg_gemms(w, p, q), *ref.group_weight_reg_gemms_backward(w, p, q, grad_a, grad_b))
    for g, e in zip(got, want):  # fp32 sums in another order; dW rounded once to the weight dtype
        assert g.dtype == e.dtype and g.shape == e.shape
        rtol = max(torch.finfo(g.dtype).eps, 1e-5)
        torch.testing.assert_close(g.float(), e.float(), rtol=rtol, atol=1e-4)


def test_kernels_reject_mismatched_operands_before_launching():
    ops = emulated()
    x, w = torch.randn(2, 3, dtype=torch.half), torch.randn(6, dtype=torch.half)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        ops.block_diag_mm(x, w, torch.randn(3, dtype=torch.half), [3], [2], None, None)
    with pytest.raises(RuntimeError, match="weight has dtype"):
        ops.block_diag_mm(x, w, torch.randn(2), [3], [2], None, None)  # fp32 bias read as fp16 = garbage
    with pytest.raises(RuntimeError, match="in_index must be an int64 tensor of shape"):
        ops.block_diag_mm(x, w, None, [3], [2], torch.arange(2), None)  # one index short: out of bounds
    with pytest.raises(RuntimeError, match="out_index must be an int64"):
        ops.block_diag_mm_grad_input(torch.randn(2, 2, dtype=torch.half), w, [3], [2], None,
                                     torch.arange(2, dtype=torch.int32))
