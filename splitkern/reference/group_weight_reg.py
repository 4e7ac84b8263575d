"""SplitNet's group weight regulariser R_W in pure PyTorch (docs/design.md §1.2).

For a weight W with M[o, i] = W[o, i]^2 (conv: the mean of W[o, i, :, :]^2 over the
kernel), input assignment P (G x D_in) and output assignment Q (G x D_out)::

    row_g = sum_i (1 - p_gi) * sqrt(sum_o q_go^2 M[o, i]) / (D_in * sqrt(D_out))
    col_g = sum_o (1 - q_go) * sqrt(sum_i p_gi^2 M[o, i]) / (sqrt(D_in) * D_out)
    R_W   = sum_g (row_g + col_g) / (2 (G - 1) sigma0 / G),
    sigma0 = sqrt(1 / D_in) (FC) or sqrt(1 / (k^2 D_in)) (conv)

(the original design (docs/design.md §1.2) wrote W as (D_in, D_out); PyTorch weights are (D_out, D_in, ...), as
here.) :func:`literal_group_weight_reg` is the formula as written, with the G masked
copies ``(I - P_g) W Q_g`` and ``P_g W (I - Q_g)``: the test oracle.
:func:`group_weight_reg` is the same value from two small GEMMs on M
(``A = (Q∘Q) M`` and ``B = (P∘P) M^T``): the CPU path. Only those two GEMMs touch
W; they are the custom op (:func:`group_weight_reg_gemms` and its backward), the
rest is a few G x D elementwise ops shared by every backend (:func:`splitkern._reg_math.finish`).
"""

from __future__ import annotations

import math

import torch

from splitkern._reg_math import acc, energy, finish, normaliser, safe_sqrt, term_scales, weight_energy


def group_weight_reg_gemms(weight, p, q):
    """``(a, b) = ((Q∘Q) M, (P∘P) M^T)``: (G, D_in) and (G, D_out), fp32. The pass over W."""
    m = weight_energy(weight)
    return acc(q).square() @ m, acc(p).square() @ m.t()


def group_weight_reg_gemms_backward(weight, p, q, grad_a, grad_b):
    """Gradients ``(dW, dP, dQ)`` of <grad_a, a> + <grad_b, b>: the backward pass over W."""
    m = weight_energy(weight)
    p_dtype, q_dtype = p.dtype, q.dtype
    p, q = acc(p), acc(q)
    grad_m = q.square().t() @ grad_a + grad_b.t() @ p.square()
    taps = math.prod(weight.shape[2:])
    grad_m = grad_m.view(*grad_m.shape, *(1,) * (weight.dim() - 2))
    grad_w = grad_m * acc(weight) * (2.0 / taps)
    grad_p, grad_q = 2 * p * (grad_b @ m), 2 * q * (grad_a @ m.t())
    return grad_w.to(weight.dtype), grad_p.to(p_dtype), grad_q.to(q_dtype)


def group_weight_reg(weight: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """R_W (a 0-dim fp32 tensor) via two GEMMs on M; differentiable in weight, p and q."""
    return finish(weight, p, q, *group_weight_reg_gemms(weight, p, q))


def literal_group_weight_reg(weight: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """R_W exactly as written: G masked copies of W per term (slow; the test oracle)."""
    w = acc(weight)
    kernel = (1,) * (w.dim() - 2)
    row_scale, col_scale = term_scales(weight)
    total = w.new_zeros(())
    for g in range(p.shape[0]):
        p_g = acc(p[g]).view(1, -1, *kernel)
        q_g = acc(q[g]).view(-1, 1, *kernel)
        row_copy = (1 - p_g) * w * q_g  # (I - P_g) W Q_g
        col_copy = p_g * w * (1 - q_g)  # P_g W (I - Q_g)
        row_norms = safe_sqrt(energy(row_copy).sum(0))  # one per input feature
        col_norms = safe_sqrt(energy(col_copy).sum(1))  # one per output feature
        total = total + row_norms.sum() / row_scale + col_norms.sum() / col_scale
    return total / normaliser(weight, p.shape[0])
