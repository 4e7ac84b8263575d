"""Shared test helpers (import after tests/conftest.py has set TRITON_INTERPRET)."""

import torch

from splitkern import backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fast_backends(op: str, dtype=torch.float32) -> list[str]:
    """Non-reference backends that can run ``op`` on the test device."""
    return [b for b in backend.available_backends(DEVICE, op, dtype) if b != "reference"]


def random_permutation(n: int, device=DEVICE) -> torch.Tensor:
    return torch.randperm(n).to(device)


def assert_close(actual, expected, rtol=1e-4, atol=1e-4):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


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
