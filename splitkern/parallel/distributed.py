"""Subtrees across processes and nodes with torch.distributed (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import contextlib
import os

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


def _widest_rank(class_counts: list[int], placement: list[int], workers: int) -> int:
    """The most classes any rank holds: the width of every rank's block in the all-gather."""
    return max(sum(n for n, w in zip(class_counts, placement) if w == k) for k in range(workers))


def logit_exchange(class_counts: list[int], placement: list[int], workers: int) -> tuple[str, int]:
    """How DistributedSplit assembles the logits, and how many values each rank receives per sample.

    ``"all_gather"`` of each rank's block of logits, zero-padded to the widest rank's
    ``width`` classes (``(workers - 1) * width`` values), or, when that is not less, a ring
    ``"all_reduce"`` of the full class-ordered logits (``2 (workers - 1) / workers * classes``:
    what an idle rank or one rank holding most classes makes cheaper).
    """
    gather = (workers - 1) * _widest_rank(class_counts, placement, workers)
    reduce = 2 * (workers - 1) * sum(class_counts) / workers
    return ("all_gather", gather) if gather < reduce else ("all_reduce", reduce)


class DistributedSplit(nn.Module):
    """A split model whose subtrees run on different ranks; every rank returns the full logits.

    Every rank holds the shared trunk (duplicated, as in the paper) and only the subtrees
    the placement gives it (default: balanced by FLOPs) and computes its classes' logits. The
    cheaper of two exact collectives (:func:`logit_exchange`) assembles them in class order,
    identical to the single-process model: an ``all_gather`` of each rank's ``[batch, width]``
    block (zero-padded to the widest rank) followed by one column gather, about half the bytes
    of the alternative, an ``all_reduce`` (sum) of the full logits where the other ranks hold
    exact zeros. With more ranks than subtrees the extra ranks hold no subtree and send zeros.

    Import splitkern before ``init_process_group``: torch's custom ops otherwise pin the group on
    their first call, and it outlives ``destroy_process_group`` (see ``splitkern/__init__.py``).

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
        self.world = world
        self.exchange, _ = logit_exchange([len(c) for c in self.set.classes], self.placement, world)
        self.width, self._gather_index = _gather_layout(self.set.classes, self.placement, world)
        self._gather_index_by_device: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self.exchange == "all_reduce":
            out = x.new_zeros(x.shape[0], self.set.num_classes)
            classes = self.set.classes_on(out.device)
            for i, logits in self._my_logits(x):
                out[:, classes[i]] = logits
            dist.all_reduce(out, group=self.group)
            return out
        block = x.new_zeros(x.shape[0], self.width)
        column = 0
        for _, logits in self._my_logits(x):
            block[:, column:column + logits.shape[1]] = logits
            column += logits.shape[1]
        gathered = x.new_empty(self.world, *block.shape)
        dist.all_gather(list(gathered.unbind(0)), block, group=self.group)
        flat = gathered.permute(1, 0, 2).reshape(block.shape[0], self.world * self.width)
        return flat.index_select(1, self._gather_index_on(flat.device))

    def _my_logits(self, x):
        """``(subtree, logits)`` for this rank's subtrees; nothing on an idle rank (it sends zeros)."""
        if not self.mine:
            return
        features = self.set.trunk(x)
        for i in self.mine:
            yield i, self.set.branch(i, features)

    def _gather_index_on(self, device) -> torch.Tensor:
        device = torch.device(device)
        if device not in self._gather_index_by_device:
            self._gather_index_by_device[device] = self._gather_index.to(device)
        return self._gather_index_by_device[device]


def _gather_layout(classes: list[torch.Tensor], placement: list[int], world: int) -> tuple[int, torch.Tensor]:
    """Block width, and for every class its column in the gathered ``[batch, world * width]`` logits.

    Rank ``r``'s block holds the classes of its subtrees, in subtree order, from column 0.
    """
    width = _widest_rank([len(c) for c in classes], placement, world)
    per_rank = [[c for i, c in enumerate(classes) if placement[i] == r] for r in range(world)]
    index = torch.empty(sum(len(c) for c in classes), dtype=torch.long)
    for r, held in enumerate(per_rank):
        column = r * width
        for c in held:
            index[c] = torch.arange(column, column + len(c))
            column += len(c)
    return width, index


@contextlib.contextmanager
def process_group(device):
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) with no process group yet: one for the block (gloo on
    CPU, NCCL on CUDA), torn down after a barrier (a rank leaving early aborts gloo's peers).
    Otherwise nothing: one process, or a caller's group used as it is. ``splitkern train`` and
    ``splitkern infer`` run inside it."""
    from splitkern.backend import check_device, rank_device

    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    device = check_device(rank_device(device, os.environ), "device")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
        dist.barrier()  # no rank tears down while another still needs the group
    finally:
        dist.destroy_process_group()
