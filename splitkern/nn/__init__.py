"""Layers built on splitkern's ops, how they run without autograd (:mod:`splitkern.nn.strategy`) and the
BatchNorm they fold for inference (:mod:`splitkern.nn.fold`)."""

from splitkern.nn.fold import (FoldableBatchNorm1d, FoldableBatchNorm2d, FoldingConv2d, FoldingLinear, fold_batchnorm,
                               folded_batchnorms, unfold_batchnorm)
from splitkern.nn.split_conv2d import SplitConv2d
from splitkern.nn.split_linear import SplitLinear
from splitkern.nn.strategy import STRATEGIES, plan_strategies, set_strategy, strategies

__all__ = ["STRATEGIES", "FoldableBatchNorm1d", "FoldableBatchNorm2d", "FoldingConv2d", "FoldingLinear", "SplitConv2d",
           "SplitLinear", "fold_batchnorm", "folded_batchnorms", "plan_strategies", "set_strategy", "strategies",
           "unfold_batchnorm"]
