"""SplitLinear: a linear layer with a ragged block-diagonal weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from splitkern.nn._block_diagonal import BlockDiagonalLayer
from splitkern.ops.block_diag_mm import EagerBlockDiagMM, block_diag_mm_on_layout, check_layer_input
from splitkern.layout import equal_groups


class SplitLinear(BlockDiagonalLayer):
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
        super().__init__(in_sizes, out_sizes, bias, (), in_index, out_index, device, dtype)

    def _run(self, x, in_index, out_index):
        return block_diag_mm_on_layout(x, self.weight, self.bias, self.layout, in_index, out_index)

    def _check_input(self, x) -> None:
        check_layer_input(x, self.weight, self.layout)

    _op_name = "block_diag_mm"

    def _eager_call(self, kernels, in_index, out_index, live: bool):
        layout, n = self.layout, self.out_features

        def call(x, weight, bias):
            lead = x.shape[:-1]
            x2d = x.reshape(lead.numel(), layout.in_features)
            if live:
                y = EagerBlockDiagMM.apply(x2d, weight, bias, kernels, layout, in_index, out_index)
            else:
                y = kernels.block_diag_mm(x2d, weight, bias, layout, in_index, out_index)
            return y.reshape(*lead, n)
        return call

    def _dense_call(self, x, dense, bias):
        return F.linear(x, dense, bias)

    def _dense_backward(self, grad_out, x, dense, needs) -> tuple:
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        return (grad_out @ dense if needs[0] else None,
                rows.t() @ x.reshape(-1, x.shape[-1]) if needs[1] else None,
                rows.sum(0) if needs[2] else None)

    _one_call = ("masked_dense",)  # "grouped" is a batched matmul between reshapes here

    def _compute(self, name: str, fmt: torch.memory_format):
        if name == "masked_dense":
            return F.linear
        if name == "per_group":
            return self._per_group(F.linear, _bias_only)
        groups, k, n = equal_groups(self.layout)

        def grouped(x, blocks_t, bias_rows):
            rows = x.reshape(-1, groups, k).transpose(0, 1)  # (G, M, k)
            y = torch.bmm(rows, blocks_t) if bias_rows is None else torch.baddbmm(bias_rows, rows, blocks_t)
            return y.transpose(0, 1).reshape(*x.shape[:-1], groups * n)
        return grouped

    def _grouped_operands(self, weight, bias, fmt: torch.memory_format) -> tuple:
        groups, k, n = equal_groups(self.layout)
        return weight.view(groups, n, k).transpose(1, 2), None if bias is None else bias.view(groups, 1, n)

    def _same_kind(self, in_sizes, out_sizes, **factory) -> "SplitLinear":
        return SplitLinear(in_sizes, out_sizes, **factory)

    @classmethod
    def from_dense(cls, linear: nn.Linear, in_groups: torch.Tensor, out_groups: torch.Tensor,
                   num_groups: int | None = None, *, in_order=None, out_order=None, grouped_input: bool = False,
                   grouped_output: bool = False) -> "SplitLinear":
        """Split a dense layer: keep ``W[o, i]`` where ``out_groups[o] == in_groups[i]``.

        The result computes exactly ``F.linear(x, W * mask, b)`` in the original
        feature order. ``num_groups`` defaults to ``max id + 1``; groups may be
        unequal or empty.

        ``in_order``/``out_order``: the grouped -> original feature order to use (a permutation
        listing the features group by group; default: each group's features in original order).
        ``grouped_input``: the layer reads its inputs already in grouped order (``x[..., in_order]``,
        identity ``in_index``); ``grouped_output``: it writes grouped order (identity ``out_index``).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        in_sizes, out_sizes, in_index, out_index = cls._grouping(linear.weight, in_groups, out_groups, num_groups,
                                                                 in_order, out_order)
        layer = cls(in_sizes, out_sizes, bias=linear.bias is not None,
                    in_index=None if grouped_input else in_index, out_index=None if grouped_output else out_index,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        layer._load_dense(linear.weight, linear.bias, in_index, out_index)
        return layer

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (inter-group weights zero), original feature order."""
        w = self.weight
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.masked_dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.dense_bias())
        return dense


def _bias_only(x: torch.Tensor, size: int, bias: torch.Tensor | None) -> torch.Tensor:
    """The output block of a group without inputs: its bias (zeros without one), shaped ``(..., size)``."""
    out = x.new_zeros(*x.shape[:-1], size)
    return out if bias is None else out + bias
