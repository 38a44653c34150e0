"""Triton kernels for the dense heatmap ops: `render_gaussian_heatmaps`, `soft_argmax` (+ backward) and
`corner_pool` (+ backward), registered as `fastops::<op>_triton` (see _registry.py).

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


# ---- fakes and autograd (shared with the compiled ops' Python side) ------------------------------------------------
from fastops.ops import heatmaps as _ops  # noqa: E402

for _op, _fake in ((render_gaussian_heatmaps_triton, _ops._render_fake),
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
