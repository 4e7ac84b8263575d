"""SplitLinear: a linear layer with a ragged block-diagonal weight."""

from __future__ import annotations

import math

import torch
from torch import nn

from splitkern.layout import block_layout, check_sizes
from splitkern.nn._grouping import grouping
from splitkern.ops._checks import check_permutation
from splitkern.ops.block_diag_mm import block_diag_mm
from splitkern.reference.block_diag_mm import masked_dense_weight


class SplitLinear(nn.Module):
    """Linear layer whose weight is block-diagonal over G feature groups.

    Group g maps ``in_sizes[g]`` input features to ``out_sizes[g]`` output
    features; features of different groups never interact. Sizes may differ
    per group and may be 0 (a group without inputs outputs its bias).

    Args:
        in_sizes, out_sizes: G group sizes each.
        bias: learn an additive bias (``(N,)``, grouped order).
        in_index, out_index: optional int64 permutations mapping grouped
            positions to original feature positions (see
            :func:`splitkern.ops.block_diag_mm`). Without them the layer works
            in grouped layout; :meth:`from_dense` sets them.

    Shapes: ``forward``: ``(..., in_features) -> (..., out_features)`` in the
    original feature order; :meth:`forward_grouped`: the same in grouped order
    (no permutation), for chaining split layers.

    Parameters: ``weight`` ``(sum_g n_g*k_g,)`` packed blocks (block g is the
    row-major ``(n_g, k_g)`` matrix, see :meth:`block`), ``bias`` ``(N,)``.
    """

    def __init__(self, in_sizes, out_sizes, bias: bool = True, *, in_index=None, out_index=None,
                 device=None, dtype=None):
        super().__init__()
        self.in_sizes = check_sizes(in_sizes, "in_sizes")
        self.out_sizes = check_sizes(out_sizes, "out_sizes")
        self.layout = block_layout(self.in_sizes, self.out_sizes)
        self.in_features = self.layout.in_features
        self.out_features = self.layout.out_features
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.layout.weight_numel, **factory))
        self.bias = nn.Parameter(torch.empty(self.out_features, **factory)) if bias else None
        self.register_buffer("in_index", self._index(in_index, self.in_features, "in_index", device))
        self.register_buffer("out_index", self._index(out_index, self.out_features, "out_index", device))
        self._note_identity()
        self.register_load_state_dict_post_hook(lambda module, keys: module._note_identity())
        self.reset_parameters()

    @staticmethod
    def _index(index, length: int, name: str, device) -> torch.Tensor:
        if index is None:
            return torch.arange(length, device=device)
        return check_permutation(index.cpu(), name, length, torch.device("cpu")).to(device)

    def _note_identity(self) -> None:
        """Skip the fused gather/scatter where an index is the identity (checked off the hot path)."""
        for name in ("in_index", "out_index"):
            index = getattr(self, name)
            check_permutation(index.cpu(), name, index.numel(), torch.device("cpu"))
            identity = torch.equal(index.cpu(), torch.arange(index.numel()))
            setattr(self, f"_{name}_is_identity", identity)

    def reset_parameters(self) -> None:
        """Per block, as ``nn.Linear`` does for a dense layer of that block's size."""
        with torch.no_grad():
            for g in range(self.layout.groups):
                bound = 1.0 / math.sqrt(self.in_sizes[g]) if self.in_sizes[g] else 0.0
                self.block(g).uniform_(-bound, bound)
                if self.bias is not None:
                    lo, hi = self.layout.out_offsets[g], self.layout.out_offsets[g + 1]
                    self.bias[lo:hi].uniform_(-bound, bound)

    def block(self, g: int) -> torch.Tensor:
        """Weight block g as an ``(out_sizes[g], in_sizes[g])`` view of ``weight``."""
        return self.layout.block(self.weight, g)

    def _run(self, x, in_index, out_index):
        return block_diag_mm(x, self.weight, self.bias, in_sizes=self.in_sizes, out_sizes=self.out_sizes,
                             in_index=in_index, out_index=out_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_index = None if self._in_index_is_identity else self.in_index
        out_index = None if self._out_index_is_identity else self.out_index
        return self._run(x, in_index, out_index)

    def forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., K) -> (..., N)`` with input and output already in grouped order."""
        return self._run(x, None, None)

    @classmethod
    def from_dense(cls, linear: nn.Linear, in_groups: torch.Tensor, out_groups: torch.Tensor,
                   num_groups: int | None = None) -> "SplitLinear":
        """Split a dense layer: keep ``W[o, i]`` where ``out_groups[o] == in_groups[i]``.

        The result computes exactly ``F.linear(x, W * mask, b)`` in the original
        feature order. ``num_groups`` defaults to ``max id + 1``; groups may be
        unequal or empty.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        in_sizes, out_sizes, in_index, out_index = grouping(
            in_groups, out_groups, linear.in_features, linear.out_features, num_groups)
        w = linear.weight.detach()
        layer = cls(in_sizes, out_sizes, bias=linear.bias is not None, in_index=in_index,
                    out_index=out_index, device=w.device, dtype=w.dtype)
        grouped = w[out_index.to(w.device)][:, in_index.to(w.device)]
        with torch.no_grad():
            for g in range(layer.layout.groups):
                rows = slice(layer.layout.out_offsets[g], layer.layout.out_offsets[g + 1])
                cols = slice(layer.layout.in_offsets[g], layer.layout.in_offsets[g + 1])
                layer.block(g).copy_(grouped[rows, cols])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach()[out_index.to(w.device)])
        return layer

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (inter-group weights zero), original feature order."""
        w = self.weight.detach()
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(masked_dense_weight(w, self.layout, self.in_index, self.out_index))
            if self.bias is not None:
                dense.bias.zero_().index_copy_(0, self.out_index, self.bias.detach())
        return dense

    def extra_repr(self) -> str:
        dense = self.in_features * self.out_features
        params = self.layout.weight_numel
        share = f"{100.0 * params / dense:.1f}%" if dense else "n/a"
        return (f"in_sizes={list(self.in_sizes)}, out_sizes={list(self.out_sizes)}, "
                f"bias={self.bias is not None}, weights={params} ({share} of dense {dense})")
