"""Subtrees across processes and nodes with torch.distributed (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import torch
from torch import nn

from splitkern.parallel.subtrees import SubtreeSet


def balanced_placement(costs: list[float], workers: int) -> list[int]:
    """Worker of each subtree: largest cost first onto the least loaded worker (LPT)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    load = [0.0] * workers
    placement = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        w = min(range(workers), key=lambda w: load[w])
        placement[i] = w
        load[w] += costs[i]
    return placement


def check_placement(placement, subtrees_count: int, workers: int) -> list[int]:
    placement = list(placement)
    if len(placement) != subtrees_count:
        raise ValueError(f"placement names {len(placement)} subtrees, the model has {subtrees_count}")
    bad = [p for p in placement if not isinstance(p, int) or not 0 <= p < workers]
    if bad:
        raise ValueError(f"placement entries must be worker ids in [0, {workers}), got {bad}")
    return placement


class DistributedSplit(nn.Module):
    """A split model whose subtrees run on different ranks; every rank returns the full logits.

    Every rank holds the shared trunk (duplicated, as in the paper) and only the subtrees
    the placement gives it (default: balanced by FLOPs); it computes its classes' logits and an
    ``all_reduce`` (sum; the other ranks contribute exact zeros) assembles all of them in
    class order, identical to the single-process model. With more ranks than subtrees the
    extra ranks hold no subtree and contribute zeros.

    Args:
        split_model: a model from :func:`splitkern.splitnet.split` (same weights on every rank).
        group: the process group (default: the world).
        placement: rank of each subtree (``len == number of lowest-level groups``), optional.
        example: an input batch used to count FLOPs for the default placement.
    """

    def __init__(self, split_model, group=None, placement=None, example: torch.Tensor | None = None):
        super().__init__()
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedSplit needs torch.distributed initialised "
                               "(torch.distributed.init_process_group, e.g. under torchrun)")
        self.group = group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        self.set = SubtreeSet(split_model, example)
        if placement is None:
            placement = balanced_placement(self.set.costs, world)
        self.placement = check_placement(placement, len(self.set.parts), world)
        self.mine = [i for i, r in enumerate(self.placement) if r == rank]
        self.set.keep_only(self.mine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.new_zeros(x.shape[0], self.set.num_classes)
        if self.mine:  # an idle rank (more ranks than subtrees) contributes zeros
            features = self.set.trunk(x)
            classes = self.set.classes_on(out.device)
            for i in self.mine:
                out[:, classes[i]] = self.set.branch(i, features)
        dist.all_reduce(out, group=self.group)
        return out
