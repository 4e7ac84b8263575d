"""What every op file needs to reach its kernels: the backend's module and the cached layout."""

from __future__ import annotations

from torch import Tensor

from splitkern import backend
from splitkern.layout import BlockLayout, block_layout


def kernels(op: str, t: Tensor):
    """The ``splitkern.<backend>.<op>`` module chosen for tensors like ``t``."""
    return backend.implementation(op, t.device, t.dtype)


def cached_layout(in_sizes, out_sizes) -> BlockLayout:
    """The cached layout (device tables included) of these group sizes."""
    return block_layout(tuple(in_sizes), tuple(out_sizes))
