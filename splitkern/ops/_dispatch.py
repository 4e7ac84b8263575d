"""What every op file needs to reach its kernels: the backend's module and the cached layout."""

from __future__ import annotations

import torch
from torch import Tensor

from splitkern import backend
from splitkern._conv import channel_grad_bias
from splitkern.layout import BlockLayout, block_layout


def implementation(op: str, t: Tensor):
    """The ``splitkern.<backend>.<op>`` module chosen for tensors like ``t``."""
    return backend.implementation(op, t.device, t.dtype)


def cached_layout(in_sizes, out_sizes) -> BlockLayout:
    """The cached layout (device tables included) of these group sizes."""
    return block_layout(tuple(in_sizes), tuple(out_sizes))


def autocast_operands(x: Tensor, weight: Tensor, bias):
    """Under ``torch.autocast`` on x's device, cast the operands to its dtype, as ``F.linear`` does.

    fp64 tensors are left alone (autocast never lowers them); gradients flow back to the
    original fp32 parameters through the casts.
    """
    device = x.device.type
    # cpu and cuda always have autocast; asking only for other devices keeps this traceable by
    # torch.compile(fullgraph=True) on torch < 2.14, whose dynamo cannot trace is_autocast_available
    if device not in ("cpu", "cuda") and not torch.amp.is_autocast_available(device):
        return x, weight, bias
    if not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device)

    def cast(t):
        eligible = isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64
        return t.to(dtype) if eligible else t

    return cast(x), cast(weight), cast(bias)


def gradients(needs, has_bias, grad_out, grad_input, grad_weight, out_index):
    """``(dx, dw, db)`` of one call, each None where not needed; the bias gradient is one ATen sum."""
    grad_x = grad_input() if needs[0] else None
    grad_w = grad_weight() if needs[1] else None
    grad_b = channel_grad_bias(grad_out, out_index) if has_bias and needs[2] else None
    return grad_x, grad_w, grad_b
