"""From a model trained with assignments to the physically split model (docs/design.md §1.4).

* :func:`regularization`: gamma1 mean(R_D) + gamma2 R_W + gamma3 mean(R_E) of a split-aware model, R_W the
  official code's value-weighted mean over the split layers (:func:`regularization_terms`: the three
  terms unweighted; :func:`weighted_layer_mean`: that mean).
* :func:`recalibrate_batchnorm`: fresh BN running statistics from a no-grad pass (right after the split).
* :func:`hard_groups`: argmax group ids of an assignment at a split level. In a tree the
  lower level's ids are the upper ids' parents (``id // ratio``), so one channel order
  (sorted by the upper ids) is grouped for both levels.
* :func:`masked_dense`: the dense model with every inter-group weight zeroed.
* :func:`split`: the model rebuilt from SplitLinear/SplitConv2d in grouped layout; it
  permutes activations once where the split starts and un-permutes the logits. What it was
  split from is ``model.split_record`` (a :class:`~splitkern.splitnet.plan.SplitRecord`; read it
  with :func:`~splitkern.splitnet.plan.split_record`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
import copy

import torch
from torch import nn

from splitkern._conv import memory_format
from splitkern.nn import SplitConv2d, SplitLinear
from splitkern.ops._checks import is_identity
from splitkern.splitnet.blocks import block_mask, hard_groups
from splitkern.splitnet.plan import SplitRecord, plan_of
from splitkern.splitnet.regularizers import balance_reg, disjoint_reg, group_weight_reg

DEFAULT_GAMMAS = (1.0, 1.0, 10.0)


def level_probs(model, key: str, level: str) -> torch.Tensor:
    """(G_level, d) probabilities of assignment ``key`` at ``level`` (merged in a tree)."""
    return model.assignments[key].probs(plan_of(model).groups(level))


def group_sizes(model) -> dict[str, list[int]]:
    """Features per hard group of every assignment of a split-aware model.

    A zero is a group whose subnetwork has no channels at that layer: after the split,
    what lies below it (down to its classes' logits) sees only biases.
    """
    return {key: torch.bincount(a.hard().cpu(), minlength=a.groups).tolist() for key, a in model.assignments.items()}


def empty_groups(model) -> list[str]:
    """``"key[g]"`` for every empty hard group (see :func:`group_sizes`)."""
    return [f"{key}[{g}]" for key, sizes in group_sizes(model).items() for g, size in enumerate(sizes) if size == 0]


def weighted_layer_mean(values: torch.Tensor) -> torch.Tensor:
    """``sum_l sg(r_l) r_l / sum_l sg(r_l)`` of per-layer values ``r`` (sg: no gradient), 0 when all are 0.

    The official SplitNet code's ``weighted_group_loss``: a mean over the split layers in which
    each layer counts in proportion to its own value, so its gradient is ``sum_l r_l grad r_l / sum r``.
    """
    weights = values.detach()
    total = weights.sum()
    return (weights * values).sum() / torch.where(total > 0, total, torch.ones_like(total))


def regularization_terms(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unweighted ``{"R_D": mean(R_D), "R_W": weighted_layer_mean(R_W), "R_E": mean(R_E)}`` of a
    split-aware model (R_D and R_E over its assignments, R_W over its split layers)."""
    plan = plan_of(model)
    modules = dict(model.named_modules())
    r_w = torch.stack([group_weight_reg(modules[name].weight, level_probs(model, role.in_key, role.level),
                                        level_probs(model, role.out_key, role.level))
                       for name, role in plan.layers.items()])
    probs = [a.probs() for a in model.assignments.values()]
    return {"R_D": torch.stack([disjoint_reg(p) for p in probs]).mean(), "R_W": weighted_layer_mean(r_w),
            "R_E": torch.stack([balance_reg(p) for p in probs]).mean()}


def regularization(model: nn.Module, gammas: Sequence[float] = DEFAULT_GAMMAS) -> torch.Tensor:
    """``gamma1 mean(R_D) + gamma2 R_W + gamma3 mean(R_E)`` (docs/design.md §1.2) of a split-aware model,
    R_W the value-weighted mean over split layers (:func:`weighted_layer_mean`)."""
    return weigh_terms(regularization_terms(model), gammas)


def weigh_terms(terms: dict[str, torch.Tensor], gammas: Sequence[float] = DEFAULT_GAMMAS) -> torch.Tensor:
    """``gamma1 R_D + gamma2 R_W + gamma3 R_E`` of :func:`regularization_terms`' values."""
    return gammas[0] * terms["R_D"] + gammas[1] * terms["R_W"] + gammas[2] * terms["R_E"]


def channel_orders(model) -> dict[str, torch.Tensor]:
    """Per assignment key, the permutation that sorts its features by (native) hard group."""
    return {key: torch.sort(a.hard().cpu(), stable=True).indices for key, a in model.assignments.items()}


@torch.no_grad()
def masked_dense(model: nn.Module) -> nn.Module:
    """A copy of the model with every weight between different hard groups set to zero."""
    dense = copy.deepcopy(model)
    for name in plan_of(model).layers:
        weight = dense.get_submodule(name).weight
        weight.mul_(block_mask(model, name, weight.dtype))
    return dense


def _note_permute_identity(module: "ChannelPermute", incompatible_keys) -> None:
    """A module-level hook (a lambda would make the module unpicklable)."""
    module._note_identity()


class ChannelPermute(nn.Module):
    """``x[:, index]``: puts activations into grouped order where the split starts (nothing when ``index``
    is the identity: :func:`split` folded the permutation into the layers before it).

    Whether ``index`` is ``0..len-1`` is decided when it is set or loaded, not per forward (no device
    sync; a plain bool for torch.compile). An identity prefix shorter than the input's channels (a
    subtree's slice) still selects: the forward skips only when it covers every channel.
    """

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index.clone())
        self.register_load_state_dict_post_hook(_note_permute_identity)
        self._note_identity()

    def __setstate__(self, state):  # a module pickled before the flag existed
        super().__setstate__(state)
        if "_identity" not in self.__dict__:
            self._note_identity()

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "index":  # subtrees() assigns a slice
            self._note_identity()

    def _note_identity(self) -> None:
        self._identity = is_identity(self.index)

    @property
    def is_identity(self) -> bool:
        """Whether ``index`` is ``0..len(index)-1``."""
        return self._identity

    def forward(self, x):
        if self._identity and x.shape[1] == self.index.numel():
            return x
        return x.index_select(1, self.index).contiguous(memory_format=memory_format(x))  # keep channels_last


