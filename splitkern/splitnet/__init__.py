"""The SplitNet method: assignments, regularisers, tree specs, splitting a model."""

from splitkern.splitnet.assignments import GroupAssignment, merge_groups
from splitkern.splitnet.regularizers import balance_reg, disjoint_reg, group_weight_reg

__all__ = ["GroupAssignment", "balance_reg", "disjoint_reg", "group_weight_reg", "merge_groups"]
