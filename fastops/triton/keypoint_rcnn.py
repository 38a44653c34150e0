"""Triton kernel of Keypoint R-CNN's `roi_heatmaps_to_keypoints`, registered as
`fastops::roi_heatmaps_to_keypoints_triton` (see _registry.py). Same arithmetic as csrc/keypoint_rcnn/keypoint_rcnn.h.

One program per (RoI, keypoint) walks the ceil(h) x ceil(w) upsampled map in blocks of output pixels, evaluates
each pixel as ATen does (4 horizontal cubic sums, then one vertical, fused multiply-adds where ATen's AVX2 kernel
fuses them), keeps a per-lane first maximum and reduces the lanes at the end. The upsampled map is never stored.
On a GPU the kernel is compiled with `enable_fp_fusion=False` (no other contraction); under TRITON_INTERPRET the
interpreter's `fma` rounds twice, so float32 fused multiply-adds go through float64 there (EMULATE_FMA).
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.registrations import keypoint_rcnn as _reg
from fastops.triton._registry import INTERPRET, check_triton_device, launch, register_fake, triton_custom_op

MAX_ROI_SIDE = 1 << 16  # csrc/keypoint_rcnn/keypoint_rcnn.h kMaxRoiSide


@triton.jit
def _madd(a, b, c, EMULATE_FMA: tl.constexpr):
    if EMULATE_FMA:
        return (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(a.dtype)
    else:
        return tl.fma(a, b, c)


@triton.jit
def _taps(o, n_in, n_out, ACC: tl.constexpr, EMULATE_FMA: tl.constexpr):
    """ATen's bicubic taps of output index o (keypoint_rcnn.h cubic_taps): 4 clamped indices and weights."""
    scale = tl.cast(n_in, ACC) / tl.cast(n_out, ACC)
    real = _madd(scale, o.to(ACC) + 0.5, tl.full(o.shape, -0.5, ACC), EMULATE_FMA)
    i0 = tl.minimum(tl.floor(real).to(tl.int32), n_in - 1)
    t = real - i0.to(ACC)
    t = tl.minimum(tl.maximum(t, 0.0), 1.0)
    t2 = (1.0 - t.to(tl.float64)).to(ACC)
    a = -0.75
    # cubic2(t + 1), cubic1(t), cubic1(1 - t), cubic2(2 - t)
    x0 = (t.to(tl.float64) + 1.0).to(ACC)
    x3 = (t2.to(tl.float64) + 1.0).to(ACC)
    c0 = _madd(_madd(tl.full(o.shape, a, ACC), x0, tl.full(o.shape, -5 * a, ACC), EMULATE_FMA), x0,
               tl.full(o.shape, 8 * a, ACC), EMULATE_FMA) * x0 + (-4 * a)
    c3 = _madd(_madd(tl.full(o.shape, a, ACC), x3, tl.full(o.shape, -5 * a, ACC), EMULATE_FMA), x3,
               tl.full(o.shape, 8 * a, ACC), EMULATE_FMA) * x3 + (-4 * a)
    c1 = _madd(tl.full(o.shape, a + 2, ACC), t, tl.full(o.shape, -(a + 3), ACC), EMULATE_FMA) * t * t + 1.0
    c2 = _madd(tl.full(o.shape, a + 2, ACC), t2, tl.full(o.shape, -(a + 3), ACC), EMULATE_FMA) * t2 * t2 + 1.0
    j0 = tl.maximum(i0 - 1, 0)
    j1 = tl.maximum(tl.minimum(i0, n_in - 1), 0)
    j2 = tl.maximum(tl.minimum(i0 + 1, n_in - 1), 0)
    j3 = tl.maximum(tl.minimum(i0 + 2, n_in - 1), 0)
    return j0, j1, j2, j3, c0, c1, c2, c3


@triton.jit
def _sum4(v0, v1, v2, v3, w0, w1, w2, w3, EMULATE_FMA: tl.constexpr):
    t = _madd(v0, w0, v1 * w1, EMULATE_FMA)
    t = _madd(v2, w2, t, EMULATE_FMA)
    return _madd(v3, w3, t, EMULATE_FMA)


@triton.jit
def _hsum(row_ptr, x0, x1, x2, x3, w0, w1, w2, w3, msk, ACC: tl.constexpr, EMULATE_FMA: tl.constexpr):
    v0 = tl.load(row_ptr + x0, mask=msk, other=0.0).to(ACC)
    v1 = tl.load(row_ptr + x1, mask=msk, other=0.0).to(ACC)
    v2 = tl.load(row_ptr + x2, mask=msk, other=0.0).to(ACC)
    v3 = tl.load(row_ptr + x3, mask=msk, other=0.0).to(ACC)
    return _sum4(v0, v1, v2, v3, w0, w1, w2, w3, EMULATE_FMA)


@triton.jit
def _first_max(va, ia, vb, ib):
    """torch.argmax's order on (value, flat index) pairs; index -1 = no candidate (keypoint_rcnn.h better)."""
    na = va != va
    nb = vb != vb
    take_b = (ib >= 0) & ((ia < 0) | (na & nb & (ib < ia)) |
                          ((~na) & (nb | (vb > va) | ((vb == va) & (ib < ia)))))
    return tl.where(take_b, vb, va), tl.where(take_b, ib, ia)


