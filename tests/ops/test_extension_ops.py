"""The compiled extension (the ``extension`` backend): built in CI, its ``ext_*`` ops checked directly.

The op test files run every shape class through the ``extension`` backend too (``fast_backends``);
this file checks that they really do, and opchecks the C++ ops themselves.
"""

import pytest
import torch

from splitkern import backend, registry
from tests.helpers import DEVICE, expect_cuda_build, random_permutation

OPS = tuple(registry.OPS)


def test_extension_is_built_with_a_cpu_and_a_cuda_kernel_per_op():
    ext, why = backend.extension()
    assert ext is not None, why  # CI builds it (setup.py finds nvcc); a failed build must not pass quietly
    assert bool(ext.cuda_runtime_version()) == expect_cuda_build()  # no quiet C++-only build where nvcc is
    for op in OPS:
        device_kernels = ("cpu", "cuda", "emulated") if expect_cuda_build() else ("cpu",)
        assert {f"{op}:{device}" for device in device_kernels} <= set(ext.kernels())
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            assert "extension" in backend.available_backends(DEVICE, op, dtype)
    assert dict(ext.kernel_info()).keys() == set(ext.kernels())
    if expect_cuda_build():
        assert "block_diag_mm_cublas:cuda" in ext.kernels()  # setup.py finds cuBLAS in torch's nvidia wheel


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("indices", [False, True])
def test_cublas_grouped_forward_matches_the_reference(dtype, indices):
    from splitkern.extension.block_diag_mm import block_diag_mm_cublas
    from splitkern.layout import block_layout
    from splitkern.reference.block_diag_mm import block_diag_mm as reference

    layout = block_layout((5, 0, 33, 12, 7), (20, 4, 3, 41, 0))
    x = torch.randn(19, layout.in_features, device=DEVICE, dtype=dtype)
    w = torch.randn(layout.weight_numel, device=DEVICE, dtype=dtype)
    b = torch.randn(layout.out_features, device=DEVICE, dtype=dtype)
    ii, oi = (random_permutation(layout.in_features), random_permutation(layout.out_features)) if indices else (
        None, None)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)  # tf32 allowed
    got = block_diag_mm_cublas(x, w, b, layout, ii, oi)
    want = reference(x.float(), w.float(), b.float(), layout, ii, oi)
    torch.testing.assert_close(got.float(), want, **tol)


def _mm_args(indices):
    in_sizes, out_sizes = [5, 0, 11], [7, 4, 9]
    x = torch.randn(6, 16, device=DEVICE)
    w = torch.randn(5 * 7 + 11 * 9, device=DEVICE)
    b = torch.randn(20, device=DEVICE)
    ii, oi = (random_permutation(16), random_permutation(20)) if indices else (None, None)
    dy = torch.randn(6, 20, device=DEVICE)
    ops = torch.ops.splitkern
    cublas = [(ops.ext_block_diag_mm_cublas.default, (x, w, b, in_sizes, out_sizes, ii, oi))] if x.is_cuda else []
    return cublas + [(ops.ext_block_diag_mm.default, (x, w, b, in_sizes, out_sizes, ii, oi)),
            (ops.ext_block_diag_mm_grad_input.default, (dy, w, in_sizes, out_sizes, ii, oi)),
            (ops.ext_block_diag_mm_grad_weight.default, (dy, x, in_sizes, out_sizes, ii, oi)),
            (ops.ext_block_diag_mm_grad_bias.default, (dy, oi))]


def _conv_args(indices):
    in_sizes, out_sizes, geometry = [2, 4], [3, 1], ([3, 3], [1, 1], [1, 1], [1, 1])
    x = torch.randn(2, 6, 5, 5, device=DEVICE)
    w = torch.randn((2 * 3 + 4 * 1) * 9, device=DEVICE)
    dy = torch.randn(2, 4, 5, 5, device=DEVICE)
    ii, oi = (random_permutation(6), random_permutation(4)) if indices else (None, None)
    ops = torch.ops.splitkern
    return [(ops.ext_grouped_conv.default, (x, w, None, in_sizes, out_sizes, *geometry, ii, oi)),
            (ops.ext_grouped_conv_grad_input.default, (dy, w, x, in_sizes, out_sizes, *geometry, ii, oi)),
            (ops.ext_grouped_conv_grad_weight.default, (dy, x, w, in_sizes, out_sizes, *geometry, ii, oi))]


def _reg_args(_):
    w = torch.randn(8, 6, 3, 3, device=DEVICE)
    p, q = torch.rand(2, 6, device=DEVICE), torch.rand(2, 8, device=DEVICE)
    ops = torch.ops.splitkern
    return [(ops.ext_group_weight_reg_gemms.default, (w, p, q)),
            (ops.ext_group_weight_reg_gemms_backward.default,
             (w, p, q, torch.randn(2, 6, device=DEVICE), torch.randn(2, 8, device=DEVICE)))]


@pytest.mark.parametrize("make_args", [_mm_args, _conv_args, _reg_args])
@pytest.mark.parametrize("indices", [False, True])
def test_opcheck_extension_ops(make_args, indices):
    backend.extension()  # loads the library and the fake impls
    for op, args in make_args(indices):
        torch.library.opcheck(op, args)


