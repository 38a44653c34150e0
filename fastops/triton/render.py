"""Triton kernels of the rendering ops (`render_gaussian_heatmaps`, `render_center_heatmap`, `gaussian_radius`),
registered as `fastops::<op>_triton` (see _registry.py). Same conventions as csrc/render/render.h; accumulation in
float32 (float64 stays float64).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.registrations import render as _reg
from fastops.triton._keypoints import acc_type
from fastops.triton._registry import check_triton_device, launch, register_fake, triton_custom_op


@triton.jit
def _trunc(v):
    return tl.where(v >= 0, tl.floor(v), tl.ceil(v))


@triton.jit
def _clip_int(v, hi):
    return tl.minimum(tl.maximum(v, 0.0), hi * 1.0).to(tl.int32)


@triton.jit
def _window(kx, ky, ok, radius, H, W):
    """The msra/udp window of keypoints (kx, ky), in float64 and truncated as mmpose's astype(int64):
    (ok & the window touches the map, rounded centre mux, muy, left, top, right, bottom)."""
    hx = (kx + 0.5).to(tl.float64)
    hy = (ky + 0.5).to(tl.float64)
    ok = ok & (tl.abs(hx) <= 1e9) & (tl.abs(hy) <= 1e9)
    mux = _trunc(tl.where(ok, hx, 0.0))
    muy = _trunc(tl.where(ok, hy, 0.0))
    left = _trunc(mux - radius)
    top = _trunc(muy - radius)
    right = _trunc(mux + radius + 1.0)
    bottom = _trunc(muy + radius + 1.0)
    ok = ok & (left < W) & (top < H) & (right >= 0) & (bottom >= 0)
    return ok, mux, muy, left, top, right, bottom


@triton.jit
def _render_kernel(kp, vis, out, prm, N, K, H, W, MODE: tl.constexpr, KERN: tl.constexpr, HAS_VIS: tl.constexpr,
                   ACC: tl.constexpr, BLOCK: tl.constexpr):
    # prm: float64 [sigma, 3 sigma, floor((6 sigma + 1) / 2), 1 / (2 sigma^2)] (Python floats would arrive as
    # float32). Window arithmetic in float64 scalars, as the C++; per-pixel math in ACC only: the pixel offset from
    # the centre is (x - hi(c)) - lo(c) with c split into ACC parts (the CPU kernel's formula), which keeps the
    # per-thread state small (no spills on sm_90).
    sigma = tl.load(prm)
    radius = tl.load(prm + 1)
    c0 = tl.load(prm + 2)
    inv2s2 = tl.load(prm + 3).to(ACC)
    sig = sigma.to(ACC)
    m = tl.program_id(0)  # map (b, k)
    b = m // K
    k = m % K
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = offs < H * W
    xi = offs % W
    yi = offs // W
    xf = xi.to(ACC)
    yf = yi.to(ACC)
    best = tl.zeros([BLOCK], dtype=ACC)
    for n in range(0, N):
        i = (b * N + n) * K + k
        kx = tl.load(kp + 2 * i).to(ACC)
        ky = tl.load(kp + 2 * i + 1).to(ACC)
        ok = (kx - kx == 0) & (ky - ky == 0)  # finite
        if HAS_VIS:
            ok = ok & (tl.load(vis + i).to(ACC) >= 0.5)
        kxd = tl.where(ok, kx, 0.0).to(tl.float64)
        kyd = tl.where(ok, ky, 0.0).to(tl.float64)
        if MODE == 2:
            ok = ok & (kxd - radius < W) & (kyd - radius < H) & (kxd + radius + 1.0 >= 0) & (kyd + radius + 1.0 >= 0)
            x0 = 0
            x1 = W
            y0 = 0
            y1 = H
            cx = kxd
            cy = kyd
        else:
            ok, mux, muy, left, top, right, bottom = _window(kx, ky, ok, radius, H, W)
            cx = left + c0
            cy = top + c0
            if MODE == 1:
                cx += kxd - mux
                cy += kyd - muy
            x0 = _clip_int(left, W)
            x1 = _clip_int(right, W)
            y0 = _clip_int(top, H)
            y1 = _clip_int(bottom, H)
        # (scalar & block masks trip the CPU interpreter: tl.where instead)
        inside = tl.where(ok, (xi >= x0) & (xi < x1) & (yi >= y0) & (yi < y1), False)
        cxa = cx.to(ACC)
        cya = cy.to(ACC)
        dx = (xf - cxa) - (cx - cxa.to(tl.float64)).to(ACC)
        dy = (yf - cya) - (cy - cya.to(tl.float64)).to(ACC)
        if KERN == 0:
            v = tl.exp(-dx * dx * inv2s2) * tl.exp(-dy * dy * inv2s2)
        else:
            s2 = dx * dx + dy * dy + sig * sig
            v = sig / (s2 * tl.sqrt(s2))
        best = tl.where(inside, tl.maximum(best, v), best)
    tl.store(out + m * H * W + offs, best.to(out.dtype.element_ty), mask=pm)


@triton.jit
def _render_weights_kernel(kp, vis, wt, total, H, W, radius, MODE: tl.constexpr, HAS_VIS: tl.constexpr,
                           ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    im = i < total
    kx = tl.load(kp + 2 * i, mask=im, other=0.0).to(ACC)
    ky = tl.load(kp + 2 * i + 1, mask=im, other=0.0).to(ACC)
    if HAS_VIS:
        v = tl.load(vis + i, mask=im, other=0.0).to(ACC)
    else:
        v = tl.full([BLOCK], 1.0, ACC)
    ok = (kx - kx == 0) & (ky - ky == 0) & (v >= 0.5)
    kxd = tl.where(ok, kx, 0.0).to(tl.float64)
    kyd = tl.where(ok, ky, 0.0).to(tl.float64)
    if MODE == 2:
        ok = ok & (kxd - radius < W) & (kyd - radius < H) & (kxd + radius + 1.0 >= 0) & (kyd + radius + 1.0 >= 0)
    else:
        ok, mux, muy, left, top, right, bottom = _window(kx, ky, ok, radius, H, W)
        # clipped window non-empty (fastops' rule)
        ok = ok & (tl.minimum(right, W * 1.0) > tl.maximum(left, 0.0)) & (tl.minimum(bottom, H * 1.0) >
                                                                            tl.maximum(top, 0.0))
    tl.store(wt + i, tl.where(ok, v, 0.0).to(wt.dtype.element_ty), mask=im)


@triton_custom_op("fastops::render_gaussian_heatmaps_triton", mutates_args=())
def render_gaussian_heatmaps_triton(keypoints: Tensor, visible: Optional[Tensor], height: int, width: int,
                                    sigma: float, mode: str, kernel: str) -> Tuple[Tensor, Tensor]:
    check_triton_device(keypoints, "keypoints")
    kp = keypoints.contiguous()
    B, N, K = kp.shape[:3]
    vis = visible.to(kp.dtype).contiguous() if visible is not None else None
    hm = torch.empty((B, K, height, width), dtype=kp.dtype, device=kp.device)
    wt = torch.empty((B, N, K), dtype=kp.dtype, device=kp.device)
    acc = acc_type(kp.dtype)
    if wt.numel() > 0:
        BLK = 128
        launch(_render_weights_kernel)[(triton.cdiv(wt.numel(), BLK),)](
            kp, vis if vis is not None else kp, wt, wt.numel(), height, width, 3.0 * sigma, MODE=_reg.MODES[mode],
            HAS_VIS=vis is not None, ACC=acc, BLOCK=BLK)
    if hm.numel() > 0:
        BLK = 1024
        prm = torch.tensor([sigma, 3.0 * sigma, math.floor((6.0 * sigma + 1.0) / 2.0), 1.0 / (2.0 * sigma * sigma)],
                           dtype=torch.float64, device=kp.device)
        launch(_render_kernel)[(B * K, triton.cdiv(height * width, BLK))](
            kp, vis if vis is not None else kp, hm, prm, N, K, height, width, MODE=_reg.MODES[mode],
            KERN=_reg.KERNELS[kernel], HAS_VIS=vis is not None, ACC=acc, BLOCK=BLK)
    return hm, wt


# ---- CenterNet targets and radius ------------------------------------------------------------------------------

@triton.jit
def _center_kernel(ct, rd, lb, out, N, C, H, W, BLOCK: tl.constexpr):
    m = tl.program_id(0)  # plane (b, c)
    b = m // C
    c = m % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = offs < H * W
    x = (offs % W).to(tl.float64)
    y = (offs // W).to(tl.float64)
    best = tl.zeros([BLOCK], tl.float64)
    for n in range(0, N):
        i = b * N + n
        lab = tl.load(lb + i)
        fx = tl.load(ct + 2 * i).to(tl.float64)
        fy = tl.load(ct + 2 * i + 1).to(tl.float64)
        r = tl.maximum(tl.load(rd + i), 0).to(tl.float64)
        ok = (lab == c) & (fx - fx == 0) & (fy - fy == 0)
        cx = _trunc(tl.where(ok, fx, 0.0))
        cy = _trunc(tl.where(ok, fy, 0.0))
        inside = tl.where(ok, (tl.abs(x - cx) <= r) & (tl.abs(y - cy) <= r), False)
        sig = (2.0 * r + 1.0) / 6.0
        dx = x - cx
        dy = y - cy
        v = tl.exp(-(dx * dx + dy * dy) / (2.0 * sig * sig))
        v = tl.where(v < 2.220446049250313e-16, 0.0, v)
        best = tl.where(inside, tl.maximum(best, v), best)
    tl.store(out + m * H * W + offs, best.to(out.dtype.element_ty), mask=pm)


@triton_custom_op("fastops::render_center_heatmap_triton", mutates_args=())
def render_center_heatmap_triton(centers: Tensor, radii: Tensor, labels: Tensor, num_classes: int, height: int,
                                 width: int) -> Tensor:
    check_triton_device(centers, "centers")
    ct, rd, lb = centers.contiguous(), radii.contiguous(), labels.contiguous()
    if lb.numel() > 0 and bool((lb >= num_classes).any()):
        raise RuntimeError(f"render_center_heatmap: labels must be < num_classes ({num_classes})")
    B, N = ct.shape[:2]
    out = torch.empty((B, num_classes, height, width), dtype=ct.dtype, device=ct.device)
    if out.numel() > 0:
        BLK = 1024
        launch(_center_kernel)[(B * num_classes, triton.cdiv(height * width, BLK))](
            ct, rd, lb, out, N, num_classes, height, width, BLOCK=BLK)
    return out


@triton.jit
def _radius_kernel(h, w, out, n, o_ptr, VARIANT: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    msk = i < n
    hh = tl.load(h + i, mask=msk, other=1.0).to(tl.float64)
    ww = tl.load(w + i, mask=msk, other=1.0).to(tl.float64)
    o = tl.load(o_ptr)  # float64 (a Python float argument would arrive as float32)
    b1 = hh + ww
    c1 = ww * hh * (1 - o) / (1 + o)
    sq1 = tl.sqrt(b1 * b1 - 4 * c1)
    b2 = 2 * (hh + ww)
    c2 = (1 - o) * ww * hh
    sq2 = tl.sqrt(b2 * b2 - 16 * c2)
    a3 = 4 * o
    b3 = -2 * o * (hh + ww)
    c3 = (o - 1) * ww * hh
    sq3 = tl.sqrt(b3 * b3 - 4 * a3 * c3)
    if VARIANT == 0:
        r1 = (b1 + sq1) / 2
        r2 = (b2 + sq2) / 2
        r3 = (b3 + sq3) / 2
    else:
        r1 = (b1 - sq1) / 2
        r2 = (b2 - sq2) / 8
        r3 = (b3 + sq3) / (2 * a3)
    r = tl.where(r2 < r1, r2, r1)
    r = tl.where(r3 < r, r3, r)
    tl.store(out + i, r.to(out.dtype.element_ty), mask=msk)


@triton_custom_op("fastops::gaussian_radius_triton", mutates_args=())
def gaussian_radius_triton(heights: Tensor, widths: Tensor, min_overlap: float, variant: str) -> Tensor:
    check_triton_device(heights, "heights")
    h = heights.contiguous()
    w = widths.to(h.dtype).contiguous()
    out = torch.empty_like(h)
    if out.numel() > 0:
        BLK = 256
        o = torch.tensor([float(min_overlap)], dtype=torch.float64, device=h.device)
        launch(_radius_kernel)[(triton.cdiv(h.numel(), BLK),)](h, w, out, h.numel(), o,
                                                               VARIANT=0 if variant == "centernet" else 1, BLOCK=BLK)
    return out




for _name, _op in (("render_gaussian_heatmaps", render_gaussian_heatmaps_triton),
                   ("render_center_heatmap", render_center_heatmap_triton),
                   ("gaussian_radius", gaussian_radius_triton)):
    register_fake(_op, _reg.FAKES[_name])
