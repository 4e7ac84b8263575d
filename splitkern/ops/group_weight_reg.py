"""SplitNet's group weight regulariser R_W: custom ops for its passes over W, autograd, dispatch."""

from __future__ import annotations

import torch
from torch import Tensor

from splitkern._reg_math import finish
from splitkern.registry import custom_op
from splitkern.ops._dispatch import implementation
from splitkern.ops._checks import check_shape, check_tensor

_OP = "group_weight_reg"


def _backend(t: Tensor):
    """The backend module that runs this op for tensors like ``t``."""
    return implementation(_OP, t)


@custom_op("group_weight_reg_gemms")
def _gemms(weight: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    return _backend(weight).group_weight_reg_gemms(weight, p, q)


@custom_op("group_weight_reg_gemms_backward")
def _gemms_backward(weight: Tensor, p: Tensor, q: Tensor, grad_a: Tensor,
                    grad_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _backend(weight).group_weight_reg_gemms_backward(weight, p, q, grad_a, grad_b)


@_gemms.register_fake
def group_weight_reg_gemms_fake(weight, p, q):
    return torch.empty_like(p, memory_format=torch.contiguous_format), \
        torch.empty_like(q, memory_format=torch.contiguous_format)


@_gemms_backward.register_fake
def group_weight_reg_gemms_backward_fake(weight, p, q, grad_a, grad_b):
    return (torch.empty_like(weight, memory_format=torch.contiguous_format),
            torch.empty_like(p, memory_format=torch.contiguous_format),
            torch.empty_like(q, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_a, grad_b):
    weight, p, q = ctx.saved_tensors
    return _gemms_backward(weight, p, q, grad_a, grad_b)


_gemms.register_autograd(_backward, setup_context=_setup_context)


def group_weight_reg(weight: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """SplitNet's group weight regulariser R_W of one weight (docs/design.md §1.2; Kim et al. 2017, eq. 4).

    With ``M = W**2`` (conv: the mean of ``W**2`` over the kernel)::

        R_W = sum_g [ sum_i (1 - p_gi) sqrt(sum_o q_go^2 M[o, i]) / (D_in sqrt(D_out))
                    + sum_o (1 - q_go) sqrt(sum_i p_gi^2 M[o, i]) / (sqrt(D_in) D_out) ]
              / (2 (G - 1) sigma0 / G),   sigma0 = sqrt(1 / (k^2 D_in))

    computed from two small GEMMs on M in one pass over W (Triton on CUDA; the
    same formulation in PyTorch on CPU), not from G masked copies of W.

    Args:
        weight: ``(D_out, D_in)`` linear or ``(D_out, D_in, kh, kw)`` conv weight.
        p: ``(G, D_in)`` input-feature group probabilities (columns sum to 1).
        q: ``(G, D_out)`` output-feature group probabilities.

    Returns:
        0-dim tensor (fp32; fp64 for fp64 weights), differentiable in weight, p and q.
        A feature whose weights are all zero contributes 0 and gets no gradient
        through its square root.
    """
    check_tensor(weight, "weight")
    check_tensor(p, "p")
    check_tensor(q, "q")
    if weight.dim() < 2:
        raise ValueError(f"weight must be (D_out, D_in) or (D_out, D_in, kh, kw), got shape {tuple(weight.shape)}")
    if p.dim() != 2 or p.shape[0] < 2:
        raise ValueError(f"p must be (G, D_in) with G >= 2 groups, got shape {tuple(p.shape)}")
    d_out, d_in = weight.shape[:2]
    check_shape(p, "p", (p.shape[0], d_in))
    check_shape(q, "q", (p.shape[0], d_out))
    for t, name in ((p, "p"), (q, "q")):
        if t.device != weight.device:
            raise ValueError(f"{name} is on {t.device} but weight is on {weight.device}")
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    p, q = p.to(acc), q.to(acc)
    a, b = _gemms(weight, p, q)
    return finish(weight, p, q, a, b)
