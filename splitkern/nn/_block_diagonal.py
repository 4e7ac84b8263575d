"""What SplitLinear and SplitConv2d share: packed block weights, group indices, dense conversion."""

from __future__ import annotations

import math

import torch
from torch import nn

from splitkern._dense import masked_dense_weight
from splitkern.backend import prepare_layout
from splitkern.layout import block_layout, check_sizes
from splitkern.nn import strategy as strategies
from splitkern.nn._grouping import grouping
from splitkern.ops._checks import check_permutation, is_identity
from splitkern.reference._common import equal_groups


def _after_load_state_dict(module: "BlockDiagonalLayer", incompatible_keys) -> None:
    """A module-level hook (a lambda would make the layer unpicklable: ``torch.save(model)``, ``mp.spawn``)."""
    module._loaded()


class BlockDiagonalLayer(nn.Module):
    """Base of the split layers: a weight that is block-diagonal over G feature groups.

    ``weight`` packs the blocks (block g: ``(out_sizes[g], in_sizes[g], *kernel_size)``
    row-major, see :meth:`block`); ``bias`` is in grouped order; the buffers
    ``in_index``/``out_index`` map grouped positions to original feature positions.

    Without autograd the forward runs the layer's execution strategy (:mod:`splitkern.nn.strategy`):
    ``strategy`` is ``"auto"`` (the fastest, measured once per input key and kept in ``chosen``) or
    one of ``splitkern.nn.strategy.STRATEGIES``. Subclasses implement :meth:`_run` (the op),
    :meth:`_check_input` and :meth:`_aten_runners`.
    """

    _feature_dim = -1  # where the features are in an input (dim 1: the channels of an image)

    def __init__(self, in_sizes, out_sizes, bias: bool, kernel_size: tuple[int, ...], in_index, out_index,
                 device, dtype):
        super().__init__()
        self.in_sizes = check_sizes(in_sizes, "in_sizes")
        self.out_sizes = check_sizes(out_sizes, "out_sizes")
        self.layout = block_layout(self.in_sizes, self.out_sizes)
        self.kernel_size = tuple(kernel_size)
        self.in_features = self.layout.in_features
        self.out_features = self.layout.out_features
        taps = math.prod(self.kernel_size)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.layout.weight_numel * taps, **factory))
        self.bias = nn.Parameter(torch.empty(self.out_features, **factory)) if bias else None
        self.register_buffer("in_index", self._index(in_index, self.in_features, "in_index", device))
        self.register_buffer("out_index", self._index(out_index, self.out_features, "out_index", device))
        self._note_identity()
        self.register_load_state_dict_post_hook(_after_load_state_dict)
        self.reset_parameters()
        prepare_layout(self.layout, self.weight.device)
        self._strategy = strategies.AUTO
        self.chosen: dict[tuple, str] = {}
        self._checked: set[tuple] = set()  # input keys already validated (each once, when first met)
        self._runners: dict[tuple, tuple] = {}

    @staticmethod
    def _index(index, length: int, name: str, device) -> torch.Tensor:
        if index is None:
            return torch.arange(length, device=device)
        return check_permutation(index.cpu(), name, length, torch.device("cpu")).to(device)

    @torch.no_grad()
    def set_indices(self, in_index=None, out_index=None) -> None:
        """Replace the grouped -> original position maps (None: identity, i.e. grouped layout)."""
        for name, index in (("in_index", in_index), ("out_index", out_index)):
            buffer = getattr(self, name)
            buffer.copy_(self._index(index, buffer.numel(), name, buffer.device))
        self._note_identity()

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.cuda()``, ``.half()``...: then the device tables for the new device."""
        result = super()._apply(fn, recurse)
        prepare_layout(self.layout, self.weight.device)
        self._runners, self._checked = {}, set()  # a new dtype or device: prepare and check again
        return result

    def __getstate__(self):
        """Pickles and deep copies leave the prepared runners behind (they hold this layer's tensors)."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_runners": {}}

    def _loaded(self) -> None:  # load_state_dict(assign=True) may move the parameters
        self._note_identity()
        prepare_layout(self.layout, self.weight.device)
        self._runners, self._checked = {}, set()

    def _note_identity(self) -> None:
        """Skip the fused gather/scatter where an index is the identity (checked off the hot path)."""
        for name in ("in_index", "out_index"):
            index = getattr(self, name).cpu()
            check_permutation(index, name, index.numel(), torch.device("cpu"))
            setattr(self, f"_{name}_is_identity", is_identity(index))

    @property
    def grouped_input(self) -> bool:
        """Whether the layer reads its inputs in grouped order (``in_index`` is the identity)."""
        return self._in_index_is_identity

    @property
    def grouped_output(self) -> bool:
        """Whether the layer writes its outputs in grouped order (``out_index`` is the identity)."""
        return self._out_index_is_identity

    def reset_parameters(self) -> None:
        """Per block, as PyTorch initialises a dense layer of that block's size."""
        taps = math.prod(self.kernel_size)
        with torch.no_grad():
            for g in range(self.layout.groups):
                fan_in = self.in_sizes[g] * taps
                bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
                self.block(g).uniform_(-bound, bound)
                if self.bias is not None:
                    self.bias[self.layout.out_offsets[g]:self.layout.out_offsets[g + 1]].uniform_(-bound, bound)

    def block(self, g: int) -> torch.Tensor:
        """Weight block g as an ``(out_sizes[g], in_sizes[g], *kernel_size)`` view of ``weight``."""
        return self.layout.block(self.weight, g, self.kernel_size)

    def _run(self, x, in_index, out_index):
        raise NotImplementedError

    @property
    def strategy(self) -> str:
        """``"auto"`` or the forced strategy (see :mod:`splitkern.nn.strategy`); settable."""
        return self._strategy

    @strategy.setter
    def strategy(self, name: str) -> None:
        strategies.check_strategy(name)
        if name == "grouped" and not equal_groups(self.layout):
            raise ValueError(f"strategy 'grouped' needs equal groups; this layer's are in_sizes={list(self.in_sizes)}, "
                             f"out_sizes={list(self.out_sizes)}")
        self._strategy = name

    def candidates(self) -> tuple[str, ...]:
        """The strategies this layer can run (``"grouped"`` only with equal groups)."""
        return tuple(name for name in strategies.STRATEGIES if name != "grouped" or equal_groups(self.layout))

    def strategy_for(self, key: tuple) -> str | None:
        """The strategy this layer runs for an input key (:func:`~splitkern.nn.strategy.input_key`),
        None when ``"auto"`` has not met that key yet."""
        return self._strategy if self._strategy != strategies.AUTO else self.chosen.get(key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_features and strategies.fast_path_applies(self, x):
            return self._run_strategy(x)
        return self._op_forward(x)

    def _op_forward(self, x: torch.Tensor) -> torch.Tensor:
        in_index = None if self._in_index_is_identity else self.in_index
        out_index = None if self._out_index_is_identity else self.out_index
        return self._run(x, in_index, out_index)

    def _run_strategy(self, x: torch.Tensor) -> torch.Tensor:
        key = strategies.input_key(x)
        name = self.strategy_for(key)
        if name is None or key not in self._checked:
            self._check_input(x)
            self._checked.add(key)
        if name is None:
            name = self._choose(x, key)
        return self._op_forward(x) if name == "op" else self._runner(name, key)(x)

    def _choose(self, x: torch.Tensor, key: tuple) -> str:
        table = strategies.active_table()
        name = None if table is None else strategies.table_choice(self, key, table)
        if name is not None:
            self.chosen[key] = name
            return name
        runs = {name: (self._op_forward if name == "op" else self._runner(name, key)) for name in self.candidates()}
        name, _ = strategies.fastest(runs, x)
        self.chosen[key] = name
        kept = {(chosen, *k[:3]) for k, chosen in self.chosen.items()}
        for other in runs:  # keep only the prepared weights some choice runs
            if (other, *key[:3]) not in kept:
                self._runners.pop((other, *key[:3]), None)
        return name

    def _versions(self) -> tuple:
        """What prepared weights are stamped with: each tensor's storage and version (inference tensors
        have no version counter) and the optimizer step count."""
        tensors = (self.weight, self.bias, self.in_index, self.out_index)
        return (strategies.generation(),
                *((t.data_ptr(), None if t.is_inference() else t._version) for t in tensors if t is not None))

    def refresh(self) -> None:
        """Drop the prepared weights (after an edit through ``.data``, which no version counter sees)."""
        self._runners = {}

    def _runner(self, name: str, key: tuple):
        """The prepared ``run(x)`` of strategy ``name`` for inputs like ``key`` (rebuilt when a tensor changed)."""
        slot = (name, *key[:3])
        versions = self._versions()
        cached = self._runners.get(slot)
        if cached is None or cached[0] != versions:
            with torch.no_grad():
                cached = (versions, self._permuted(name, strategies.key_format(key)))
            self._runners[slot] = cached
        return cached[1]

    def _permuted(self, name: str, fmt: torch.memory_format):
        """Strategy ``name``'s run(x) on original-order features: the masked dense weight has the
        permutations folded in; the others gather inputs and un-permute outputs around the grouped call."""
        core = self._aten_runners(name, fmt)
        if name == "masked_dense":
            return core
        dim = self._feature_dim
        gather = None if self._in_index_is_identity else self.in_index
        ungroup = None if self._out_index_is_identity else torch.argsort(self.out_index)

        def run(x):
            if gather is not None:
                x = x.index_select(dim, gather).contiguous(memory_format=fmt)
            y = core(x)
            return y if ungroup is None else y.index_select(dim, ungroup).contiguous(memory_format=fmt)
        return run

    def _per_group(self, call, empty, fmt: torch.memory_format):
        """``run(x)`` of a per-group loop over the groups with outputs, concatenated: ``call(x_slice, block,
        bias)`` where a group has inputs, ``empty(x, out_size, bias)`` where not (blocks prepared in ``fmt``)."""
        lay, bias = self.layout, (None if self.bias is None else self.bias.detach())
        dim = self._feature_dim
        parts = []
        for g in range(lay.groups):
            lo, hi = lay.out_offsets[g], lay.out_offsets[g + 1]
            if hi == lo:
                continue
            b = None if bias is None else bias[lo:hi]
            block = self.block(g).detach()
            parts.append((lay.in_offsets[g], lay.in_sizes[g], block.contiguous(memory_format=fmt)
                          if block.dim() == 4 else block, b, hi - lo))

        def run(x):
            return torch.cat([call(x.narrow(dim, start, size), w, b) if size else empty(x, n, b)
                              for start, size, w, b, n in parts], dim)
        return run

    def _check_input(self, x) -> None:
        raise NotImplementedError

    def _aten_runners(self, name: str, fmt: torch.memory_format):
        raise NotImplementedError

    def forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """Like ``forward`` with inputs and outputs already in grouped order (no permutation)."""
        return self._run(x, None, None)

    @staticmethod
    def _grouping(dense_weight, in_groups, out_groups, num_groups, in_order=None, out_order=None):
        """Sizes and grouped -> original permutations; ``in_order``/``out_order`` (when given) replace the
        stable group sort, checked to be permutations that list the features group by group."""
        in_sizes, out_sizes, in_index, out_index = grouping(in_groups, out_groups, dense_weight.shape[1],
                                                            dense_weight.shape[0], num_groups)
        orders = []
        for order, default, ids, name in ((in_order, in_index, in_groups, "in_order"),
                                          (out_order, out_index, out_groups, "out_order")):
            if order is None:
                orders.append(default)
                continue
            order = check_permutation(torch.as_tensor(order).cpu(), name, default.numel(), torch.device("cpu"))
            order = order if order is not None else torch.arange(default.numel())
            grouped_ids = ids.detach().cpu().to(torch.int64)[order]
            if grouped_ids.numel() > 1 and bool((grouped_ids[1:] < grouped_ids[:-1]).any()):
                raise ValueError(f"{name} must list the features group by group (group 0 first)")
            orders.append(order)
        return in_sizes, out_sizes, orders[0], orders[1]

    def _load_dense(self, dense_weight: torch.Tensor, dense_bias: torch.Tensor | None, in_index=None,
                    out_index=None) -> None:
        """Copy the within-group blocks of a dense ``(out, in, *kernel)`` weight (original order);
        ``in_index``/``out_index``: its grouped -> original maps (default: this layer's)."""
        device = dense_weight.device
        in_index = self.in_index if in_index is None else in_index
        out_index = self.out_index if out_index is None else out_index
        grouped = dense_weight.detach()[out_index.to(device)][:, in_index.to(device)]
        lay = self.layout
        with torch.no_grad():
            for g in range(lay.groups):
                self.block(g).copy_(grouped[lay.out_offsets[g]:lay.out_offsets[g + 1],
                                            lay.in_offsets[g]:lay.in_offsets[g + 1]])
            if dense_bias is not None:
                self.bias.copy_(dense_bias.detach()[out_index.to(device)])

    def group_slice(self, lo: int, hi: int) -> tuple[slice, slice]:
        """Grouped positions ``(inputs, outputs)`` of groups ``lo..hi-1``.

        ``self.in_index[inputs]`` are the original input features those groups read and
        ``self.out_index[outputs]`` the original output features they write.
        """
        lo, hi = self._check_group_range(lo, hi)
        lay = self.layout
        return slice(lay.in_offsets[lo], lay.in_offsets[hi]), slice(lay.out_offsets[lo], lay.out_offsets[hi])

    def _check_group_range(self, lo: int, hi: int) -> tuple[int, int]:
        groups = self.layout.groups
        for value, name in ((lo, "lo"), (hi, "hi")):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= lo < hi <= groups:
            raise ValueError(f"group range [{lo}, {hi}) must be non-empty and within [0, {groups})")
        return lo, hi

    def _same_kind(self, in_sizes, out_sizes, **factory) -> "BlockDiagonalLayer":
        """A fresh layer of this class and geometry with other group sizes (grouped layout)."""
        raise NotImplementedError

    def narrow_groups(self, lo: int, hi: int) -> "BlockDiagonalLayer":
        """A new layer of the same kind and geometry holding groups ``lo..hi-1`` (weights, bias), grouped layout.

        Its inputs are this layer's grouped inputs ``group_slice(lo, hi)[0]`` and its outputs
        the grouped outputs ``group_slice(lo, hi)[1]`` (identity ``in_index``/``out_index``): on
        an original-order input ``x``, ``narrow_groups(lo, hi)(x[..., self.in_index[inputs]])``
        equals ``self(x)[..., self.out_index[outputs]]``. Groups may be empty (no features);
        the range must hold at least one group.
        """
        inputs, outputs = self.group_slice(lo, hi)
        w = self.weight
        part = self._same_kind(self.in_sizes[lo:hi], self.out_sizes[lo:hi], bias=self.bias is not None,
                               device=w.device, dtype=w.dtype)
        taps = math.prod(self.kernel_size)
        with torch.no_grad():
            part.weight.copy_(w[self.layout.w_offsets[lo] * taps:self.layout.w_offsets[hi] * taps])
            if self.bias is not None:
                part.bias.copy_(self.bias[outputs])
        part.train(self.training)
        return part

    def masked_dense_weight(self) -> torch.Tensor:
        """The dense ``(out, in, *kernel_size)`` weight (zeros between groups), original order."""
        return masked_dense_weight(self.weight.detach(), self.layout, self.in_index, self.out_index,
                                   self.kernel_size)

    def dense_bias(self) -> torch.Tensor | None:
        """The bias in original output order."""
        if self.bias is None:
            return None
        return torch.zeros_like(self.bias.detach()).index_copy_(0, self.out_index, self.bias.detach())

    def extra_repr(self) -> str:
        taps = math.prod(self.kernel_size)
        dense = self.in_features * self.out_features * taps
        params = self.weight.numel()
        share = f"{100.0 * params / dense:.1f}%" if dense else "n/a"
        text = (f"in_sizes={list(self.in_sizes)}, out_sizes={list(self.out_sizes)}, "
                f"bias={self.bias is not None}, weights={params} ({share} of dense {dense}), strategy={self.strategy}")
        if self.strategy == strategies.AUTO and self.chosen:
            text += " (" + ", ".join(f"{tuple(key[3])}: {name}" for key, name in self.chosen.items()) + ")"
        return text
