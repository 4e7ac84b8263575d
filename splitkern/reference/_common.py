"""Helpers both pure-PyTorch ops use: feature/channel gathers and scatters, the equal-groups test.

Dim 1 holds the features of an (M, K) matrix and the channels of an (N, C, H, W) image alike,
so the same gather/scatter serves :mod:`splitkern.reference.block_diag_mm` and
:mod:`splitkern.reference.grouped_conv`.
"""

from __future__ import annotations

import torch

from splitkern.layout import BlockLayout


def gather_columns(t: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``t[:, index]`` (dim 1), or ``t`` itself when ``index`` is None."""
    return t if index is None else t.index_select(1, index)


def scatter_columns(t: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``out[:, index[j]] = t[:, j]`` for a permutation ``index``."""
    return t if index is None else torch.zeros_like(t).index_copy(1, index, t)


def equal_groups(layout: BlockLayout) -> tuple[int, int, int] | None:
    """(G, k, n) when every group has k inputs and n outputs (batched GEMMs apply)."""
    if len(set(layout.in_sizes)) == 1 and len(set(layout.out_sizes)) == 1 and layout.weight_numel:
        return layout.groups, layout.in_sizes[0], layout.out_sizes[0]
    return None
