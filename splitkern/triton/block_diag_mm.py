"""Triton kernels for the ragged block-diagonal matmul (kernels and launchers only).

All groups run in ONE launch: the grid's second axis walks a precomputed tile table
(:class:`splitkern.layout.BlockLayout`), each program reads its group's offsets from
int32 tables and addresses every operand from one base pointer. Columns may be
gathered (input) and scattered (output) through index tables, so layers can take
and return activations in the original feature order.

``grouped_mm_kernel`` serves both the forward (``C = A @ W_g^T``, reducing over the
input group) and the input gradient (``C = A @ W_g``, reducing over the output
group): only the weight's strides differ. ``grouped_mm_weight_grad_kernel`` reduces
over the batch for every weight tile.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os

import torch
import triton
import triton.language as tl

from splitkern._conv import channel_grad_bias
from splitkern.triton._common import (block_tile, checked_grid, column_tile, group_range, index_or_dummy,
                                      input_precision, on_input_device)
from splitkern.triton._launch import launch
from splitkern.triton.configs import CONFIGS, MMConfig

# The dispatcher picks only from these (by batch bucket, dtype and whether every group size is a
# multiple of 8), read from kernel_configs.json (splitkern.triton.configs); the static kernel report
# compiles all of them and CI fails if any spills. The shipped tiles were chosen with that report
# (no GPU to time them): unaligned layouts cannot use 16-byte vector loads or cp.async, their
# per-element addresses cost registers, so their tiles are shallower (BLOCK_K = 32; 8 warps for 64+
# rows; the small-M swap tiles drop from ~250 to 128 registers with it); fp32 without tensor cores
# (ieee) needs 8 warps for 64-row tiles to fit.
FORWARD_CONFIGS = {cls: {int(bucket): cfg for bucket, cfg in buckets.items()}
                   for cls, buckets in CONFIGS["block_diag_mm"]["forward"].items()}
M_BUCKETS = tuple(sorted(next(iter(FORWARD_CONFIGS.values()))))
# block_m = batch chunk of the reduction, (block_n, block_k) = weight tile.
WEIGHT_GRAD_CONFIGS = {cls: shapes["any"] for cls, shapes in CONFIGS["block_diag_mm"]["weight_grad"].items()}


def config_table(dtype: torch.dtype, aligned: bool) -> dict[int, MMConfig]:
    if dtype == torch.float32:
        return FORWARD_CONFIGS["fp32"]
    return FORWARD_CONFIGS["16bit-aligned" if aligned else "16bit-ragged"]


def pick_config(m: int, dtype: torch.dtype, aligned: bool) -> MMConfig:
    """The forward/input-grad config for a batch of m rows."""
    bucket = next((b for b in M_BUCKETS if m <= b), M_BUCKETS[-1])
    return config_table(dtype, aligned)[bucket]


def weight_grad_config(dtype: torch.dtype) -> MMConfig:
    return WEIGHT_GRAD_CONFIGS["fp32" if dtype == torch.float32 else "16bit"]


@triton.jit
def _mm_tile(
    pid_m, tile,
    a_ptr, w_ptr, bias_ptr, c_ptr,
    a_cols_ptr, c_cols_ptr,
    tiles_ptr, red_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    M, stride_am, stride_ak, stride_cm, stride_cn,
    W_AS_IS: tl.constexpr, HAS_BIAS: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, SWAP_AB: tl.constexpr,
    ALIGNED: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C[:, out_g] = A[:, red_g] @ B_g (+ bias[out_g]) for row tile ``pid_m`` of column tile ``tile``.

    B_g = W_g^T (forward, W_AS_IS=False) or W_g (input gradient, W_AS_IS=True),
    where W_g is the row-major (n_g, k_g) block at w_ptr + w_offsets[g].
    ALIGNED: every group size is a multiple of 8 (so are all offsets), which lets
    the compiler use 16-byte vector loads and cp.async/wgmma pipelining.
    """
    g, col0, red_lo, red_size, out_lo, out_size = column_tile(tiles_ptr, tile, red_offsets_ptr, out_offsets_ptr,
                                                              ALIGNED, BLOCK_N)
    w_lo = group_range(w_offsets_ptr, g, ALIGNED)[0].to(tl.int64)
    # W_g's rows are k_g long: k_g is the reduction size forward, the output size backward.
    if W_AS_IS:
        stride_wr = out_size
        stride_wc = 1
    else:
        stride_wr = 1
        stride_wc = red_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = col0 + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_c = offs_c < out_size
    a_rows = offs_m.to(tl.int64) * stride_am
    w_cols = w_lo + offs_c.to(tl.int64) * stride_wc
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, red_size, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < red_size
        a_cols = red_lo + offs_k
        if GATHER_A:
            a_cols = tl.load(a_cols_ptr + a_cols, mask=mask_k, other=0)
        a_cols = a_cols.to(tl.int64) * stride_ak
        w_rows = offs_k.to(tl.int64) * stride_wr
        if SWAP_AB:
            a = tl.load(a_ptr + a_rows[None, :] + a_cols[:, None],
                        mask=mask_k[:, None] & mask_m[None, :], other=0.0)
            w = tl.load(w_ptr + w_cols[:, None] + w_rows[None, :],
                        mask=mask_c[:, None] & mask_k[None, :], other=0.0)
            acc = tl.dot(w, a, acc, input_precision=INPUT_PRECISION)
        else:
            a = tl.load(a_ptr + a_rows[:, None] + a_cols[None, :],
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            w = tl.load(w_ptr + w_rows[:, None] + w_cols[None, :],
                        mask=mask_k[:, None] & mask_c[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)

    c_cols = out_lo + offs_c
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c_cols, mask=mask_c, other=0.0).to(tl.float32)
        if SWAP_AB:
            acc += bias[:, None]
        else:
            acc += bias[None, :]
    if SCATTER_C:
        c_cols = tl.load(c_cols_ptr + c_cols, mask=mask_c, other=0)
    c_rows = offs_m.to(tl.int64) * stride_cm
    c_cols = c_cols.to(tl.int64) * stride_cn
    out = acc.to(c_ptr.dtype.element_ty)
    if SWAP_AB:
        tl.store(c_ptr + c_cols[:, None] + c_rows[None, :], out, mask=mask_c[:, None] & mask_m[None, :])
    else:
        tl.store(c_ptr + c_rows[:, None] + c_cols[None, :], out, mask=mask_m[:, None] & mask_c[None, :])


@triton.jit
def grouped_mm_kernel(
    a_ptr, w_ptr, bias_ptr, c_ptr,
    a_cols_ptr, c_cols_ptr,
    tiles_ptr, red_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    M, stride_am, stride_ak, stride_cm, stride_cn,
    W_AS_IS: tl.constexpr, HAS_BIAS: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, SWAP_AB: tl.constexpr,
    ALIGNED: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program per (row tile, column tile): grid = (cdiv(M, BLOCK_M), tiles)."""
    _mm_tile(tl.program_id(0), tl.program_id(1),
             a_ptr, w_ptr, bias_ptr, c_ptr, a_cols_ptr, c_cols_ptr,
             tiles_ptr, red_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
             M, stride_am, stride_ak, stride_cm, stride_cn,
             W_AS_IS, HAS_BIAS, GATHER_A, SCATTER_C, SWAP_AB, ALIGNED, INPUT_PRECISION,
             BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def grouped_mm_persistent_kernel(
    a_ptr, w_ptr, bias_ptr, c_ptr,
    a_cols_ptr, c_cols_ptr,
    tiles_ptr, red_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    M, stride_am, stride_ak, stride_cm, stride_cn,
    num_tiles, num_programs,
    W_AS_IS: tl.constexpr, HAS_BIAS: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, SWAP_AB: tl.constexpr,
    ALIGNED: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """``num_programs`` programs walk all (row tile, column tile) work items, ``num_programs`` apart.

    Order: row tiles in bands of GROUP_M; within a band, column tile by column tile, so
    GROUP_M consecutive items read the same weight tile (L2 reuse) and a band's activation
    rows are reused across every column tile before the next band starts.
    """
    row_tiles = tl.cdiv(M, BLOCK_M)
    band_items = GROUP_M * num_tiles
    for item in range(tl.program_id(0), row_tiles * num_tiles, num_programs):
        band = item // band_items
        first_row = band * GROUP_M
        band_rows = tl.minimum(row_tiles - first_row, GROUP_M)
        local = item - band * band_items
        _mm_tile(first_row + local % band_rows, local // band_rows,
                 a_ptr, w_ptr, bias_ptr, c_ptr, a_cols_ptr, c_cols_ptr,
                 tiles_ptr, red_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
                 M, stride_am, stride_ak, stride_cm, stride_cn,
                 W_AS_IS, HAS_BIAS, GATHER_A, SCATTER_C, SWAP_AB, ALIGNED, INPUT_PRECISION,
                 BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def grouped_mm_tma_kernel(
    a_ptr, w_ptr, bias_ptr, c_ptr,
    tiles_ptr, red_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    M, stride_am, stride_cm,
    W_AS_IS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """:func:`_mm_tile` on Hopper's TMA (grid = (cdiv(M, BLOCK_M), tiles)): each operand of the tile's group
    through a device-side tensor descriptor bounded by that group, so an edge tile's loads fill zeros past
    it and its store stops at it. Aligned layouts (every group size a multiple of 8, none empty), unit inner
    strides, 16-byte aligned rows, no index tables (:func:`tma_applies`)."""
    g, col0, red_lo, red_size, out_lo, out_size = column_tile(tiles_ptr, tl.program_id(1), red_offsets_ptr,
                                                              out_offsets_ptr, True, BLOCK_N)
    w_lo = group_range(w_offsets_ptr, g, True)[0].to(tl.int64)
    row0 = tl.program_id(0) * BLOCK_M
    a_desc = tl.make_tensor_descriptor(a_ptr + red_lo, shape=[M, red_size], strides=[stride_am, 1],
                                       block_shape=[BLOCK_M, BLOCK_K])
    c_desc = tl.make_tensor_descriptor(c_ptr + out_lo, shape=[M, out_size], strides=[stride_cm, 1],
                                       block_shape=[BLOCK_M, BLOCK_N])
    if W_AS_IS:  # input gradient: W_g is (red_size, out_size), reduced over its rows
        w_desc = tl.make_tensor_descriptor(w_ptr + w_lo, shape=[red_size, out_size], strides=[out_size, 1],
                                           block_shape=[BLOCK_K, BLOCK_N])
    else:  # forward: W_g is (out_size, red_size), reduced over its columns
        w_desc = tl.make_tensor_descriptor(w_ptr + w_lo, shape=[out_size, red_size], strides=[red_size, 1],
                                           block_shape=[BLOCK_N, BLOCK_K])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, red_size, BLOCK_K):
        a = a_desc.load([row0, k0])
        if W_AS_IS:
            b = w_desc.load([k0, col0])
        else:
            b = w_desc.load([col0, k0]).T
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        offs_c = col0 + tl.arange(0, BLOCK_N)
        acc += tl.load(bias_ptr + out_lo + offs_c, mask=offs_c < out_size, other=0.0).to(tl.float32)[None, :]
    c_desc.store([row0, col0], acc.to(c_ptr.dtype.element_ty))


@triton.jit
def grouped_mm_weight_grad_kernel(
    dy_ptr, x_ptr, dw_ptr,
    dy_cols_ptr, x_cols_ptr,
    tiles_ptr, in_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    M, stride_dym, stride_dyn, stride_xm, stride_xk,
    GATHER_DY: tl.constexpr, GATHER_X: tl.constexpr,
    ALIGNED: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dW_g[rows, cols] = dY[:, out_g rows]^T @ X[:, in_g cols] for the tile this program owns."""
    g, row0, col0, in_lo, in_size, out_lo, out_size = block_tile(tiles_ptr, tl.program_id(0), in_offsets_ptr,
                                                                 out_offsets_ptr, ALIGNED, BLOCK_N, BLOCK_K)
    w_lo = group_range(w_offsets_ptr, g, ALIGNED)[0].to(tl.int64)

    offs_n = row0 + tl.arange(0, BLOCK_N)
    offs_k = col0 + tl.arange(0, BLOCK_K)
    mask_n = offs_n < out_size
    mask_k = offs_k < in_size
    dy_cols = out_lo + offs_n
    if GATHER_DY:
        dy_cols = tl.load(dy_cols_ptr + dy_cols, mask=mask_n, other=0)
    x_cols = in_lo + offs_k
    if GATHER_X:
        x_cols = tl.load(x_cols_ptr + x_cols, mask=mask_k, other=0)
    dy_cols = dy_cols.to(tl.int64) * stride_dyn
    x_cols = x_cols.to(tl.int64) * stride_xk

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        offs_m = offs_m.to(tl.int64)
        dy_t = tl.load(dy_ptr + dy_cols[:, None] + offs_m[None, :] * stride_dym,
                       mask=mask_n[:, None] & mask_m[None, :], other=0.0)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + x_cols[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(dy_t, x, acc, input_precision=INPUT_PRECISION)

    dw = dw_ptr + w_lo + offs_n.to(tl.int64)[:, None] * in_size + offs_k[None, :]
    tl.store(dw, acc.to(dw_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_k[None, :])


@on_input_device
def block_diag_mm_grad_bias(grad_out, out_index=None):
    """Bias gradient in grouped order: ``db[j] = sum_m dy[m, out_index[j]]``.

    ATen's column reduction, then the gather (the conv's too): on an H200 a Triton column-sum
    kernel (one program per 128 columns walking every row) took 0.24 ms for a 4096 x 4096 bf16
    gradient, as long as the three GEMMs of the backward together.
    """
    return channel_grad_bias(grad_out, out_index)


# Device-side tensor descriptors (Triton >= 3.4); SPLITKERN_TRITON_TMA=0 keeps every launch on the pointer
# kernels (to measure one against the other).
HAS_TMA = hasattr(tl, "make_tensor_descriptor")
TMA = HAS_TMA and os.environ.get("SPLITKERN_TRITON_TMA", "1") != "0"


@functools.cache
def _hopper(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] == 9


def on_hopper(t: torch.Tensor) -> bool:
    """Whether ``t`` lives on an sm_90 GPU (where TMA exists)."""
    return t.is_cuda and _hopper(t.device)


def tma_applies(a, c, layout, cfg: MMConfig, a_index, c_index) -> bool:
    """Whether a forward / input-gradient launch of ``cfg`` writing ``c`` goes to :func:`grouped_mm_tma_kernel`:
    16-bit operands on an sm_90 GPU, an aligned layout without empty groups, no index tables, a tile config
    that is neither swapped nor persistent, unit inner strides, and row strides and pointers TMA can address
    (16-byte multiples)."""
    if not TMA or a_index is not None or c_index is not None or cfg.swap_ab or cfg.persistent:
        return False
    if a.dtype not in (torch.float16, torch.bfloat16) or not layout.aligned or 0 in layout.in_sizes + layout.out_sizes:
        return False
    if not on_hopper(a):
        return False
    row_bytes = a.element_size()
    return (a.stride(1) == 1 and c.stride(1) == 1 and (a.stride(0) * row_bytes) % 16 == 0
            and (c.stride(0) * row_bytes) % 16 == 0 and a.data_ptr() % 16 == 0 and c.data_ptr() % 16 == 0)


def _scratch(size: int, alignment: int, stream):
    """Global memory for the device-side tensor descriptors (Triton asks for it at launch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """Give Triton an allocator for descriptor scratch, unless one is set (per thread: a context variable)."""
    from triton.runtime import _allocation

    try:
        unset = isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
    except AttributeError:  # another Triton's internals: set ours
        unset = True
    if unset:
        triton.set_allocator(_scratch)


def _column_tile_grid(a, layout, w_as_is, cfg: MMConfig):
    """``(grid, tiles, (reduction offsets, column offsets, weight offsets))`` of a forward (``w_as_is`` False) or
    input-gradient launch over ``a``'s rows: row tiles x the column-tile table of the written side."""
    red_over, out_over = ("out", "in") if w_as_is else ("in", "out")
    in_offsets, out_offsets, w_offsets = layout.offsets(a.device)
    offsets = {"in": in_offsets, "out": out_offsets}
    tiles = layout.column_tiles(a.device, cfg.block_n, out_over)
    grid = checked_grid((triton.cdiv(a.shape[0], cfg.block_m), tiles.shape[0]), "block_diag_mm")
    return grid, tiles, (offsets[red_over], offsets[out_over], w_offsets)


def tma_launch(a, weight, bias, c, layout, w_as_is, cfg: MMConfig):
    """(grid, args, kwargs) of one :func:`grouped_mm_tma_kernel` launch writing ``c`` (also the report's)."""
    grid, tiles, tables = _column_tile_grid(a, layout, w_as_is, cfg)
    args = (a, weight, weight if bias is None else bias, c, tiles, *tables, a.shape[0], a.stride(0), c.stride(0))
    kwargs = dict(W_AS_IS=w_as_is, HAS_BIAS=bias is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                  BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return grid, args, kwargs


def mm_launch(a, weight, bias, c, layout, w_as_is, a_index, c_index, cfg: MMConfig):
    """(kernel, grid, args, kwargs) of the forward / input-gradient launch the dispatcher makes for ``cfg``:
    :func:`grouped_mm_tma_kernel` where :func:`tma_applies`, else ``mm_kernel(cfg)`` (the sweep times these)."""
    if tma_applies(a, c, layout, cfg, a_index, c_index):
        if a.is_cuda:
            _ensure_allocator()
        return (grouped_mm_tma_kernel, *tma_launch(a, weight, bias, c, layout, w_as_is, cfg))
    return (mm_kernel(cfg), *grouped_mm_launch(a, weight, bias, c, layout, w_as_is, a_index, c_index, cfg))


def mm_kernel(cfg: MMConfig):
    """The kernel a forward/input-gradient config launches: persistent or one program per tile."""
    return grouped_mm_persistent_kernel if cfg.persistent else grouped_mm_kernel


def _program_slots(device: torch.device, cfg: MMConfig) -> int:
    """Programs of a persistent launch: ``cfg.persistent`` per SM (the interpreter: that many in all)."""
    if device.type != "cuda":
        return cfg.persistent
    return torch.cuda.get_device_properties(device).multi_processor_count * cfg.persistent


def grouped_mm_launch(a, weight, bias, c, layout, w_as_is, a_index, c_index, cfg: MMConfig):
    """(grid, args, kwargs) of one ``mm_kernel(cfg)`` launch writing ``c``.

    Shared by the launchers and the static kernel report (which compiles exactly
    these arguments for sm_80/sm_90 without a GPU).
    """
    grid, tiles, tables = _column_tile_grid(a, layout, w_as_is, cfg)
    args = (a, weight, weight if bias is None else bias, c,
            index_or_dummy(a_index, tiles), index_or_dummy(c_index, tiles), tiles, *tables,
            a.shape[0], a.stride(0), a.stride(1), c.stride(0), c.stride(1))
    kwargs = dict(W_AS_IS=w_as_is, HAS_BIAS=bias is not None,
                  GATHER_A=a_index is not None, SCATTER_C=c_index is not None, SWAP_AB=cfg.swap_ab,
                  ALIGNED=layout.aligned, INPUT_PRECISION=input_precision(a.dtype),
                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.persistent:
        programs = min(grid[0] * grid[1], _program_slots(a.device, cfg))
        args += (grid[1], programs)
        kwargs["GROUP_M"] = cfg.group_m
        grid = (programs,)
    return grid, args, kwargs


def weight_grad_launch(grad_out, x, dw, layout, in_index, out_index, cfg: MMConfig):
    """(grid, args, kwargs) of one ``grouped_mm_weight_grad_kernel`` launch writing ``dw``."""
    in_offsets, out_offsets, w_offsets = layout.offsets(x.device)
    tiles = layout.block_tiles(x.device, cfg.block_n, cfg.block_k)
    args = (grad_out, x, dw,
            index_or_dummy(out_index, tiles), index_or_dummy(in_index, tiles),
            tiles, in_offsets, out_offsets, w_offsets,
            x.shape[0], grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1))
    kwargs = dict(GATHER_DY=out_index is not None, GATHER_X=in_index is not None,
                  ALIGNED=layout.aligned, INPUT_PRECISION=input_precision(x.dtype),
                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return (tiles.shape[0],), args, kwargs


def _launch_grouped_mm(a, weight, bias, layout, w_as_is, a_index, c_index):
    """Shared launcher of the forward (w_as_is=False) and the input gradient (True)."""
    n_out = layout.in_features if w_as_is else layout.out_features
    c = a.new_empty((a.shape[0], n_out))
    if a.shape[0] == 0 or n_out == 0:
        return c
    bias = None if bias is None else bias.contiguous()
    cfg = pick_config(a.shape[0], a.dtype, layout.aligned)
    kernel, *launch_ = mm_launch(a, weight.contiguous(), bias, c, layout, w_as_is, a_index, c_index, cfg)
    launch(kernel, *launch_)
    return c


@on_input_device
def block_diag_mm(x, weight, bias, layout, in_index=None, out_index=None):
    """Forward: (M, K) -> (M, N); see :func:`splitkern.ops.block_diag_mm`."""
    return _launch_grouped_mm(x, weight, bias, layout, False, in_index, out_index)


@on_input_device
def block_diag_mm_grad_input(grad_out, weight, layout, in_index=None, out_index=None):
    """Input gradient: (M, N) -> (M, K); gathers dY by out_index, scatters dX by in_index."""
    return _launch_grouped_mm(grad_out, weight, None, layout, True, out_index, in_index)


@on_input_device
def block_diag_mm_grad_weight(grad_out, x, layout, in_index=None, out_index=None):
    """Weight gradient, packed like the weight."""
    dw = x.new_empty((layout.weight_numel,))
    m = x.shape[0]
    if layout.weight_numel == 0:
        return dw
    if m == 0:
        return dw.zero_()
    grid, args, kwargs = weight_grad_launch(grad_out, x, dw, layout, in_index, out_index,
                                            weight_grad_config(x.dtype))
    launch(grouped_mm_weight_grad_kernel, grid, args, kwargs)
    return dw


def static_variants():
    """Every (kernel, config, dtype, flags) the dispatcher can launch, for the static report.

    Yields ``(kernel, label, args, kwargs, needs_tensor_cores)`` built by the real
    launch helpers from small CPU tensors, so they specialise as real launches do
    (16-byte aligned pointers, unit inner strides). Covers aligned layouts (all
    group sizes multiples of 8) and ragged ones, with and without fused indices.
    """
    from splitkern.layout import block_layout

    layouts = {"aligned": block_layout((64,) * 4, (64,) * 4),
               "ragged": block_layout((60, 68, 63, 65), (65, 63, 68, 60))}
    m = 256
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        dname = str(dtype).replace("torch.", "")
        for precision in ("ieee", "tf32") if dtype == torch.float32 else ("ieee",):
            tc = dtype != torch.float32 or precision == "tf32"
            prefix = dname + (f"-{precision}" if dtype == torch.float32 else "")
            for lname, layout in layouts.items():
                x = torch.empty(m, layout.in_features, dtype=dtype)
                y = torch.empty(m, layout.out_features, dtype=dtype)
                w = torch.empty(layout.weight_numel, dtype=dtype)
                b = torch.empty(layout.out_features, dtype=dtype)
                for indexed in (False, True):
                    ii = torch.arange(layout.in_features) if indexed else None
                    oi = torch.arange(layout.out_features) if indexed else None
                    tag = f"{prefix}-{lname}" + ("-indexed" if indexed else "")
                    launches = [(f"grad_weight-{tag}", grouped_mm_weight_grad_kernel,
                                 weight_grad_launch(y, x, w, layout, ii, oi, weight_grad_config(dtype)))]
                    for bucket, cfg in config_table(dtype, layout.aligned).items():
                        launches += [
                            (f"forward-{tag}-m{bucket}", mm_kernel(cfg),
                             grouped_mm_launch(x, w, b, y, layout, False, ii, oi, cfg)),
                            (f"grad_input-{tag}-m{bucket}", mm_kernel(cfg),
                             grouped_mm_launch(y, w, None, x, layout, True, oi, ii, cfg)),
                        ]
                    if dtype != torch.float32 and not indexed:  # the persistent launch the sweep may pick
                        cfg = dataclasses.replace(config_table(dtype, layout.aligned)[M_BUCKETS[-1]], persistent=2)
                        launches += [(f"forward-{tag}-m{M_BUCKETS[-1]}-persistent", mm_kernel(cfg),
                                      grouped_mm_launch(x, w, b, y, layout, False, ii, oi, cfg))]
                    for label, kernel, (_, args, kw) in launches:
                        yield kernel, label, args, {**kw, "INPUT_PRECISION": precision}, tc
                    if HAS_TMA and dtype != torch.float32 and layout.aligned and not indexed:
                        yield from _tma_variants(tag, x, y, w, b, layout)
    yield from _user_shape_variants()


def _tma_variants(tag, x, y, w, b, layout):
    """The TMA launches (sm_90 only: their labels end in ``-sm90``) of every bucket whose tiles take it."""
    for bucket, cfg in config_table(x.dtype, True).items():
        if cfg.swap_ab or cfg.persistent:
            continue
        for label, launch_ in ((f"forward-{tag}-m{bucket}-tma-sm90", tma_launch(x, w, b, y, layout, False, cfg)),
                               (f"grad_input-{tag}-m{bucket}-tma-sm90", tma_launch(y, w, None, x, layout, True, cfg))):
            yield grouped_mm_tma_kernel, label, launch_[1], launch_[2], True


def _user_shape_variants():
    """What users hit beyond the M = 256, 16-divisible case above: M = 1 (M becomes a constant), M = 17,
    K and N = 8 (mod 16) (strides not 16-divisible) and ragged sizes; 16-bit and both fp32 precisions."""
    from splitkern.layout import block_layout

    layouts = {"k8mod16": block_layout((72, 64, 64, 64), (64, 64, 64, 72)),
               "ragged": block_layout((60, 68, 63, 65), (65, 63, 68, 60))}
    for dtype, precision in ((torch.bfloat16, "ieee"), (torch.float32, "ieee"), (torch.float32, "tf32")):
        tc = dtype != torch.float32 or precision == "tf32"
        prefix = str(dtype).replace("torch.", "") + (f"-{precision}" if dtype == torch.float32 else "")
        for (lname, layout), m in itertools.product(layouts.items(), (1, 17)):
            x = torch.empty(m, layout.in_features, dtype=dtype)
            y = torch.empty(m, layout.out_features, dtype=dtype)
            w = torch.empty(layout.weight_numel, dtype=dtype)
            b = torch.empty(layout.out_features, dtype=dtype)
            cfg = pick_config(m, dtype, layout.aligned)
            tag = f"{prefix}-{lname}-M{m}"
            launches = [(f"forward-{tag}", mm_kernel(cfg),
                         grouped_mm_launch(x, w, b, y, layout, False, None, None, cfg)),
                        (f"grad_input-{tag}", mm_kernel(cfg),
                         grouped_mm_launch(y, w, None, x, layout, True, None, None, cfg))]
            if m > 1:
                launches.append((f"grad_weight-{tag}", grouped_mm_weight_grad_kernel,
                                 weight_grad_launch(y, x, w, layout, None, None, weight_grad_config(dtype))))
            for label, kernel, (_, args, kw) in launches:
                yield kernel, label, args, {**kw, "INPUT_PRECISION": precision}, tc
