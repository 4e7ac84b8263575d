"""What SplitLinear and SplitConv2d share: packed block weights, group indices, dense conversion."""

from __future__ import annotations

import math

import torch
from torch import nn

from splitkern._dense import masked_dense_weight
from splitkern.backend import prepare_layout
from splitkern.layout import block_layout, check_sizes
from splitkern.nn._grouping import grouping
from splitkern.ops._checks import check_permutation


def _after_load_state_dict(module: "BlockDiagonalLayer", incompatible_keys) -> None:
    """A module-level hook (a lambda would make the layer unpicklable: ``torch.save(model)``, ``mp.spawn``)."""
    module._loaded()


class BlockDiagonalLayer(nn.Module):
    """Base of the split layers: a weight that is block-diagonal over G feature groups.

    ``weight`` packs the blocks (block g: ``(out_sizes[g], in_sizes[g], *kernel_size)``
    row-major, see :meth:`block`); ``bias`` is in grouped order; the buffers
    ``in_index``/``out_index`` map grouped positions to original feature positions.
    Subclasses implement :meth:`_run`.
    """

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
        return result

    def _loaded(self) -> None:  # load_state_dict(assign=True) may move the parameters
        self._note_identity()
        prepare_layout(self.layout, self.weight.device)

    def _note_identity(self) -> None:
        """Skip the fused gather/scatter where an index is the identity (checked off the hot path)."""
        for name in ("in_index", "out_index"):
            index = getattr(self, name).cpu()
            check_permutation(index, name, index.numel(), torch.device("cpu"))
            setattr(self, f"_{name}_is_identity", torch.equal(index, torch.arange(index.numel())))

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_index = None if self._in_index_is_identity else self.in_index
        out_index = None if self._out_index_is_identity else self.out_index
        return self._run(x, in_index, out_index)

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
        return (f"in_sizes={list(self.in_sizes)}, out_sizes={list(self.out_sizes)}, "
                f"bias={self.bias is not None}, weights={params} ({share} of dense {dense})")
