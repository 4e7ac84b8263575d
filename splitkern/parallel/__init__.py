"""Running the subtrees of a split model independently (processes and nodes; see README)."""

from splitkern.parallel.distributed import DistributedSplit, balanced_placement
from splitkern.parallel.subtrees import Subtree, subtrees

__all__ = ["DistributedSplit", "Subtree", "balanced_placement", "subtrees"]
