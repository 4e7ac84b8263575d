"""Pure-PyTorch ragged grouped 2-D convolution: the test oracle and the CPU path.

One ``F.conv2d`` with ``groups=G`` when all groups have the same sizes, one
``F.conv2d`` per group otherwise; differentiable by plain autograd. Semantics are
those of :func:`splitkern.ops.grouped_conv`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from splitkern._conv import memory_format, output_shape  # output_shape: benchmarks also read it here
from splitkern.layout import BlockLayout, equal_groups

# dim 1 holds the features of a (M, K) matrix and the channels of an (N, C, H, W) image alike
from splitkern.reference._common import gather_columns as gather_channels
from splitkern.reference._common import scatter_columns as scatter_channels


def grouped_conv(x, weight, bias, layout: BlockLayout, kernel_size, stride, padding, dilation,
                 in_index=None, out_index=None):
    """``y[:, out_g] = conv2d(x[:, in_g], W_g) + b[out_g]``; x (N, C_in, H, W) -> y (N, C_out, Ho, Wo)."""
    fmt = memory_format(x)
    x = gather_channels(x, in_index)
    conv = dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation))
    equal = equal_groups(layout)
    if equal and x.shape[0] > 0:
        g, k, n = equal
        y = F.conv2d(x, weight.view(g * n, k, *kernel_size), bias, groups=g, **conv)
    else:
        shape = output_shape(x.shape, layout.out_features, kernel_size, stride, padding, dilation)
        pieces = []
        for g in range(layout.groups):
            lo, hi = layout.out_offsets[g], layout.out_offsets[g + 1]
            b = None if bias is None else bias[lo:hi]
            xg = x[:, layout.in_offsets[g]:layout.in_offsets[g + 1]]
            if layout.in_sizes[g] and hi > lo and x.shape[0]:
                pieces.append(F.conv2d(xg, layout.block(weight, g, kernel_size), b, **conv))
            else:  # no inputs (or no batch): the bias alone; F.conv2d rejects empty channels
                piece = x.new_zeros((shape[0], hi - lo, *shape[2:]))
                pieces.append(piece if b is None else piece + b.view(1, -1, 1, 1))
        y = torch.cat(pieces, dim=1)
    return scatter_channels(y, out_index).contiguous(memory_format=fmt)


def _conv_backward(grad_out, x, weight, layout, kernel_size, stride, padding, dilation,
                   in_index, out_index, mask):
    """Per-group ``aten.convolution_backward`` (one call with groups=G when groups are equal)."""
    grad_out = gather_channels(grad_out, out_index)
    x = gather_channels(x, in_index)
    conv = (list(stride), list(padding), list(dilation), False, [0, 0])
    equal = equal_groups(layout)
    if equal:
        g, k, n = equal
        w = weight.view(g * n, k, *kernel_size)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(grad_out, x, w, None, *conv, g, mask)
        return grad_x, (None if grad_w is None else grad_w.reshape(-1))
    xs, ws = [], []
    for g in range(layout.groups):
        go = grad_out[:, layout.out_offsets[g]:layout.out_offsets[g + 1]]
        xg = x[:, layout.in_offsets[g]:layout.in_offsets[g + 1]]
        wg = layout.block(weight, g, kernel_size)
        if go.numel() and xg.numel():
            gx, gw, _ = torch.ops.aten.convolution_backward(go, xg, wg, None, *conv, 1, mask)
        else:  # an empty group (or batch) contributes nothing; aten rejects empty channels
            gx, gw = torch.zeros_like(xg), torch.zeros_like(wg)
        xs.append(gx)
        ws.append(None if gw is None else gw.reshape(-1))
    grad_x = torch.cat(xs, dim=1) if mask[0] else None
    return grad_x, (torch.cat(ws) if mask[1] else None)


def grouped_conv_grad_input(grad_out, weight, x, layout: BlockLayout, kernel_size, stride, padding, dilation,
                            in_index=None, out_index=None):
    """dL/dx, shaped and laid out like x (only x's shape and layout are read)."""
    grad_x, _ = _conv_backward(grad_out, x, weight, layout, kernel_size, stride, padding, dilation,
                               in_index, out_index, [True, False, False])
    return scatter_channels(grad_x, in_index).contiguous(memory_format=memory_format(x))


def grouped_conv_grad_weight(grad_out, x, weight, layout: BlockLayout, kernel_size, stride, padding,
                             dilation, in_index=None, out_index=None):
    """dL/dW, packed like the weight (only weight's size is read)."""
    _, grad_w = _conv_backward(grad_out, x, weight, layout, kernel_size, stride, padding, dilation,
                               in_index, out_index, [False, True, False])
    return grad_w
