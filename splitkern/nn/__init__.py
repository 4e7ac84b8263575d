"""Layers built on splitkern's ops."""

from splitkern.nn.split_linear import SplitLinear

__all__ = ["SplitLinear"]
