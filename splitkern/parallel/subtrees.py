"""Subtrees of a split model: everything that depends on one lowest-level group.

In a split model every split layer is block-diagonal and the groups nest (a level's
group is the union of consecutive groups of the level above), so the channels of
lowest-level group h flow only into h's descendants: the model restricted to those
channels computes the logits of h's classes on its own. :func:`subtrees` cuts a model
returned by :func:`splitkern.splitnet.split` into those pieces; each keeps a copy of
the shared trunk (as in the paper's model-parallel setting).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from splitkern.nn import SplitConv2d, SplitLinear
from splitkern.splitnet.convert import ChannelPermute
from splitkern.splitnet.plan import is_split, split_record


@dataclass
class Subtree:
    """``module(x)`` returns the logits of ``classes`` (original class ids), in that order."""

    group: int
    module: nn.Module
    classes: torch.Tensor
    flops_per_sample: int


def _native_counts(split_model) -> dict[str, torch.Tensor]:
    hard = split_record(split_model).hard
    return {key: torch.bincount(ids) for key, ids in hard.items()}


def _native_groups(plan) -> dict[str, int]:
    """Groups each assignment was learned with: the level that reads it (the top level for the classes)."""
    natives = {role.in_key: plan.groups(role.level) for role in plan.layers.values()}
    natives[plan.output_key] = plan.groups(plan.levels[-1])
    return natives


def _key_range(counts: torch.Tensor, native_groups: int, lowest: int, h: int) -> tuple[int, int]:
    per = native_groups // lowest
    counts = torch.nn.functional.pad(counts, (0, native_groups - counts.numel()))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    return int(offsets[h * per]), int(offsets[(h + 1) * per])


class _Gathered(nn.Module):
    """``layer(x[:, index])``: the first split layer of a subtree, reading its features."""

    def __init__(self, index: torch.Tensor, layer: nn.Module):
        super().__init__()
        self.gather = ChannelPermute(index)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.gather(x))


def count_flops(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds x2 of the split layers, measured with forward hooks on one sample."""
    total = 0

    def hook(mod, args, out):
        nonlocal total
        spatial = out[0, 0].numel() if out.dim() == 4 else 1
        total += 2 * mod.weight.numel() * spatial

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (SplitConv2d, SplitLinear, nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module.eval()(example[:1])
    for handle in handles:
        handle.remove()
    return total


def subtrees(split_model, example: torch.Tensor | None = None) -> list[Subtree]:
    """One :class:`Subtree` per lowest-level group of a model from :func:`splitkern.splitnet.split`.

    ``example`` (an input batch) is used to count FLOPs per sample; without it the
    FLOP counts are 0. The union of the subtrees' logits equals the model's logits.
    """
    if not is_split(split_model):
        raise ValueError("subtrees() takes a model returned by splitkern.splitnet.split()")
    plan = split_record(split_model).plan
    lowest = plan.spec.groups[0]
    start = plan.start[0] if plan.start else None

    def resolve(name: str) -> str:  # split() wrapped the start module as Sequential(ChannelPermute, module)
        return f"{start}.1{name[len(start):]}" if start and name.startswith(start + ".") else name

    counts = _native_counts(split_model)
    natives = _native_groups(plan)
    result = []
    for h in range(lowest):
        part = copy.deepcopy(split_model)
        classes = None
        for name, role in plan.layers.items():
            name = resolve(name)
            layer = split_model.get_submodule(name)
            ratio = plan.groups(role.level) // lowest
            piece = layer.narrow_groups(h * ratio, (h + 1) * ratio)
            inputs, outputs = layer.group_slice(h * ratio, (h + 1) * ratio)
            if not layer.grouped_input:
                piece = _Gathered(layer.in_index[inputs], piece)
            if role.out_key == plan.output_key:
                classes = layer.out_index[outputs].cpu()
            part.set_submodule(name, piece)
        for name, key in plan.channels.items():
            lo, hi = _key_range(counts[key], natives[key], lowest, h)
            _slice_batchnorm(part.get_submodule(resolve(name)), lo, hi)
        if plan.start is not None:
            name, key = plan.start
            lo, hi = _key_range(counts[key], natives[key], lowest, h)
            permute = part.get_submodule(name)[0]
            permute.index = permute.index[lo:hi].clone()
        flops = count_flops(part, example) if example is not None else 0
        result.append(Subtree(h, part, classes, flops))
    return result


def _slice_batchnorm(bn: nn.BatchNorm2d, lo: int, hi: int) -> None:
    with torch.no_grad():
        bn.weight = nn.Parameter(bn.weight[lo:hi].clone())
        bn.bias = nn.Parameter(bn.bias[lo:hi].clone())
        bn.running_mean = bn.running_mean[lo:hi].clone()
        bn.running_var = bn.running_var[lo:hi].clone()
    bn.num_features = hi - lo


def start_step(split_model) -> int:
    """Index in ``split_model.pipeline()`` of the first step that belongs to the subtrees."""
    plan = split_record(split_model).plan
    name = plan.start[0] if plan.start else plan.gather_layer
    names = [n for n, _ in split_model.pipeline()]
    if name not in names:
        raise ValueError(f"the split starts at {name!r}, which is not a pipeline step ({names})")
    return names.index(name)


class _HeldElsewhere(nn.Module):
    """Stands in for a module this copy never runs (the trunk's, or another subtree's): no weights."""

    def __init__(self, name: str, holder: str):
        super().__init__()
        self.name, self.holder = name, holder

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"module {self.name!r} is not held by this copy; {self.holder} runs it")

    def extra_repr(self) -> str:
        return f"{self.name!r}, held by {self.holder}"


