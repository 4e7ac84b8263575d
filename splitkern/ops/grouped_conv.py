"""Ragged grouped 2-D convolution: custom-op registration, fake impls, autograd, dispatch."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from splitkern._conv import new_activation, output_shape
from splitkern.layout import BlockLayout, block_layout, check_sizes
from splitkern.registry import custom_op
from splitkern.ops._dispatch import autocast_operands, cached_layout, gradients, implementation
from splitkern.ops._checks import check_block_operands, check_indices, check_like, check_tensor

_OP = "grouped_conv"


def _backend(t: Tensor):
    """The backend module that runs this op for tensors like ``t``."""
    return implementation(_OP, t)


@custom_op("grouped_conv")
def _grouped_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_sizes: list[int], out_sizes: list[int],
                  kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int],
                  in_index: Optional[Tensor], out_index: Optional[Tensor]) -> Tensor:
    return _backend(x).grouped_conv(x, weight, bias, cached_layout(in_sizes, out_sizes), kernel_size, stride, padding,
                                    dilation, in_index, out_index)


@custom_op("grouped_conv_grad_input")
def _grouped_conv_grad_input(grad_out: Tensor, weight: Tensor, x: Tensor, in_sizes: list[int],
                             out_sizes: list[int], kernel_size: list[int], stride: list[int], padding: list[int],
                             dilation: list[int], in_index: Optional[Tensor],
                             out_index: Optional[Tensor]) -> Tensor:
    return _backend(grad_out).grouped_conv_grad_input(grad_out, weight, x, cached_layout(in_sizes, out_sizes),
                                                      kernel_size, stride, padding, dilation, in_index, out_index)


@custom_op("grouped_conv_grad_weight")
def _grouped_conv_grad_weight(grad_out: Tensor, x: Tensor, weight: Tensor, in_sizes: list[int],
                              out_sizes: list[int], kernel_size: list[int], stride: list[int], padding: list[int],
                              dilation: list[int], in_index: Optional[Tensor],
                              out_index: Optional[Tensor]) -> Tensor:
    return _backend(x).grouped_conv_grad_weight(grad_out, x, weight, cached_layout(in_sizes, out_sizes), kernel_size,
                                                stride, padding, dilation, in_index, out_index)


@_grouped_conv.register_fake
def grouped_conv_fake(x, weight, bias, in_sizes, out_sizes, kernel_size, stride, padding, dilation, in_index,
                      out_index):
    shape = output_shape(x.shape, sum(out_sizes), kernel_size, stride, padding, dilation)
    return new_activation(x, shape)


@_grouped_conv_grad_input.register_fake
def grouped_conv_grad_input_fake(grad_out, weight, x, *args):
    return new_activation(x, x.shape)


@_grouped_conv_grad_weight.register_fake
def grouped_conv_grad_weight_fake(grad_out, x, weight, *args):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, weight, bias, *geometry, in_index, out_index = inputs
    ctx.save_for_backward(x, weight, in_index, out_index)
    ctx.geometry = geometry  # in_sizes, out_sizes, kernel_size, stride, padding, dilation
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight, in_index, out_index = ctx.saved_tensors
    geometry = ctx.geometry
    grads = gradients(ctx.needs_input_grad, ctx.has_bias, grad_out,
                       lambda: _grouped_conv_grad_input(grad_out, weight, x, *geometry, in_index, out_index),
                       lambda: _grouped_conv_grad_weight(grad_out, x, weight, *geometry, in_index, out_index),
                       out_index)
    return *grads, None, None, None, None, None, None, None, None


_grouped_conv.register_autograd(_backward, setup_context=_setup_context)


class EagerGroupedConv(torch.autograd.Function):
    """The op's eager path: the same kernels as ``torch.ops.splitkern.grouped_conv`` and its backward, called
    directly on a backend module chosen once (no custom-op dispatch, no per-call backend selection).

    ``apply(x, weight, bias, kernels, layout, geometry, in_index, out_index)``, ``geometry`` the four lists
    ``(kernel_size, stride, padding, dilation)`` the op passes its kernels; bit for bit the op's result.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, kernels, layout, geometry, in_index, out_index):
        ctx.save_for_backward(x, weight)
        ctx.call = (kernels, layout, geometry, in_index, out_index, bias is not None)
        return kernels.grouped_conv(x, weight, bias, layout, *geometry, in_index, out_index)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        kernels, layout, geometry, in_index, out_index, has_bias = ctx.call
        grads = gradients(ctx.needs_input_grad, has_bias, grad_out,
                           lambda: kernels.grouped_conv_grad_input(grad_out, weight, x, layout, *geometry,
                                                                   in_index, out_index),
                           lambda: kernels.grouped_conv_grad_weight(grad_out, x, weight, layout, *geometry,
                                                                    in_index, out_index),
                           out_index)
        return *grads, None, None, None, None, None


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return tuple(pair)


