"""Triton kernels of the DensePose ops (`densepose_chart_to_iuv`, `densepose_paste_iuv`, `roi_point_sample` and
its backward), registered as `fastops::<op>_triton` (see _registry.py). Same conventions as
csrc/densepose/densepose.h: F.interpolate's taps with ATen's fused multiply-adds, torch.argmax's rule, the
BilinearInterpolationHelper taps; the point-sampling backward owns one (RoI, channel) plane per lane (no atomics).
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.registrations import densepose as _reg
from fastops.triton._registry import check_triton_device, launch, triton_custom_op

BLOCK = 256


def int_boxes_xywh(boxes: Tensor) -> Tensor:
    """detectron2's integer XYWH (as csrc/densepose check_chart_args; tested against the reference)."""
    xywh = torch.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
    ib = xywh.long()
    return torch.cat([ib[:, :2], ib[:, 2:].clamp(min=1)], 1)


def _check_chart(coarse, fine, u, v, boxes, op):
    check_triton_device(fine, "fine")
    if not (fine.dim() == 4 and coarse.dim() == 4 and u.shape == fine.shape and v.shape == fine.shape
            and coarse.shape[0] == fine.shape[0] and coarse.shape[2:] == fine.shape[2:]
            and tuple(boxes.shape) == (fine.shape[0], 4)):
        raise RuntimeError(f"{op}: coarse [R, Kc, S, S], fine / u / v [R, K, S, S] and boxes [R, 4] must agree")
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise RuntimeError(f"{op}: boxes must be finite")
    ib = int_boxes_xywh(boxes)
    if ib.numel() and int(ib[:, 2:].max()) > _reg.MAX_BOX_SIDE:
        raise RuntimeError(f"{op}: at most {_reg.MAX_BOX_SIDE} px per side")
    return ib


@triton.jit
def _tap(o, n_in, n_out, ACC: tl.constexpr):
    scale = tl.cast(n_in, ACC) / tl.cast(n_out, ACC)
    src = tl.fma(scale, o.to(ACC) + 0.5, tl.cast(-0.5, ACC))
    src = tl.maximum(src, 0.0)
    i0 = tl.minimum(src.to(tl.int64), n_in - 1)
    i1 = tl.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = tl.minimum(tl.maximum(src - i0.to(ACC), 0.0), 1.0)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _sample(ptr, base, Sw, y0, y1, x0, x1, lx0, lx1, ly0, ly1, msk, ACC: tl.constexpr):
    v00 = tl.load(ptr + base + y0 * Sw + x0, mask=msk, other=0.0).to(ACC)
    v01 = tl.load(ptr + base + y0 * Sw + x1, mask=msk, other=0.0).to(ACC)
    v10 = tl.load(ptr + base + y1 * Sw + x0, mask=msk, other=0.0).to(ACC)
    v11 = tl.load(ptr + base + y1 * Sw + x1, mask=msk, other=0.0).to(ACC)
    r0 = tl.fma(v00, lx0, v01 * lx1)
    r1 = tl.fma(v10, lx0, v11 * lx1)
    return tl.fma(r0, ly0, r1 * ly1).to(ptr.dtype.element_ty).to(ACC)  # rounded as F.interpolate returns it


@triton.jit
def _channel_argmax(ptr, base, n, plane, Sw, y0, y1, x0, x1, lx0, lx1, ly0, ly1, py, msk, ACC: tl.constexpr):
    """First channel of the n at `base` whose interpolated value is the largest (a NaN wins, as torch.argmax)."""
    best = _sample(ptr, base, Sw, y0, y1, x0, x1, lx0, lx1, ly0, ly1, msk, ACC)
    arg = tl.zeros_like(py)
    for c in range(1, n):
        s = _sample(ptr, base + c * plane, Sw, y0, y1, x0, x1, lx0, lx1, ly0, ly1, msk, ACC)
        take = (s > best) | ((s != s) & (best == best))
        best = tl.where(take, s, best)
        arg = tl.where(take, c, arg)
    return arg


