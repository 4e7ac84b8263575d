"""Triton implicit-GEMM kernels for the ragged grouped 2-D convolution.

One launch covers all groups (tile table over channel tiles, int32 group offset
tables, one base pointer per operand). Activations are addressed through their
four strides, so NCHW and channels_last both work; channels may be gathered
(input) and scattered (output) through index tables.

* forward: rows = output pixels (n, ho, wo), columns = the group's output channels,
  reduction over (kh, kw, input channels of the group);
* grad_input: rows = input pixels, columns = the group's input channels, reduction
  over (kh, kw, output channels), with the stride handled by masking taps whose
  source position is not on the stride grid;
* grad_weight: one program per (group, out-channel tile, in-channel tile, tap),
  reduction over output pixels.

The op's weight is packed per group in PyTorch's ``(c_out_g, c_in_g, kh, kw)`` order, taps innermost: an
18-byte stride between a tile's channels (3x3, 16-bit), which no vector load or cp.async can pipeline. The
kernels read it re-packed taps outer (:func:`taps_outer`: per group ``(taps, c_in_g, c_out_g)`` for the forward,
``(taps, c_out_g, c_in_g)`` for the input gradient), so a weight tile is rows of contiguous channels. Training
re-packs on every call (one gather of the weight); an inference plan packs once (:func:`prepare_weight`).
Tile widths follow the groups' widths (:func:`conv_config`), the forward's pixel addresses are computed once
per tile and moved by a scalar per tap, and the weight gradient splits its pixel reduction across programs
when its tiles alone would not fill the GPU (:func:`weight_grad_splits`).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import triton
import triton.language as tl

from splitkern._conv import new_activation, output_shape
from splitkern.triton._common import (block_tile, checked_grid, column_tile, group_range, index_or_dummy,
                                      input_precision, on_input_device)
from splitkern.triton._launch import launch
from splitkern.triton.configs import CONFIGS, MMConfig

# Pixel tile x channel tile x reduction chunk, picked with the static kernel report:
# the weight is read with per-element addresses (taps are innermost in the packed
# OIHW blocks), so 128-pixel 16-bit tiles need 8 warps and fp32 a 16-deep chunk to
# stay spill-free on sm_80 and sm_90.
CONV_CONFIGS = {cls: shapes["any"] for cls, shapes in CONFIGS["grouped_conv"]["forward"].items()}
CONV_WEIGHT_GRAD_CONFIGS = {cls: shapes["any"] for cls, shapes in CONFIGS["grouped_conv"]["weight_grad"].items()}


def _narrowed(widest_group: int, largest: int) -> int:
    """A tile width for groups of at most ``widest_group`` channels: the smallest power of two that holds one,
    16 at least (``tl.dot``'s minimum), ``largest`` (the config's) at most; a 32-channel group in a 64-wide
    tile computes half a tile of zeros."""
    return max(16, min(largest, triton.next_power_of_2(max(widest_group, 1))))


def conv_config(dtype: torch.dtype, layout=None, over: str = "out") -> MMConfig:
    """The forward / input-gradient config for ``dtype``; with ``layout`` its channel tile (``over="out"``: the
    forward's output channels, ``"in"``: the input gradient's input channels) and reduction chunk narrowed to
    the widest group they tile."""
    cfg = CONV_CONFIGS["fp32" if dtype == torch.float32 else "16bit"]
    if layout is None:
        return cfg
    cols, red = (layout.out_sizes, layout.in_sizes) if over == "out" else (layout.in_sizes, layout.out_sizes)
    return dataclasses.replace(cfg, block_n=_narrowed(max(cols), cfg.block_n),
                               block_k=_narrowed(max(red), cfg.block_k))


def conv_weight_grad_config(dtype: torch.dtype, layout=None) -> MMConfig:
    """The weight-gradient config; with ``layout`` its input-column tile narrowed to the widest group. Its
    output rows are the MMA's M: Hopper's wgmma needs 64 of them, so they stay as the table has them."""
    cfg = CONV_WEIGHT_GRAD_CONFIGS["fp32" if dtype == torch.float32 else "16bit"]
    if layout is None:
        return cfg
    return dataclasses.replace(cfg, block_k=_narrowed(max(layout.in_sizes), cfg.block_k))


def tile_widths(largest: int) -> list[int]:
    """Every width :func:`_narrowed` can give a tile of at most ``largest`` (device tables are built for each)."""
    return [w for w in (16, 32, 64, 128, 256) if w <= max(16, largest)]


def taps_outer(weight: torch.Tensor, layout, taps: int, order: str) -> torch.Tensor:
    """``weight`` (packed ``(c_out_g, c_in_g, kh, kw)`` per group) re-packed per group as ``(taps, c_in_g,
    c_out_g)`` (``order="forward"``) or ``(taps, c_out_g, c_in_g)`` (``"grad_input"``), one gather; group g
    keeps its offset."""
    return weight.index_select(0, layout.tap_permutation(weight.device, taps, order))


@dataclasses.dataclass(frozen=True)
class PreparedConvWeight:
    """A conv weight packed for the forward kernel once, for an inference plan to keep: ``taps_outer`` is
    :func:`taps_outer` (``"forward"``) of the op's packed weight."""

    taps_outer: torch.Tensor


