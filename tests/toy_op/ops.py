"""The toy op's op layer: its custom op (schema from the registry), fake, autograd and public function."""

import torch
from torch import Tensor

from splitkern.ops._checks import check_tensor
from splitkern.ops._dispatch import implementation
from splitkern.registry import custom_op


@custom_op("toy_scale")
def _toy_scale(x: Tensor, alpha: float) -> Tensor:
    return implementation("toy_scale", x).toy_scale(x, alpha)


@_toy_scale.register_fake
def toy_scale_fake(x, alpha):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    ctx.alpha = inputs[1]


def _backward(ctx, grad_out):
    return _toy_scale(grad_out, ctx.alpha), None


_toy_scale.register_autograd(_backward, setup_context=_setup_context)


def toy_scale(x: Tensor, alpha: float) -> Tensor:
    """``alpha * x``, differentiable in x."""
    check_tensor(x, "x")
    return _toy_scale(x, float(alpha))
