"""SplitNet's regularisers (docs/design.md §1.2; Kim et al., ICML 2017, section 3).

* :func:`disjoint_reg` R_D: overlap between groups of one assignment,
  ``sum_{g > g'} <q_g, q_g'> / (d (G - 1) / (2G))`` (= 1 for uniform, 0 for disjoint).
* :func:`balance_reg` R_E: ``sum_g (sum_i q_gi)^2 / (d^2 / G)`` (= 1 when balanced).
* :func:`splitkern.ops.group_weight_reg` R_W: weight mass between groups.
"""

from __future__ import annotations

import torch

from splitkern.ops.group_weight_reg import group_weight_reg

__all__ = ["balance_reg", "disjoint_reg", "group_weight_reg"]


def disjoint_reg(q: torch.Tensor) -> torch.Tensor:
    """R_D of a (G, d) assignment: ``sum_{g > g'} <q_g, q_g'> / (d (G - 1) / (2G))``."""
    groups, d = q.shape
    if groups < 2:
        raise ValueError(f"disjoint_reg needs G >= 2 groups, got q of shape {tuple(q.shape)}")
    gram = q @ q.t()
    pairs = (gram.sum() - gram.diagonal().sum()) / 2
    return pairs / (d * (groups - 1) / (2 * groups))


def balance_reg(q: torch.Tensor) -> torch.Tensor:
    """R_E of a (G, d) assignment: ``sum_g (sum_i q_gi)^2 / (d^2 / G)``."""
    groups, d = q.shape
    return q.sum(1).square().sum() / (d * d / groups)
