"""SplitConv2d: a 2-D convolution with a ragged block-diagonal (grouped) weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from splitkern._conv import output_shape
from splitkern.nn._block_diagonal import BlockDiagonalLayer
from splitkern.layout import equal_groups
from splitkern.ops.grouped_conv import EagerGroupedConv, check_layer_input, conv_geometry, grouped_conv_on_layout


def _resolve_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv must use padding_mode='zeros', got {conv.padding_mode!r}")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError("conv uses padding='same' with an even dilated kernel (asymmetric padding), "
                             "which SplitConv2d does not support")
        return (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)


class SplitConv2d(BlockDiagonalLayer):
    """2-D convolution whose output channels of group g see only input channels of group g.

    Unlike ``nn.Conv2d(groups=G)``, group sizes may differ (and be 0) on both
    sides. Exactly ``F.conv2d`` with a block-diagonal channel mask on the weight.

    Args:
        in_sizes, out_sizes: G channel counts each.
        kernel_size, stride, padding, dilation: ints or pairs, as ``nn.Conv2d``
            (zero padding).
        bias: learn an additive bias (``(C_out,)``, grouped order).
        in_index, out_index: optional int64 channel permutations (grouped ->
            original position); :meth:`from_dense` sets them.

    Shapes: ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``, NCHW or
    channels_last (the output follows the input), channels in original order
    (``forward``) or grouped order (:meth:`forward_grouped`).
    """

    def __init__(self, in_sizes, out_sizes, kernel_size, stride=1, padding=0, dilation=1, bias: bool = True, *,
                 in_index=None, out_index=None, device=None, dtype=None):
        kernel_size, self.stride, self.padding, self.dilation = conv_geometry(kernel_size, stride, padding,
                                                                              dilation)
        super().__init__(in_sizes, out_sizes, bias, kernel_size, in_index, out_index, device, dtype)

    @property
    def in_channels(self) -> int:
        return self.in_features

    @property
    def out_channels(self) -> int:
        return self.out_features

    def _run(self, x, in_index, out_index):
        return grouped_conv_on_layout(x, self.weight, self.bias, self.layout, self._geometry, in_index, out_index)

    _feature_dim = 1

    @property
    def _geometry(self):
        return (self.kernel_size, self.stride, self.padding, self.dilation)

    def _check_input(self, x) -> None:
        check_layer_input(x, self.weight, self.layout, self._geometry)

    _op_name = "grouped_conv"

    def _eager_call(self, kernels, in_index, out_index, live: bool):
        layout, geometry = self.layout, [list(pair) for pair in self._geometry]  # as the op passes them

        def call(x, weight, bias):
            if live:
                return EagerGroupedConv.apply(x, weight, bias, kernels, layout, geometry, in_index, out_index)
            return kernels.grouped_conv(x, weight, bias, layout, *geometry, in_index, out_index)
        return call

    def _dense_call(self, x, dense, bias):
        return F.conv2d(x, dense, bias, self.stride, self.padding, self.dilation)

    def _dense_backward(self, grad_out, x, dense, needs) -> tuple:
        return torch.ops.aten.convolution_backward(grad_out, x, dense, [dense.shape[0]], list(self.stride),
                                                   list(self.padding), list(self.dilation), False, [0, 0], 1,
                                                   list(needs))

    def _compute(self, name: str, fmt: torch.memory_format):
        conv = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        if name == "masked_dense":
            return lambda x, weight, bias: F.conv2d(x, weight, bias, **conv)
        if name == "per_group":
            def bias_only(x, size, b):
                out = x.new_zeros(output_shape(x.shape, size, *self._geometry)).contiguous(memory_format=fmt)
                return out if b is None else out + b.view(1, -1, 1, 1)
            return self._per_group(lambda x, w, b: F.conv2d(x, w, b, **conv), bias_only)
        groups = equal_groups(self.layout)[0]
        return lambda x, weight, bias: F.conv2d(x, weight, bias, groups=groups, **conv)

    def _grouped_operands(self, weight, bias, fmt: torch.memory_format) -> tuple:
        groups, k, n = equal_groups(self.layout)
        return weight.view(groups * n, k, *self.kernel_size).contiguous(memory_format=fmt), bias

    def _same_kind(self, in_sizes, out_sizes, **factory) -> "SplitConv2d":
        return SplitConv2d(in_sizes, out_sizes, self.kernel_size, self.stride, self.padding, self.dilation,
                           **factory)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, in_groups: torch.Tensor, out_groups: torch.Tensor,
                   num_groups: int | None = None, *, in_order=None, out_order=None, grouped_input: bool = False,
                   grouped_output: bool = False) -> "SplitConv2d":
        """Split a dense conv: keep ``W[o, i]`` where ``out_groups[o] == in_groups[i]``.

        The result computes exactly ``F.conv2d(x, W * mask, b, ...)`` with the conv's
        stride, padding and dilation, in the original channel order. ``in_order``,
        ``out_order``, ``grouped_input``, ``grouped_output``: as :meth:`SplitLinear.from_dense`.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"conv must have groups=1 (a dense conv), got groups={conv.groups}")
        in_sizes, out_sizes, in_index, out_index = cls._grouping(conv.weight, in_groups, out_groups, num_groups,
                                                                 in_order, out_order)
        layer = cls(in_sizes, out_sizes, conv.kernel_size, conv.stride, _resolve_padding(conv), conv.dilation,
                    bias=conv.bias is not None, in_index=None if grouped_input else in_index,
                    out_index=None if grouped_output else out_index,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        layer._load_dense(conv.weight, conv.bias, in_index, out_index)
        return layer

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` (inter-group weights zero), original channel order."""
        w = self.weight
        dense = nn.Conv2d(self.in_features, self.out_features, self.kernel_size, self.stride, self.padding,
                          self.dilation, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.masked_dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.dense_bias())
        return dense

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, " + super().extra_repr())
