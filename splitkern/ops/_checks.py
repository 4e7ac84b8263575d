"""Argument checks shared by the public op wrappers: cheap, host-side, no device sync."""

from __future__ import annotations

import torch


def check_tensor(t, name: str, *, floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t


def check_like(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """``t`` must share ``ref``'s dtype (TypeError) and device (ValueError)."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; cast one of them")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_shape(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def is_identity(index: torch.Tensor) -> bool:
    """Whether ``index`` is ``0..len(index)-1`` (read on the host: call it off the hot path)."""
    index = index.detach().cpu()
    return torch.equal(index, torch.arange(index.numel(), dtype=index.dtype))


def check_permutation(index, name: str, length: int, device: torch.device) -> torch.Tensor | None:
    """A column index table: int64 permutation of ``range(length)`` on ``device``.

    Its contents are checked only for CPU tensors in eager mode (checking a CUDA
    tensor would synchronise, a traced one has no data); layers check theirs once
    when they are built.
    """
    if index is None:
        return None
    check_tensor(index, name, floating=False)
    if index.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 (LongTensor) index, got {index.dtype}")
    check_shape(index, name, (length,))
    if index.device != device:
        raise ValueError(f"{name} is on {index.device} but the activations are on {device}")
    if index.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.equal(
            torch.sort(index).values, torch.arange(length, device=index.device)):
        raise ValueError(f"{name} must be a permutation of range({length})")
    return index.contiguous()


def check_block_operands(x, weight, bias, weight_numel: int, out_features: int) -> None:
    """weight ``(weight_numel,)`` and bias ``(out_features,)`` (or None), both like x."""
    check_like(weight, "weight", x, "x")
    check_shape(weight, "weight", (weight_numel,))
    if bias is not None:
        check_tensor(bias, "bias")
        check_like(bias, "bias", x, "x")
        check_shape(bias, "bias", (out_features,))


def check_indices(in_index, out_index, layout, device):
    """Validated ``(in_index, out_index)`` permutations for a layout (see :func:`check_permutation`)."""
    return (check_permutation(in_index, "in_index", layout.in_features, device),
            check_permutation(out_index, "out_index", layout.out_features, device))
