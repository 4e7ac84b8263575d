"""The block structure of a split-aware model's weights: how far it is from the split, and an anneal to it.

* :func:`block_mask`: B of one split layer, ``B[o, i] = 1`` where output feature ``o`` and input feature
  ``i`` are in the same hard group (what the split keeps), shaped to broadcast over the weight.
* :func:`off_block_fraction` / :func:`off_block_fractions`: ``||(1 - B) * W||^2 / ||W||^2`` of a weight
  / of every split layer's weight as the forward uses it (under a :class:`BlockAnneal`, the scaled one):
  the energy share the split will drop.
* :func:`hard_ids` / :func:`moved`: the hard groups of every assignment, and how many classes and
  features changed group between two such snapshots.
* :class:`BlockAnneal`: makes the forward use ``W * (B + lam (1 - B))`` in every split layer, ``lam``
  going linearly from 1 to 0 over a run of optimizer steps. At ``lam = 0`` the model computes what
  :func:`~splitkern.splitnet.convert.split` will compute, so the split changes only BN statistics.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from splitkern.splitnet.plan import plan_of


def hard_groups(model, key: str, level: str) -> torch.Tensor:
    """(d,) int64 hard group ids of assignment ``key`` at tree ``level`` (a lower level merges groups)."""
    assignment = model.assignments[key]
    return assignment.hard() // (assignment.groups // plan_of(model).groups(level))


def block_mask(model, name: str, dtype=torch.float32) -> torch.Tensor:
    """B of split layer ``name`` under the model's current hard groups.

    Returns ``(D_out, D_in)`` for a linear, ``(D_out, D_in, 1, 1)`` for a conv (broadcasts over the
    weight), ``dtype`` on the weight's device; 1 where the output's and the input's groups agree.
    """
    role = plan_of(model).layers[name]
    weight = weight_parameter(model.get_submodule(name))
    out_ids = hard_groups(model, role.out_key, role.level).to(weight.device)
    in_ids = hard_groups(model, role.in_key, role.level).to(weight.device)
    mask = (out_ids[:, None] == in_ids[None, :]).to(dtype)
    return mask.view(*mask.shape, *(1,) * (weight.dim() - 2))


def off_block_fraction(weight: torch.Tensor, mask: torch.Tensor) -> float:
    """``||(1 - mask) * weight||^2 / ||weight||^2`` (0 for an all-zero weight).

    ``weight``: (D_out, D_in) or (D_out, D_in, kh, kw); ``mask``: 0/1, broadcastable to it.
    """
    if mask.dim() != weight.dim() or any(m not in (1, w) for m, w in zip(mask.shape, weight.shape)):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast over weight {tuple(weight.shape)}")
    w2 = weight.detach().float().square()
    total = w2.sum()
    if total == 0:
        return 0.0
    return float((w2 * (1 - mask.float())).sum() / total)


@torch.no_grad()
def off_block_fractions(model) -> dict[str, float]:
    """Per split layer (module name), :func:`off_block_fraction` of the weight the forward uses."""
    return {name: off_block_fraction(model.get_submodule(name).weight, block_mask(model, name))
            for name in plan_of(model).layers}


def mean_fraction(fractions: dict[str, float]) -> float:
    """The plain mean over layers of :func:`off_block_fractions`' values."""
    if not fractions:
        raise ValueError("fractions is empty: a split-aware model has at least one split layer")
    return sum(fractions.values()) / len(fractions)


@torch.no_grad()
def hard_ids(model) -> dict[str, torch.Tensor]:
    """Per assignment key, its (d,) native hard group ids on the CPU."""
    return {key: a.hard().cpu() for key, a in model.assignments.items()}


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], class_key: str) -> tuple[int, int]:
    """``(classes, features)`` that changed group from ``before`` to ``after`` (two :func:`hard_ids`):
    the items of ``class_key`` (the classes), and those of every other assignment together."""
    if set(before) != set(after) or class_key not in before:
        raise ValueError(f"before and after must hold the same assignment keys, {class_key!r} among them; got "
                         f"{sorted(before)} and {sorted(after)}")
    changed = {key: int((before[key] != after[key]).sum()) for key in before}
    return changed[class_key], sum(n for key, n in changed.items() if key != class_key)


class OffBlockScale(nn.Module):
    """A parametrization ``W -> W * (mask + lam (1 - mask))``; ``mask`` and ``lam`` are buffers (saved)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.clone())
        self.register_buffer("lam", torch.ones((), dtype=mask.dtype, device=mask.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (self.mask + self.lam * (1 - self.mask)).to(weight.dtype)


def weight_parameter(module: nn.Module) -> torch.Tensor:
    """The weight parameter an optimizer sees: ``module.weight``, or its stored original when parametrized."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


ANNEAL_SHAPES = ("linear", "quadratic")
QUADRATIC_ZERO_AT = 0.75  # the quadratic anneal's lam reaches 0 this far through the anneal, then stays there


class BlockAnneal:
    """From the dense forward to the split one over ``steps`` optimizer steps starting at global ``first_step``.

    Registers an :class:`OffBlockScale` on every split layer's weight with the block mask of the model's
    hard groups now (freeze the assignments while it runs). :meth:`at_step` sets ``lam`` by ``shape``, with
    ``t = (step - first_step + 1) / steps`` the share of the anneal done after the step:

    * ``"linear"``: ``lam = 1 - t``; the last step (``first_step + steps - 1``) uses ``lam = 0``;
    * ``"quadratic"``: ``lam = (1 - t / 0.75)**2`` until ``t = 0.75``, then 0: most of the off-block
      weight goes early, while the learning rate is higher, and the last quarter trains the split
      model's exact function (its BN statistics included) before the cut.

    ``lam`` is clamped to [0, 1]. :meth:`finish` puts ``lam = 0`` and removes the parametrizations,
    leaving ``W * B`` as the layers' weights (what the split keeps).
    """

    def __init__(self, model, first_step: int, steps: int, shape: str = "linear"):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if first_step < 0:
            raise ValueError(f"first_step must be >= 0, got {first_step}")
        if shape not in ANNEAL_SHAPES:
            raise ValueError(f"shape must be one of {ANNEAL_SHAPES}, got {shape!r}")
        self.model, self.first_step, self.steps, self.shape = model, first_step, steps, shape
        self.layers = list(plan_of(model).layers)
        for name in self.layers:
            module = model.get_submodule(name)
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"model: split layer {name!r} is already parametrized (an anneal is running)")
            parametrize.register_parametrization(module, "weight", OffBlockScale(block_mask(model, name)))

    def lam_at(self, step: int) -> float:
        """The ``lam`` used at global optimizer ``step``."""
        done = (step - self.first_step + 1) / self.steps
        lam = 1.0 - done if self.shape == "linear" else (1.0 - min(done / QUADRATIC_ZERO_AT, 1.0)) ** 2
        return min(1.0, max(0.0, lam))

    @torch.no_grad()
    def set_lam(self, lam: float) -> None:
        if not 0 <= lam <= 1:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        for name in self.layers:
            self.model.get_submodule(name).parametrizations.weight[0].lam.fill_(lam)

    def at_step(self, step: int) -> float:
        """Set the ``lam`` of global ``step``; returns it."""
        lam = self.lam_at(step)
        self.set_lam(lam)
        return lam

    @torch.no_grad()
    def finish(self):
        """``lam = 0``, parametrizations removed, weights ``W * B``: returns the (plain) model."""
        self.set_lam(0.0)
        for name in self.layers:
            parametrize.remove_parametrizations(self.model.get_submodule(name), "weight", leave_parametrized=True)
        return self.model
