"""Triton flow_warp: forward, flow gradient and input gradient, any strides (NCHW, channels_last, BHW2 views).

Same conventions as the C++/CUDA kernels (csrc/flow_warp/flow_warp.h). One program per (batch, block of pixels,
block of channels) for the forward and the input gradient, per (batch, block of pixels) for the flow gradient
(a loop over channel blocks in a fixed order). The input gradient scatters with atomic adds: not bitwise
deterministic on a GPU (the compiled CUDA backward is, in deterministic mode); sequential, hence deterministic,
under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.registrations import flow_warp as _reg
from fastops.triton._registry import check_triton_device, launch, register_fake, triton_custom_op


@triton.jit
def _axis(idx, f, size, ALIGN: tl.constexpr, NORM: tl.constexpr, ACC: tl.constexpr):
    # position = a * idx + b * f + c (flow_warp.h make_axis); returns (position, d position / d f)
    s = tl.cast(size, ACC)  # not size.to: on a GPU, Triton passes a size of 1 as a constexpr int
    d = tl.maximum(s - 1.0, 1.0)
    i = idx.to(ACC)
    if NORM:
        if ALIGN:
            b = (s - 1.0) / 2.0
            pos = i + b * f
        else:
            b = s / 2.0
            pos = i * (s / d) + b * f - 0.5
    else:
        if ALIGN:
            b = 1.0
            pos = i + f
        else:
            b = s / d
            pos = i * b + f * b - 0.5
    return pos, b + tl.zeros_like(f)  # no 0 * inf = NaN for a non-finite flow


@triton.jit
def _taps(p, size, BORDER: tl.constexpr):
    """Along one axis: (lo, hi) tap indices (always in bounds), their inside flags, the fraction, the clamp
    factor for the gradient, validity (mask), and whether the sample contributes at all."""
    s = tl.cast(size, p.dtype)
    fin = (p == p) & (tl.abs(p) < float("inf"))
    inr = fin & (p >= -1.0) & (p <= s)
    pf = tl.where(inr, p, 0.0)
    f0 = tl.floor(pf)
    i0 = f0.to(tl.int64)
    valid = inr & (i0 >= 0) & (i0 < size) & ((pf == f0) | (i0 + 1 < size))
    clampg = tl.full(p.shape, 1.0, p.dtype)
    if BORDER:
        lo_c = p <= 0.0
        hi_c = p >= s - 1.0
        clampg = tl.where(lo_c | hi_c, 0.0, 1.0)
        p = tl.where(lo_c, 0.0, tl.where(hi_c, s - 1.0, p))
        ok = fin
    else:
        ok = inr
    p = tl.where(ok, p, 0.0)
    f0 = tl.floor(p)
    i0 = f0.to(tl.int64)
    frac = p - f0
    m0 = ok & (i0 >= 0) & (i0 < size)
    m1 = ok & (i0 + 1 >= 0) & (i0 + 1 < size)
    lo = tl.minimum(tl.maximum(i0, 0), size - 1)
    hi = tl.minimum(tl.maximum(i0 + 1, 0), size - 1)
    return lo, hi, m0, m1, frac, clampg, valid, ok


@triton.jit
def _sample(flow, b, offs_p, H, W, fB, fC, fH, fW, pmask, ALIGN: tl.constexpr, NORM: tl.constexpr,
            BORDER: tl.constexpr, ACC: tl.constexpr):
    y = offs_p // W
    x = offs_p % W
    fp = flow + b * fB + y * fH + x * fW
    u = tl.load(fp, mask=pmask, other=0.0).to(ACC)
    v = tl.load(fp + fC, mask=pmask, other=0.0).to(ACC)
    ix, gx = _axis(x, u, W, ALIGN, NORM, ACC)
    iy, gy = _axis(y, v, H, ALIGN, NORM, ACC)
    x0, x1, mx0, mx1, fx, cgx, vx, okx = _taps(ix, W, BORDER)
    y0, y1, my0, my1, fy, cgy, vy, oky = _taps(iy, H, BORDER)
    ok = okx & oky & pmask
    m00 = (my0 & mx0 & ok).to(ACC)
    m01 = (my0 & mx1 & ok).to(ACC)
    m10 = (my1 & mx0 & ok).to(ACC)
    m11 = (my1 & mx1 & ok).to(ACC)
    return x0, x1, y0, y1, fx, fy, m00, m01, m10, m11, gx * cgx, gy * cgy, vx & vy, y, x


@triton.jit
def _gather4(base, x0, x1, y0, y1, sH, sW, m2, m00, m01, m10, m11, ACC: tl.constexpr):
    """The four bilinear taps of each (pixel, channel) of a [BLOCK_P, BLOCK_C] tile (0 where a tap is out)."""
    v00 = tl.load(base + (y0 * sH + x0 * sW)[:, None], mask=m2 & (m00 > 0)[:, None], other=0.0).to(ACC)
    v01 = tl.load(base + (y0 * sH + x1 * sW)[:, None], mask=m2 & (m01 > 0)[:, None], other=0.0).to(ACC)
    v10 = tl.load(base + (y1 * sH + x0 * sW)[:, None], mask=m2 & (m10 > 0)[:, None], other=0.0).to(ACC)
    v11 = tl.load(base + (y1 * sH + x1 * sW)[:, None], mask=m2 & (m11 > 0)[:, None], other=0.0).to(ACC)
    return v00, v01, v10, v11


@triton.jit
def _fwd_kernel(inp, flow, out, mask_out, C, H, W, sB, sC, sH, sW, fB, fC, fH, fW, oB, oC, oH, oW,
                ALIGN: tl.constexpr, NORM: tl.constexpr, BORDER: tl.constexpr, HAS_MASK: tl.constexpr,
                ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < H * W
    x0, x1, y0, y1, fx, fy, m00, m01, m10, m11, gx, gy, valid, y, x = _sample(
        flow, b, offs_p, H, W, fB, fC, fH, fW, pmask, ALIGN, NORM, BORDER, ACC)
    if HAS_MASK:
        if tl.program_id(2) == 0:
            tl.store(mask_out + b * H * W + offs_p, valid.to(mask_out.dtype.element_ty), mask=pmask)
    w00 = (1.0 - fx) * (1.0 - fy) * m00
    w01 = fx * (1.0 - fy) * m01
    w10 = (1.0 - fx) * fy * m10
    w11 = fx * fy * m11
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = offs_c < C
    m2 = pmask[:, None] & cm[None, :]
    base = inp + b * sB + offs_c[None, :] * sC
    v00, v01, v10, v11 = _gather4(base, x0, x1, y0, y1, sH, sW, m2, m00, m01, m10, m11, ACC)
    res = w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11
    optr = out + b * oB + offs_c[None, :] * oC + (y * oH + x * oW)[:, None]
    tl.store(optr, res.to(out.dtype.element_ty), mask=m2)


@triton.jit
def _grad_flow_kernel(grad, inp, flow, gflow, C, H, W, gB, gC, gH, gW, sB, sC, sH, sW, fB, fC, fH, fW,
                      rB, rC, rH, rW, ALIGN: tl.constexpr, NORM: tl.constexpr, BORDER: tl.constexpr,
                      ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < H * W
    x0, x1, y0, y1, fx, fy, m00, m01, m10, m11, gx, gy, valid, y, x = _sample(
        flow, b, offs_p, H, W, fB, fC, fH, fW, pmask, ALIGN, NORM, BORDER, ACC)
    dx00 = -(1.0 - fy) * m00
    dx01 = (1.0 - fy) * m01
    dx10 = -fy * m10
    dx11 = fy * m11
    dy00 = -(1.0 - fx) * m00
    dy01 = -fx * m01
    dy10 = (1.0 - fx) * m10
    dy11 = fx * m11
    su = tl.zeros([BLOCK_P], dtype=ACC)
    sv = tl.zeros([BLOCK_P], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        cm = offs_c < C
        m2 = pmask[:, None] & cm[None, :]
        base = inp + b * sB + offs_c[None, :] * sC
        v00, v01, v10, v11 = _gather4(base, x0, x1, y0, y1, sH, sW, m2, m00, m01, m10, m11, ACC)
        g = tl.load(grad + b * gB + offs_c[None, :] * gC + (y * gH + x * gW)[:, None], mask=m2,
                    other=0.0).to(ACC)
        du = dx00[:, None] * v00 + dx01[:, None] * v01 + dx10[:, None] * v10 + dx11[:, None] * v11
        dv = dy00[:, None] * v00 + dy01[:, None] * v01 + dy10[:, None] * v10 + dy11[:, None] * v11
        su += tl.sum(g * du, axis=1)
        sv += tl.sum(g * dv, axis=1)
    rp = gflow + b * rB + y * rH + x * rW
    tl.store(rp, (su * gx).to(gflow.dtype.element_ty), mask=pmask)
    tl.store(rp + rC, (sv * gy).to(gflow.dtype.element_ty), mask=pmask)


@triton.jit
def _grad_input_kernel(grad, flow, gin, C, H, W, gB, gC, gH, gW, fB, fC, fH, fW, iB, iC, iH, iW,
                       ALIGN: tl.constexpr, NORM: tl.constexpr, BORDER: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < H * W
    x0, x1, y0, y1, fx, fy, m00, m01, m10, m11, gx, gy, valid, y, x = _sample(
        flow, b, offs_p, H, W, fB, fC, fH, fW, pmask, ALIGN, NORM, BORDER, ACC)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = offs_c < C
    m2 = pmask[:, None] & cm[None, :]
    g = tl.load(grad + b * gB + offs_c[None, :] * gC + (y * gH + x * gW)[:, None], mask=m2, other=0.0).to(ACC)
    base = gin + b * iB + offs_c[None, :] * iC
    dt = gin.dtype.element_ty
    w00 = (1.0 - fx) * (1.0 - fy) * m00
    w01 = fx * (1.0 - fy) * m01
    w10 = (1.0 - fx) * fy * m10
    w11 = fx * fy * m11
    tl.atomic_add(base + (y0 * iH + x0 * iW)[:, None], (w00[:, None] * g).to(dt), mask=m2 & (m00 > 0)[:, None])
    tl.atomic_add(base + (y0 * iH + x1 * iW)[:, None], (w01[:, None] * g).to(dt), mask=m2 & (m01 > 0)[:, None])
    tl.atomic_add(base + (y1 * iH + x0 * iW)[:, None], (w10[:, None] * g).to(dt), mask=m2 & (m10 > 0)[:, None])
    tl.atomic_add(base + (y1 * iH + x1 * iW)[:, None], (w11[:, None] * g).to(dt), mask=m2 & (m11 > 0)[:, None])


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(c: int, dtype: torch.dtype = torch.float32):
    # float64 tiles of 64 x 32 spill on sm_80 (16 bytes): half the pixels per program keeps them in registers.
    return (32 if dtype == torch.float64 else 64), max(2, min(32, triton.next_power_of_2(max(c, 1))))


def _flags(padding_mode, align_corners, units):
    return dict(ALIGN=bool(align_corners), NORM=units == "normalized", BORDER=padding_mode == "border")


def _check(padding_mode, units):
    if padding_mode not in _reg.PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {_reg.PADDING_MODES}, got {padding_mode!r}")
    if units not in _reg.UNITS:
        raise ValueError(f"units must be one of {_reg.UNITS}, got {units!r}")


@triton_custom_op("fastops::flow_warp_triton", mutates_args=())
def flow_warp_triton(input: Tensor, flow: Tensor, padding_mode: str = "zeros", align_corners: bool = True,
                     units: str = "pixel", return_mask: bool = False) -> tuple[Tensor, Tensor]:
    check_triton_device(input)
    _check(padding_mode, units)
    B, C, H, W = input.shape
    out = torch.empty_like(input, memory_format=torch.preserve_format)
    mask = input.new_empty((B, 1, H, W)) if return_mask else input.new_empty((0,))
    if B * H * W == 0:
        return out, mask
    bp, bc = _blocks(C, input.dtype)
    grid = (B, triton.cdiv(H * W, bp), max(1, triton.cdiv(C, bc)))
    launch(_fwd_kernel)[grid](input, flow, out, mask, C, H, W, *input.stride(), *flow.stride(), *out.stride(),
                              HAS_MASK=bool(return_mask), ACC=_acc(input.dtype), BLOCK_P=bp, BLOCK_C=bc,
                              **_flags(padding_mode, align_corners, units))
    return out, mask


@triton_custom_op("fastops::_flow_warp_backward_triton", mutates_args=())
def flow_warp_backward_triton(grad_output: Tensor, input: Tensor, flow: Tensor, padding_mode: str,
                              align_corners: bool, units: str, input_requires_grad: bool,
                              flow_requires_grad: bool) -> tuple[Tensor, Tensor]:
    B, C, H, W = input.shape
    flags = _flags(padding_mode, align_corners, units)
    bp, bc = _blocks(C, input.dtype)
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    if flow_requires_grad:
        gflow = torch.empty_like(flow, memory_format=torch.preserve_format)
        if B * H * W > 0:
            grid = (B, triton.cdiv(H * W, bp))
            launch(_grad_flow_kernel)[grid](grad_output, input, flow, gflow, C, H, W, *grad_output.stride(),
                                            *input.stride(), *flow.stride(), *gflow.stride(), ACC=_acc(input.dtype),
                                            BLOCK_P=bp, BLOCK_C=bc, **flags)
    else:
        gflow = flow.new_empty((0,))
    if input_requires_grad:
        # The input gradient scatters with atomic adds: PyTorch's convention in deterministic mode is an error.
        if torch.are_deterministic_algorithms_enabled():
            msg = ("fastops.flow_warp(impl='triton') backward w.r.t. the input uses atomic adds and is not "
                   "deterministic; impl='cpp' has a deterministic backward")
            if not torch.is_deterministic_algorithms_warn_only_enabled():
                raise RuntimeError(msg)
            warnings.warn(msg)
        ws = torch.zeros_like(input, dtype=acc_dtype, memory_format=torch.preserve_format)
        if ws.numel() > 0:
            grid = (B, triton.cdiv(H * W, bp), triton.cdiv(C, bc))
            launch(_grad_input_kernel)[grid](grad_output, flow, ws, C, H, W, *grad_output.stride(), *flow.stride(),
                                             *ws.stride(), ACC=_acc(input.dtype), BLOCK_P=bp, BLOCK_C=bc, **flags)
        gin = torch.empty_like(input, memory_format=torch.preserve_format)
        gin.copy_(ws)
    else:
        gin = input.new_empty((0,))
    return gin, gflow


register_fake(flow_warp_triton, _reg.fake_forward)
register_fake(flow_warp_backward_triton, _reg.fake_backward)
flow_warp_triton.register_autograd(_reg.make_backward(flow_warp_backward_triton), setup_context=_reg.setup_context)
