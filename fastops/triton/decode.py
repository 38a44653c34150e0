"""Triton kernels of the decoding ops (`heatmap_argmax` with every refinement, `soft_argmax` + backward), registered
as `fastops::<op>_triton` (see _registry.py). Same conventions as csrc/decode/decode.h. Every reduction runs in a
fixed order inside one program (deterministic on a GPU too); accumulation in float32 (float64 stays float64,
scalars included).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.registrations import decode as _reg
from fastops.triton._keypoints import acc_dtype, acc_type, map_block
from fastops.triton._registry import check_triton_device, launch, register_fake, triton_custom_op


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
def _soft_argmax_kernel(hm, coords, H, W, beta_ptr, NORMALIZE: tl.constexpr, ACC: tl.constexpr,
                        BLOCK: tl.constexpr):
    m = tl.program_id(0)
    n = H * W
    b = tl.load(beta_ptr).to(ACC)  # a Python float argument would arrive as float32
    mx, s, sx, sy = _softmax_stats(hm + m * n, n, W, b, ACC, BLOCK)
    cx = sx / s
    cy = sy / s
    if NORMALIZE:
        cx = cx / tl.cast(W, ACC)
        cy = cy / tl.cast(H, ACC)
    tl.store(coords + 2 * m, cx.to(coords.dtype.element_ty))
    tl.store(coords + 2 * m + 1, cy.to(coords.dtype.element_ty))


@triton.jit
def _soft_argmax_bwd_kernel(grad, hm, coords, gin, H, W, beta_ptr, NORMALIZE: tl.constexpr, ACC: tl.constexpr,
                            BLOCK: tl.constexpr):
    m = tl.program_id(0)
    n = H * W
    b = tl.load(beta_ptr).to(ACC)
    p = hm + m * n
    mx, s, sx, sy = _softmax_stats(p, n, W, b, ACC, BLOCK)
    gx = tl.load(grad + 2 * m).to(ACC)
    gy = tl.load(grad + 2 * m + 1).to(ACC)
    cx = tl.load(coords + 2 * m).to(ACC)
    cy = tl.load(coords + 2 * m + 1).to(ACC)
    if NORMALIZE:
        ux = 1.0 / tl.cast(W, ACC)
        uy = 1.0 / tl.cast(H, ACC)
    else:
        ux = tl.full([], 1.0, ACC)
        uy = tl.full([], 1.0, ACC)
    f = b / s
    offs = tl.arange(0, BLOCK)
    for st in range(0, n, BLOCK):
        idx = st + offs
        msk = idx < n
        v = tl.load(p + idx, mask=msk, other=0.0).to(ACC)
        e = tl.exp(b * v - mx)
        g = f * e * (gx * ((idx % W).to(ACC) * ux - cx) + gy * ((idx // W).to(ACC) * uy - cy))
        tl.store(gin + m * n + idx, g.to(gin.dtype.element_ty), mask=msk)


def _scalar(v: float, like: Tensor) -> Tensor:
    """A scalar argument in the accumulation type (float64 stays float64 inside the kernel)."""
    return torch.tensor([float(v)], dtype=acc_dtype(like.dtype), device=like.device)


@triton_custom_op("fastops::soft_argmax_triton", mutates_args=())
def soft_argmax_triton(heatmaps: Tensor, beta: float, normalize: bool) -> Tensor:
    check_triton_device(heatmaps, "heatmaps")
    hm = heatmaps.contiguous()
    B, K, H, W = hm.shape
    out = torch.empty((B, K, 2), dtype=hm.dtype, device=hm.device)
    if B * K > 0:
        launch(_soft_argmax_kernel)[(B * K,)](hm, out, H, W, _scalar(beta, hm), NORMALIZE=bool(normalize),
                                              ACC=acc_type(hm.dtype), BLOCK=map_block(H * W))
    return out


@triton_custom_op("fastops::_soft_argmax_backward_triton", mutates_args=())
def soft_argmax_backward_triton(grad: Tensor, heatmaps: Tensor, coords: Tensor, beta: float,
                                normalize: bool) -> Tensor:
    hm = heatmaps.contiguous()
    B, K, H, W = hm.shape
    gin = torch.empty_like(hm)
    if gin.numel() > 0:
        launch(_soft_argmax_bwd_kernel)[(B * K,)](grad.to(hm.dtype).contiguous(), hm, coords.to(hm.dtype).contiguous(),
                                                  gin, H, W, _scalar(beta, hm), NORMALIZE=bool(normalize),
                                                  ACC=acc_type(hm.dtype), BLOCK=map_block(H * W))
    return gin


# ---- heatmap_argmax ----------------------------------------------------------------------------------------------

_REFINE = {"none": 0, "quarter": 1, "hourglass": 2, "dark": 3, "dark_udp": 4}


def opencv_kernel(ksize: int) -> Tensor:
    """OpenCV getGaussianKernel(ksize, 0) as the C++ side computes it (double, then the accumulation type)."""
    return torch.tensor(_reg.opencv_gaussian_kernel(ksize), dtype=torch.float64)


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
        dx = tl.where((1 < x) & (x < W - 1) & (0 < y) & (y < H),
                      _ld(p, H, W, y, x + 1, ACC) - _ld(p, H, W, y, x - 1, ACC), 0.0)
        dy = tl.where((1 < y) & (y < H - 1) & (0 < x) & (x < W),
                      _ld(p, H, W, y + 1, x, ACC) - _ld(p, H, W, y - 1, x, ACC), 0.0)
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
    # NaN/inf rule: a refined coordinate that is not finite falls back to the integer location
    kx = tl.where(kx - kx == 0, kx, x.to(ACC))
    ky = tl.where(ky - ky == 0, ky, y.to(ACC))
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
        launch(_argmax_kernel)[(B * K,)](hm, coords, scores, H, W, kc, blur_kernel, REFINE=_reg.REFINES[refine],
                                         ACC=acc_type(hm.dtype), BLOCK=map_block(H * W),
                                         KB=max(16, triton.next_power_of_2(blur_kernel)))
    return coords, scores




for _name, _op in (("heatmap_argmax", heatmap_argmax_triton), ("soft_argmax", soft_argmax_triton),
                   ("_soft_argmax_backward", soft_argmax_backward_triton)):
    register_fake(_op, _reg.FAKES[_name])
soft_argmax_triton.register_autograd(_reg.soft_argmax_backward(torch.ops.fastops._soft_argmax_backward_triton),
                                     setup_context=_reg.soft_argmax_setup_context)