def _owns_state(module: nn.Module) -> bool:
    return next(module.parameters(False), None) is not None or next(module.buffers(False), None) is not None


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _drop_modules(model: nn.Module, keep, holder: str) -> None:
    """Replace each module that owns weights or buffers and that ``keep(name)`` rejects by a
    :class:`_HeldElsewhere` (children before parents, so every name still resolves)."""
    for name, module in reversed(list(model.named_modules())):
        if name and _owns_state(module) and not keep(name):
            model.set_submodule(name, _HeldElsewhere(name, holder))


def _subtree_prefixes(split_model, start: int) -> list[str]:
    """Module names that belong to the subtrees: the steps from ``start`` on and every split or sliced layer."""
    plan = split_record(split_model).plan
    steps = [name for name, _ in split_model.pipeline()[start:]]
    return steps + list(plan.layers) + list(plan.channels)


class SubtreeSet(nn.Module):
    """The shared trunk once, then any subset of subtrees: ``branch(i, trunk(x))`` gives subtree i's logits.

    Every weight is held once: ``trunk_model`` is a copy of the split model without the
    subtrees' modules, each of ``parts`` a subtree without the trunk's (what they do not
    run is a weightless :class:`_HeldElsewhere` that raises if called). ``split_model``
    itself is not kept or modified. :meth:`keep_only` drops the subtrees a process does
    not run.
    """

    def __init__(self, split_model, example: torch.Tensor | None = None):
        super().__init__()
        parts = subtrees(split_model, example)
        self.start = start_step(split_model)
        prefixes = _subtree_prefixes(split_model, self.start)
        self.trunk_model = copy.deepcopy(split_model)
        _drop_modules(self.trunk_model, lambda name: not _under(name, prefixes), "a subtree (SubtreeSet.branch)")
        for part in parts:
            _drop_modules(part.module, lambda name: _under(name, prefixes), "the trunk (SubtreeSet.trunk)")
        self.parts = nn.ModuleList([p.module for p in parts])
        self.classes = [p.classes for p in parts]
        self.costs = [p.flops_per_sample for p in parts]
        self.num_classes = sum(len(c) for c in self.classes)
        self._classes_by_device: dict = {}

    def keep_only(self, indices) -> None:
        """Release the weights of every subtree not in ``indices`` (``branch`` on one of them raises)."""
        keep = set(indices)
        for i in range(len(self.parts)):
            if i not in keep:
                self.parts[i] = _HeldElsewhere(f"subtree {i}", "another process or device")

    def classes_on(self, device) -> list[torch.Tensor]:
        """``classes`` copied to ``device`` once: a host-to-device copy per forward would block (and is
        forbidden inside CUDA graph capture)."""
        device = torch.device(device)
        if device not in self._classes_by_device:
            self._classes_by_device[device] = [c.to(device) for c in self.classes]
        return self._classes_by_device[device]

    def trunk(self, x):
        for _, step in self.trunk_model.pipeline()[:self.start]:
            x = step(x)
        return x

    def branch(self, i: int, features):
        part = self.parts[i]
        if isinstance(part, _HeldElsewhere):
            raise RuntimeError(f"subtree {i} is not held by this process (SubtreeSet.keep_only released it)")
        for _, step in part.pipeline()[self.start:]:
            features = step(features)
        return features
