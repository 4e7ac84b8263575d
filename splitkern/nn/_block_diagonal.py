"""What SplitLinear and SplitConv2d share: packed block weights, group indices, dense conversion."""

from __future__ import annotations

import math

import torch
from torch import nn

from splitkern._dense import masked_dense_weight
from splitkern import backend
from splitkern.backend import prepare_layout
from splitkern.layout import block_layout, check_sizes, equal_groups
from splitkern.nn import _plan, fold
from splitkern.nn._grouping import grouping
from splitkern.ops._checks import check_permutation, is_identity


class _MaskedDense(torch.autograd.Function):
    """``dense_call(x, W, b)`` with ``W`` the packed weight scattered into the dense (original order) weight
    and ``b`` the bias in original order; the backward gathers the dense weight's gradient back to the packed
    positions and the bias gradient to grouped order. One node instead of four (scatter, view, gather,
    the dense op's): what makes a small split layer train near its dense layer's cost."""

    @staticmethod
    def forward(ctx, x, weight, bias, spec):
        to_dense, positions, out_index, dense_call, dense_backward = spec
        dense, dense_bias = to_dense(weight, bias)
        ctx.save_for_backward(x, dense)
        ctx.spec, ctx.has_bias = spec, bias is not None
        return dense_call(x, dense, dense_bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, dense = ctx.saved_tensors
        _, positions, out_index, _, dense_backward = ctx.spec
        needs = ctx.needs_input_grad
        grad_x, grad_dense, grad_bias = dense_backward(grad_out, x, dense, (needs[0], needs[1],
                                                                            ctx.has_bias and needs[2]))
        grad_w = None if grad_dense is None else grad_dense.reshape(-1).index_select(0, positions)
        grad_b = None if grad_bias is None else grad_bias.index_select(0, out_index)
        return grad_x, grad_w, grad_b, None


def _after_load_state_dict(module: "BlockDiagonalLayer", incompatible_keys) -> None:
    """A module-level hook (a lambda would make the layer unpicklable: ``torch.save(model)``, ``mp.spawn``)."""
    module._loaded()


class BlockDiagonalLayer(nn.Module):
    """Base of the split layers: a weight that is block-diagonal over G feature groups.

    ``weight`` packs the blocks (block g: ``(out_sizes[g], in_sizes[g], *kernel_size)``
    row-major, see :meth:`block`); ``bias`` is in grouped order; the buffers
    ``in_index``/``out_index`` map grouped positions to original feature positions.

    A forward runs the layer's plan for its input key (:mod:`splitkern.nn._plan`): the execution
    strategy (:mod:`splitkern.nn.strategy`) ``strategy`` names, ``"auto"`` (the fastest, measured once
    per key and kept in ``chosen``) or one of ``splitkern.nn.strategy.STRATEGIES``, with or without
    autograd; the registered op where a trace or transform records the call. Subclasses implement
    :meth:`_run` (the op), :meth:`_check_input`, :meth:`_compute`, :meth:`_grouped_operands` and
    :meth:`_eager_call`.
    """

    _feature_dim = -1  # where the features are in an input (dim 1: the channels of an image)
    _one_call = _plan.ONE_CALL  # the strategies that are one aten call for this kind of layer

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
        prepare_layout(self.layout, self.weight.device, math.prod(self.kernel_size))
        self._strategy = _plan.AUTO
        self.chosen: dict[tuple, str] = {}  # "auto"'s choices by _plan.choice_key
        self._plans: dict[tuple, _plan.Plan] = {}  # by _plan.plan_key: what a call runs (inputs validated)
        object.__setattr__(self, "_fold_bn", None)  # not a submodule: the BatchNorm stays where the model has it

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
        self.refresh()

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.cuda()``, ``.half()``...: then the device tables for the new device."""
        result = super()._apply(fn, recurse)
        prepare_layout(self.layout, self.weight.device, math.prod(self.kernel_size))
        self.refresh()  # a new dtype or device: prepare and check again
        return result

    def __getstate__(self):
        """Pickles and deep copies leave the plans behind (they hold this layer's tensors)."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_plans": {}, "_positions": None, "_ungroup_index": None}

    def _loaded(self) -> None:  # load_state_dict(assign=True) may move the parameters
        self._note_identity()
        prepare_layout(self.layout, self.weight.device, math.prod(self.kernel_size))
        self.refresh()

    def fold_into(self, bn: nn.Module | None) -> None:
        """Fold ``bn`` (the BatchNorm this layer's output feeds, and nothing else) into no-grad eval calls
        (see :mod:`splitkern.nn.fold`, which finds such pairs); None removes the link."""
        if bn is not None and not isinstance(bn, fold._FoldableBatchNorm):
            raise TypeError(f"bn must be a FoldableBatchNorm1d/2d (see splitkern.nn.fold.fold_batchnorm), "
                            f"got {type(bn).__name__}")
        if bn is not None and bn.num_features != self.out_features:
            raise ValueError(f"bn normalises {bn.num_features} features; this layer writes {self.out_features}")
        object.__setattr__(self, "_fold_bn", bn)
        self.refresh()

    @property
    def fold_target(self) -> nn.Module | None:
        """The BatchNorm folded into this layer's no-grad eval calls, or None (:meth:`fold_into`)."""
        return self.__dict__.get("_fold_bn")

    def _folding(self) -> nn.Module | None:
        """The linked BatchNorm if a prepared plan folds it now (eval mode, no forward hook on this layer)."""
        bn = self.__dict__.get("_fold_bn")
        return bn if fold.folds_into(self, bn) else None

    def _stamp(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        """What this layer's prepared weights are valid for (:func:`_plan.stamp`, and a linked BatchNorm's state)."""
        stamp = _plan.stamp(weight, bias)
        bn = self.__dict__.get("_fold_bn")
        return stamp if bn is None else (*stamp, self._folding() is not None, *fold.state(bn))

    def refresh(self) -> None:
        """Drop the plans and their prepared weights (after an edit through ``.data``, which no version
        counter sees; ``.to()``, loads and :meth:`set_indices` call it)."""
        self._plans = {}
        self._positions = self._ungroup_index = None

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
        _plan.check_strategy(name)
        if name == "grouped" and not equal_groups(self.layout):
            raise ValueError(f"strategy 'grouped' needs equal groups; this layer's are in_sizes={list(self.in_sizes)}, "
                             f"out_sizes={list(self.out_sizes)}")
        self._strategy = name
        self._plans = {}

    def candidates(self) -> tuple[str, ...]:
        """The strategies this layer can run (``"grouped"`` only with equal groups)."""
        return tuple(name for name in _plan.STRATEGIES if name != "grouped" or equal_groups(self.layout))

    def strategy_for(self, key: tuple) -> str | None:
        """The strategy this layer runs for an input key (:func:`~splitkern.nn.strategy.input_key`, or a
        ``chosen`` key), None when ``"auto"`` has not met that key yet."""
        return self._strategy if self._strategy != _plan.AUTO else self.chosen.get(key)

    @property
    def plans(self) -> dict:
        """The plans built so far: :func:`~splitkern.nn._plan.plan_key` -> :class:`~splitkern.nn._plan.Plan`."""
        return dict(self._plans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self._parameters  # (not self.weight: nn.Module.__getattr__ is a Python call per read)
        weight, bias = params["weight"], params.get("bias")
        key = _plan.plan_key(x, weight, bias, self._feature_dim)
        if key is None or not self.out_features:
            return self._op_forward(x)
        if key is _plan.CAPTURING:
            return self._captured_forward(x, weight, bias)
        plan = self._plans.get(key)
        if plan is None or (plan.stamp is not None and plan.stamp != (
                _plan.stamp(weight, bias) if self._fold_bn is None else self._stamp(weight, bias))):
            plan = self._new_plan(x, key)
        return plan.run(x)

    def _captured_forward(self, x, weight, bias) -> torch.Tensor:
        """Under CUDA graph capture: the plan an eager call of the same key built (its prepared weights must
        outlive the graph: :func:`splitkern.accelerate` keeps them), else the registered op. Nothing is built
        or timed during a capture."""
        key = _plan.plan_key(x, weight, bias, self._feature_dim, capturing=True)
        plan = None if key is None else self._plans.get(key)
        if plan is None or (plan.stamp is not None and plan.stamp != self._stamp(weight, bias)):
            return self._op_forward(x)
        return plan.run(x)

    def _op_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The registered custom op (what compile, export, tracing and functorch record)."""
        in_index = None if self._in_index_is_identity else self.in_index
        out_index = None if self._out_index_is_identity else self.out_index
        return self._run(x, in_index, out_index)

    def _new_plan(self, x: torch.Tensor, key: tuple) -> _plan.Plan:
        """Validate ``x`` (its first call with this key), choose the strategy and build its plan."""
        self._check_input(self._as_checked(x, key))
        if key[6] is not None:  # a forced backend means the op on that backend
            name = "op"
        elif self._strategy != _plan.AUTO:
            name = self._strategy
        else:
            name = self.chosen.get(_plan.choice_key(key)) or self._choose(x, key)
        plan = self._build(name, key)
        self._plans[key] = plan
        return plan

    def _as_checked(self, x: torch.Tensor, key: tuple) -> torch.Tensor:
        """``x`` as the op's checks see it: under autocast both x and the weight are cast first, so an x
        whose cast dtype matches the weight's is checked in the weight's dtype."""
        if key[5] is None:
            return x
        weight_dtype = _plan.cast_dtype(self.weight.dtype, key[5])
        return x.to(self.weight.dtype) if _plan.compute_dtype(key) == weight_dtype else x

    def _choose(self, x: torch.Tensor, key: tuple) -> str:
        """``"auto"``: a choice table's row for this key, else what this process measured for a layer like this
        one on such inputs, else the fastest candidate timed on ``x`` (forward, and backward when autograd
        records the call)."""
        name = _plan.known_choice(self, key)
        if name is None:
            runs = {name: self._build(name, key).run for name in self.candidates()}
            if key[4]:
                runs = {name: _plan.with_backward(run, (self.weight, self.bias)) for name, run in runs.items()}
            name, _ = _plan.fastest(runs, x, self._one_call)
            _plan.note_choice(self, key, name)
        self.chosen[_plan.choice_key(key)] = name
        return name

    def _build(self, name: str, key: tuple) -> _plan.Plan:
        """The plan of strategy ``name`` for ``key``: under autograd it computes from the live parameters;
        without, from weights prepared once in the compute dtype and memory format, stamped."""
        fmt, dtype, live = _plan.key_format(key), _plan.compute_dtype(key), key[4]
        bn = None if live else self._folding()
        if name == "op":
            run = self._op_runner(backend.implementation(self._op_name, key[0], dtype), dtype, live, bn)
        elif name == "masked_dense" and live:
            run = self._live(self._masked_dense_call(fmt), dtype)
        else:
            compute = self._permuted(name, self._compute(name, fmt), fmt)
            make = self._operand_maker(name, fmt, self.weight.device)
            if live:
                run = self._live(lambda x, weight, bias: compute(x, *make(weight, bias)), dtype)
            else:
                operands = self._prepared(make, dtype, bn)

                def run(x):  # x in the compute dtype (autocast's) like the prepared weights
                    return compute(x if x.dtype == dtype else x.to(dtype), *operands)
        if bn is not None:
            run = fold.marking(run, bn)
        return _plan.Plan(name, run, None if live else self._stamp(self.weight, self.bias), bn is not None)

    @torch.no_grad()
    def _prepared(self, make, dtype: torch.dtype, bn: nn.Module | None = None) -> tuple:
        """``make(weight, bias)`` on detached copies of the parameters in ``dtype``, with ``bn`` (the linked
        BatchNorm where it folds now, :meth:`_folding`) folded in."""
        weight, bias = self.weight.detach(), None if self.bias is None else self.bias.detach()
        if bn is not None:
            weight, bias = fold.folded(weight, bias, bn, self._row_lengths(weight.device), self.out_index)
        return make(weight.to(dtype), None if bias is None else bias.to(dtype))

    def _row_lengths(self, device: torch.device) -> torch.Tensor:
        """Packed weight elements per grouped output row (its group's inputs x kernel taps)."""
        taps = math.prod(self.kernel_size)
        sizes = torch.tensor(self.out_sizes, device=device)
        return torch.repeat_interleave(torch.tensor(self.in_sizes, device=device) * taps, sizes)

    def _op_runner(self, kernels, dtype: torch.dtype, live: bool, bn: nn.Module | None = None):
        """``run(x)`` of the op's kernels called directly (:class:`~splitkern.ops.block_diag_mm.EagerBlockDiagMM`
        under autograd): the index tables as the registered op gets them; operands cast to ``dtype``
        (autocast's) as the op casts them, ``bn`` folded into the prepared ones (:meth:`_prepared`)."""
        in_index = None if self._in_index_is_identity else self.in_index
        out_index = None if self._out_index_is_identity else self.out_index
        call = self._eager_call(kernels, in_index, out_index, live)
        if live:
            return self._live(call, dtype)
        weight, bias = self._prepared(lambda w, b: (w, b), dtype, bn)
        prepare = getattr(kernels, "prepare_weight", None)  # a backend that re-packs the weight does it once here
        if prepare is not None:
            weight = prepare(weight, self.layout, self.kernel_size)
        return lambda x: call(x if x.dtype == dtype else x.to(dtype), weight, bias)

    def _live(self, call, dtype: torch.dtype):
        """``run(x)``: ``call(x, weight, bias)`` on the live parameters, all cast to ``dtype`` where they are not
        in it (autocast's dtype: the casts are recorded, so gradients reach the fp32 parameters)."""
        params = self._parameters

        def run(x):
            weight, bias = params["weight"], params.get("bias")
            if x.dtype != dtype or weight.dtype != dtype:
                return call(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
            return call(x, weight, bias)
        return run

    def _masked_dense_call(self, fmt: torch.memory_format):
        """``call(x, weight, bias)`` of ``"masked_dense"`` under autograd: one :class:`_MaskedDense` (the dense
        weight built, used and its gradient gathered back to the packed weight without autograd nodes)."""
        device = self.weight.device
        spec = (self._operand_maker("masked_dense", fmt, device), self._dense_positions(device),
                self.out_index.to(device), self._dense_call, self._dense_backward)
        return lambda x, weight, bias: _MaskedDense.apply(x, weight, bias, spec)

    def _dense_call(self, x, dense, bias):
        """The dense layer's forward on the masked dense weight (original order)."""
        raise NotImplementedError

    def _dense_backward(self, grad_out, x, dense, needs) -> tuple:
        """``(dx, d dense, d bias in original order)`` of :meth:`_dense_call` (None where ``needs`` is False)."""
        raise NotImplementedError

    def _operand_maker(self, name: str, fmt: torch.memory_format, device: torch.device):
        """``make(weight, bias)``: what strategy ``name`` computes with, made from the parameters
        (differentiably; the index tables it needs are captured here, once per plan)."""
        if name == "masked_dense":
            positions, ungroup = self._dense_positions(device), self._ungroup(device)
            pad, shape = self._dense_pad(), (self.out_features, self.in_features, *self.kernel_size)
            image = len(shape) == 4

            def masked_dense(weight, bias):
                dense = weight.new_zeros(weight.numel() + pad).index_copy_(0, positions, weight).view(shape)
                return (dense.contiguous(memory_format=fmt) if image else dense,
                        None if bias is None else bias.index_select(0, ungroup))
            return masked_dense
        if name == "per_group":
            return lambda weight, bias: (self._group_operands(weight, bias, fmt),)
        return lambda weight, bias: self._grouped_operands(weight, bias, fmt)

    def _ungroup(self, device: torch.device) -> torch.Tensor:
        """Grouped position of each original output feature (``argsort(out_index)``)."""
        cached = getattr(self, "_ungroup_index", None)
        if cached is None or cached.device != device:
            cached = self._ungroup_index = torch.argsort(self.out_index).to(device)
        return cached

    def _dense_pad(self) -> int:
        """Elements of the dense weight the packed one lacks (the zeros between groups)."""
        return (self.out_features * self.in_features - self.layout.weight_numel) * math.prod(self.kernel_size)

    def _dense_positions(self, device: torch.device) -> torch.Tensor:
        """Where each packed weight element sits in the flattened dense (original order) weight."""
        cached = getattr(self, "_positions", None)
        if cached is None or cached.device != device:
            numel = self.weight.numel()
            ids = masked_dense_weight(torch.arange(1, numel + 1, dtype=torch.float64, device=device), self.layout,
                                      self.in_index.to(device), self.out_index.to(device), self.kernel_size)
            ids = ids.flatten()
            where = ids.nonzero().squeeze(1)
            cached = torch.empty(numel, dtype=torch.int64, device=device)
            cached[ids[where].long() - 1] = where
            self._positions = cached
        return cached

    def _permuted(self, name: str, core, fmt: torch.memory_format):
        """Strategy ``name``'s ``compute(x, *operands)`` on original-order features: the masked dense
        weight has the permutations folded in; the others gather inputs and un-permute outputs around
        the grouped call."""
        if name == "masked_dense":
            return core
        dim = self._feature_dim
        gather = None if self._in_index_is_identity else self.in_index
        ungroup = None if self._out_index_is_identity else self._ungroup(self.out_index.device)
        if gather is None and ungroup is None:
            return core

        def compute(x, *operands):
            if gather is not None:
                x = x.index_select(dim, gather).contiguous(memory_format=fmt)
            y = core(x, *operands)
            return y if ungroup is None else y.index_select(dim, ungroup).contiguous(memory_format=fmt)
        return compute

    def _group_operands(self, weight, bias, fmt: torch.memory_format) -> list:
        """Per group with outputs: ``(input start, input size, block, bias slice, output size)``."""
        lay = self.layout
        parts = []
        for g in range(lay.groups):
            lo, hi = lay.out_offsets[g], lay.out_offsets[g + 1]
            if hi == lo:
                continue
            block = lay.block(weight, g, self.kernel_size)
            parts.append((lay.in_offsets[g], lay.in_sizes[g],
                          block.contiguous(memory_format=fmt) if block.dim() == 4 else block,
                          None if bias is None else bias[lo:hi], hi - lo))
        return parts

    def _per_group(self, call, empty):
        """``compute(x, parts)`` of a per-group loop (parts: :meth:`_group_operands`), concatenated:
        ``call(x_slice, block, bias)`` where a group has inputs, ``empty(x, out_size, bias)`` where not."""
        dim = self._feature_dim

        def compute(x, parts):
            return torch.cat([call(x.narrow(dim, start, size), w, b) if size else empty(x, n, b)
                              for start, size, w, b, n in parts], dim)
        return compute

    def _check_input(self, x) -> None:
        raise NotImplementedError

    _op_name = ""  # the registry's op the layer runs

    def _compute(self, name: str, fmt: torch.memory_format):
        """``compute(x, *operands)`` of strategy ``name`` (not ``"op"``) in plain ATen calls, on grouped
        features (``masked_dense``: original order), with :meth:`_operands`."""
        raise NotImplementedError

    def _grouped_operands(self, weight, bias, fmt: torch.memory_format) -> tuple:
        """Strategy ``"grouped"``'s operands (equal groups): the weight and bias as one batched call takes them."""
        raise NotImplementedError

    def _eager_call(self, kernels, in_index, out_index, live: bool):
        """``call(x, weight, bias)`` of the op's kernels on ``kernels`` (a backend module), through the op's
        eager autograd function when ``live`` (autograd records), else directly."""
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
        if self.strategy == _plan.AUTO and self.chosen:
            text += " (" + ", ".join(f"{tuple(key[3])}: {name}" for key, name in self.chosen.items()) + ")"
        return text
