"""BatchNorm folded into the layer before it, for inference.

In eval mode a BatchNorm is a per-channel affine map, ``y = x * s + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s``. When a split layer's
output goes to a BatchNorm and nowhere else, the layer's prepared weights can carry that map
(each output row scaled by ``s``, the bias ``b * s + t``), and the BatchNorm has nothing left to
do: a no-grad forward runs one call instead of three (conv, ``empty``, ``native_batch_norm``).

:func:`fold_batchnorm` finds such pairs (``torch.fx`` traces each module holding a split layer and
a BatchNorm as children: the layer's output must have that BatchNorm as its only user) and links
them; :func:`~splitkern.splitnet.split` calls it. A linked layer folds only while

* autograd does not record the call (no-grad inference; training never folds),
* the BatchNorm is in eval mode and uses running statistics,
* the layer has no forward hooks (a hook sees the layer's own output, unfolded),

and its prepared weights are stamped with the BatchNorm's mode and the versions of its
parameters and statistics, so ``.train()``, a ``load_state_dict`` or an in-place edit rebuilds
them (unfolded in train mode). The BatchNorm (a :class:`FoldableBatchNorm2d`/``1d``: the class
swapped in place, parameters, buffers and hooks kept) passes through exactly the tensor the
folded layer returned and normalises anything else. :func:`unfold_batchnorm` removes the links.

The model's plain ``nn.Conv2d`` / ``nn.Linear`` layers (a split model's unsplit trunk) fold the same way:
their class is swapped in place to :class:`FoldingConv2d` / :class:`FoldingLinear`, which in a no-grad
eval call computes with a folded copy of its weight and bias, kept until the layer's or the BatchNorm's
state changes (the same stamp). Without that, a split model would normalise where its dense model,
folded the same way, would not.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from splitkern.nn._plan import _recorded, stamp, tensor_state


class _FoldableBatchNorm:
    """A BatchNorm that passes through the output its split layer produced with this BatchNorm folded in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            folded = self.__dict__.get("_folded_output")
            if folded is not None and folded() is x:
                return x
        return super().forward(x)

    def __getstate__(self):
        """Pickles and deep copies leave the weak reference to the last folded output behind."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k != "_folded_output"}


class FoldableBatchNorm1d(_FoldableBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that a :class:`~splitkern.nn.SplitLinear` before it can fold (see the module doc)."""


