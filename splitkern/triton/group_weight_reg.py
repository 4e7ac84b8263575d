"""Triton kernels for the group weight regulariser's passes over W (docs/design.md §1.2).

R_W needs only ``a = (Q∘Q) M`` (G x D_in) and ``b = (P∘P) M^T`` (G x D_out) of
``M = mean_taps(W**2)``. The forward kernel reads every W tile once, forms its M tile
in registers and accumulates both small GEMMs for all G groups at once (atomic adds
over the other tile axis). The backward kernel reads every W tile once more and
writes dW while accumulating the two cross terms the assignment gradients need.
G is padded to a 16-row MMA tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from splitkern.triton._common import input_precision, on_input_device
from splitkern.triton._launch import launch
from splitkern.triton.configs import CONFIGS, MMConfig

# (block_m unused, block_n = output-feature tile, block_k = input-feature tile)
REG_CONFIG = CONFIGS["group_weight_reg"]["both"]["fp32"]["any"]  # 8 warps: the backward spilled with 4 (report)


@triton.jit
def _energy_tile(w_ptr, offs_o, offs_i, mask, stride_o, stride_i, TAPS: tl.constexpr):
    """M tile (BLOCK_O x BLOCK_I): mean over the kernel taps of W^2, fp32."""
    base = w_ptr + offs_o.to(tl.int64)[:, None] * stride_o + offs_i.to(tl.int64)[None, :] * stride_i
    m = tl.zeros(mask.shape, dtype=tl.float32)
    for t in tl.static_range(TAPS):
        w = tl.load(base + t, mask=mask, other=0.0).to(tl.float32)
        m += w * w
    return m / TAPS


@triton.jit
def _tile(w_ptr, p_ptr, q_ptr, G, D_OUT, D_IN, stride_o, stride_i, TAPS: tl.constexpr,
          BLOCK_G: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    """This program's W tile and the matching (G x tile) slices of P and Q: offsets, masks, P, Q, and the
    tile's M (:func:`_energy_tile`)."""
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_g = tl.arange(0, BLOCK_G)
    mask_o, mask_i, mask_g = offs_o < D_OUT, offs_i < D_IN, offs_g < G
    gi = offs_g[:, None] * D_IN + offs_i[None, :]
    go = offs_g[:, None] * D_OUT + offs_o[None, :]
    mask_gi, mask_go = mask_g[:, None] & mask_i[None, :], mask_g[:, None] & mask_o[None, :]
    p = tl.load(p_ptr + gi, mask=mask_gi, other=0.0).to(tl.float32)
    q = tl.load(q_ptr + go, mask=mask_go, other=0.0).to(tl.float32)
    mask = mask_o[:, None] & mask_i[None, :]
    m = _energy_tile(w_ptr, offs_o, offs_i, mask, stride_o, stride_i, TAPS)
    return offs_o, offs_i, mask, gi, go, mask_gi, mask_go, p, q, m