@triton.jit
def _pixel_iuv(coarse, fine, u, v, r, Kc, K, Sh, Sw, w, h, py, px, msk, ACC: tl.constexpr):
    y0, y1, ly0, ly1 = _tap(py, Sh, h, ACC)
    x0, x1, lx0, lx1 = _tap(px, Sw, w, ACC)
    plane = Sh * Sw
    cb = r * Kc * plane
    fg = _channel_argmax(coarse, cb, Kc, plane, Sw, y0, y1, x0, x1, lx0, lx1, ly0, ly1, py, msk, ACC) > 0
    fb = r * K * plane
    arg = _channel_argmax(fine, fb, K, plane, Sw, y0, y1, x0, x1, lx0, lx1, ly0, ly1, py, msk, ACC)
    lab = tl.where(fg, arg, 0)
    on = msk & (lab > 0)
    ub = fb + lab * plane
    uo = _sample(u, ub, Sw, y0, y1, x0, x1, lx0, lx1, ly0, ly1, on, ACC).to(tl.float32)
    vo = _sample(v, ub, Sw, y0, y1, x0, x1, lx0, lx1, ly0, ly1, on, ACC).to(tl.float32)
    return lab, tl.where(on, uo, 0.0), tl.where(on, vo, 0.0)


@triton.jit
def _chart_kernel(coarse, fine, u, v, offsets, ib, labels, uv, N, R, Kc, K, Sh, Sw, STEPS: tl.constexpr,
                  ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    msk = i < N
    lo = tl.zeros_like(i)
    hi = tl.zeros_like(i) + (R - 1)
    for _ in tl.static_range(STEPS):  # last r with offsets[r] <= i
        act = lo < hi
        mid = (lo + hi + 1) // 2
        go = tl.load(offsets + mid, mask=msk & act, other=0) <= i
        lo = tl.where(act & go, mid, lo)
        hi = tl.where(act & ~go, mid - 1, hi)
    r = lo
    q = i - tl.load(offsets + r, mask=msk, other=0)
    w = tl.load(ib + r * 4 + 2, mask=msk, other=1)
    h = tl.load(ib + r * 4 + 3, mask=msk, other=1)
    lab, uo, vo = _pixel_iuv(coarse, fine, u, v, r, Kc, K, Sh, Sw, w, h, q // w, q % w, msk, ACC)
    tl.store(labels + i, lab.to(tl.uint8), mask=msk)
    base = 2 * tl.load(offsets + r, mask=msk, other=0) + q
    tl.store(uv + base, uo, mask=msk)
    tl.store(uv + base + w * h, vo, mask=msk)


@triton.jit
def _quantize(x):
    p = x * 255.0
    p = tl.where(p > 0.0, tl.minimum(p, 255.0), 0.0)  # NaN -> 0
    return p.to(tl.uint8)


@triton.jit
def _paste_kernel(coarse, fine, u, v, ib, scores, out, HW, W, R, Kc, K, Sh, Sw, ACC: tl.constexpr,
                  BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    msk = i < HW
    y = i // W
    x = i % W
    taken = i < 0
    best = tl.zeros([BLOCK], dtype=tl.float64)
    bl = tl.zeros_like(i)
    bu = tl.zeros([BLOCK], dtype=tl.float32)
    bv = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(0, R):
        bx = tl.load(ib + r * 4)
        by = tl.load(ib + r * 4 + 1)
        w = tl.load(ib + r * 4 + 2)
        h = tl.load(ib + r * 4 + 3)
        s = tl.load(scores + r)
        inside = msk & (x >= bx) & (x < bx + w) & (y >= by) & (y < by + h) & (~taken | (s > best))
        lab, uo, vo = _pixel_iuv(coarse, fine, u, v, r + tl.zeros_like(i), Kc, K, Sh, Sw, w, h,
                                 tl.where(inside, y - by, 0), tl.where(inside, x - bx, 0), inside, ACC)
        win = inside & (lab > 0)
        taken = taken | win
        best = tl.where(win, s, best)
        bl = tl.where(win, lab, bl)
        bu = tl.where(win, uo, bu)
        bv = tl.where(win, vo, bv)
    tl.store(out + i, bl.to(tl.uint8), mask=msk)
    tl.store(out + HW + i, _quantize(bu), mask=msk)
    tl.store(out + 2 * HW + i, _quantize(bv), mask=msk)


def _acc(t: Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


@triton_custom_op("fastops::densepose_chart_to_iuv_triton", fake=_reg.chart_to_iuv_fake)
def densepose_chart_to_iuv_triton(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor,
                                  boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    ib = _check_chart(coarse, fine, u, v, boxes, "densepose_chart_to_iuv")
    R = fine.shape[0]
    offsets = torch.zeros(R + 1, dtype=torch.int64, device=fine.device)
    if R:
        offsets[1:] = (ib[:, 2] * ib[:, 3]).cumsum(0)
    N = int(offsets[-1])
    labels = torch.empty(N, dtype=torch.uint8, device=fine.device)
    uv = torch.empty(2 * N, dtype=torch.float32, device=fine.device)
    if N:
        c, f, uu, vv = (t.contiguous() for t in (coarse, fine, u, v))
        launch(_chart_kernel)[(triton.cdiv(N, BLOCK),)](
            c, f, uu, vv, offsets, ib, labels, uv, N, R, c.shape[1], f.shape[1], f.shape[2], f.shape[3],
            STEPS=max(1, (R - 1).bit_length()), ACC=_acc(f), BLOCK=BLOCK)
    return labels, uv, offsets, ib


@triton_custom_op("fastops::densepose_paste_iuv_triton", fake=_reg.paste_iuv_fake)
def densepose_paste_iuv_triton(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor, boxes: Tensor, scores: Tensor,
                               height: int, width: int) -> Tensor:
    ib = _check_chart(coarse, fine, u, v, boxes, "densepose_paste_iuv")
    if scores.shape != (fine.shape[0],) or bool(torch.isnan(scores).any()):
        raise RuntimeError("densepose_paste_iuv: scores must be [R] and not NaN")
    out = torch.zeros(3, height, width, dtype=torch.uint8, device=fine.device)
    HW = height * width
    if HW and fine.shape[0]:
        c, f, uu, vv = (t.contiguous() for t in (coarse, fine, u, v))
        launch(_paste_kernel)[(triton.cdiv(HW, BLOCK),)](
            c, f, uu, vv, ib, scores.to(torch.float64).contiguous(), out, HW, width, fine.shape[0], c.shape[1],
            f.shape[1], f.shape[2], f.shape[3], ACC=_acc(f), BLOCK=BLOCK)
    return out


# ---- roi_point_sample ---------------------------------------------------------------------------------------------

@triton.jit
def _point_axis(g, S, ACC: tl.constexpr):
    lo = tl.minimum(tl.maximum(g.to(tl.int64), 0), S - 1)
    hi = tl.where(lo + 1 < S, lo + 1, S - 1)
    w = tl.minimum(hi.to(ACC), g) - lo.to(ACC)
    return lo, hi, w


@triton.jit
def _point_weights(pts, p, Sh, Sw, msk, DT: tl.constexpr, ACC: tl.constexpr):
    gx = tl.load(pts + 2 * p, mask=msk, other=0.0).to(ACC)
    gy = tl.load(pts + 2 * p + 1, mask=msk, other=0.0).to(ACC)
    xl, xh, wx = _point_axis(gx, Sw, ACC)
    yl, yh, wy = _point_axis(gy, Sh, ACC)
    w00 = ((1.0 - wx) * (1.0 - wy)).to(DT).to(ACC)
    w01 = (wx * (1.0 - wy)).to(DT).to(ACC)
    w10 = ((1.0 - wx) * wy).to(DT).to(ACC)
    w11 = (wx * wy).to(DT).to(ACC)
    return yl * Sw + xl, yl * Sw + xh, yh * Sw + xl, yh * Sw + xh, w00, w01, w10, w11


@triton.jit
def _point_fwd_kernel(maps, ri, pts, out, total, C, Sh, Sw, ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    msk = i < total
    p = i // C
    c = i % C
    DT = maps.dtype.element_ty
    o00, o01, o10, o11, w00, w01, w10, w11 = _point_weights(pts, p, Sh, Sw, msk, DT, ACC)
    base = (tl.load(ri + p, mask=msk, other=0) * C + c) * Sh * Sw
    s = (tl.load(maps + base + o00, mask=msk, other=0.0).to(ACC) * w00).to(DT).to(ACC)
    s = (s + (tl.load(maps + base + o01, mask=msk, other=0.0).to(ACC) * w01).to(DT).to(ACC)).to(DT).to(ACC)
    s = (s + (tl.load(maps + base + o10, mask=msk, other=0.0).to(ACC) * w10).to(DT).to(ACC)).to(DT).to(ACC)
    s = s + (tl.load(maps + base + o11, mask=msk, other=0.0).to(ACC) * w11).to(DT).to(ACC)
    tl.store(out + i, s.to(DT), mask=msk)


@triton.jit
def _point_bwd_kernel(grad, order, start, pts, gmaps, total, C, Sh, Sw, MAXN, ACC: tl.constexpr,
                      BLOCK: tl.constexpr):
    # lane = one (RoI, channel) plane of the gradient; its RoI's points in point order: no two lanes share an
    # address, so plain read-modify-writes are exact and deterministic
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    msk = i < total
    r = i // C
    c = i % C
    s0 = tl.load(start + r, mask=msk, other=0)
    n = tl.load(start + r + 1, mask=msk, other=0) - s0
    DT = grad.dtype.element_ty
    g = gmaps + i * Sh * Sw
    for k in range(0, MAXN):
        on = msk & (k < n)
        p = tl.load(order + s0 + k, mask=on, other=0)
        o00, o01, o10, o11, w00, w01, w10, w11 = _point_weights(pts, p, Sh, Sw, on, DT, ACC)
        gv = tl.load(grad + p * C + c, mask=on, other=0.0).to(ACC)
        tl.store(g + o00, tl.load(g + o00, mask=on, other=0.0) + gv * w00, mask=on)
        tl.store(g + o01, tl.load(g + o01, mask=on, other=0.0) + gv * w01, mask=on)
        tl.store(g + o10, tl.load(g + o10, mask=on, other=0.0) + gv * w10, mask=on)
        tl.store(g + o11, tl.load(g + o11, mask=on, other=0.0) + gv * w11, mask=on)


def _check_points(maps, roi_index, points):
    check_triton_device(maps, "maps")
    if maps.dim() != 4 or roi_index.dim() != 1 or tuple(points.shape) != (roi_index.shape[0], 2):
        raise RuntimeError("roi_point_sample: maps [R, C, S, S], roi_index [P], points [P, 2]")
    if roi_index.numel():
        if bool(((roi_index < 0) | (roi_index >= maps.shape[0])).any()):
            raise RuntimeError(f"roi_point_sample: roi_index out of range [0, {maps.shape[0]})")
        px, py = points[:, 0], points[:, 1]
        if not bool(((px >= 0) & (px <= maps.shape[3]) & (py >= 0) & (py <= maps.shape[2])).all()):
            raise RuntimeError("roi_point_sample: points must be finite and inside the RoI grid [0, S]")


@triton_custom_op("fastops::roi_point_sample_triton", fake=_reg.point_sample_fake)
def roi_point_sample_triton(maps: Tensor, roi_index: Tensor, points: Tensor) -> Tensor:
    _check_points(maps, roi_index, points)
    P, C = roi_index.shape[0], maps.shape[1]
    out = torch.empty(P, C, dtype=maps.dtype, device=maps.device)
    if P * C:
        m = maps.contiguous()
        launch(_point_fwd_kernel)[(triton.cdiv(P * C, BLOCK),)](
            m, roi_index.contiguous(), points.to(maps.dtype).contiguous(), out, P * C, C, m.shape[2], m.shape[3],
            ACC=_acc(m), BLOCK=BLOCK)
    return out


@triton_custom_op("fastops::_roi_point_sample_backward_triton", fake=_reg.point_sample_backward_fake)
def roi_point_sample_backward_triton(grad: Tensor, maps: Tensor, roi_index: Tensor, points: Tensor) -> Tensor:
    _check_points(maps, roi_index, points)
    R, C, Sh, Sw = maps.shape
    acc = torch.float64 if maps.dtype == torch.float64 else torch.float32
    gm = torch.zeros(R, C, Sh, Sw, dtype=acc, device=maps.device)
    P = roi_index.shape[0]
    if P * C and R:
        order = torch.sort(roi_index, stable=True).indices
        counts = torch.bincount(roi_index, minlength=R)
        start = torch.zeros(R + 1, dtype=torch.int64, device=maps.device)
        start[1:] = counts.cumsum(0)
        launch(_point_bwd_kernel)[(triton.cdiv(R * C, BLOCK),)](
            grad.to(maps.dtype).contiguous(), order, start, points.to(maps.dtype).contiguous(), gm, R * C, C, Sh, Sw,
            int(counts.max()), ACC=_acc(maps), BLOCK=BLOCK)
    return gm.to(maps.dtype)


roi_point_sample_triton.register_autograd(
    _reg.point_sample_backward(torch.ops.fastops._roi_point_sample_backward_triton),
    setup_context=_reg.point_sample_setup_context)