def conv_geometry(kernel_size, stride, padding, dilation):
    """Validated ``(kernel_size, stride, padding, dilation)`` as pairs of ints."""
    return (_pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1), _pair(padding, "padding", 0),
            _pair(dilation, "dilation", 1))


def grouped_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, in_sizes, out_sizes,
                 kernel_size, stride=1, padding=0, dilation=1, in_index: Optional[Tensor] = None,
                 out_index: Optional[Tensor] = None) -> Tensor:
    """Ragged grouped 2-D convolution: a conv whose weight is block-diagonal over channels.

    For G groups with input channel counts ``c_in_g`` and output channel counts
    ``c_out_g`` (any non-negative ints, equal or not)::

        xg = x[:, in_index]                    (or x when in_index is None)
        yg[:, out_g] = conv2d(xg[:, in_g], W_g, b[out_g], stride, padding, dilation)
        y[:, out_index] = yg                   (or y = yg)

    where ``in_g``/``out_g`` are the g-th consecutive channel ranges. cuDNN's
    ``groups=`` is the special case of equal sizes.

    Args:
        x: ``(N, C_in, H, W)``, NCHW or channels_last (any strides);
            ``C_in = sum(in_sizes)``.
        weight: ``(sum_g c_out_g * c_in_g * kh * kw,)`` packed weight: block g
            is the row-major ``(c_out_g, c_in_g, kh, kw)`` conv weight.
        bias: optional ``(C_out,)`` in grouped order, ``C_out = sum(out_sizes)``.
        in_sizes, out_sizes: G channel counts each (G >= 1); a group without
            input channels outputs its bias.
        kernel_size, stride, padding, dilation: ints or pairs, as ``F.conv2d``
            (zero padding; ``padding`` >= 0).
        in_index, out_index: optional int64 channel permutations (fused gather
            of input channels / scatter of output channels).

    Returns:
        ``(N, C_out, H_out, W_out)`` in x's memory format (channels_last in,
        channels_last out) and dtype.

    Differentiable in x, weight and bias (once). fp32 accumulation on Triton.
    Under ``torch.autocast`` the operands are cast to the autocast dtype first
    (as ``F.linear``/``F.conv2d`` are), so the result has that dtype.
    """
    check_tensor(x, "x")
    check_tensor(weight, "weight")
    layout = block_layout(check_sizes(in_sizes, "in_sizes"), check_sizes(out_sizes, "out_sizes"))
    geometry = conv_geometry(kernel_size, stride, padding, dilation)
    _check_input(x, layout, geometry)
    x, weight, bias = autocast_operands(x, weight, bias)
    kh, kw = geometry[0]
    check_block_operands(x, weight, bias, layout.weight_numel * kh * kw, layout.out_features)
    in_index, out_index = check_indices(in_index, out_index, layout, x.device)
    return _call(x, weight, bias, layout, geometry, in_index, out_index)


def grouped_conv_on_layout(x: Tensor, weight: Tensor, bias: Optional[Tensor], layout: BlockLayout, geometry,
                           in_index: Optional[Tensor] = None, out_index: Optional[Tensor] = None) -> Tensor:
    """:func:`grouped_conv` for a layer's own operands: ``weight``, ``bias``, the indices and
    ``geometry`` (``conv_geometry``'s four pairs) were validated when the layer was built, so only
    ``x`` is checked here (docs/design.md §3: validation once, at the boundary)."""
    check_tensor(x, "x")
    x, weight, bias = autocast_operands(x, weight, bias)
    check_layer_input(x, weight, layout, geometry)
    return _call(x, weight, bias, layout, geometry, in_index, out_index)


def check_layer_input(x, weight: Tensor, layout: BlockLayout, geometry) -> None:
    """``x`` is an ``(N, layout.in_features, H, W)`` tensor no smaller than the dilated kernel, with
    ``weight``'s dtype and device: what :func:`grouped_conv_on_layout` checks (after autocast's casts),
    without computing."""
    check_tensor(x, "x")
    _check_input(x, layout, geometry)
    check_like(weight, "weight", x, "x")


def _check_input(x: Tensor, layout: BlockLayout, geometry) -> None:
    """x (a tensor) fits the layout and is no smaller than the dilated kernel."""
    kernel_size, stride, padding, dilation = geometry
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C_in, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != layout.in_features:
        raise ValueError(f"x has {x.shape[1]} channels but in_sizes sum to {layout.in_features}")
    out_h, out_w = output_shape(x.shape, 0, kernel_size, stride, padding, dilation)[2:]
    if out_h < 1 or out_w < 1:
        raise ValueError(f"x's spatial size {tuple(x.shape[2:])} is smaller than the dilated kernel "
                         f"(kernel_size={kernel_size}, dilation={dilation}, padding={padding})")


def _call(x, weight, bias, layout: BlockLayout, geometry, in_index, out_index) -> Tensor:
    kernel_size, stride, padding, dilation = geometry
    return _grouped_conv(x, weight, bias, list(layout.in_sizes), list(layout.out_sizes), list(kernel_size),
                         list(stride), list(padding), list(dilation), in_index, out_index)
