"""Ragged block-diagonal matmul: custom-op registration, fake impls, autograd, dispatch."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from splitkern.layout import BlockLayout, block_layout, check_sizes
from splitkern.registry import custom_op
from splitkern.ops._dispatch import autocast_operands, cached_layout, gradients, implementation
from splitkern.ops._checks import check_block_operands, check_indices, check_like, check_tensor

_OP = "block_diag_mm"


def _backend(t: Tensor):
    """The backend module that runs this op for tensors like ``t``."""
    return implementation(_OP, t)


@custom_op("block_diag_mm")
def _block_diag_mm(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_sizes: list[int],
                   out_sizes: list[int], in_index: Optional[Tensor], out_index: Optional[Tensor]) -> Tensor:
    layout = cached_layout(in_sizes, out_sizes)
    return _backend(x).block_diag_mm(x, weight, bias, layout, in_index, out_index)


@custom_op("block_diag_mm_grad_input")
def _block_diag_mm_grad_input(grad_out: Tensor, weight: Tensor, in_sizes: list[int], out_sizes: list[int],
                              in_index: Optional[Tensor], out_index: Optional[Tensor]) -> Tensor:
    layout = cached_layout(in_sizes, out_sizes)
    return _backend(grad_out).block_diag_mm_grad_input(grad_out, weight, layout, in_index, out_index)


@custom_op("block_diag_mm_grad_weight")
def _block_diag_mm_grad_weight(grad_out: Tensor, x: Tensor, in_sizes: list[int], out_sizes: list[int],
                               in_index: Optional[Tensor], out_index: Optional[Tensor]) -> Tensor:
    layout = cached_layout(in_sizes, out_sizes)
    return _backend(x).block_diag_mm_grad_weight(grad_out, x, layout, in_index, out_index)


@custom_op("block_diag_mm_grad_bias")
def _block_diag_mm_grad_bias(grad_out: Tensor, out_index: Optional[Tensor]) -> Tensor:
    return _backend(grad_out).block_diag_mm_grad_bias(grad_out, out_index)


@_block_diag_mm_grad_bias.register_fake
def block_diag_mm_grad_bias_fake(grad_out, out_index):
    return grad_out.new_empty((grad_out.shape[1],))


@_block_diag_mm.register_fake
def block_diag_mm_fake(x, weight, bias, in_sizes, out_sizes, in_index, out_index):
    return x.new_empty((x.shape[0], sum(out_sizes)))


@_block_diag_mm_grad_input.register_fake
def block_diag_mm_grad_input_fake(grad_out, weight, in_sizes, out_sizes, in_index, out_index):
    return grad_out.new_empty((grad_out.shape[0], sum(in_sizes)))


@_block_diag_mm_grad_weight.register_fake
def block_diag_mm_grad_weight_fake(grad_out, x, in_sizes, out_sizes, in_index, out_index):
    return x.new_empty((sum(k * n for k, n in zip(in_sizes, out_sizes)),))


def _setup_context(ctx, inputs, output):
    x, weight, bias, in_sizes, out_sizes, in_index, out_index = inputs
    ctx.save_for_backward(x, weight, in_index, out_index)
    ctx.sizes = (in_sizes, out_sizes)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight, in_index, out_index = ctx.saved_tensors
    in_sizes, out_sizes = ctx.sizes
    grads = gradients(ctx.needs_input_grad, ctx.has_bias, grad_out,
                       lambda: _block_diag_mm_grad_input(grad_out, weight, in_sizes, out_sizes, in_index, out_index),
                       lambda: _block_diag_mm_grad_weight(grad_out, x, in_sizes, out_sizes, in_index, out_index),
                       out_index)
    return *grads, None, None, None, None


_block_diag_mm.register_autograd(_backward, setup_context=_setup_context)


class EagerBlockDiagMM(torch.autograd.Function):
    """The op's eager path: the same kernels as ``torch.ops.splitkern.block_diag_mm`` and its backward, called
    directly on a backend module chosen once (no custom-op dispatch, no per-call backend selection).

    ``apply(x, weight, bias, kernels, layout, in_index, out_index)`` with ``x`` ``(M, K)``: the split layers run
    this outside ``torch.compile``, ``torch.export``, tracing and functorch, where nothing needs to see the
    registered op; it computes bit for bit what the op computes on the same backend.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, kernels, layout, in_index, out_index):
        ctx.save_for_backward(x, weight)
        ctx.call = (kernels, layout, in_index, out_index, bias is not None)
        return kernels.block_diag_mm(x, weight, bias, layout, in_index, out_index)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        kernels, layout, in_index, out_index, has_bias = ctx.call
        grads = gradients(ctx.needs_input_grad, has_bias, grad_out,
                           lambda: kernels.block_diag_mm_grad_input(grad_out, weight, layout, in_index, out_index),
                           lambda: kernels.block_diag_mm_grad_weight(grad_out, x, layout, in_index, out_index),
                           out_index)
        return *grads, None, None, None, None


