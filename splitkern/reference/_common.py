"""Helpers both pure-PyTorch ops use: feature/channel gathers and scatters.

Dim 1 holds the features of an (M, K) matrix and the channels of an (N, C, H, W) image alike,
so the same gather/scatter serves :mod:`splitkern.reference.block_diag_mm` and
:mod:`splitkern.reference.grouped_conv`.
"""

from __future__ import annotations

import torch




def gather_columns(t: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``t[:, index]`` (dim 1), or ``t`` itself when ``index`` is None."""
    return t if index is None else t.index_select(1, index)


def scatter_columns(t: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``out[:, index[j]] = t[:, j]`` for a permutation ``index``."""
    return t if index is None else torch.zeros_like(t).index_copy(1, index, t)
