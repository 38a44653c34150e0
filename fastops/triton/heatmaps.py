"""Triton kernels for every heatmap op: `render_gaussian_heatmaps`, `render_center_heatmap`, `gaussian_radius`,
`heatmap_argmax` (all refinements), `soft_argmax` (+ backward), `heatmap_peaks` / `centernet_decode` (per-pixel
peak keys, then torch.topk) and `corner_pool` (+ backward), registered as `fastops::<op>_triton`
(see _registry.py).

Same conventions as the C++/CUDA kernels (csrc/heatmaps/heatmaps.h). Every reduction runs in a fixed order inside
one program, so results are deterministic on a GPU too. Accumulation in float32 (float64 stays float64).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.triton._registry import check_triton_device, launch, register_fake, triton_custom_op

_MODES = {"msra": 0, "udp": 1, "dark": 2}
_KERNELS = {"gaussian": 0, "cauchy": 1}
_POOL = {"top": 0, "bottom": 1, "left": 2, "right": 3}


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _trunc(v):
    return tl.where(v >= 0, tl.floor(v), tl.ceil(v))


# ---- rendering ---------------------------------------------------------------------------------------------------

@triton.jit
def _render_kernel(kp, vis, out, N, K, H, W, sigma, radius, c0, inv2s2, MODE: tl.constexpr, KERN: tl.constexpr, HAS_VIS: tl.constexpr,
                   ACC: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0)  # map (b, k)
    b = m // K
    k = m % K
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = offs < H * W
    x = (offs % W).to(tl.float64)
    y = (offs // W).to(tl.float64)
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
            left = kxd - radius
            top = kyd - radius
            right = kxd + radius + 1.0
            bottom = kyd + radius + 1.0
            ok = ok & (left < W) & (top < H) & (right >= 0) & (bottom >= 0)
            x0 = 0.0
            x1 = W * 1.0
            y0 = 0.0
            y1 = H * 1.0
            cx = kxd
            cy = kyd
        else:
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
            cx = left + c0
            cy = top + c0
            if MODE == 1:
                cx += kxd - mux
                cy += kyd - muy
            x0 = left
            x1 = right
            y0 = top
            y1 = bottom
        # (scalar & block masks trip the CPU interpreter: tl.where instead)
        inside = tl.where(ok, (x >= x0) & (x < x1) & (y >= y0) & (y < y1), False)
        dx = (x - cx).to(ACC)
        dy = (y - cy).to(ACC)
        if KERN == 0:
            v = tl.exp(-dx * dx * inv2s2) * tl.exp(-dy * dy * inv2s2)
        else:
            s2 = dx * dx + dy * dy + sigma * sigma
            v = sigma / (s2 * tl.sqrt(s2))
        best = tl.where(inside, tl.maximum(best, v.to(ACC)), best)
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
    acc = _acc(kp.dtype)
    if wt.numel() > 0:
        BLK = 128
        launch(_render_weights_kernel)[(triton.cdiv(wt.numel(), BLK),)](
            kp, vis if vis is not None else kp, wt, wt.numel(), height, width, 3.0 * sigma, MODE=_MODES[mode],
            HAS_VIS=vis is not None, ACC=acc, BLOCK=BLK)
    if hm.numel() > 0:
        BLK = 1024
        launch(_render_kernel)[(B * K, triton.cdiv(height * width, BLK))](
            kp, vis if vis is not None else kp, hm, N, K, height, width, float(sigma), 3.0 * sigma,
            float(math.floor((6.0 * sigma + 1.0) / 2.0)), 1.0 / (2.0 * sigma * sigma), MODE=_MODES[mode],
            KERN=_KERNELS[kernel], HAS_VIS=vis is not None, ACC=acc, BLOCK=BLK)
    return hm, wt


# ---- soft_argmax -------------------------------------------------------------------------------------------------

@triton.jit
def _softmax_stats(p, n, W, beta, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mx = tl.full([BLOCK], float("-inf"), ACC)
    for s in range(0, n, BLOCK):
        v = tl.load(p + s + offs, mask=s + offs < n, other=float("-inf")).to(ACC)
        mx = tl.maximum(mx, tl.where(s + offs < n, beta * v, float("-inf")))
    m = tl.max(mx, axis=0)
    acc_s = tl.zeros([BLOCK], ACC)
    acc_x = tl.zeros([BLOCK], ACC)
    acc_y = tl.zeros([BLOCK], ACC)
    for s in range(0, n, BLOCK):
        idx = s + offs
        msk = idx < n
        v = tl.load(p + idx, mask=msk, other=0.0).to(ACC)
        e = tl.where(msk, tl.exp(beta * v - m), 0.0)
        acc_s += e
        acc_x += e * (idx % W).to(ACC)
        acc_y += e * (idx // W).to(ACC)
    return m, tl.sum(acc_s, axis=0), tl.sum(acc_x, axis=0), tl.sum(acc_y, axis=0)


@triton.jit
def _soft_argmax_kernel(hm, coords, H, W, beta, NORMALIZE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0)
    n = H * W
    b = beta
    mx, s, sx, sy = _softmax_stats(hm + m * n, n, W, b, ACC, BLOCK)
    cx = sx / s
    cy = sy / s
    if NORMALIZE:
        cx = cx / W
        cy = cy / H
    tl.store(coords + 2 * m, cx.to(coords.dtype.element_ty))
    tl.store(coords + 2 * m + 1, cy.to(coords.dtype.element_ty))


@triton.jit
def _soft_argmax_bwd_kernel(grad, hm, coords, gin, H, W, beta, NORMALIZE: tl.constexpr, ACC: tl.constexpr,
                            BLOCK: tl.constexpr):
    m = tl.program_id(0)
    n = H * W
    b = beta
    p = hm + m * n
    mx, s, sx, sy = _softmax_stats(p, n, W, b, ACC, BLOCK)
    gx = tl.load(grad + 2 * m).to(ACC)
    gy = tl.load(grad + 2 * m + 1).to(ACC)
    cx = tl.load(coords + 2 * m).to(ACC)
    cy = tl.load(coords + 2 * m + 1).to(ACC)
    if NORMALIZE:
        ux = 1.0 / W
        uy = 1.0 / H
    else:
        ux = 1.0
        uy = 1.0
    f = b / s
    offs = tl.arange(0, BLOCK)
    for st in range(0, n, BLOCK):
        idx = st + offs
        msk = idx < n
        v = tl.load(p + idx, mask=msk, other=0.0).to(ACC)
        e = tl.exp(b * v - mx)
        g = f * e * (gx * ((idx % W).to(ACC) * ux - cx) + gy * ((idx // W).to(ACC) * uy - cy))
        tl.store(gin + m * n + idx, g.to(gin.dtype.element_ty), mask=msk)


def _map_block(n: int) -> int:
    return max(16, min(4096, triton.next_power_of_2(max(n, 1))))


@triton_custom_op("fastops::soft_argmax_triton", mutates_args=())
def soft_argmax_triton(heatmaps: Tensor, beta: float, normalize: bool) -> Tensor:
    check_triton_device(heatmaps, "heatmaps")
    hm = heatmaps.contiguous()
    B, K, H, W = hm.shape
    out = torch.empty((B, K, 2), dtype=hm.dtype, device=hm.device)
    if B * K > 0:
        launch(_soft_argmax_kernel)[(B * K,)](hm, out, H, W, float(beta), NORMALIZE=bool(normalize),
                                              ACC=_acc(hm.dtype), BLOCK=_map_block(H * W))
    return out


@triton_custom_op("fastops::_soft_argmax_backward_triton", mutates_args=())
def soft_argmax_backward_triton(grad: Tensor, heatmaps: Tensor, coords: Tensor, beta: float,
                                normalize: bool) -> Tensor:
    hm = heatmaps.contiguous()
    B, K, H, W = hm.shape
    gin = torch.empty_like(hm)
    if gin.numel() > 0:
        launch(_soft_argmax_bwd_kernel)[(B * K,)](grad.to(hm.dtype).contiguous(), hm, coords.to(hm.dtype).contiguous(),
                                                  gin, H, W, float(beta), NORMALIZE=bool(normalize),
                                                  ACC=_acc(hm.dtype), BLOCK=_map_block(H * W))
    return gin


# ---- corner pooling ----------------------------------------------------------------------------------------------

@triton.jit
def _line_geometry(pid_l, lines_per_plane, H, W, offs, VERTICAL: tl.constexpr):
    # lanes: columns of a plane (vertical scans) or rows of a plane (horizontal scans)
    plane = pid_l
    if VERTICAL:
        base = plane * H * W + offs
        step = W
        length = H
    else:
        base = plane * H * W + offs * W
        step = 1
        length = W
    return base, step, length


@triton.jit
def _corner_pool_kernel(x, out, H, W, MODE: tl.constexpr, BLOCK: tl.constexpr):
    VERTICAL: tl.constexpr = MODE < 2
    REV: tl.constexpr = (MODE == 0) | (MODE == 2)
    plane = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if VERTICAL:
        lane_ok = offs < W
    else:
        lane_ok = offs < H
    base, step, length = _line_geometry(plane, 0, H, W, offs, VERTICAL)
    if REV:
        pos = base + (length - 1) * step
        d = -step
    else:
        pos = base
        d = step
    mx = tl.load(x + pos, mask=lane_ok, other=0.0)
    tl.store(out + pos, mx, mask=lane_ok)
    for t in range(1, length):
        pos += d
        v = tl.load(x + pos, mask=lane_ok, other=0.0)
        mx = tl.where(v > mx, v, mx)
        tl.store(out + pos, mx, mask=lane_ok)


@triton.jit
def _corner_pool_bwd_kernel(grad, x, out, gin, H, W, MODE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    VERTICAL: tl.constexpr = MODE < 2
    REV: tl.constexpr = (MODE == 0) | (MODE == 2)
    plane = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if VERTICAL:
        lane_ok = offs < W
    else:
        lane_ok = offs < H
    base, step, length = _line_geometry(plane, 0, H, W, offs, VERTICAL)
    acc = tl.zeros([BLOCK], ACC)
    # walk against the scan: scan position t = length-1 .. 0
    for j in range(0, length):
        t = length - 1 - j
        if REV:
            pos = base + (length - 1 - t) * step
            prev = pos + step
        else:
            pos = base + t * step
            prev = pos - step
        acc += tl.load(grad + pos, mask=lane_ok, other=0.0).to(ACC)
        v = tl.load(x + pos, mask=lane_ok, other=0.0).to(ACC)
        pm = lane_ok & (t > 0)
        pv = tl.load(out + prev, mask=pm, other=0.0).to(ACC)
        rec = (t == 0) | (v > pv)
        tl.store(gin + pos, tl.where(rec, acc, 0.0).to(gin.dtype.element_ty), mask=lane_ok)
        acc = tl.where(rec, 0.0, acc)


def _lanes(x: Tensor, mode: str) -> Tuple[int, int]:
    n = x.size(3) if mode in ("top", "bottom") else x.size(2)
    blk = max(16, min(128, triton.next_power_of_2(max(n, 1))))
    return n, blk


@triton_custom_op("fastops::corner_pool_triton", mutates_args=())
def corner_pool_triton(input: Tensor, mode: str) -> Tensor:
    check_triton_device(input)
    x = input.contiguous()
    out = torch.empty_like(x)
    if x.numel() > 0:
        n, blk = _lanes(x, mode)
        launch(_corner_pool_kernel)[(x.size(0) * x.size(1), triton.cdiv(n, blk))](
            x, out, x.size(2), x.size(3), MODE=_POOL[mode], BLOCK=blk)
    return out


@triton_custom_op("fastops::_corner_pool_backward_triton", mutates_args=())
def corner_pool_backward_triton(grad: Tensor, input: Tensor, output: Tensor, mode: str) -> Tensor:
    x = input.contiguous()
    gin = torch.empty_like(x)
    if x.numel() > 0:
        n, blk = _lanes(x, mode)
        launch(_corner_pool_bwd_kernel)[(x.size(0) * x.size(1), triton.cdiv(n, blk))](
            grad.to(x.dtype).contiguous(), x, output.contiguous(), gin, x.size(2), x.size(3), MODE=_POOL[mode],
            ACC=_acc(x.dtype), BLOCK=blk)
    return gin


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


# ---- heatmap_argmax ----------------------------------------------------------------------------------------------

_REFINE = {"none": 0, "quarter": 1, "hourglass": 2, "dark": 3, "dark_udp": 4}


def opencv_kernel(ksize: int) -> Tensor:
    """OpenCV getGaussianKernel(ksize, 0) as the C++ side computes it (double, then float)."""
    from fastops.reference.heatmaps import opencv_gaussian_kernel

    return torch.from_numpy(opencv_gaussian_kernel(ksize))


@triton.jit
def _blur_at(p, H, W, y, x, kc, KS, ACC: tl.constexpr, KB: tl.constexpr):
    # zero outside the map; row pass then column pass like the C++ (sum order may differ in the last bits)
    r = KS // 2
    i = tl.arange(0, KB)
    wi = tl.load(kc + i, mask=i < KS, other=0.0).to(ACC)
    yy = y + i[:, None] - r
    xx = x + i[None, :] - r
    m = (i[:, None] < KS) & (i[None, :] < KS) & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    v = tl.load(p + yy * W + xx, mask=m, other=0.0).to(ACC)
    rows = tl.sum(v * wi[None, :], axis=1)
    return tl.sum(rows * wi, axis=0)


@triton.jit
def _blur_max(p, H, W, kc, KS, ACC: tl.constexpr, KB: tl.constexpr):
    m = _blur_at(p, H, W, 0, 0, kc, KS, ACC, KB)
    for yy in range(0, H):
        for xx in range(0, W):
            m = tl.maximum(m, _blur_at(p, H, W, yy, xx, kc, KS, ACC, KB))
    return m


@triton.jit
def _ld(p, H, W, y, x, ACC: tl.constexpr):
    ok = (y >= 0) & (y < H) & (x >= 0) & (x < W)
    return tl.load(p + tl.where(ok, y * W + x, 0)).to(ACC)


@triton.jit
def _argmax_kernel(hm, coords, scores, H, W, kc, KS, REFINE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                   KB: tl.constexpr):
    mid = tl.program_id(0)
    n = H * W
    p = hm + mid * n
    offs = tl.arange(0, BLOCK)
    mx = tl.full([BLOCK], float("-inf"), ACC)
    nanv = tl.zeros([BLOCK], tl.int32)
    for st in range(0, n, BLOCK):
        idx = st + offs
        v = tl.load(p + idx, mask=idx < n, other=float("-inf")).to(ACC)
        mx = tl.maximum(mx, v)
        nanv = tl.maximum(nanv, (v != v).to(tl.int32))
    best = tl.max(mx, axis=0)
    anynan = tl.max(nanv, axis=0) > 0
    first = tl.full([BLOCK], 2147483647, tl.int32)
    for st in range(0, n, BLOCK):
        idx = st + offs
        v = tl.load(p + idx, mask=idx < n, other=float("-inf")).to(ACC)
        hit = tl.where(anynan, v != v, v == best) & (idx < n)
        first = tl.minimum(first, tl.where(hit, idx, 2147483647))
    bi = tl.min(first, axis=0)
    bi = tl.where(bi == 2147483647, 0, bi)
    score = tl.load(p + bi).to(ACC)
    pos = score > 0.0
    x = tl.where(pos | (score != score), bi % W, -1)
    y = tl.where(pos | (score != score), bi // W, -1)
    x = tl.where(score <= 0.0, -1, x)
    y = tl.where(score <= 0.0, -1, y)
    kx = x.to(ACC)
    ky = y.to(ACC)
    if REFINE == 1:
        dx = tl.where((1 < x) & (x < W - 1) & (0 < y) & (y < H), _ld(p, H, W, y, x + 1, ACC) - _ld(p, H, W, y, x - 1, ACC), 0.0)
        dy = tl.where((1 < y) & (y < H - 1) & (0 < x) & (x < W), _ld(p, H, W, y + 1, x, ACC) - _ld(p, H, W, y - 1, x, ACC), 0.0)
        kx += tl.where(dx != dx, dx, tl.where(dx > 0, 0.25, tl.where(dx < 0, -0.25, 0.0)))
        ky += tl.where(dy != dy, dy, tl.where(dy > 0, 0.25, tl.where(dy < 0, -0.25, 0.0)))
    if REFINE == 2:
        right = _ld(p, H, W, y, tl.minimum(x + 1, W - 1), ACC)
        left = _ld(p, H, W, y, tl.maximum(x - 1, 0), ACC)
        down = _ld(p, H, W, tl.minimum(y + 1, H - 1), x, ACC)
        up = _ld(p, H, W, tl.maximum(y - 1, 0), x, ACC)
        kx = tl.where(pos, kx + tl.where(right > left, 0.25, -0.25) + 0.5, kx)
        ky = tl.where(pos, ky + tl.where(down > up, 0.25, -0.25) + 0.5, ky)
    if REFINE == 3:
        if (1 < x) & (x < W - 2) & (1 < y) & (y < H - 2):
            c = _blur_at(p, H, W, y, x, kc, KS, ACC, KB)
            xp = _blur_at(p, H, W, y, x + 1, kc, KS, ACC, KB)
            xm = _blur_at(p, H, W, y, x - 1, kc, KS, ACC, KB)
            yp = _blur_at(p, H, W, y + 1, x, kc, KS, ACC, KB)
            ym = _blur_at(p, H, W, y - 1, x, kc, KS, ACC, KB)
            xpp = _blur_at(p, H, W, y, x + 2, kc, KS, ACC, KB)
            xmm = _blur_at(p, H, W, y, x - 2, kc, KS, ACC, KB)
            ypp = _blur_at(p, H, W, y + 2, x, kc, KS, ACC, KB)
            ymm = _blur_at(p, H, W, y - 2, x, kc, KS, ACC, KB)
            pp = _blur_at(p, H, W, y + 1, x + 1, kc, KS, ACC, KB)
            mp = _blur_at(p, H, W, y - 1, x + 1, kc, KS, ACC, KB)
            pm = _blur_at(p, H, W, y + 1, x - 1, kc, KS, ACC, KB)
            mm = _blur_at(p, H, W, y - 1, x - 1, kc, KS, ACC, KB)
            lo = tl.minimum(tl.minimum(tl.minimum(c, xp), tl.minimum(xm, yp)),
                            tl.minimum(tl.minimum(ym, xpp), tl.minimum(xmm, ypp)))
            lo = tl.minimum(lo, tl.minimum(tl.minimum(ymm, pp), tl.minimum(tl.minimum(mp, pm), mm)))
            s = tl.full([], 1.0, ACC)  # a tensor on both sides of the branch below
            clamped = ~(lo >= 1e-10)
            if clamped:
                s = score / _blur_max(p, H, W, kc, KS, ACC, KB)
            c = tl.log(tl.maximum(c * s, 1e-10))
            xp = tl.log(tl.maximum(xp * s, 1e-10))
            xm = tl.log(tl.maximum(xm * s, 1e-10))
            yp = tl.log(tl.maximum(yp * s, 1e-10))
            ym = tl.log(tl.maximum(ym * s, 1e-10))
            xpp = tl.log(tl.maximum(xpp * s, 1e-10))
            xmm = tl.log(tl.maximum(xmm * s, 1e-10))
            ypp = tl.log(tl.maximum(ypp * s, 1e-10))
            ymm = tl.log(tl.maximum(ymm * s, 1e-10))
            pp = tl.log(tl.maximum(pp * s, 1e-10))
            mp = tl.log(tl.maximum(mp * s, 1e-10))
            pm = tl.log(tl.maximum(pm * s, 1e-10))
            mm = tl.log(tl.maximum(mm * s, 1e-10))
            dx = 0.5 * (xp - xm)
            dy = 0.5 * (yp - ym)
            dxx = 0.25 * (xpp - 2.0 * c + xmm)
            dxy = 0.25 * (pp - mp - pm + mm)
            dyy = 0.25 * (ypp - 2.0 * c + ymm)
            det = dxx * dyy - dxy * dxy
            if det != 0:
                kx -= (dyy * dx - dxy * dy) / det
                ky -= (dxx * dy - dxy * dx) / det
    if REFINE == 4:
        if (x >= 0) & (y >= 0):
            xm1 = tl.maximum(x - 1, 0)
            xp1 = tl.minimum(x + 1, W - 1)
            ym1 = tl.maximum(y - 1, 0)
            yp1 = tl.minimum(y + 1, H - 1)
            i_ = _blur_at(p, H, W, y, x, kc, KS, ACC, KB)
            ix1 = _blur_at(p, H, W, y, xp1, kc, KS, ACC, KB)
            iy1 = _blur_at(p, H, W, yp1, x, kc, KS, ACC, KB)
            ix1y1 = _blur_at(p, H, W, yp1, xp1, kc, KS, ACC, KB)
            ix1_y1_ = _blur_at(p, H, W, ym1, xm1, kc, KS, ACC, KB)
            ix1_ = _blur_at(p, H, W, y, xm1, kc, KS, ACC, KB)
            iy1_ = _blur_at(p, H, W, ym1, x, kc, KS, ACC, KB)
            lo = tl.minimum(tl.minimum(tl.minimum(i_, ix1), tl.minimum(iy1, ix1y1)),
                            tl.minimum(tl.minimum(ix1_y1_, ix1_), iy1_))
            s = tl.full([], 1.0, ACC)
            clipped = ~(lo >= 1e-3) | ~(score <= 50.0)
            if clipped:
                s = score / _blur_max(p, H, W, kc, KS, ACC, KB)
            i_ = tl.log(tl.minimum(tl.maximum(i_ * s, 1e-3), 50.0))
            ix1 = tl.log(tl.minimum(tl.maximum(ix1 * s, 1e-3), 50.0))
            iy1 = tl.log(tl.minimum(tl.maximum(iy1 * s, 1e-3), 50.0))
            ix1y1 = tl.log(tl.minimum(tl.maximum(ix1y1 * s, 1e-3), 50.0))
            ix1_y1_ = tl.log(tl.minimum(tl.maximum(ix1_y1_ * s, 1e-3), 50.0))
            ix1_ = tl.log(tl.minimum(tl.maximum(ix1_ * s, 1e-3), 50.0))
            iy1_ = tl.log(tl.minimum(tl.maximum(iy1_ * s, 1e-3), 50.0))
            dx = (0.5 * (ix1 - ix1_)).to(tl.float64)
            dy = (0.5 * (iy1 - iy1_)).to(tl.float64)
            eps = 1.1920928955078125e-07
            dxx = (ix1 - 2.0 * i_ + ix1_).to(tl.float64) + eps
            dyy = (iy1 - 2.0 * i_ + iy1_).to(tl.float64) + eps
            dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_).to(tl.float64)
            det = dxx * dyy - dxy * dxy
            if det != 0:
                kx -= ((dyy * dx - dxy * dy) / det).to(ACC)
                ky -= ((dxx * dy - dxy * dx) / det).to(ACC)
    tl.store(coords + 2 * mid, kx.to(coords.dtype.element_ty))
    tl.store(coords + 2 * mid + 1, ky.to(coords.dtype.element_ty))
    tl.store(scores + mid, score.to(scores.dtype.element_ty))


@triton_custom_op("fastops::heatmap_argmax_triton", mutates_args=())
def heatmap_argmax_triton(heatmaps: Tensor, refine: str, blur_kernel: int) -> Tuple[Tensor, Tensor]:
    check_triton_device(heatmaps, "heatmaps")
    hm = heatmaps.contiguous()
    B, K, H, W = hm.shape
    coords = torch.empty((B, K, 2), dtype=hm.dtype, device=hm.device)
    scores = torch.empty((B, K), dtype=hm.dtype, device=hm.device)
    if B * K > 0:
        acc = torch.float64 if hm.dtype == torch.float64 else torch.float32
        kc = opencv_kernel(blur_kernel).to(device=hm.device, dtype=acc)
        launch(_argmax_kernel)[(B * K,)](hm, coords, scores, H, W, kc, blur_kernel, REFINE=_REFINE[refine],
                                         ACC=_acc(hm.dtype), BLOCK=_map_block(H * W),
                                         KB=max(16, triton.next_power_of_2(blur_kernel)))
    return coords, scores


# ---- heatmap_peaks / centernet_decode ----------------------------------------------------------------------------

@triton.jit
def _peak_score(heat, plane_base, H, W, y, x, msk, PAD: tl.constexpr, ACC: tl.constexpr):
    v = tl.load(heat + plane_base + y * W + x, mask=msk, other=0.0).to(ACC)
    m = v
    for dy in range(-PAD, PAD + 1):
        for dx in range(-PAD, PAD + 1):
            yy = y + dy
            xx = x + dx
            ok = msk & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            u = tl.load(heat + plane_base + yy * W + xx, mask=ok, other=float("-inf")).to(ACC)
            m = tl.where((u > m) | (u != u), u, m)
    return tl.where(m == v, v, 0.0) + 0.0


@triton.jit
def _peak_keys_kernel(heat, keys, scores, CHW, H, W, PAD: tl.constexpr, KEYS: tl.constexpr, ACC: tl.constexpr,
                      BLOCK: tl.constexpr):
    b = tl.program_id(0)
    f = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    msk = f < CHW
    plane = f // (H * W)
    y = (f // W) % H
    x = f % W
    s = _peak_score(heat, b * CHW + plane * H * W, H, W, y, x, msk, PAD, ACC)
    if KEYS:
        # (score descending, index ascending) as one int64: monotone image of the float bits, then the index
        bits = s.to(tl.float32).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        u = tl.where(bits >= 2147483648, 4294967295 - bits, bits + 2147483648)
        key = (u - 2147483648) * 4294967296 + (4294967295 - f.to(tl.int64))
        tl.store(keys + b * CHW + f, key, mask=msk)
    else:
        tl.store(scores + b * CHW + f, s.to(scores.dtype.element_ty), mask=msk)


def _peaks(hm: Tensor, k: int, kernel: int):
    B, C, H, W = hm.shape
    CHW = C * H * W
    ke = min(k, CHW)
    lo = dict(dtype=torch.int64, device=hm.device)
    if B * ke == 0:
        e = torch.empty((B, ke), **lo)
        return hm.new_empty((B, ke)), e, e.clone(), e.clone()
    if CHW >= 2 ** 32:
        raise RuntimeError("heatmap_peaks: C*H*W must be < 2^32 for the Triton kernel")
    BLK = 1024
    grid = (B, triton.cdiv(CHW, BLK))
    if hm.dtype != torch.float64:
        keys = torch.empty((B, CHW), **lo)
        launch(_peak_keys_kernel)[grid](hm, keys, keys, CHW, H, W, PAD=(kernel - 1) // 2, KEYS=True,
                                        ACC=tl.float32, BLOCK=BLK)
        top = torch.topk(keys, ke, dim=1).values
        flat = 4294967295 - (top & 0xFFFFFFFF)
        u = (top >> 32) + 2147483648
        bits = torch.where(u >= 2147483648, u - 2147483648, 4294967295 - u)
        bits = torch.where(bits >= 2147483648, bits - 4294967296, bits).to(torch.int32)
        scores = bits.view(torch.float32).to(hm.dtype)
    else:
        sc = torch.empty((B, CHW), dtype=hm.dtype, device=hm.device)
        launch(_peak_keys_kernel)[grid](hm, sc, sc, CHW, H, W, PAD=(kernel - 1) // 2, KEYS=False,
                                        ACC=tl.float64, BLOCK=BLK)
        srt = torch.sort(sc, dim=1, descending=True, stable=True)
        scores, flat = srt.values[:, :ke].contiguous(), srt.indices[:, :ke].contiguous()
    return scores, flat // (H * W), (flat // W) % H, flat % W


@triton_custom_op("fastops::heatmap_peaks_triton", mutates_args=())
def heatmap_peaks_triton(heatmaps: Tensor, k: int, kernel: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    check_triton_device(heatmaps, "heatmaps")
    return _peaks(heatmaps.contiguous(), k, kernel)


@triton_custom_op("fastops::centernet_decode_triton", mutates_args=())
def centernet_decode_triton(heat: Tensor, wh: Tensor, reg: Optional[Tensor], k: int) -> Tensor:
    check_triton_device(heat, "heat")
    scores, labels, ys, xs = _peaks(heat.contiguous(), k, 3)
    B, ke = scores.shape
    acc = torch.float64 if heat.dtype == torch.float64 else torch.float32
    bi = torch.arange(B, device=heat.device)[:, None].expand(B, ke)
    # gathers straight from NCHW (advanced indexing reads k values; no permute copy of the maps)
    w = wh[bi, 0, ys, xs].to(acc)
    h = wh[bi, 1, ys, xs].to(acc)
    if reg is not None:
        cx = xs.to(acc) + reg[bi, 0, ys, xs].to(acc)
        cy = ys.to(acc) + reg[bi, 1, ys, xs].to(acc)
    else:
        cx = xs.to(acc) + 0.5
        cy = ys.to(acc) + 0.5
    out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores.to(acc), labels.to(acc)], dim=-1)
    return out.to(heat.dtype)


# ---- fakes and autograd (shared with the compiled ops' Python side) ------------------------------------------------
from fastops.ops import heatmaps as _ops  # noqa: E402

for _op, _fake in ((render_gaussian_heatmaps_triton, _ops._render_fake),
                   (render_center_heatmap_triton, _ops._center_fake),
                   (gaussian_radius_triton, _ops._radius_fake),
                   (heatmap_argmax_triton, _ops._argmax_fake),
                   (heatmap_peaks_triton, _ops._peaks_fake),
                   (centernet_decode_triton, _ops._decode_fake),
                   (soft_argmax_triton, _ops._soft_argmax_fake),
                   (soft_argmax_backward_triton, _ops._soft_argmax_backward_fake),
                   (corner_pool_triton, _ops._corner_pool_fake),
                   (corner_pool_backward_triton, _ops._corner_pool_backward_fake)):
    register_fake(_op, _fake)


def _soft_bwd(ctx, grad):
    heatmaps, coords = ctx.saved_tensors
    beta, normalize = ctx.args
    return torch.ops.fastops._soft_argmax_backward_triton(grad, heatmaps, coords, beta, normalize), None, None


def _pool_bwd(ctx, grad):
    x, out = ctx.saved_tensors
    return torch.ops.fastops._corner_pool_backward_triton(grad, x, out, ctx.mode), None


soft_argmax_triton.register_autograd(_soft_bwd, setup_context=_ops._soft_argmax_setup_context)
corner_pool_triton.register_autograd(_pool_bwd, setup_context=_ops._corner_pool_setup_context)
