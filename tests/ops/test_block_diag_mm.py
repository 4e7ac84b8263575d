import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import splitkern
from splitkern import backend
from splitkern.layout import block_layout
from splitkern.ops import block_diag_mm
from splitkern.reference import block_diag_mm as ref
from tests.helpers import (DEVICE, assert_all_close, assert_close, assert_compiled_matches_eager, assert_error_names,
                           assert_within_twice_torch_error, call_with_overrides, draw_group_sizes, fast_backends,
                           opcheck_under, random_permutation, to_original_order)
from tests.helpers import forward_and_grads as _forward_and_grads

FAST = fast_backends("block_diag_mm")

# (in_sizes, out_sizes): equal, ragged, empty input group, empty output group,
# size-1 groups, not multiples of 16 and larger than one tile, G = 1.
LAYOUTS = {
    "equal": ((16, 16, 16, 16), (16, 16, 16, 16)),
    "ragged": ((5, 33, 12), (20, 3, 41)),
    "empty_in": ((7, 0, 9), (5, 6, 4)),
    "empty_out": ((7, 8, 9), (5, 0, 4)),
    "size1": ((1, 1, 1), (1, 1, 1)),
    "odd_multi_tile": ((70, 3), (67, 131)),
    "single_group": ((23,), (29,)),
}
BATCHES = (0, 1, 7, 70)


def make_case(in_sizes, out_sizes, m, *, bias=True, indices=False, dtype=torch.float32):
    layout = block_layout(in_sizes, out_sizes)
    x = torch.randn(m, layout.in_features, device=DEVICE, dtype=dtype)
    w = torch.randn(layout.weight_numel, device=DEVICE, dtype=dtype)
    b = torch.randn(layout.out_features, device=DEVICE, dtype=dtype) if bias else None
    in_index = random_permutation(layout.in_features) if indices else None
    out_index = random_permutation(layout.out_features) if indices else None
    return layout, x, w, b, in_index, out_index


