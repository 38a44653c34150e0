"""Plain-PyTorch RoIAlign with torchvision's conventions, written sample by sample (gather the bilinear taps of
every sample point, weight, average), independently of the kernels' separable tables; differentiable by autograd.
Slow (a Python loop over RoIs): the tests' oracle and ``impl="reference"``.

Rules shared with the kernels (docs/roi_align.md): RoI geometry in the accumulation dtype (float32, float64 for
float64); adaptive grid ``ceil(roi_size / pooled)`` capped at ``MAX_GRID`` samples per bin side; a RoI whose scaled
start or size is NaN/inf or beyond 1e30 pools nothing; a sample reads only the pixels it gives a non-zero
bilinear weight (so a NaN/inf feature reaches exactly the bins that sample it); an empty axis (H or W = 0) has
no pixel to read. Non-finite boxes and bad batch indices raise RuntimeError, as the CPU kernel does.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

MAX_GRID = 1 << 15  # kMaxGrid in csrc/roi_align/roi_align.h


def _axis_taps(start: Tensor, bin_size: Tensor, pooled: int, grid: int, size: int):
    """Taps of the samples of each bin along one axis, compacted to the samples that fall on the map.

    Returns (idx, w), both ``[pooled, 2 * m]``: pixel indices and bilinear weights of the lo/hi taps of the
    ``m`` (max over bins) valid samples per bin; padding entries have weight 0 and index 0.
    """
    dtype, device = start.dtype, start.device
    if grid <= 0 or size <= 0:
        return (torch.zeros(pooled, 0, dtype=torch.long, device=device),
                torch.zeros(pooled, 0, dtype=dtype, device=device))
    p = torch.arange(pooled, dtype=dtype, device=device)[:, None]
    i = torch.arange(grid, dtype=dtype, device=device)[None, :]
    y = start + p * bin_size + (i + 0.5) * bin_size / grid  # [pooled, grid], the kernels' formula and order
    valid = (y >= -1.0) & (y <= size)
    m = int(valid.sum(1).max())
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, :m]
    y = torch.gather(y, 1, order)
    valid = torch.gather(valid, 1, order)
    y = y.clamp(min=0)
    lo = y.floor().clamp(max=size - 1)  # (bounded before the cast)
    at_end = lo >= size - 1
    lo = torch.where(at_end, torch.full_like(lo, size - 1), lo)
    y = torch.where(at_end, lo, y)
    frac = y - lo
    lo = lo.long()
    hi = torch.where(at_end, lo, lo + 1)
    w_lo = torch.where(valid, 1 - frac, torch.zeros_like(frac))
    w_hi = torch.where(valid, frac, torch.zeros_like(frac))
    lo = torch.where(valid, lo, torch.zeros_like(lo))
    hi = torch.where(valid & (w_hi != 0), hi, lo)  # a zero-weight tap reads nothing new
    return torch.stack([lo, hi], -1).reshape(pooled, -1), torch.stack([w_lo, w_hi], -1).reshape(pooled, -1)


def _check_rois(rois: Tensor, n: int) -> List[List[float]]:
    r = rois.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(r).all()):
        bad = int((~torch.isfinite(r)).any(1).nonzero()[0])
        raise RuntimeError(f"roi_align: boxes must be finite, got {r[bad].tolist()} in row {bad}")
    b = r[:, 0]
    ok = (b >= 0) & (b < n) & (b == b.floor())
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0])
        raise RuntimeError(f"roi_align: batch index of box {bad} must be an integer in [0, {n}), got {float(b[bad])}")
    return r.tolist()


def roi_align(input: Tensor, rois: Tensor, output_size: Tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """``input`` [N,C,H,W], ``rois`` [K,5] -> [K,C,ph,pw] (computed in float32, float64 for float64)."""
    ph, pw = output_size
    n, c, h, w = input.shape
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.to(acc)
    _check_rois(rois, n)
    r = rois.detach().to(acc)
    scale = torch.tensor(spatial_scale, dtype=acc, device=input.device)
    offset = 0.5 if aligned else 0.0
    outs = []
    for k in range(r.size(0)):
        b, x1, y1, x2, y2 = r[k]
        sw, sh = x1 * scale - offset, y1 * scale - offset
        rw, rh = x2 * scale - offset - sw, y2 * scale - offset - sh
        if not aligned:
            rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
        finite = all(math.isfinite(float(v)) for v in (sw, sh, rw, rh)) and float(rw) < 1e30 and float(rh) < 1e30
        if finite and sampling_ratio > 0:
            gh = gw = sampling_ratio
        elif finite:
            gh = min(max(math.ceil(float(rh / ph)), 0), MAX_GRID)
            gw = min(max(math.ceil(float(rw / pw)), 0), MAX_GRID)
        else:
            gh = gw = 0
        iy, wy = _axis_taps(sh, rh / ph, ph, gh, h)
        ix, wx = _axis_taps(sw, rw / pw, pw, gw, w)
        if iy.size(1) == 0 or ix.size(1) == 0:  # nothing sampled: zeros that still belong to the graph
            outs.append(x[int(b), :, :0, :0].sum(dim=(1, 2))[:, None, None].expand(c, ph, pw))
            continue
        wgt = wy[:, :, None, None] * wx[None, None, :, :]  # [ph, A, pw, B]
        chunk = max(1, (1 << 22) // wgt.numel())  # channels per gather: bounded memory for large grids
        pooled = []
        for c0 in range(0, c, chunk):
            g = x[int(b), c0:c0 + chunk][:, iy.reshape(-1)[:, None], ix.reshape(-1)[None, :]]  # [c, ph*A, pw*B]
            g = g.reshape(-1, ph, iy.size(1), pw, ix.size(1))
            pooled.append(torch.where(wgt != 0, wgt * g, torch.zeros_like(g)).sum(dim=(2, 4)))
        outs.append(torch.cat(pooled) / max(gh * gw, 1) if pooled else x.new_zeros((0, ph, pw)))
    if not outs:
        return x[:0].sum(dim=(2, 3))[:, :, None, None].expand(0, c, ph, pw).to(input.dtype)
    return torch.stack(outs).to(input.dtype)


def fpn_levels(rois: Tensor, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4) -> Tensor:
    """torchvision's LevelMapper (FPN eq. 1), 0-based; -1 where the area is negative (no level)."""
    b = rois[:, 1:].float() if rois.dtype != torch.float64 else rois[:, 1:]
    s = torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    k = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(1e-6, dtype=s.dtype))
    k = torch.clamp(k, min=k_min, max=k_max)
    return torch.where(torch.isnan(k), torch.full_like(k, -1 + k_min), k).long() - k_min