class FoldableBatchNorm2d(_FoldableBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that a :class:`~splitkern.nn.SplitConv2d` before it can fold (see the module doc)."""


_FOLDABLE = {nn.BatchNorm1d: FoldableBatchNorm1d, nn.BatchNorm2d: FoldableBatchNorm2d}
_BATCHNORMS = tuple(_FOLDABLE)


class _FoldingLayer:
    """A torch conv / linear layer that computes with the BatchNorm after it folded in (no-grad eval calls)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.__dict__.get("_fold_bn")
        if bn is None or not self._folds(bn, x):
            return super().forward(x)
        weight, bias = self._folded_parameters(bn)
        out = self._with(x, weight, bias)
        bn.__dict__["_folded_output"] = weakref.ref(out)
        return out

    def _folds(self, bn: nn.Module, x: torch.Tensor) -> bool:
        """Whether this call folds: ``bn`` in eval with running statistics, autograd not recording, no forward hook
        on this layer, no tracer or compiler watching."""
        records = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        return folds_into(self, bn) and not records and not _recorded()

    def _folded_parameters(self, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight (rows times ``s``, in the weight's dtype and memory format) and bias (``b * s + t``) with
        ``bn`` folded in, rebuilt when this layer's or ``bn``'s tensors change (:func:`state`)."""
        key = (*stamp(self.weight, self.bias), *state(bn))
        cached = self.__dict__.get("_folded_parameters_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                scale, shift = (v.to(self.weight.device) for v in scale_shift(bn))
                rows = scale.view(-1, *(1,) * (self.weight.dim() - 1))
                weight = torch.empty_like(self.weight).copy_(self.weight.float() * rows)
                bias = shift if self.bias is None else self.bias.float() * scale + shift
                cached = (key, weight, bias.to(self.weight.dtype))
            self.__dict__["_folded_parameters_cache"] = cached
        return cached[1], cached[2]

    def __getstate__(self):
        """Pickles and deep copies leave the folded copies behind (rebuilt on the next folded call)."""
        state_ = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state_.items() if k != "_folded_parameters_cache"}


class FoldingConv2d(_FoldingLayer, nn.Conv2d):
    """``nn.Conv2d`` that folds the BatchNorm after it into no-grad eval calls (see the module doc)."""

    def _with(self, x, weight, bias):
        return self._conv_forward(x, weight, bias)


class FoldingLinear(_FoldingLayer, nn.Linear):
    """``nn.Linear`` that folds the BatchNorm after it into no-grad eval calls (see the module doc)."""

    def _with(self, x, weight, bias):
        return nn.functional.linear(x, weight, bias)


_FOLDING = {nn.Conv2d: FoldingConv2d, nn.Linear: FoldingLinear}


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces one module's own forward: every submodule is a single call."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return True


def _pairs_in(parent: nn.Module, kinds: tuple[type, ...]) -> list[tuple[str, str]]:
    """``(layer child, BatchNorm child)`` names of ``parent`` where a ``kinds`` child's output feeds that
    BatchNorm and nothing else, each called once; [] where ``parent`` cannot be traced."""
    try:
        graph = _ChildrenAsLeaves().trace(parent)
    except Exception:  # data-dependent control flow, unsupported Python: no pair is provable here
        return []
    calls = [node for node in graph.nodes if node.op == "call_module"]
    counts: dict[str, int] = {}
    for node in calls:
        counts[node.target] = counts.get(node.target, 0) + 1
    children = dict(parent.named_children())
    pairs = []
    for node in calls:
        layer = children.get(node.target)
        if not isinstance(layer, kinds) or counts[node.target] != 1 or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        bn = children.get(user.target) if user.op == "call_module" else None
        if isinstance(bn, _BATCHNORMS) and counts[user.target] == 1 \
                and user.args == (node,) and not user.kwargs and bn.num_features == _out_features(layer):
            pairs.append((node.target, user.target))
    return pairs


def _out_features(layer: nn.Module) -> int | None:
    return getattr(layer, "out_features", getattr(layer, "out_channels", None))


def batchnorm_pairs(model: nn.Module, kinds: tuple[type, ...] | None = None) -> dict[str, str]:
    """``{layer name: BatchNorm name}`` for every layer of a type in ``kinds`` (default: the split layers)
    whose output feeds one BatchNorm and nothing else (``torch.fx`` traces each module that holds both as
    children; a module that cannot be traced contributes nothing). Shared modules are left out."""
    from splitkern.nn._block_diagonal import BlockDiagonalLayer

    kinds = kinds or (BlockDiagonalLayer,)
    uses: dict[int, int] = {}
    for module in model.modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    pairs = {}
    for prefix, parent in model.named_modules():
        kids = list(parent.children())
        if not any(isinstance(k, kinds) for k in kids) or not any(isinstance(k, _BATCHNORMS) for k in kids):
            continue
        dot = f"{prefix}." if prefix else ""
        for layer_name, bn_name in _pairs_in(parent, kinds):
            if uses[id(getattr(parent, layer_name))] == 1 and uses[id(getattr(parent, bn_name))] == 1:
                pairs[dot + layer_name] = dot + bn_name
    return pairs


def _link(layer: nn.Module, bn: nn.Module | None) -> bool:
    """Fold ``bn`` (None: nothing) into ``layer`` if it is a split layer or a torch conv / linear (its class
    swapped to the folding one, or back to torch's without ``bn``); whether it could."""
    from splitkern.nn._block_diagonal import BlockDiagonalLayer

    if isinstance(layer, BlockDiagonalLayer):
        layer.fold_into(bn)
        return True
    if type(layer) in _FOLDING and bn is not None:
        layer.__class__ = _FOLDING[type(layer)]  # no new state: parameters, buffers, hooks stay
    if not isinstance(layer, _FoldingLayer):
        return False  # a subclass of the user's own is left alone
    layer.__dict__["_fold_bn"] = bn
    if bn is None:
        plain_module(layer)
    return True


def _linked(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` of every layer of ``model`` that can hold a fold link (split and folding layers)."""
    from splitkern.nn._block_diagonal import BlockDiagonalLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, (BlockDiagonalLayer, _FoldingLayer))}


def fold_batchnorm(model: nn.Module) -> dict[str, str]:
    """Link every split layer, ``nn.Conv2d`` and ``nn.Linear`` of ``model`` whose output only feeds a BatchNorm
    to that BatchNorm (see the module doc; :func:`batchnorm_pairs`); returns ``{layer name: BatchNorm name}`` of
    the links. Idempotent."""
    from splitkern.nn._block_diagonal import BlockDiagonalLayer

    links = {}
    for layer_name, bn_name in batchnorm_pairs(model, (BlockDiagonalLayer, nn.Conv2d, nn.Linear)).items():
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        if not (isinstance(layer, (BlockDiagonalLayer, _FoldingLayer)) or type(layer) in _FOLDING):
            continue  # a conv / linear subclass of the user's own is left alone
        if type(bn) in _FOLDABLE:
            bn.__class__ = _FOLDABLE[type(bn)]  # no new state: parameters, buffers, hooks stay
        if isinstance(bn, _FoldableBatchNorm) and _link(layer, bn):
            links[layer_name] = bn_name
    return links


def unfold_batchnorm(model: nn.Module) -> nn.Module:
    """Remove every fold link of ``model``: its BatchNorms normalise again, its folding torch layers are torch's
    own classes again."""
    for layer in _linked(model).values():
        _link(layer, None)
    return model


def folded_batchnorms(model: nn.Module) -> dict[str, str]:
    """``{layer name: BatchNorm name}`` of the fold links in ``model`` (split layers and torch layers)."""
    names = {id(m): name for name, m in model.named_modules()}
    links = {name: layer.__dict__.get("_fold_bn") for name, layer in _linked(model).items()}
    return {name: names.get(id(bn), "?") for name, bn in links.items() if bn is not None}


def plain_module(module: nn.Module) -> nn.Module:
    """``module`` back to the torch class it extends where it is a foldable BatchNorm or a folding conv / linear
    (for tracers and exporters that know torch's modules, and after :func:`unfold_batchnorm`); anything else
    unchanged."""
    for plain, special in (*_FOLDABLE.items(), *_FOLDING.items()):
        if type(module) is special:
            for key in ("_folded_output", "_fold_bn", "_folded_parameters_cache"):
                module.__dict__.pop(key, None)
            module.__class__ = plain
    return module


def folds_now(bn: nn.Module | None) -> bool:
    """Whether a linked BatchNorm is folded into a no-grad call now: eval mode, running statistics."""
    return bn is not None and not bn.training and bn.running_mean is not None and bn.running_var is not None


def folds_into(layer: nn.Module, bn: nn.Module | None) -> bool:
    """Whether ``bn``, linked to ``layer``, folds into ``layer``'s no-grad calls now: :func:`folds_now`, and no
    forward hook on ``layer`` (a hook sees the layer's own output, unfolded)."""
    return folds_now(bn) and not layer._forward_hooks and not nn.modules.module._global_forward_hooks


def state(bn: nn.Module) -> tuple:
    """What folded weights are valid for: the BatchNorm's mode and every tensor's storage and version."""
    tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return (bn.training, bn.eps, *((None, None) if t is None else tensor_state(t) for t in tensors))


def scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` in fp32 with ``bn(x) == x * s + t`` per channel (eval mode, original channel order)."""
    var, mean = bn.running_var.detach().float(), bn.running_mean.detach().float()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().float()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().float()
    return scale, shift


def folded(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module, row_lengths: torch.Tensor,
           out_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A split layer's packed ``weight`` and grouped-order ``bias`` (None: zeros) with ``bn`` applied to its
    outputs, in fp32: row ``j`` (grouped output ``j``, original channel ``out_index[j]``, ``row_lengths[j]``
    weights) times ``s[out_index[j]]``, bias ``b[j] * s[out_index[j]] + t[out_index[j]]``."""
    scale, shift = (v.to(weight.device)[out_index] for v in scale_shift(bn))
    weight = weight.float() * scale.repeat_interleave(row_lengths, output_size=weight.numel())
    bias = shift if bias is None else bias.float() * scale + shift
    return weight, bias


def marking(run, bn: nn.Module):
    """``run`` (a plan's forward with ``bn`` folded into its weights) that also tells ``bn`` its output already
    carries it (``bn`` passes that tensor through)."""
    def run_and_mark(x):
        out = run(x)
        bn.__dict__["_folded_output"] = weakref.ref(out)
        return out
    return run_and_mark


__all__ = ["FoldableBatchNorm1d", "FoldableBatchNorm2d", "FoldingConv2d", "FoldingLinear", "batchnorm_pairs",
           "fold_batchnorm", "folded_batchnorms", "plain_module", "unfold_batchnorm"]