def test_extension_op_rejects_mismatched_sizes():
    """The numbers are in the message: a second, exported libstdc++ in _C.so (a compiler that links it
    statically) formatted them as nothing here and crashed the process on the GPU image."""
    backend.extension()
    with pytest.raises(RuntimeError, match=r"in_sizes and out_sizes .* got 1 and 2"):
        torch.ops.splitkern.ext_block_diag_mm(torch.randn(2, 3), torch.randn(6), None, [3], [2, 1], None, None)
    with pytest.raises(RuntimeError, match=r"weight must have shape \(6,\) .* got \[5\]"):
        torch.ops.splitkern.ext_block_diag_mm(torch.randn(2, 3), torch.randn(5), None, [3], [2], None, None)


def test_extension_keeps_its_cxx_runtime_private():
    """_C.so exports no libstdc++ symbols, whichever compiler built it (setup.py links with
    -Wl,--exclude-libs,ALL): an exported static copy interposes on the process's libstdc++."""
    import shutil
    import subprocess

    ext, why = backend.extension()
    assert ext is not None, why
    if shutil.which("nm") is None:
        pytest.skip("no nm on PATH")
    exported = subprocess.run(["nm", "-D", "--defined-only", ext.__file__], capture_output=True, text=True,
                              check=True).stdout
    leaked = [line for line in exported.splitlines() if " _ZNSt6locale" in line or " _ZNSo" in line]
    assert not leaked, leaked[:5]


def _many_ragged_groups(groups=70, seed=0):
    """More groups than one CUDA launch takes (64), ragged, some empty."""
    gen = torch.Generator().manual_seed(seed)
    in_sizes = torch.randint(0, 6, (groups,), generator=gen).tolist()
    out_sizes = torch.randint(0, 6, (groups,), generator=gen).tolist()
    return in_sizes, out_sizes


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)])
def test_many_ragged_groups_match_the_reference(dtype):
    import splitkern
    from splitkern.ops import block_diag_mm, grouped_conv

    in_sizes, out_sizes = _many_ragged_groups()
    k, n = sum(in_sizes), sum(out_sizes)
    x = torch.randn(37, k, device=DEVICE, dtype=dtype)
    w = torch.randn(sum(a * b for a, b in zip(in_sizes, out_sizes)), device=DEVICE, dtype=dtype)
    w9 = torch.randn(w.numel() * 9, device=DEVICE, dtype=dtype)
    bias = torch.randn(n, device=DEVICE, dtype=dtype)
    ii, oi = random_permutation(k), random_permutation(n)
    img = torch.randn(2, k, 5, 6, device=DEVICE, dtype=dtype).to(memory_format=torch.channels_last)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)

    def both(name):  # outputs and the gradients of every input (the kernels' backward passes too)
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, w9, bias, img)]
        lx, lw, lw9, lb, limg = leaves
        with splitkern.use_backend(name):
            outs = (block_diag_mm(lx, lw, lb, in_sizes=in_sizes, out_sizes=out_sizes, in_index=ii, out_index=oi),
                    grouped_conv(limg, lw9, lb, in_sizes=in_sizes, out_sizes=out_sizes, kernel_size=3, padding=1,
                                 in_index=ii, out_index=oi))
            grads = torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs])
        return (*outs, *grads)

    for got, want in zip(both("extension"), both("reference")):
        torch.testing.assert_close(got.float(), want.float(), **tol)


def _all_entry_points():
    return [call for make in (_mm_args, _conv_args, _reg_args) for call in make(True)]


def _replace(args, position, tensor):
    return tuple(tensor if i == position else a for i, a in enumerate(args))


def test_every_entry_point_rejects_an_operand_of_another_dtype():
    """A float64 operand beside float32 ones is named in the error (it used to be read as float32 bits)."""
    backend.extension()
    for op, args in _all_entry_points():
        if "group_weight_reg" in op._schema.name:  # p, q and the gradients are fp32 whatever the weight's dtype
            continue
        for i, arg in enumerate(args):
            if not (isinstance(arg, torch.Tensor) and arg.is_floating_point()):
                continue
            others = [a for j, a in enumerate(args) if j != i and isinstance(a, torch.Tensor) and a.is_floating_point()]
            if not others:
                continue
            with pytest.raises(RuntimeError, match=r"has dtype \w+ but \w+ has"):
                op(*_replace(args, i, arg.double()))


@pytest.mark.gpu
def test_every_entry_point_rejects_an_operand_on_another_device():
    """A CPU operand beside CUDA ones is named in the error, before any kernel reads host memory."""
    backend.extension()
    for op, args in _all_entry_points():
        for i, arg in enumerate(args):
            if isinstance(arg, torch.Tensor) and i > 0:
                with pytest.raises(RuntimeError, match="is on"):
                    op(*_replace(args, i, arg.cpu()))
    torch.cuda.synchronize()  # no kernel ran with a host pointer (that error is sticky)


def test_regulariser_entry_points_name_misshapen_gradients():
    backend.extension()
    w, p, q = torch.randn(8, 6), torch.rand(2, 6), torch.rand(2, 8)
    op = torch.ops.splitkern.ext_group_weight_reg_gemms_backward
    with pytest.raises(RuntimeError, match="grad_a must have shape"):
        op(w, p, q, torch.randn(2, 5), torch.randn(2, 8))
    with pytest.raises(RuntimeError, match="grad_b must have shape"):
        op(w, p, q, torch.randn(2, 6), torch.randn(3, 8))
    with pytest.raises(RuntimeError, match="q must have shape"):
        torch.ops.splitkern.ext_group_weight_reg_gemms(w, p, torch.rand(2, 7))