def multi_scale_roi_align(features: List[Tensor], rois: Tensor, output_size: Tuple[int, int],
                          spatial_scales: Sequence[float], sampling_ratio: int = -1, aligned: bool = False,
                          canonical_scale: int = 224, canonical_level: int = 4) -> Tensor:
    """One level per RoI as torchvision's MultiScaleRoIAlign: level ``l`` pools from ``features[l]``; RoIs whose
    level has no feature map (non-consecutive scales) or no level (negative area) stay 0."""
    f0 = features[0]
    if len(features) == 1:
        return roi_align(f0, rois, output_size, spatial_scales[0], sampling_ratio, aligned)
    _check_rois(rois, f0.size(0))
    k_min = int(round(-math.log2(spatial_scales[0])))
    k_max = int(round(-math.log2(spatial_scales[-1])))
    acc = torch.float64 if f0.dtype == torch.float64 else torch.float32
    out = f0.new_zeros((rois.size(0), f0.size(1)) + tuple(output_size), dtype=acc)
    levels = fpn_levels(rois, k_min, k_max, canonical_scale, canonical_level)
    for lvl, (feat, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.where(levels == lvl)[0]
        if idx.numel():
            pooled = roi_align(feat.to(acc), rois[idx].to(acc), output_size, scale, sampling_ratio, aligned)
            out = out.index_put((idx,), pooled)
    return out.to(f0.dtype)
