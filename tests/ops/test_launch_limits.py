"""Launches past CUDA's grid limits or the kernels' int32 pixel index raise a ValueError naming the op.

Zero-stride (expanded) tensors give the launch helpers real shapes without allocating them.
"""

import pytest
import torch

from splitkern.layout import block_layout
from splitkern.triton.block_diag_mm import MMConfig, checked_grid, grouped_mm_launch
from splitkern.triton.grouped_conv import _geometry, conv_grad_weight_launch, conv_launch, conv_config


def huge(*shape):
    return torch.zeros((1,) * len(shape)).expand(*shape)


def test_checked_grid_names_the_axis_and_the_op():
    assert checked_grid((2**31 - 1, 65535), "op") == (2**31 - 1, 65535)
    with pytest.raises(ValueError, match="block_diag_mm: 65,536 program tiles on grid axis 1"):
        checked_grid((1, 65536), "block_diag_mm")
    with pytest.raises(ValueError, match="axis 0"):
        checked_grid((2**31, 1), "op")


def test_block_diag_mm_with_too_many_column_tiles_raises():
    layout = block_layout((1,), (65536 * 16,))  # one group, 65536 column tiles of 16
    a, c = huge(4, 1), huge(4, layout.out_features)
    with pytest.raises(ValueError, match="block_diag_mm.*grid axis 1"):
        grouped_mm_launch(a, huge(layout.weight_numel), None, c, layout, False, None, None, MMConfig(16, 16, 16, 4, 1))


def test_grouped_conv_with_int32_overflowing_pixels_raises():
    hw = (2**12, 2**12)
    layout = block_layout((2, 2), (2, 2))
    n = 2**8  # 256 x 4096 x 4096 = 2**32 pixels
    x, y = huge(n, 4, *hw), huge(n, 4, *hw)
    geometry = _geometry((3, 3), (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="grouped_conv: .* pixels.*int32"):
        conv_launch(x, huge(layout.weight_numel * 9), None, y, layout, geometry, None, None, conv_config(x.dtype))
    with pytest.raises(ValueError, match="int32"):
        conv_grad_weight_launch(y, x, huge(layout.weight_numel * 9), layout, geometry, None, None,
                                conv_config(x.dtype))