def block_diag_mm(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                  in_sizes, out_sizes, in_index: Optional[Tensor] = None,
                  out_index: Optional[Tensor] = None) -> Tensor:
    """Ragged block-diagonal matmul: a linear layer whose weight is block-diagonal.

    For G groups with input sizes ``k_g`` and output sizes ``n_g`` (any
    non-negative ints, equal or not)::

        xg = x[..., in_index]                  (or x when in_index is None)
        yg[..., out_g] = xg[..., in_g] @ W_g.T + bias[out_g]
        y[..., out_index] = yg                 (or y = yg when out_index is None)

    where ``in_g``/``out_g`` are the g-th consecutive column ranges and ``W_g`` is
    the g-th block of the packed weight.

    Args:
        x: ``(..., K)`` floating tensor, ``K = sum(in_sizes)``; any strides.
        weight: ``(sum_g n_g * k_g,)`` packed weight: block g is the row-major
            ``(n_g, k_g)`` matrix stored after blocks ``0..g-1``.
        bias: optional ``(N,)``, ``N = sum(out_sizes)``, in grouped order.
        in_sizes, out_sizes: G group sizes each (G >= 1). A group with
            ``k_g = 0`` outputs its bias; one with ``n_g = 0`` outputs nothing.
        in_index: optional int64 permutation of ``range(K)``: grouped input
            column j is ``x[..., in_index[j]]`` (fused gather).
        out_index: optional int64 permutation of ``range(N)``: grouped output
            column j is written to ``y[..., out_index[j]]`` (fused scatter).

    Returns:
        ``(..., N)`` tensor of x's dtype.

    Differentiable in x, weight and bias (once; the backward is not itself
    differentiable). Runs on the backend chosen by :mod:`splitkern.backend`;
    accumulates in fp32 on the Triton backend. Index contents are validated for
    CPU tensors only (a CUDA check would synchronise). Under ``torch.autocast`` the
    operands are cast to the autocast dtype first (as ``F.linear`` is), so the
    result has that dtype.
    """
    check_tensor(x, "x")
    check_tensor(weight, "weight")
    layout = block_layout(check_sizes(in_sizes, "in_sizes"), check_sizes(out_sizes, "out_sizes"))
    _check_input(x, layout)
    x, weight, bias = autocast_operands(x, weight, bias)
    check_block_operands(x, weight, bias, layout.weight_numel, layout.out_features)
    in_index, out_index = check_indices(in_index, out_index, layout, x.device)
    return _call(x, weight, bias, layout, in_index, out_index)


def block_diag_mm_on_layout(x: Tensor, weight: Tensor, bias: Optional[Tensor], layout: BlockLayout,
                            in_index: Optional[Tensor] = None, out_index: Optional[Tensor] = None) -> Tensor:
    """:func:`block_diag_mm` for a layer's own operands: ``weight``, ``bias`` and the indices were
    validated against the cached ``layout`` when the layer was built, so only ``x`` is checked here
    (docs/design.md §3: validation once, at the boundary)."""
    check_tensor(x, "x")
    x, weight, bias = autocast_operands(x, weight, bias)
    check_layer_input(x, weight, layout)
    return _call(x, weight, bias, layout, in_index, out_index)


def check_layer_input(x, weight: Tensor, layout: BlockLayout) -> None:
    """``x`` is a tensor of ``(..., layout.in_features)`` with ``weight``'s dtype and device: what
    :func:`block_diag_mm_on_layout` checks (after autocast's casts), without computing."""
    check_tensor(x, "x")
    _check_input(x, layout)
    check_like(weight, "weight", x, "x")


def _check_input(x: Tensor, layout: BlockLayout) -> None:
    """x (a tensor) fits the layout."""
    if x.dim() < 1 or x.shape[-1] != layout.in_features:
        raise ValueError(f"x must have shape (..., {layout.in_features}) (sum of in_sizes), "
                         f"got {tuple(x.shape)}")


def _call(x, weight, bias, layout: BlockLayout, in_index, out_index) -> Tensor:
    lead = x.shape[:-1]
    y = _block_diag_mm(x.reshape(lead.numel(), layout.in_features), weight, bias,
                       list(layout.in_sizes), list(layout.out_sizes), in_index, out_index)
    return y.reshape(*lead, layout.out_features)
