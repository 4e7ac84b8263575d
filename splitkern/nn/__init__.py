"""Layers built on splitkern's ops."""

from splitkern.nn.split_conv2d import SplitConv2d
from splitkern.nn.split_linear import SplitLinear

__all__ = ["SplitConv2d", "SplitLinear"]
