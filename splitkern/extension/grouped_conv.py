"""grouped_conv on the compiled extension (csrc/grouped_conv.cpp)."""

import torch

_ops = torch.ops.splitkern


def grouped_conv(x, weight, bias, layout, kernel_size, stride, padding, dilation, in_index=None, out_index=None):
    return _ops.ext_grouped_conv(x, weight, bias, layout.in_sizes, layout.out_sizes, kernel_size, stride, padding,
                                 dilation, in_index, out_index)


def grouped_conv_grad_input(grad_out, weight, x, layout, kernel_size, stride, padding, dilation,
                            in_index=None, out_index=None):
    return _ops.ext_grouped_conv_grad_input(grad_out, weight, x, layout.in_sizes, layout.out_sizes, kernel_size,
                                            stride, padding, dilation, in_index, out_index)


def grouped_conv_grad_weight(grad_out, x, weight, layout, kernel_size, stride, padding, dilation,
                             in_index=None, out_index=None):
    return _ops.ext_grouped_conv_grad_weight(grad_out, x, weight, layout.in_sizes, layout.out_sizes, kernel_size,
                                             stride, padding, dilation, in_index, out_index)
