"""Plain-PyTorch RoIAlign with torchvision's conventions, written as the separable form
``out[c] = A_y @ F[c] @ A_x^T / count`` with 1-D bilinear weight matrices built per RoI (differentiable by
autograd). Independent of the kernels; slow (a Python loop over RoIs)."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor


def _axis_weights(start: float, bin_size: float, pooled: int, grid: int, size: int, dtype, device) -> Tensor:
    """[pooled, size] weights: row p sums the bilinear taps of bin p's `grid` samples (divided by `grid`)."""
    a = torch.zeros(pooled, size, dtype=dtype, device=device)
    if grid <= 0:
        return a
    p = torch.arange(pooled, dtype=dtype, device=device).repeat_interleave(grid)
    i = torch.arange(grid, dtype=dtype, device=device).repeat(pooled)
    y = start + p * bin_size + (i + 0.5) * bin_size / grid
    valid = (y >= -1.0) & (y <= size)
    y = y.clamp(min=0)
    lo = y.floor().long()
    at_end = lo >= size - 1
    lo = torch.where(at_end, torch.full_like(lo, size - 1), lo)
    hi = torch.where(at_end, lo, lo + 1)
    y = torch.where(at_end, lo.to(dtype), y)
    frac = y - lo.to(dtype)
    w_lo = (1 - frac) * valid / grid
    w_hi = frac * valid / grid
    rows = p.long()
    a.index_put_((rows, lo), w_lo, accumulate=True)
    a.index_put_((rows, hi), w_hi, accumulate=True)
    return a


def roi_align(input: Tensor, rois: Tensor, output_size: Tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """``input`` [N,C,H,W], ``rois`` [K,5] -> [K,C,ph,pw] (computed in float32/float64)."""
    ph, pw = output_size
    n, c, h, w = input.shape
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.to(acc)
    r = rois.to(torch.float64).detach().cpu().tolist()
    outs = []
    offset = 0.5 if aligned else 0.0
    for b, x1, y1, x2, y2 in r:
        sw, sh = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        rw, rh = x2 * spatial_scale - offset - sw, y2 * spatial_scale - offset - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh = sampling_ratio if sampling_ratio > 0 else max(math.ceil(rh / ph), 0)
        gw = sampling_ratio if sampling_ratio > 0 else max(math.ceil(rw / pw), 0)
        ay = _axis_weights(sh, rh / ph, ph, gh, h, acc, input.device)
        ax = _axis_weights(sw, rw / pw, pw, gw, w, acc, input.device)
        outs.append(torch.einsum("ph,chw,qw->cpq", ay, x[int(b)], ax))
    if not outs:
        return input.new_zeros((0, c, ph, pw))
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
    k_min = int(round(-math.log2(spatial_scales[0])))
    k_max = int(round(-math.log2(spatial_scales[-1])))
    f0 = features[0]
    out = f0.new_zeros((rois.size(0), f0.size(1)) + tuple(output_size))
    if len(features) == 1:
        return roi_align(f0, rois, output_size, spatial_scales[0], sampling_ratio, aligned)
    levels = fpn_levels(rois, k_min, k_max, canonical_scale, canonical_level)
    for lvl, (feat, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.where(levels == lvl)[0]
        if idx.numel():
            out = out.index_put((idx,), roi_align(feat, rois[idx], output_size, scale, sampling_ratio, aligned))
    return out
