"""Helpers every Triton kernel file shares: interpreter flag, device guard, launch checks, tile tables.

Kernel files (:mod:`splitkern.triton.block_diag_mm`, ``grouped_conv``, ``group_weight_reg``)
import these from here, never from one another.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from splitkern import precision

INTERPRETED = bool(triton.knobs.runtime.interpret)

GRID_LIMITS = (2**31 - 1, 65535, 65535)  # CUDA's maximum grid size per axis


def on_input_device(fn):
    """Run ``fn`` with its first argument's CUDA device current. Triton launches on the current
    device (and its current stream), not on the device of the tensors it is given: a layer on
    cuda:1 called while cuda:0 is current would otherwise run on the wrong GPU."""
    @functools.wraps(fn)
    def run(first, *args, **kwargs):
        if not first.is_cuda or first.get_device() == torch.cuda.current_device():
            return fn(first, *args, **kwargs)  # (a device guard costs microseconds per call: only when needed)
        with torch.cuda.device(first.device):
            return fn(first, *args, **kwargs)
    return run


def input_precision(dtype: torch.dtype, kind: str = "matmul") -> str:
    """``tl.dot``'s ``input_precision`` for operands of ``dtype`` in a ``kind`` ("matmul"/"conv")
    kernel, under this process's settings (see :func:`splitkern.precision.input_precision`)."""
    return precision.input_precision(dtype, kind, interpreted=INTERPRETED)


def checked_grid(grid: tuple[int, ...], what: str) -> tuple[int, ...]:
    """``grid`` unchanged, or a ``ValueError`` naming ``what`` when an axis exceeds CUDA's limit
    (a launch past it fails with an opaque driver error, or not at all under the interpreter)."""
    for axis, (size, limit) in enumerate(zip(grid, GRID_LIMITS)):
        if size > limit:
            raise ValueError(f"{what}: {size:,} program tiles on grid axis {axis} exceed CUDA's limit of "
                             f"{limit:,}; split the batch or the layer")
    return grid


def index_or_dummy(index: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``index`` made contiguous, or ``like`` as a never-read placeholder pointer when ``index`` is None
    (the kernel's GATHER/SCATTER flag is then off)."""
    return like if index is None else index.contiguous()


@triton.jit
def group_range(offsets_ptr, g, ALIGNED: tl.constexpr):
    """(start, size) of group g in an offsets table; multiples of 8 when ALIGNED."""
    lo = tl.load(offsets_ptr + g)
    size = tl.load(offsets_ptr + g + 1) - lo
    if ALIGNED:
        lo = tl.multiple_of(lo, 8)
        size = tl.multiple_of(size, 8)
    return lo, size


@triton.jit
def column_tile(tiles_ptr, tile, red_offsets_ptr, col_offsets_ptr, ALIGNED: tl.constexpr, BLOCK_N: tl.constexpr):
    """Entry ``tile`` of a column-tile table ((group, first column) pairs, see
    :meth:`splitkern.layout.BlockLayout.column_tiles`): its group g, first column, and g's
    (start, size) in the reduction's and in the columns' offsets tables."""
    g = tl.load(tiles_ptr + 2 * tile)
    col0 = tl.multiple_of(tl.load(tiles_ptr + 2 * tile + 1), BLOCK_N)
    red_lo, red_size = group_range(red_offsets_ptr, g, ALIGNED)
    col_lo, col_size = group_range(col_offsets_ptr, g, ALIGNED)
    return g, col0, red_lo, red_size, col_lo, col_size


@triton.jit
def block_tile(tiles_ptr, tile, in_offsets_ptr, out_offsets_ptr,
               ALIGNED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Entry ``tile`` of a weight-block tile table ((group, first row, first column) triples, see
    :meth:`splitkern.layout.BlockLayout.block_tiles`): its group g, first (output) row and first
    (input) column, and g's (start, size) in the input and in the output offsets tables."""
    g = tl.load(tiles_ptr + 3 * tile)
    row0 = tl.multiple_of(tl.load(tiles_ptr + 3 * tile + 1), BLOCK_N)
    col0 = tl.multiple_of(tl.load(tiles_ptr + 3 * tile + 2), BLOCK_K)
    in_lo, in_size = group_range(in_offsets_ptr, g, ALIGNED)
    out_lo, out_size = group_range(out_offsets_ptr, g, ALIGNED)
    return g, row0, col0, in_lo, in_size, out_lo, out_size
