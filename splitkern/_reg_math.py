"""The group weight regulariser's small math shared by every backend (docs/design.md §1.2).

With ``M = mean_taps(W**2)`` (G groups, P: (G, D_in), Q: (G, D_out)), every backend computes
the two GEMMs ``a = (Q∘Q) M`` and ``b = (P∘P) M^T``; :func:`finish` turns them into R_W with a
few G x D elementwise ops. The oracle (:func:`splitkern.reference.group_weight_reg.literal_group_weight_reg`)
uses the same scales. sqrt is clamped: its gradient at an all-zero row (a pruned feature) would be inf.
"""

from __future__ import annotations

import math

import torch

_TINY = 1e-30


def acc(t: torch.Tensor) -> torch.Tensor:
    """The accumulation dtype: fp32 for fp32/fp16/bf16, fp64 kept (for gradcheck)."""
    return t if t.dtype == torch.float64 else t.float()


def energy(w: torch.Tensor) -> torch.Tensor:
    """``w**2`` for a (D_out, D_in) ``w``, the mean of ``w**2`` over the taps for (D_out, D_in, kh, kw); w's dtype."""
    w2 = w.square()
    return w2 if w.dim() == 2 else w2.flatten(2).mean(2)


def weight_energy(weight: torch.Tensor) -> torch.Tensor:
    """M (D_out, D_in) in the accumulation dtype: ``W**2`` for a (D_out, D_in) weight, the mean of
    ``W**2`` over the kernel for a conv weight."""
    return energy(acc(weight))


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
    """Elementwise sqrt of ``t`` clamped below at 1e-30 (finite gradient at zero)."""
    return t.clamp_min(_TINY).sqrt()


def finish(weight, p, q, a, b) -> torch.Tensor:
    """R_W (0-dim) from the two GEMM results ``a = (Q∘Q) M`` (G x D_in) and ``b = (P∘P) M^T`` (G x D_out);
    ``weight`` is read for its shape only, ``p`` (G, D_in) and ``q`` (G, D_out) are the assignments."""
    row_scale, col_scale = term_scales(weight)
    row = ((1 - acc(p)) * safe_sqrt(a)).sum() / row_scale
    col = ((1 - acc(q)) * safe_sqrt(b)).sum() / col_scale
    return (row + col) / normaliser(weight, p.shape[0])
