"""Shared test helpers (import after tests/conftest.py has set TRITON_INTERPRET)."""

import io
import os

import pytest

import torch
from hypothesis import strategies as st

import splitkern
from splitkern import backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fast_backends(op: str, dtype=torch.float32) -> list[str]:
    """Non-reference backends that can run ``op`` on the test device."""
    return [b for b in backend.available_backends(DEVICE, op, dtype) if b != "reference"]


def random_permutation(n: int, device=DEVICE) -> torch.Tensor:
    return torch.randperm(n).to(device)


def assert_close(actual, expected, rtol=1e-4, atol=1e-4):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def assert_all_close(actual, expected):
    """:func:`assert_close` on each pair of tensors of ``actual`` and ``expected`` (zipped)."""
    for a, e in zip(actual, expected):
        assert_close(a, e)


def error_vs_fp32(y, y32):
    """Largest absolute difference of the low-precision ``y`` from the fp32 result ``y32``."""
    return (y.float() - y32).abs().max().item()


def assert_within_twice_torch_error(actual, torch_result, fp32):
    """Low-precision ``actual`` is at most twice as far from ``fp32`` as torch's own ``torch_result``."""
    assert error_vs_fp32(actual, fp32) <= 2 * error_vs_fp32(torch_result, fp32) + 1e-6


def assert_error_names(error, name, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``error`` with a message that matches ``name``."""
    with pytest.raises(error, match=name):
        fn(*args, **kwargs)


def call_with_overrides(op, overrides, x, weight, bias, **kwargs):
    """``op(x, weight, bias, **kwargs)`` with the arguments named in ``overrides`` replaced."""
    args = dict(x=x, weight=weight, bias=bias, **kwargs) | overrides
    return op(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


def draw_group_sizes(data, max_groups: int, max_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Hypothesis draw of ``(in_sizes, out_sizes)``: 1 to ``max_groups`` groups of 0 to ``max_size`` each."""
    groups = data.draw(st.integers(1, max_groups), label="groups")
    sizes = st.lists(st.integers(0, max_size), min_size=groups, max_size=groups)
    return tuple(data.draw(sizes, label="in_sizes")), tuple(data.draw(sizes, label="out_sizes"))


def opcheck_under(backend_name: str, cases):
    """``torch.library.opcheck(op, args)`` for every ``(op, args)`` of ``cases``, under ``backend_name``."""
    with splitkern.use_backend(backend_name):
        for op, args in cases:
            torch.library.opcheck(op, args)


def reload_state_dict(source, fresh):
    """``fresh`` with ``source``'s state dict loaded after a torch.save/torch.load (weights_only) round trip."""
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def forward_and_grads(fn, tensors, grad_out):
    """``fn(*tensors)`` and the gradients of <fn, grad_out> w.r.t. every non-None tensor."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    wrt = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, wrt, grad_out, allow_unused=True, materialize_grads=True)
    return y, grads


def to_original_order(dense, bias, in_index, out_index):
    """A grouped-order dense (out, in, ...) weight and bias moved to the original feature order."""
    if in_index is not None:  # grouped column j reads original column in_index[j]
        moved = torch.zeros_like(dense)
        moved[:, in_index] = dense
        dense = moved
    if out_index is not None:
        moved = torch.zeros_like(dense)
        moved[out_index] = dense
        dense = moved
        if bias is not None:
            moved_bias = torch.zeros_like(bias)
            moved_bias[out_index] = bias
            bias = moved_bias
    return dense, bias


def assert_compiled_matches_eager(model, layer, x, **compile_kwargs):
    """torch.compile(fullgraph=True) of ``model`` gives eager's output and eager's grad of ``layer.weight``."""
    compiled = torch.compile(model, fullgraph=True, **compile_kwargs)
    assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    grad_compiled = layer.weight.grad.clone()
    layer.weight.grad = None
    model(x).sum().backward()
    assert_close(grad_compiled, layer.weight.grad)


def expect_cuda_build() -> bool:
    """Whether the extension must hold its CUDA kernels here: CI says so (``SPLITKERN_EXPECT_CUDA=1``, set by
    .ci/run), or nvcc is where setup.py looks for it (``CUDA_HOME``, ``CUDA_PATH``, /usr/local/cuda) and no
    C++-only build was asked for."""
    if os.environ.get("SPLITKERN_EXPECT_CUDA") == "1":
        return True
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return os.path.exists(os.path.join(home, "bin", "nvcc")) and os.environ.get("SPLITKERN_CPU_ONLY_BUILD") != "1"