@triton.jit
def group_weight_reg_kernel(
    w_ptr, p_ptr, q_ptr, a_ptr, b_ptr,
    G, D_OUT, D_IN, stride_o, stride_i,
    TAPS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """a[:, i-tile] += (Q∘Q)[:, o-tile] @ M_tile;  b[:, o-tile] += (P∘P)[:, i-tile] @ M_tile^T."""
    _, _, _, gi, go, mask_gi, mask_go, p, q, m = _tile(w_ptr, p_ptr, q_ptr, G, D_OUT, D_IN, stride_o, stride_i,
                                                       TAPS, BLOCK_G, BLOCK_O, BLOCK_I)
    tl.atomic_add(a_ptr + gi, tl.dot(q * q, m, input_precision=INPUT_PRECISION), mask=mask_gi)
    tl.atomic_add(b_ptr + go, tl.dot(p * p, tl.trans(m), input_precision=INPUT_PRECISION), mask=mask_go)


@triton.jit
def group_weight_reg_backward_kernel(
    w_ptr, p_ptr, q_ptr, da_ptr, db_ptr, dw_ptr, cross_p_ptr, cross_q_ptr,
    G, D_OUT, D_IN, stride_o, stride_i,
    TAPS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """dW_tile = (2 W / taps) * ((Q∘Q)^T dA + dB^T (P∘P)); cross_p += dB @ M; cross_q += dA @ M^T."""
    offs_o, offs_i, mask, gi, go, mask_gi, mask_go, p, q, m = _tile(w_ptr, p_ptr, q_ptr, G, D_OUT, D_IN, stride_o,
                                                                    stride_i, TAPS, BLOCK_G, BLOCK_O, BLOCK_I)
    da = tl.load(da_ptr + gi, mask=mask_gi, other=0.0)
    db = tl.load(db_ptr + go, mask=mask_go, other=0.0)
    dm = tl.dot(tl.trans(q * q), da, input_precision=INPUT_PRECISION)
    dm = tl.dot(tl.trans(db), p * p, dm, input_precision=INPUT_PRECISION)
    tl.atomic_add(cross_p_ptr + gi, tl.dot(db, m, input_precision=INPUT_PRECISION), mask=mask_gi)
    tl.atomic_add(cross_q_ptr + go, tl.dot(da, tl.trans(m), input_precision=INPUT_PRECISION), mask=mask_go)
    scale = dm * (2.0 / TAPS)
    # Offsets recomputed here, not kept from _energy_tile: a 2-D int64 offsets tile live across the dots
    # took the sm_90 conv3x3 variants from 155 to 232 registers.
    base = offs_o.to(tl.int64)[:, None] * stride_o + offs_i.to(tl.int64)[None, :] * stride_i
    for t in tl.static_range(TAPS):
        w = tl.load(w_ptr + base + t, mask=mask, other=0.0).to(tl.float32)
        tl.store(dw_ptr + base + t, (scale * w).to(dw_ptr.dtype.element_ty), mask=mask)


def _block_g(groups: int) -> int:
    return max(16, triton.next_power_of_2(groups))


def _common(weight, groups, cfg):
    d_out, d_in = weight.shape[:2]
    taps = weight[0, 0].numel() if weight.numel() else 1
    grid = (triton.cdiv(d_out, cfg.block_n), triton.cdiv(d_in, cfg.block_k))
    meta = dict(TAPS=taps, INPUT_PRECISION=input_precision(torch.float32), BLOCK_G=_block_g(groups),
                BLOCK_O=cfg.block_n, BLOCK_I=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return grid, (groups, d_out, d_in, weight.stride(0), weight.stride(1)), meta


def reg_launch(weight, p, q, a, b, cfg: MMConfig = REG_CONFIG):
    """(grid, args, kwargs) of the forward launch (also used by the static kernel report)."""
    grid, sizes, meta = _common(weight, p.shape[0], cfg)
    return grid, (weight, p, q, a, b, *sizes), meta


def reg_backward_launch(weight, p, q, da, db, dw, cross_p, cross_q, cfg: MMConfig = REG_CONFIG):
    """(grid, args, kwargs) of the backward launch."""
    grid, sizes, meta = _common(weight, p.shape[0], cfg)
    return grid, (weight, p, q, da, db, dw, cross_p, cross_q, *sizes), meta


@on_input_device
def group_weight_reg_gemms(weight, p, q):
    """``(a, b)`` as :func:`splitkern.reference.group_weight_reg.group_weight_reg_gemms` (fp32)."""
    weight, p, q = weight.contiguous(), p.contiguous(), q.contiguous()
    a = torch.zeros(p.shape, device=weight.device, dtype=torch.float32)
    b = torch.zeros(q.shape, device=weight.device, dtype=torch.float32)
    if weight.numel():
        grid, args, kwargs = reg_launch(weight, p, q, a, b)
        launch(group_weight_reg_kernel, grid, args, kwargs)
    return a, b


@on_input_device
def group_weight_reg_gemms_backward(weight, p, q, grad_a, grad_b):
    """``(dW, dP, dQ)`` as the reference's backward."""
    weight, p, q = weight.contiguous(), p.contiguous(), q.contiguous()
    dw = torch.zeros_like(weight)
    cross_p = torch.zeros(p.shape, device=weight.device, dtype=torch.float32)
    cross_q = torch.zeros(q.shape, device=weight.device, dtype=torch.float32)
    if weight.numel():
        grid, args, kwargs = reg_backward_launch(weight, p, q, grad_a.float().contiguous(),
                                                 grad_b.float().contiguous(), dw, cross_p, cross_q)
        launch(group_weight_reg_backward_kernel, grid, args, kwargs)
    return dw, (2 * p.float() * cross_p).to(p.dtype), (2 * q.float() * cross_q).to(q.dtype)


def static_variants():
    """Every regulariser kernel variant, for the static kernel report (fp32 GEMMs: no tensor cores required)."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        dname = str(dtype).replace("torch.", "")
        for kind, shape in (("linear", (512, 512)), ("conv3x3", (512, 512, 3, 3))):
            w = torch.empty(shape, dtype=dtype)
            p, q = torch.empty(8, shape[1]), torch.empty(8, shape[0])
            a, b = torch.empty_like(p), torch.empty_like(q)
            _, args, kw = reg_launch(w, p, q, a, b)
            yield group_weight_reg_kernel, f"forward-{dname}-{kind}", args, kw, False
            _, args, kw = reg_backward_launch(w, p, q, a, b, torch.empty_like(w), a, b)
            yield group_weight_reg_backward_kernel, f"backward-{dname}-{kind}", args, kw, False
