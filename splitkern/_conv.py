"""Convolution helpers shared by the op layer, every backend and the model code: the output
shape, activations allocated in the input's memory format, and the bias gradient.

None of these is a backend's computation of the convolution itself (that is
``splitkern.<backend>.grouped_conv``); they only fix shapes, layouts and the bias sum
every backend agrees on.
"""

from __future__ import annotations

import torch


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is (strictly) channels_last, else contiguous: the output's format."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def new_activation(x: torch.Tensor, shape) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` with x's dtype, device and memory format."""
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x))


def output_shape(x_shape, out_channels: int, kernel_size, stride, padding, dilation) -> tuple[int, ...]:
    """``(N, out_channels, H_out, W_out)`` of a 2-D convolution of an ``(N, C, H, W)`` input, as
    ``F.conv2d`` computes it (pairs ``(h, w)`` of kernel_size, stride, padding, dilation)."""
    n, _, h, w = x_shape
    ho = (h + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    return (n, out_channels, ho, wo)


def channel_grad_bias(grad_out: torch.Tensor, out_index: torch.Tensor | None = None) -> torch.Tensor:
    """dL/db of shape ``(C_out,)`` in grouped order: ``db[j] = sum over every dim but 1 of
    grad_out[:, out_index[j], ...]`` (``out_index`` = identity when None). Both ops' bias gradient:
    ``grad_out`` is ``(M, N)`` for block_diag_mm and ``(N, C_out, H_out, W_out)`` for grouped_conv."""
    sums = grad_out.sum([d for d in range(grad_out.dim()) if d != 1])
    return sums if out_index is None else sums.index_select(0, out_index)
