"""SplitNet's group weight regulariser R_W in pure PyTorch (DESIGN.md §1).

For a weight W with M[o, i] = W[o, i]^2 (conv: the mean of W[o, i, :, :]^2 over the
kernel), input assignment P (G x D_in) and output assignment Q (G x D_out)::

    row_g = sum_i (1 - p_gi) * sqrt(sum_o q_go^2 M[o, i]) / (D_in * sqrt(D_out))
    col_g = sum_o (1 - q_go) * sqrt(sum_i p_gi^2 M[o, i]) / (sqrt(D_in) * D_out)
    R_W   = sum_g (row_g + col_g) / (2 (G - 1) sigma0 / G),
    sigma0 = sqrt(1 / D_in) (FC) or sqrt(1 / (k^2 D_in)) (conv)

(DESIGN.md writes W as (D_in, D_out); PyTorch weights are (D_out, D_in, ...), as
here.) :func:`literal_group_weight_reg` is the formula as written, with the G masked
copies ``(I - P_g) W Q_g`` and ``P_g W (I - Q_g)``: the test oracle.
:func:`group_weight_reg` is the same value from two small GEMMs on M
(``A = (Q∘Q) M`` and ``B = (P∘P) M^T``): the CPU path. Only those two GEMMs touch
W; they are the custom op (:func:`group_weight_reg_gemms` and its backward), the
rest is a few G x D elementwise ops shared by every backend (:func:`finish`).
"""

from __future__ import annotations

import math

import torch

# sqrt is clamped here: its gradient at an all-zero row (a pruned feature) would be inf.
_TINY = 1e-30


def acc(t: torch.Tensor) -> torch.Tensor:
    """The accumulation dtype: fp32 for fp32/fp16/bf16, fp64 kept (for gradcheck)."""
    return t if t.dtype == torch.float64 else t.float()


def weight_energy(weight: torch.Tensor) -> torch.Tensor:
    """M: ``W**2`` for a (D_out, D_in) weight, the mean of ``W**2`` over the kernel for a conv weight."""
    return _energy(acc(weight))


def normaliser(weight: torch.Tensor, groups: int) -> float:
    """``2 (G - 1) sigma0 / G`` with ``sigma0 = sqrt(1 / (taps * D_in))``."""
    taps = math.prod(weight.shape[2:])
    sigma0 = math.sqrt(1.0 / (taps * weight.shape[1]))
    return 2.0 * (groups - 1) * sigma0 / groups


def term_scales(weight: torch.Tensor) -> tuple[float, float]:
    """Divisors of the row and column terms: ``D_in sqrt(D_out)`` and ``sqrt(D_in) D_out``."""
    d_out, d_in = weight.shape[:2]
    return d_in * math.sqrt(d_out), math.sqrt(d_in) * d_out


def safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    return t.clamp_min(_TINY).sqrt()


def finish(weight, p, q, a, b) -> torch.Tensor:
    """R_W from the two GEMM results ``a = (Q∘Q) M`` (G x D_in) and ``b = (P∘P) M^T`` (G x D_out)."""
    row_scale, col_scale = term_scales(weight)
    row = ((1 - acc(p)) * safe_sqrt(a)).sum() / row_scale
    col = ((1 - acc(q)) * safe_sqrt(b)).sum() / col_scale
    return (row + col) / normaliser(weight, p.shape[0])


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
        row_norms = safe_sqrt(_energy(row_copy).sum(0))  # one per input feature
        col_norms = safe_sqrt(_energy(col_copy).sum(1))  # one per output feature
        total = total + row_norms.sum() / row_scale + col_norms.sum() / col_scale
    return total / normaliser(weight, p.shape[0])


def _energy(w: torch.Tensor) -> torch.Tensor:
    w2 = w.square()
    return w2 if w.dim() == 2 else w2.flatten(2).mean(2)