@triton.jit
def _h2k_kernel(maps, rw_ptr, rh_ptr, best_v, best_i, K, H, W, ACC: tl.constexpr, EMULATE_FMA: tl.constexpr,
                BLOCK: tl.constexpr):
    t = tl.program_id(0)
    r = t // K
    rw = tl.load(rw_ptr + r)
    rh = tl.load(rh_ptr + r)
    n = rh.to(tl.int64) * rw  # up to 2^32
    plane = maps + t.to(tl.int64) * H * W
    offs = tl.arange(0, BLOCK)
    bv = tl.zeros([BLOCK], ACC)
    bi = tl.full([BLOCK], -1, tl.int64)
    for s in range(0, n, BLOCK):
        o = s + offs.to(tl.int64)
        msk = o < n
        oy = (o // rw).to(tl.int32)
        ox = (o % rw).to(tl.int32)
        x0, x1, x2, x3, wx0, wx1, wx2, wx3 = _taps(ox, W, rw, ACC, EMULATE_FMA)
        y0, y1, y2, y3, wy0, wy1, wy2, wy3 = _taps(oy, H, rh, ACC, EMULATE_FMA)
        h0 = _hsum(plane + y0 * W, x0, x1, x2, x3, wx0, wx1, wx2, wx3, msk, ACC, EMULATE_FMA)
        h1 = _hsum(plane + y1 * W, x0, x1, x2, x3, wx0, wx1, wx2, wx3, msk, ACC, EMULATE_FMA)
        h2 = _hsum(plane + y2 * W, x0, x1, x2, x3, wx0, wx1, wx2, wx3, msk, ACC, EMULATE_FMA)
        h3 = _hsum(plane + y3 * W, x0, x1, x2, x3, wx0, wx1, wx2, wx3, msk, ACC, EMULATE_FMA)
        v = _sum4(h0, h1, h2, h3, wy0, wy1, wy2, wy3, EMULATE_FMA)
        nv, ni = _first_max(bv, bi, v, tl.where(msk, o, -1))
        bv = nv
        bi = ni
    v, i = tl.reduce((bv, bi), 0, _first_max)
    tl.store(best_v + t, v)
    tl.store(best_i + t, i)


def roi_geometry(rois: Tensor):
    """(ceil'd widths, ceil'd heights, width / height corrections, corners) as torchvision computes them; checks
    that the RoIs are finite and at most MAX_ROI_SIDE px a side (the C++ op's check)."""
    if rois.numel() and not bool(torch.isfinite(rois).all()):
        raise ValueError("roi_heatmaps_to_keypoints: rois must be finite")
    w = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    h = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    if rois.numel() and bool((torch.maximum(w, h) > MAX_ROI_SIDE).any()):
        raise ValueError(f"roi_heatmaps_to_keypoints: RoIs must be at most {MAX_ROI_SIDE} px a side")
    rw, rh = w.ceil(), h.ceil()
    return rw, rh, (w / rw).float(), (h / rh).float(), rois[:, 0].float(), rois[:, 1].float()


@triton_custom_op("fastops::roi_heatmaps_to_keypoints_triton", mutates_args=())
def roi_heatmaps_to_keypoints_triton(maps: Tensor, rois: Tensor) -> Tuple[Tensor, Tensor]:
    check_triton_device(maps, "maps")
    R, K, H, W = maps.shape
    rw, rh, cw, ch, ox, oy = roi_geometry(rois)
    kps = maps.new_empty((R, K, 3), dtype=torch.float32)
    scores = maps.new_empty((R, K), dtype=torch.float32)
    if R * K == 0:
        return kps, scores
    maps = maps.contiguous()
    acc = tl.float64 if maps.dtype == torch.float64 else tl.float32
    bv = torch.empty((R * K,), dtype=maps.dtype, device=maps.device)
    bi = torch.empty((R * K,), dtype=torch.int64, device=maps.device)
    rwi, rhi = rw.to(torch.int32), rh.to(torch.int32)
    opts = {} if INTERPRET else {"enable_fp_fusion": False}
    launch(_h2k_kernel)[(R * K,)](maps, rwi, rhi, bv, bi, K, H, W, ACC=acc,
                                  EMULATE_FMA=INTERPRET and acc == tl.float32, BLOCK=256, **opts)
    pos = bi.view(R, K)
    xi = pos % rwi.long()[:, None]
    yi = torch.div(pos - xi, rwi.long()[:, None], rounding_mode="floor")
    kps[:, :, 0] = (xi.float() + 0.5) * cw[:, None] + ox[:, None]
    kps[:, :, 1] = (yi.float() + 0.5) * ch[:, None] + oy[:, None]
    kps[:, :, 2] = 1
    scores.copy_(bv.view(R, K))
    return kps, scores


register_fake(roi_heatmaps_to_keypoints_triton, _reg.FAKES["roi_heatmaps_to_keypoints"])