def masked_dense_linear(x, w, b, layout, in_index, out_index):
    """The semantics, written independently: dense F.linear with a block mask."""
    in_ids = torch.repeat_interleave(torch.arange(layout.groups), torch.tensor(layout.in_sizes))
    out_ids = torch.repeat_interleave(torch.arange(layout.groups), torch.tensor(layout.out_sizes))
    dense = torch.zeros(layout.out_features, layout.in_features, dtype=w.dtype, device=w.device)
    for g in range(layout.groups):
        rows = (out_ids == g).nonzero().flatten().tolist()
        cols = (in_ids == g).nonzero().flatten().tolist()
        if rows and cols:
            dense[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = layout.block(w, g)
    return F.linear(x, *to_original_order(dense, b, in_index, out_index))


def run(backend_name, x, w, b, layout, in_index, out_index):
    with splitkern.use_backend(backend_name):
        return block_diag_mm(x, w, b, in_sizes=layout.in_sizes, out_sizes=layout.out_sizes,
                             in_index=in_index, out_index=out_index)


def forward_and_grads(backend_name, x, w, b, layout, in_index, out_index, grad_out):
    def fn(x_, w_, b_):
        return run(backend_name, x_, w_, b_, layout, in_index, out_index)
    return _forward_and_grads(fn, (x, w, b), grad_out)


@pytest.mark.parametrize("indices", [False, True])
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("name", LAYOUTS)
def test_reference_equals_masked_dense_linear(name, m, indices):
    layout, x, w, b, ii, oi = make_case(*LAYOUTS[name], m, indices=indices)
    expected = masked_dense_linear(x, w, b, layout, ii, oi)
    assert_close(run("reference", x, w, b, layout, ii, oi), expected)
    dense = ref.masked_dense_weight(w, layout, ii, oi)
    assert_close(x @ dense.t(), masked_dense_linear(x, w, None, layout, ii, oi))


@pytest.mark.parametrize("backend_name", FAST)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("indices", [False, True])
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("name", LAYOUTS)
def test_backend_matches_reference_forward_and_grads(backend_name, name, m, indices, bias):
    layout, x, w, b, ii, oi = make_case(*LAYOUTS[name], m, bias=bias, indices=indices)
    grad_out = torch.randn(m, layout.out_features, device=DEVICE)
    y_ref, g_ref = forward_and_grads("reference", x, w, b, layout, ii, oi, grad_out)
    y, g = forward_and_grads(backend_name, x, w, b, layout, ii, oi, grad_out)
    assert_close(y, y_ref)
    assert len(g) == len(g_ref)
    assert_all_close(g, g_ref)


@pytest.mark.parametrize("backend_name", FAST)
def test_non_contiguous_and_batched_inputs(backend_name):
    layout, _, w, b, ii, oi = make_case((9, 20), (13, 6), 0, indices=True)
    base = torch.randn(2, 11, 2 * layout.in_features, device=DEVICE)
    x = base[..., ::2]  # strided last dim, 3-D input
    assert not x.is_contiguous()
    expected = run("reference", x.contiguous(), w, b, layout, ii, oi)
    y = run(backend_name, x, w, b, layout, ii, oi)
    assert y.shape == (2, 11, layout.out_features)
    assert_close(y, expected)
    grad_out = torch.randn_like(y).transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous dy
    xs = [x.detach().clone().requires_grad_() for _ in range(2)]
    ws = [w.detach().clone().requires_grad_() for _ in range(2)]
    gs = [torch.autograd.grad(run(be, xr, wr, b, layout, ii, oi), (xr, wr), grad_out)
          for be, xr, wr in zip(("reference", backend_name), xs, ws)]
    assert_all_close(gs[1], gs[0])


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_fuzz_random_layouts(data):
    in_sizes, out_sizes = draw_group_sizes(data, max_groups=5, max_size=40)
    m = data.draw(st.integers(0, 40), label="m")
    indices = data.draw(st.booleans(), label="indices")
    layout, x, w, b, ii, oi = make_case(in_sizes, out_sizes, m, indices=indices)
    expected = masked_dense_linear(x, w, b, layout, ii, oi)
    grad_out = torch.randn(m, layout.out_features, device=DEVICE)
    y_ref, g_ref = forward_and_grads("reference", x, w, b, layout, ii, oi, grad_out)
    assert_close(y_ref, expected)
    for name in FAST:
        y, g = forward_and_grads(name, x, w, b, layout, ii, oi, grad_out)
        assert_close(y, y_ref)
        assert_all_close(g, g_ref)


@pytest.mark.parametrize("indices", [False, True])
def test_gradcheck_float64_reference(indices):
    layout, x, w, b, ii, oi = make_case((3, 0, 4), (2, 3, 0), 5, indices=indices, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))

    def op(x_, w_, b_):
        return run("reference", x_, w_, b_, layout, ii, oi)
    assert torch.autograd.gradcheck(op, inputs)


def test_reference_grad_functions_match_autograd():
    layout, x, w, b, ii, oi = make_case((4, 6, 1), (5, 2, 7), 9, indices=True, dtype=torch.float64)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    grad_out = torch.randn(9, layout.out_features, dtype=torch.float64, device=DEVICE)
    y = ref.block_diag_mm(xr, wr, br, layout, ii, oi)
    gx, gw, gb = torch.autograd.grad(y, (xr, wr, br), grad_out)
    assert_close(ref.block_diag_mm_grad_input(grad_out, w, layout, ii, oi), gx)
    assert_close(ref.block_diag_mm_grad_weight(grad_out, x, layout, ii, oi), gw)
    assert_close(ref.block_diag_mm_grad_bias(grad_out, oi), gb)