def _split_layer(module, in_ids, out_ids, perm_in, perm_out, groups, *, gather: bool, scatter: bool):
    """A grouped-layout split layer from a dense one: blocks in the order ``perm_in``/``perm_out``; it reads
    original-order inputs only where it ``gather``s and writes original order only where it ``scatter``s."""
    cls = SplitLinear if isinstance(module, nn.Linear) else SplitConv2d
    return cls.from_dense(module, in_ids, out_ids, num_groups=groups, in_order=perm_in, out_order=perm_out,
                          grouped_input=not gather, grouped_output=not scatter)


@torch.no_grad()
def permute_stream(model: nn.Module, stream, order: torch.Tensor) -> None:
    """Reorder the channels of the activation that ``stream`` (:attr:`SplitPlan.start_stream`) writes and
    reads to ``order`` (position j gets channel ``order[j]``): the function of the model is unchanged
    except that this activation comes out as ``x[:, order]``."""
    for name, role in stream:
        module = model.get_submodule(name)
        index = order.to(module.weight.device)
        if role == "out":
            tensors, dim = (module.weight, module.bias), 0
        elif role == "in":
            tensors, dim = (module.weight,), 1
        elif role == "channels":
            tensors, dim = (module.weight, module.bias, module.running_mean, module.running_var), 0
        else:
            raise ValueError(f"start_stream: unknown role {role!r} of {name!r} (out, in or channels)")
        for tensor in tensors:
            if tensor is not None:
                tensor.copy_(tensor.index_select(dim, index))


