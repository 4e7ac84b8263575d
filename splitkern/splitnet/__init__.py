"""The SplitNet method: assignments, regularisers, split specs, splitting a model."""

from splitkern.splitnet.assignments import GroupAssignment, merge_groups
from splitkern.splitnet.convert import (count_parameters, hard_groups, masked_dense, regularization,
                                        split)
from splitkern.splitnet.plan import SplitRecord, is_split, split_record
from splitkern.splitnet.regularizers import balance_reg, disjoint_reg, group_weight_reg
from splitkern.splitnet.spec import SplitSpec

__all__ = ["GroupAssignment", "SplitRecord", "SplitSpec", "balance_reg", "count_parameters", "disjoint_reg",
           "group_weight_reg", "hard_groups", "is_split", "masked_dense", "merge_groups", "regularization", "split",
           "split_record"]
