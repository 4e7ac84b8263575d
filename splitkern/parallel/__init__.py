"""Running the subtrees of a split model independently: devices, CUDA streams/graphs, processes.

* :class:`DeviceParallel`: several devices in one process.
* :class:`StreamParallel`: one GPU, one CUDA stream per subtree, optional CUDA graph.
* :class:`DistributedSplit`: ranks of torch.distributed (gloo/NCCL), e.g. under torchrun.
"""

from splitkern.parallel.distributed import DistributedSplit, balanced_placement, logit_exchange
from splitkern.parallel.local import DeviceParallel, StreamParallel
from splitkern.parallel.subtrees import Subtree, SubtreeSet, subtrees

__all__ = ["DeviceParallel", "DistributedSplit", "StreamParallel", "Subtree", "SubtreeSet", "balanced_placement",
           "logit_exchange", "subtrees"]