@torch.no_grad()
def split(model: nn.Module, *, fold_permutation: bool = True, fold_batchnorm: bool = True) -> nn.Module:
    """The physically split model: SplitConv2d/SplitLinear blocks, BN permuted, no assignments.

    In eval mode it computes what :func:`masked_dense` computes (to fp32 rounding).
    ``fold_permutation``: where the model declares the trunk layers that produce the activation
    entering the split (:attr:`SplitPlan.start_stream`), permute their channels so that activation
    comes out in grouped order (no permute per forward); the start's ``ChannelPermute`` then holds
    the identity. Otherwise it permutes the activation on every forward.
    ``fold_batchnorm``: link each split layer (and each plain ``nn.Conv2d`` / ``nn.Linear``) whose output only
    feeds a BatchNorm to it, so that no-grad eval calls run the BatchNorm inside the layer's weights
    (:func:`splitkern.nn.fold.fold_batchnorm`; training and autograd are unaffected).
    """
    plan = plan_of(model)
    orders = channel_orders(model)
    result = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name, role in plan.layers.items():
        groups = plan.groups(role.level)
        in_ids = hard_groups(model, role.in_key, role.level).cpu()
        out_ids = hard_groups(model, role.out_key, role.level).cpu()
        layer = _split_layer(modules[name], in_ids, out_ids, orders[role.in_key], orders[role.out_key], groups,
                             gather=name == plan.gather_layer,
                             scatter=role.out_key == plan.output_key)
        result.set_submodule(name, layer)
    for name, key in plan.channels.items():
        bn = result.get_submodule(name)
        index = orders[key].to(bn.weight.device)
        for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            tensor.copy_(tensor[index])
    if plan.start is not None:
        name, key = plan.start
        order = orders[key]
        if fold_permutation and plan.start_stream:
            permute_stream(result, plan.start_stream, order)
            order = torch.arange(order.numel())
        result.set_submodule(name, nn.Sequential(ChannelPermute(order), result.get_submodule(name)))
    result.split_record = SplitRecord(model=type(model).__name__, config=dict(getattr(model, "config", {})),
                                      spec=str(plan.spec),
                                      hard={key: a.hard().cpu() for key, a in model.assignments.items()},
                                      plan=plan)
    del result.assignments
    result.split_plan = None  # no assignments to train any more
    for bn in result.modules():  # stage 2 fine-tunes everything
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.requires_grad_(True)
    if fold_batchnorm:
        from splitkern.nn.fold import fold_batchnorm as link_batchnorms

        link_batchnorms(result)
    return result


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Iterable[torch.Tensor],
                          autocast=contextlib.nullcontext) -> nn.Module:
    """Recompute every BatchNorm's running statistics as the plain average over ``images``.

    ``images`` is an iterable of input batches (training data, no augmentation needed). The
    forward runs with BN in training mode and everything else (dropout) in eval mode, without
    gradients; weights are not touched. Right after a split the running statistics are those of
    the unsplit network, so an evaluation before any fine-tuning would measure stale statistics.
    Restores the model's train/eval mode and each BN's momentum.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts equally
        bn.train()
    try:
        seen = 0
        for x in images:
            with autocast():
                model(x)
            seen += 1
        if not seen:
            raise ValueError("recalibrate_batchnorm: images yielded no batch")
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    return model


def count_parameters(model: nn.Module, *, include_assignments: bool = False) -> int:
    """Weights of conv/linear layers (BN and assignments excluded, docs/design.md §1.6)."""
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, SplitConv2d, SplitLinear)):
            total += module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
    if include_assignments and hasattr(model, "assignments"):
        total += sum(p.numel() for p in model.assignments.parameters())
    return total