def prepare_weight(weight: torch.Tensor, layout, kernel_size) -> PreparedConvWeight:
    """``weight`` (the op's packing) as :func:`grouped_conv` reads it, packed now instead of on every call."""
    return PreparedConvWeight(taps_outer(weight.contiguous(), layout, kernel_size[0] * kernel_size[1], "forward"))


def weight_grad_splits(device: torch.device, programs: int, pixel_blocks: int, sms: int | None = None) -> int:
    """Pixel splits of a weight-gradient launch of ``programs`` (tile, tap) programs over ``pixel_blocks``
    pixel blocks: enough for two programs per SM (``sms``, default the device's; 1 off CUDA), each split
    reducing 4 pixel blocks at least (its partial sums cost a write and a read of the weight)."""
    if sms is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0
    wanted = -(-2 * sms // max(programs, 1))
    return max(1, min(wanted, pixel_blocks // 4))


@triton.jit
def _pixel_tile(p0, P, HO, WO, BLOCK_M: tl.constexpr):
    """Pixels p0 .. p0 + BLOCK_M - 1 of P = N x HO x WO: their (n, h, w) coordinates and which are < P."""
    offs_p = p0 + tl.arange(0, BLOCK_M)
    mask_p = offs_p < P
    n = offs_p // (HO * WO)
    rem = offs_p % (HO * WO)
    return n, rem // WO, rem % WO, mask_p


@triton.jit
def _tap_source(ho, wo, tap, mask_p, H, W, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
                PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr):
    """Input pixel (h, w) that kernel tap ``tap`` reads for output pixel (ho, wo), and ``mask_p`` and'ed with
    whether (h, w) lies inside the H x W input (not in the padding)."""
    h = ho * STRIDE_H - PAD_H + (tap // KW) * DIL_H
    w = wo * STRIDE_W - PAD_W + (tap % KW) * DIL_W
    return h, w, mask_p & (h >= 0) & (h < H) & (w >= 0) & (w < W)


@triton.jit
def _pixel_offsets(n, h, w, stride_n, stride_h, stride_w):
    """int64 element offsets of pixels (n, h, w) under a tensor's strides."""
    return n.to(tl.int64) * stride_n + h.to(tl.int64) * stride_h + w.to(tl.int64) * stride_w


@triton.jit
def _store_tile(ptr, acc, pix, chan, stride_c, mask):
    """Store a (pixels x channels) tile at ``ptr + pix + chan * stride_c`` in ptr's dtype."""
    tl.store(ptr + pix[:, None] + chan[None, :] * stride_c, acc.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _channels(lo, offs, mask, index_ptr, GATHER: tl.constexpr):
    chan = lo + offs
    if GATHER:
        chan = tl.load(index_ptr + chan, mask=mask, other=0)
    return chan.to(tl.int64)


@triton.jit
def grouped_conv_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, x_chan_ptr, y_chan_ptr,
    tiles_ptr, in_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    P, H, W, HO, WO,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, GATHER_X: tl.constexpr, SCATTER_Y: tl.constexpr, ALIGNED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[n, out_g, ho, wo] = sum_{r,s,c in in_g} x[n, c, ho*S-P+r*D, wo*S-P+s*D] W_g[o, c, r, s] (+ b),
    W_g read taps outer: (taps, c_in_g, c_out_g)."""
    g, col0, ci_lo, ci_size, co_lo, co_size = column_tile(tiles_ptr, tl.program_id(1), in_offsets_ptr, out_offsets_ptr,
                                                          ALIGNED, BLOCK_N)
    w_lo = group_range(w_offsets_ptr, g, ALIGNED)[0].to(tl.int64) * (KH * KW)

    n, ho, wo, mask_p = _pixel_tile(tl.program_id(0) * BLOCK_M, P, HO, WO, BLOCK_M)
    h0 = ho * STRIDE_H - PAD_H  # tap (0, 0)'s source pixel; tap (r, s) is (h0 + r*D, w0 + s*D)
    w0 = wo * STRIDE_W - PAD_W
    pix0 = _pixel_offsets(n, h0, w0, sxn, sxh, sxw)
    offs_o = col0 + tl.arange(0, BLOCK_N)
    mask_o = offs_o < co_size
    n_chunks = tl.cdiv(ci_size, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, KH * KW * n_chunks):
        tap = t // n_chunks
        dh = (tap // KW) * DIL_H
        dw = (tap % KW) * DIL_W
        h = h0 + dh
        w = w0 + dw
        valid = mask_p & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        offs_c = (t % n_chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_c = offs_c < ci_size
        chan = _channels(ci_lo, offs_c, mask_c, x_chan_ptr, GATHER_X)
        pix = pix0 + (dh * sxh + dw * sxw)
        a = tl.load(x_ptr + pix[:, None] + chan[None, :] * sxc, mask=valid[:, None] & mask_c[None, :], other=0.0)
        w_rows = w_lo + (tap * ci_size + offs_c).to(tl.int64) * co_size
        b = tl.load(w_ptr + w_rows[:, None] + offs_o[None, :], mask=mask_c[:, None] & mask_o[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + co_lo + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    chan_y = _channels(co_lo, offs_o, mask_o, y_chan_ptr, SCATTER_Y)
    _store_tile(y_ptr, acc, _pixel_offsets(n, ho, wo, syn, syh, syw), chan_y, syc, mask_p[:, None] & mask_o[None, :])


@triton.jit
def grouped_conv_grad_input_kernel(
    dy_ptr, w_ptr, dx_ptr, dy_chan_ptr, dx_chan_ptr,
    tiles_ptr, in_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    P, H, W, HO, WO,
    syn, syc, syh, syw, sxn, sxc, sxh, sxw,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    GATHER_DY: tl.constexpr, SCATTER_DX: tl.constexpr, ALIGNED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[n, in_g, h, w] = sum over taps (r, s) with h = ho*S-P+r*D (same for w) and o in out_g of
    dy[n, o, ho, wo] W_g[o, c, r, s], W_g read taps outer: (taps, c_out_g, c_in_g)."""
    g, col0, co_lo, co_size, ci_lo, ci_size = column_tile(tiles_ptr, tl.program_id(1), out_offsets_ptr, in_offsets_ptr,
                                                          ALIGNED, BLOCK_N)
    w_lo = group_range(w_offsets_ptr, g, ALIGNED)[0].to(tl.int64) * (KH * KW)

    n, h, w, mask_p = _pixel_tile(tl.program_id(0) * BLOCK_M, P, H, W, BLOCK_M)
    offs_c = col0 + tl.arange(0, BLOCK_N)
    mask_c = offs_c < ci_size
    n_chunks = tl.cdiv(co_size, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, KH * KW * n_chunks):
        tap = t // n_chunks
        offs_o = (t % n_chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_o = offs_o < co_size
        hs = h + PAD_H - (tap // KW) * DIL_H
        ws = w + PAD_W - (tap % KW) * DIL_W
        hs_pos = tl.maximum(hs, 0)
        ws_pos = tl.maximum(ws, 0)
        ho = hs_pos // STRIDE_H
        wo = ws_pos // STRIDE_W
        valid = mask_p & (hs >= 0) & (ws >= 0) & (ho < HO) & (wo < WO)
        valid = valid & (hs_pos % STRIDE_H == 0) & (ws_pos % STRIDE_W == 0)
        pix = _pixel_offsets(n, ho, wo, syn, syh, syw)
        chan = _channels(co_lo, offs_o, mask_o, dy_chan_ptr, GATHER_DY)
        a = tl.load(dy_ptr + pix[:, None] + chan[None, :] * syc, mask=valid[:, None] & mask_o[None, :], other=0.0)
        w_rows = w_lo + (tap * co_size + offs_o).to(tl.int64) * ci_size
        b = tl.load(w_ptr + w_rows[:, None] + offs_c[None, :], mask=mask_o[:, None] & mask_c[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    chan_x = _channels(ci_lo, offs_c, mask_c, dx_chan_ptr, SCATTER_DX)
    _store_tile(dx_ptr, acc, _pixel_offsets(n, h, w, sxn, sxh, sxw), chan_x, sxc, mask_p[:, None] & mask_c[None, :])


@triton.jit
def grouped_conv_grad_weight_kernel(
    dy_ptr, x_ptr, dw_ptr, dy_chan_ptr, x_chan_ptr,
    tiles_ptr, in_offsets_ptr, out_offsets_ptr, w_offsets_ptr,
    P, H, W, HO, WO,
    syn, syc, syh, syw, sxn, sxc, sxh, sxw,
    split_pixels, split_stride,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    GATHER_DY: tl.constexpr, GATHER_X: tl.constexpr, ALIGNED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dW_g[o, c, r, s] = sum over output pixels of dy[n, o, ho, wo] x[n, c, ho*S-P+r*D, wo*S-P+s*D].

    Program (tile, tap, split) sums pixels [split * split_pixels, (split + 1) * split_pixels) and writes its
    partial sum at ``dw_ptr + split * split_stride`` (one split: the gradient itself)."""
    tap = tl.program_id(1)
    g, row0, col0, ci_lo, ci_size, co_lo, co_size = block_tile(tiles_ptr, tl.program_id(0), in_offsets_ptr,
                                                               out_offsets_ptr, ALIGNED, BLOCK_N, BLOCK_K)
    w_lo = group_range(w_offsets_ptr, g, ALIGNED)[0].to(tl.int64) * (KH * KW)

    offs_o = row0 + tl.arange(0, BLOCK_N)
    offs_c = col0 + tl.arange(0, BLOCK_K)
    mask_o = offs_o < co_size
    mask_c = offs_c < ci_size
    chan_dy = _channels(co_lo, offs_o, mask_o, dy_chan_ptr, GATHER_DY) * syc
    chan_x = _channels(ci_lo, offs_c, mask_c, x_chan_ptr, GATHER_X) * sxc
    first = tl.program_id(2) * split_pixels
    last = tl.minimum(first + split_pixels, P)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for p0 in range(first, last, BLOCK_M):
        n, ho, wo, mask_p = _pixel_tile(p0, last, HO, WO, BLOCK_M)
        h, w, valid = _tap_source(ho, wo, tap, mask_p, H, W, KW, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W)
        pix_dy = _pixel_offsets(n, ho, wo, syn, syh, syw)
        pix_x = _pixel_offsets(n, h, w, sxn, sxh, sxw)
        dy_t = tl.load(dy_ptr + chan_dy[:, None] + pix_dy[None, :], mask=mask_o[:, None] & mask_p[None, :],
                       other=0.0)
        xs = tl.load(x_ptr + pix_x[:, None] + chan_x[None, :], mask=valid[:, None] & mask_c[None, :], other=0.0)
        acc = tl.dot(dy_t, xs, acc, input_precision=INPUT_PRECISION)

    out = dw_ptr + tl.program_id(2).to(tl.int64) * split_stride + w_lo
    dw = out + ((offs_o.to(tl.int64) * ci_size)[:, None] + offs_c[None, :]) * (KH * KW) + tap
    tl.store(dw, acc.to(dw_ptr.dtype.element_ty), mask=mask_o[:, None] & mask_c[None, :])


def _geometry(kernel_size, stride, padding, dilation):
    return dict(KH=kernel_size[0], KW=kernel_size[1], STRIDE_H=stride[0], STRIDE_W=stride[1],
                PAD_H=padding[0], PAD_W=padding[1], DIL_H=dilation[0], DIL_W=dilation[1])


def _meta(cfg: MMConfig, dtype: torch.dtype, aligned: bool) -> dict:
    return dict(ALIGNED=aligned, INPUT_PRECISION=input_precision(dtype, "conv"), BLOCK_M=cfg.block_m,
                BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _pixels(n: int, h: int, w: int) -> int:
    """``n * h * w``, the kernels' int32 pixel index range, or a ``ValueError`` when it does not fit."""
    pixels = n * h * w
    if pixels >= 2**31:
        raise ValueError(f"grouped_conv: batch x height x width = {n} x {h} x {w} = {pixels:,} pixels; the "
                         "kernels index pixels in int32 (< 2**31): split the batch")
    return pixels


def conv_launch(x, weight, bias, y, layout, geometry, in_index, out_index, cfg: MMConfig):
    """(grid, args, kwargs) of the forward launch writing ``y``, ``weight`` taps outer (:func:`taps_outer`,
    ``"forward"``) (also used by the kernel report)."""
    n, _, h, w = x.shape
    ho, wo = y.shape[2:]
    tiles = layout.column_tiles(x.device, cfg.block_n, "out")
    in_off, out_off, w_off = layout.offsets(x.device)
    _pixels(n, h, w)  # the input is addressed by pixel too
    grid = checked_grid((triton.cdiv(_pixels(n, ho, wo), cfg.block_m), tiles.shape[0]), "grouped_conv")
    args = (x, weight, weight if bias is None else bias, y,
            index_or_dummy(in_index, tiles), index_or_dummy(out_index, tiles),
            tiles, in_off, out_off, w_off, n * ho * wo, h, w, ho, wo, *x.stride(), *y.stride())
    kwargs = dict(**geometry, HAS_BIAS=bias is not None, GATHER_X=in_index is not None,
                  SCATTER_Y=out_index is not None, **_meta(cfg, x.dtype, layout.aligned))
    return grid, args, kwargs


def conv_grad_input_launch(grad_out, weight, dx, layout, geometry, in_index, out_index, cfg: MMConfig):
    """(grid, args, kwargs) of the input-gradient launch writing ``dx``, ``weight`` taps outer
    (:func:`taps_outer`, ``"grad_input"``)."""
    n, _, h, w = dx.shape
    ho, wo = grad_out.shape[2:]
    tiles = layout.column_tiles(dx.device, cfg.block_n, "in")
    in_off, out_off, w_off = layout.offsets(dx.device)
    grid = checked_grid((triton.cdiv(_pixels(n, h, w), cfg.block_m), tiles.shape[0]), "grouped_conv backward")
    args = (grad_out, weight, dx, index_or_dummy(out_index, tiles), index_or_dummy(in_index, tiles),
            tiles, in_off, out_off, w_off, n * h * w, h, w, ho, wo, *grad_out.stride(), *dx.stride())
    kwargs = dict(**geometry, GATHER_DY=out_index is not None, SCATTER_DX=in_index is not None,
                  **_meta(cfg, dx.dtype, layout.aligned))
    return grid, args, kwargs


def conv_grad_weight_launch(grad_out, x, dw, layout, geometry, in_index, out_index, cfg: MMConfig, splits: int = 1):
    """(grid, args, kwargs) of the weight-gradient launch writing ``dw``: the gradient, packed like the weight,
    or with ``splits`` > 1 that many partial sums one after another (``dw`` holds ``splits`` weights)."""
    n, _, h, w = x.shape
    ho, wo = grad_out.shape[2:]
    tiles = layout.block_tiles(x.device, cfg.block_n, cfg.block_k)
    in_off, out_off, w_off = layout.offsets(x.device)
    _pixels(n, h, w)
    pixels = _pixels(n, ho, wo)
    split_pixels = triton.cdiv(triton.cdiv(pixels, splits), cfg.block_m) * cfg.block_m
    grid = checked_grid((tiles.shape[0], geometry["KH"] * geometry["KW"], splits), "grouped_conv weight gradient")
    args = (grad_out, x, dw, index_or_dummy(out_index, tiles), index_or_dummy(in_index, tiles),
            tiles, in_off, out_off, w_off, pixels, h, w, ho, wo, *grad_out.stride(), *x.stride(),
            split_pixels, dw.numel() // splits)
    kwargs = dict(**geometry, GATHER_DY=out_index is not None, GATHER_X=in_index is not None,
                  **_meta(cfg, x.dtype, layout.aligned))
    return grid, args, kwargs


@on_input_device
def grouped_conv(x, weight, bias, layout, kernel_size, stride, padding, dilation, in_index=None, out_index=None):
    """Forward; see :func:`splitkern.ops.grouped_conv`. ``weight``: the op's packed weight, or a
    :class:`PreparedConvWeight` of it."""
    shape = output_shape(x.shape, layout.out_features, kernel_size, stride, padding, dilation)
    y = new_activation(x, shape)
    if y.numel() == 0:
        return y
    if isinstance(weight, PreparedConvWeight):
        packed = weight.taps_outer
    else:
        packed = taps_outer(weight.contiguous(), layout, kernel_size[0] * kernel_size[1], "forward")
    bias = None if bias is None else bias.contiguous()
    grid, args, kwargs = conv_launch(x, packed, bias, y, layout, _geometry(kernel_size, stride, padding, dilation),
                                     in_index, out_index, conv_config(x.dtype, layout, "out"))
    launch(grouped_conv_kernel, grid, args, kwargs)
    return y


@on_input_device
def grouped_conv_grad_input(grad_out, weight, x, layout, kernel_size, stride, padding, dilation,
                            in_index=None, out_index=None):
    """Input gradient, shaped and laid out like x."""
    dx = new_activation(x, x.shape)
    if dx.numel() == 0:
        return dx
    if grad_out.numel() == 0:
        return dx.zero_()
    packed = taps_outer(weight.contiguous(), layout, kernel_size[0] * kernel_size[1], "grad_input")
    grid, args, kwargs = conv_grad_input_launch(grad_out, packed, dx, layout,
                                                _geometry(kernel_size, stride, padding, dilation),
                                                in_index, out_index, conv_config(x.dtype, layout, "in"))
    launch(grouped_conv_grad_input_kernel, grid, args, kwargs)
    return dx


@on_input_device
def grouped_conv_grad_weight(grad_out, x, weight, layout, kernel_size, stride, padding, dilation,
                             in_index=None, out_index=None):
    """Weight gradient, packed like the weight (pixel splits summed in fp32 where the tiles alone would leave
    SMs idle, :func:`weight_grad_splits`)."""
    dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
    if dw.numel() == 0:
        return dw
    if grad_out.numel() == 0:
        return dw.zero_()
    cfg = conv_weight_grad_config(x.dtype, layout)
    geometry = _geometry(kernel_size, stride, padding, dilation)
    programs = layout.block_tiles(x.device, cfg.block_n, cfg.block_k).shape[0] * kernel_size[0] * kernel_size[1]
    pixel_blocks = triton.cdiv(grad_out.shape[0] * grad_out.shape[2] * grad_out.shape[3], cfg.block_m)
    splits = weight_grad_splits(x.device, programs, pixel_blocks)
    partial = dw if splits == 1 else torch.empty((splits, dw.numel()), dtype=torch.float32, device=dw.device)
    grid, args, kwargs = conv_grad_weight_launch(grad_out, x, partial, layout, geometry, in_index, out_index, cfg,
                                                 splits)
    launch(grouped_conv_grad_weight_kernel, grid, args, kwargs)
    if splits > 1:
        dw.copy_(partial.sum(0))
    return dw


def static_variants():
    """Every conv kernel variant the dispatcher can launch, for the static kernel report.

    Same contract as :func:`splitkern.triton.block_diag_mm.static_variants`:
    (kernel, label, args, kwargs, needs_tensor_cores) from the real launch helpers.
    """
    from splitkern.layout import block_layout

    layouts = {"aligned": block_layout((64,) * 4, (64,) * 4),
               "ragged": block_layout((60, 68, 63, 65), (65, 63, 68, 60)),
               "narrow": block_layout((32,) * 8, (32,) * 8)}  # tiles narrowed to 32-channel groups
    geometries = {"3x3s1": ((3, 3), (1, 1), (1, 1), (1, 1)), "3x3s2": ((3, 3), (2, 2), (1, 1), (1, 1))}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        dname = str(dtype).replace("torch.", "")
        for precision in ("ieee", "tf32") if dtype == torch.float32 else ("ieee",):
            tc = dtype != torch.float32 or precision == "tf32"
            prefix = dname + (f"-{precision}" if dtype == torch.float32 else "")
            for (lname, layout), (gname, geo) in itertools.product(layouts.items(), geometries.items()):
                geometry = _geometry(*geo)
                x = torch.empty(8, layout.in_features, 16, 16, dtype=dtype).to(memory_format=torch.channels_last)
                y = new_activation(x, output_shape(x.shape, layout.out_features, *geo))
                w = torch.empty(layout.weight_numel * 9, dtype=dtype)
                b = torch.empty(layout.out_features, dtype=dtype)
                for indexed in (False, True) if lname != "narrow" else (False,):  # narrow: only tiles differ
                    ii = torch.arange(layout.in_features) if indexed else None
                    oi = torch.arange(layout.out_features) if indexed else None
                    tag = f"{prefix}-{lname}-{gname}" + ("-indexed" if indexed else "")
                    yield from _three_passes(tag, x, y, w, b, layout, geometry, ii, oi, precision, tc)
    yield from _nchw_odd_variants()


def _three_passes(tag, x, y, w, b, layout, geometry, in_index, out_index, precision, tensor_cores):
    """Report variants of the forward, input-gradient and weight-gradient launches of one problem."""
    dtype = x.dtype
    wgrad = conv_weight_grad_config(dtype, layout)
    launches = [
        (f"forward-{tag}", grouped_conv_kernel,
         conv_launch(x, w, b, y, layout, geometry, in_index, out_index, conv_config(dtype, layout, "out"))),
        (f"grad_input-{tag}", grouped_conv_grad_input_kernel,
         conv_grad_input_launch(y, w, x, layout, geometry, in_index, out_index, conv_config(dtype, layout, "in"))),
        (f"grad_weight-{tag}", grouped_conv_grad_weight_kernel,
         conv_grad_weight_launch(y, x, w, layout, geometry, in_index, out_index, wgrad)),
    ]
    if in_index is None:  # the split weight gradient: fp32 partial sums
        launches.append((f"grad_weight-split-{tag}", grouped_conv_grad_weight_kernel,
                         conv_grad_weight_launch(y, x, w.new_empty((2, w.numel()), dtype=torch.float32), layout,
                                                 geometry, None, out_index, wgrad, splits=2)))
    for label, kernel, (_, args, kw) in launches:
        yield kernel, label, args, {**kw, "INPUT_PRECISION": precision}, tensor_cores


def _nchw_odd_variants():
    """NCHW activations (unit stride along width, not channels) at an odd size (3 x 7 x 7 pixels:
    no stride is 16-divisible), 16-bit and both fp32 precisions, all three passes."""
    from splitkern.layout import block_layout

    layouts = {"aligned": block_layout((64,) * 4, (64,) * 4),
               "ragged": block_layout((60, 68, 63, 65), (65, 63, 68, 60))}
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    geometry = _geometry(*geo)
    for dtype, precision in ((torch.bfloat16, "ieee"), (torch.float32, "ieee"), (torch.float32, "tf32")):
        tc = dtype != torch.float32 or precision == "tf32"
        prefix = str(dtype).replace("torch.", "") + (f"-{precision}" if dtype == torch.float32 else "")
        for lname, layout in layouts.items():
            x = torch.empty(3, layout.in_features, 7, 7, dtype=dtype)
            y = new_activation(x, output_shape(x.shape, layout.out_features, *geo))
            w = torch.empty(layout.weight_numel * 9, dtype=dtype)
            b = torch.empty(layout.out_features, dtype=dtype)
            yield from _three_passes(f"{prefix}-{lname}-nchw-3x7x7", x, y, w, b, layout, geometry, None, None,
                                     precision, tc)
