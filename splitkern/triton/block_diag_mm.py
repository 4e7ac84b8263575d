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

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

INTERPRETED = bool(triton.knobs.runtime.interpret)


@dataclass(frozen=True)
class MMConfig:
    """Tile shape and launch parameters of one kernel variant."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    swap_ab: bool = False  # small M: features fill the MMA rows, the batch its columns


# The dispatcher picks only from these; the static kernel report compiles all of them.
FORWARD_CONFIGS = {
    "m16": MMConfig(16, 64, 64, 4, 4, swap_ab=True),
    "m32": MMConfig(32, 64, 64, 4, 4, swap_ab=True),
    "m64": MMConfig(64, 128, 64, 4, 4),
    "m128": MMConfig(128, 128, 64, 8, 3),
}
FORWARD_CONFIGS_FP32 = {
    "m16": MMConfig(16, 64, 32, 4, 3, swap_ab=True),
    "m32": MMConfig(32, 64, 32, 4, 3, swap_ab=True),
    "m64": MMConfig(64, 64, 32, 4, 3),
    "m128": MMConfig(128, 64, 32, 4, 3),
}
WEIGHT_GRAD_CONFIG = MMConfig(64, 128, 64, 8, 3)  # block_m = batch chunk, (block_n, block_k) = weight tile
WEIGHT_GRAD_CONFIG_FP32 = MMConfig(32, 64, 64, 4, 3)


def pick_config(m: int, dtype: torch.dtype) -> MMConfig:
    """The forward/input-grad config for a batch of m rows."""
    table = FORWARD_CONFIGS_FP32 if dtype == torch.float32 else FORWARD_CONFIGS
    for key, limit in (("m16", 16), ("m32", 32), ("m64", 64)):
        if m <= limit:
            return table[key]
    return table["m128"]


def weight_grad_config(dtype: torch.dtype) -> MMConfig:
    return WEIGHT_GRAD_CONFIG_FP32 if dtype == torch.float32 else WEIGHT_GRAD_CONFIG


@triton.jit
def grouped_mm_kernel(
    a_ptr, w_ptr, bias_ptr, c_ptr,
    a_cols_ptr, c_cols_ptr,
    tiles_ptr, red_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    M, stride_am, stride_ak, stride_cm, stride_cn,
    W_AS_IS: tl.constexpr, HAS_BIAS: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, SWAP_AB: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C[:, out_g] = A[:, red_g] @ B_g (+ bias[out_g]) for the tile this program owns.

    B_g = W_g^T (forward, W_AS_IS=False) or W_g (input gradient, W_AS_IS=True),
    where W_g is the row-major (n_g, k_g) block at w_ptr + w_offsets[g].
    """
    pid_m = tl.program_id(0)
    tile = tl.program_id(1)
    g = tl.load(tiles_ptr + 2 * tile)
    col0 = tl.load(tiles_ptr + 2 * tile + 1)
    red_lo = tl.load(red_offsets_ptr + g)
    red_size = tl.load(red_offsets_ptr + g + 1) - red_lo
    out_lo = tl.load(out_offsets_ptr + g)
    out_size = tl.load(out_offsets_ptr + g + 1) - out_lo
    w_lo = tl.load(w_offsets_ptr + g).to(tl.int64)
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
def grouped_mm_weight_grad_kernel(
    dy_ptr, x_ptr, dw_ptr,
    dy_cols_ptr, x_cols_ptr,
    tiles_ptr, in_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    M, stride_dym, stride_dyn, stride_xm, stride_xk,
    GATHER_DY: tl.constexpr, GATHER_X: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dW_g[rows, cols] = dY[:, out_g rows]^T @ X[:, in_g cols] for the tile this program owns."""
    tile = tl.program_id(0)
    g = tl.load(tiles_ptr + 3 * tile)
    row0 = tl.load(tiles_ptr + 3 * tile + 1)
    col0 = tl.load(tiles_ptr + 3 * tile + 2)
    in_lo = tl.load(in_offsets_ptr + g)
    in_size = tl.load(in_offsets_ptr + g + 1) - in_lo
    out_lo = tl.load(out_offsets_ptr + g)
    out_size = tl.load(out_offsets_ptr + g + 1) - out_lo
    w_lo = tl.load(w_offsets_ptr + g).to(tl.int64)

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


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not INTERPRETED and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _index_or_dummy(index: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like if index is None else index.contiguous()


def _launch_grouped_mm(a, weight, bias, layout, w_as_is, a_index, c_index):
    """Shared launcher of the forward (w_as_is=False) and the input gradient (True)."""
    m = a.shape[0]
    red_over, out_over = ("out", "in") if w_as_is else ("in", "out")
    n_out = layout.in_features if w_as_is else layout.out_features
    c = a.new_empty((m, n_out))
    if m == 0 or n_out == 0:
        return c
    weight = weight.contiguous()
    cfg = pick_config(m, a.dtype)
    in_offsets, out_offsets, w_offsets = layout.offsets(a.device)
    offsets = {"in": in_offsets, "out": out_offsets}
    tiles = layout.column_tiles(a.device, cfg.block_n, out_over)
    grid = (triton.cdiv(m, cfg.block_m), tiles.shape[0])
    grouped_mm_kernel[grid](
        a, weight, weight if bias is None else bias.contiguous(), c,
        _index_or_dummy(a_index, tiles), _index_or_dummy(c_index, tiles),
        tiles, offsets[red_over], offsets[out_over], w_offsets,
        m, a.stride(0), a.stride(1), c.stride(0), c.stride(1),
        W_AS_IS=w_as_is, HAS_BIAS=bias is not None,
        GATHER_A=a_index is not None, SCATTER_C=c_index is not None, SWAP_AB=cfg.swap_ab,
        INPUT_PRECISION=_input_precision(a.dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return c


def block_diag_mm(x, weight, bias, layout, in_index=None, out_index=None):
    """Forward: (M, K) -> (M, N); see :func:`splitkern.ops.block_diag_mm`."""
    return _launch_grouped_mm(x, weight, bias, layout, False, in_index, out_index)


def block_diag_mm_grad_input(grad_out, weight, layout, in_index=None, out_index=None):
    """Input gradient: (M, N) -> (M, K); gathers dY by out_index, scatters dX by in_index."""
    return _launch_grouped_mm(grad_out, weight, None, layout, True, out_index, in_index)


def block_diag_mm_grad_weight(grad_out, x, layout, in_index=None, out_index=None):
    """Weight gradient, packed like the weight."""
    dw = x.new_empty((layout.weight_numel,))
    m = x.shape[0]
    if layout.weight_numel == 0:
        return dw
    if m == 0:
        return dw.zero_()
    cfg = weight_grad_config(x.dtype)
    in_offsets, out_offsets, w_offsets = layout.offsets(x.device)
    tiles = layout.block_tiles(x.device, cfg.block_n, cfg.block_k)
    grouped_mm_weight_grad_kernel[(tiles.shape[0],)](
        grad_out, x, dw,
        _index_or_dummy(out_index, tiles), _index_or_dummy(in_index, tiles),
        tiles, in_offsets, out_offsets, w_offsets,
        m, grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1),
        GATHER_DY=out_index is not None, GATHER_X=in_index is not None,
        INPUT_PRECISION=_input_precision(x.dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dw