@pytest.mark.parametrize("backend_name", ["reference", *FAST])
@pytest.mark.parametrize("indices", [False, True])
def test_opcheck(backend_name, indices):
    layout, x, w, b, ii, oi = make_case((5, 0, 11), (7, 4, 9), 6, indices=indices)
    sizes = (list(layout.in_sizes), list(layout.out_sizes))
    grad_out = torch.randn(6, layout.out_features, device=DEVICE)
    cases = [
        (torch.ops.splitkern.block_diag_mm.default,
         (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), *sizes, ii, oi)),
        (torch.ops.splitkern.block_diag_mm_grad_input.default, (grad_out, w.detach(), *sizes, ii, oi)),
        (torch.ops.splitkern.block_diag_mm_grad_weight.default, (grad_out, x.detach(), *sizes, ii, oi)),
        (torch.ops.splitkern.block_diag_mm_grad_bias.default, (grad_out, oi)),
    ]
    opcheck_under(backend_name, cases)


@pytest.mark.parametrize("backend_name", ["reference", *FAST])
def test_torch_compile_fullgraph(backend_name):
    torch._dynamo.reset()
    layer = splitkern.nn.SplitLinear.from_dense(
        torch.nn.Linear(24, 10).to(DEVICE), torch.tensor([0, 1, 2] * 8), torch.tensor([2, 0] * 5),
        num_groups=3)
    model = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Linear(10, 3).to(DEVICE))
    x = torch.randn(5, 24, device=DEVICE)
    with splitkern.use_backend(backend_name):
        assert_compiled_matches_eager(model, layer, x, dynamic=True)


class TestBadInput:
    layout, x, w, b, ii, oi = make_case((3, 5), (4, 2), 6, indices=True)

    def call(self, **overrides):
        return call_with_overrides(block_diag_mm, overrides, self.x, self.w, self.b, in_sizes=self.layout.in_sizes,
                                   out_sizes=self.layout.out_sizes, in_index=self.ii, out_index=self.oi)

    @pytest.mark.parametrize("overrides, error, name", [
        (dict(x=[[1.0]]), TypeError, "x"),
        (dict(x=torch.ones(6, 9, dtype=torch.int64)), TypeError, "x"),
        (dict(x=torch.randn(6, 9)), ValueError, "x"),
        (dict(x=torch.randn(())), ValueError, "x"),
        (dict(weight=torch.randn(26, dtype=torch.float64)), TypeError, "weight"),
        (dict(weight=torch.randn(25)), ValueError, "weight"),
        (dict(weight=torch.randn(2, 13)), ValueError, "weight"),
        (dict(bias=torch.randn(5)), ValueError, "bias"),
        (dict(bias=torch.randn(6, dtype=torch.float16)), TypeError, "bias"),
        (dict(in_sizes=(3, 5, 0)), ValueError, "in_sizes and out_sizes"),
        (dict(in_sizes=(4, 4)), ValueError, "weight"),
        (dict(in_sizes=(9, -1)), ValueError, "in_sizes"),
        (dict(in_sizes=(3.0, 5)), TypeError, "in_sizes"),
        (dict(in_sizes=()), ValueError, "in_sizes"),
        (dict(out_sizes="42"), TypeError, "out_sizes"),
        (dict(in_index=torch.arange(8, dtype=torch.int32)), TypeError, "in_index"),
        (dict(in_index=torch.arange(7)), ValueError, "in_index"),
        (dict(in_index=torch.zeros(8, dtype=torch.int64)), ValueError, "in_index"),
        (dict(out_index=torch.tensor([0, 1, 2, 3, 4, 6])), ValueError, "out_index"),
        (dict(out_index=torch.arange(6.0)), TypeError, "out_index"),
    ])
    def test_errors_name_the_argument(self, overrides, error, name):
        assert_error_names(error, name, self.call, **overrides)

    def test_device_mismatch(self):
        other = torch.device("meta")  # a second device every machine has
        with pytest.raises(ValueError, match="weight"):
            self.call(x=self.x.to(other), in_index=None, out_index=None)
        with pytest.raises(ValueError, match="in_index"):
            self.call(in_index=self.ii.to(other))


