"""The dense equivalent of a packed block-diagonal weight (used by the layers and the tests' oracle)."""

from __future__ import annotations

import torch

from splitkern.layout import BlockLayout


def masked_dense_weight(weight, layout: BlockLayout, in_index=None, out_index=None, kernel_size=()):
    """The equivalent dense ``(N, K, *kernel_size)`` weight in the caller's feature order.

    ``weight`` is packed as :class:`splitkern.layout.BlockLayout` describes (block g holds
    ``n_g * k_g * prod(kernel_size)`` elements); ``in_index``/``out_index`` are the optional
    int64 permutations of :func:`splitkern.ops.block_diag_mm`. ``F.linear(x, masked_dense_weight(...),
    bias_in_output_order)`` equals :func:`splitkern.ops.block_diag_mm` (``F.conv2d`` likewise for a
    conv ``kernel_size``); entries between different groups are zero.
    """
    dense = weight.new_zeros(layout.out_features, layout.in_features, *kernel_size)
    for g in range(layout.groups):
        dense[layout.out_offsets[g]:layout.out_offsets[g + 1],
              layout.in_offsets[g]:layout.in_offsets[g + 1]] = layout.block(weight, g, kernel_size)
    if in_index is not None:
        dense = torch.zeros_like(dense).index_copy(1, in_index, dense)
    if out_index is not None:
        dense = torch.zeros_like(dense).index_copy(0, out_index, dense)
    return dense
