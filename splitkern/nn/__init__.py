"""Layers built on splitkern's ops, and how they run without autograd (:mod:`splitkern.nn.strategy`)."""

from splitkern.nn.split_conv2d import SplitConv2d
from splitkern.nn.split_linear import SplitLinear
from splitkern.nn.strategy import STRATEGIES, plan_strategies, set_strategy, strategies

__all__ = ["STRATEGIES", "SplitConv2d", "SplitLinear", "plan_strategies", "set_strategy", "strategies"]