class TestBackendSelection:
    def test_unknown_backend(self):
        with pytest.raises(ValueError, match="unknown backend"):
            with splitkern.use_backend("cublas"):
                pass

    def test_env_var_unknown_backend(self, monkeypatch):
        monkeypatch.setenv("SPLITKERN_BACKEND", "fast")
        backend.reload_environment()
        layout, x, w, b, _, _ = make_case((2,), (3,), 4)
        with pytest.raises(ValueError, match="SPLITKERN_BACKEND"):
            run_auto(x, w, b, layout)

    def test_env_var_forces_backend(self, monkeypatch):
        calls = []
        layout, x, w, b, _, _ = make_case((2,), (3,), 4)
        monkeypatch.setenv("SPLITKERN_BACKEND", "reference")
        backend.reload_environment()
        monkeypatch.setattr(ref, "block_diag_mm", lambda *a: calls.append(a) or torch.zeros(4, 3))
        run_auto(x, w, b, layout)
        assert len(calls) == 1

    def test_context_overrides_env(self, monkeypatch):
        monkeypatch.setenv("SPLITKERN_BACKEND", "triton")
        backend.reload_environment()
        with splitkern.use_backend("reference"):
            assert backend.select("block_diag_mm", DEVICE, torch.float32) == "reference"

    def test_forced_backend_without_kernel_raises(self):
        reasons = {"triton": backend.unsupported_reason("triton", "block_diag_mm", DEVICE, torch.float64)}
        layout, x, w, b, _, _ = make_case((2,), (3,), 4, dtype=torch.float64)
        for name, reason in reasons.items():
            assert reason, f"{name} claims float64 support it does not have"
            try:
                ctx = splitkern.use_backend(name)
                ctx.__enter__()
            except splitkern.BackendUnavailableError:
                continue  # not usable in this process at all: also an explicit error
            try:
                with pytest.raises(splitkern.BackendUnavailableError, match=name):
                    run_auto(x, w, b, layout)
            finally:
                ctx.__exit__(None, None, None)

    def test_auto_picks_reference_on_cpu_and_triton_on_cuda(self):
        expected = "triton" if DEVICE.type == "cuda" else "reference"
        assert backend.select("block_diag_mm", DEVICE, torch.float32) == expected

    def test_triton_backend_is_exercised(self):
        """The Triton tests above must run in CI (CPU interpreter), not silently vanish."""
        assert "triton" in FAST

    def test_triton_on_cpu_without_interpreter_raises(self):
        import subprocess
        import sys
        code = ("import torch, splitkern, pytest\n"
                "x = torch.randn(2, 3); w = torch.randn(6)\n"
                "with splitkern.use_backend('triton'):\n"
                "    try:\n"
                "        splitkern.ops.block_diag_mm(x, w, in_sizes=[3], out_sizes=[2])\n"
                "    except splitkern.BackendUnavailableError as e:\n"
                "        print('raised:', e)\n")
        env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=120)
        assert "raised:" in out.stdout and "CUDA tensor" in out.stdout, out.stdout + out.stderr


def run_auto(x, w, b, layout):
    return block_diag_mm(x, w, b, in_sizes=layout.in_sizes, out_sizes=layout.out_sizes)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 32, 300])
@pytest.mark.parametrize("name", ["equal", "ragged", "odd_multi_tile"])
def test_low_precision_within_twice_torch_error(name, m, dtype):
    layout, x, w, b, ii, oi = make_case(*LAYOUTS[name], m, indices=True)
    grad_out = torch.randn(m, layout.out_features, device=DEVICE)
    y32, g32 = forward_and_grads("reference", x, w, b, layout, ii, oi, grad_out)
    lo = [t.to(dtype) for t in (x, w, b)]
    y_torch, g_torch = forward_and_grads("reference", *lo, layout, ii, oi, grad_out.to(dtype))
    for name_ in FAST:
        y, g = forward_and_grads(name_, *lo, layout, ii, oi, grad_out.to(dtype))
        assert y.dtype == dtype
        assert_within_twice_torch_error(y, y_torch, y32)
        for a, t, e in zip(g, g_torch, g32):
            assert_within_twice_torch_error(a, t, e)
