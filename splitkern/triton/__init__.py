"""Triton kernels only: no autograd, no validation (see :mod:`splitkern.ops`)."""

from __future__ import annotations

import torch

from splitkern.triton import block_diag_mm, grouped_conv
from splitkern.triton._common import INTERPRETED

__all__ = ["INTERPRETED", "prepare_layout", "table_shapes"]


def table_shapes() -> tuple[set[int], set[tuple[int, int]]]:
    """Column-tile widths and (rows, columns) weight-block tiles of every config a launch can pick (the conv's
    narrowed to any group width, :func:`splitkern.triton.grouped_conv.conv_config`)."""
    widths = {cfg.block_n for table in block_diag_mm.FORWARD_CONFIGS.values() for cfg in table.values()}
    for cfg in grouped_conv.CONV_CONFIGS.values():
        widths.update(grouped_conv.tile_widths(cfg.block_n))
    blocks = {(cfg.block_n, cfg.block_k) for cfg in block_diag_mm.WEIGHT_GRAD_CONFIGS.values()}
    for cfg in grouped_conv.CONV_WEIGHT_GRAD_CONFIGS.values():
        blocks.update((cfg.block_n, width) for width in grouped_conv.tile_widths(cfg.block_k))
    return widths, blocks


def prepare_layout(layout, device: torch.device, taps: int = 1) -> None:
    """Every device table of ``layout`` that a launch on ``device`` may read, built now (see
    :func:`splitkern.backend.prepare_layout`; ``taps`` > 1: a convolution's weight re-packing indices too)."""
    widths, blocks = table_shapes()
    layout.offsets(device)
    for width in sorted(widths):
        for over in ("in", "out"):
            layout.column_tiles(device, width, over)
    for block_n, block_k in sorted(blocks):
        layout.block_tiles(device, block_n, block_k)
    if taps > 1:
        for order in ("forward", "grad_input"):
            layout.tap_permutation(device, taps, order)
