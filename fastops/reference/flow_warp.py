"""Flow warping references: the grid_sample recipes people use, and the exact per-pixel formula.

The recipe (FlowNet2/PWC-Net/VPSNet/mmflow style, pixel flow):
    base = (x, y) pixel grid;  grid = 2 * (base + flow) / (max(W-1, 1), max(H-1, 1)) - 1
    out  = grid_sample(input, grid, "bilinear", padding_mode, align_corners)
YolactEdge style (flow already in grid units): grid = base_normalized + flow, base_normalized = 2 * base / max(W-1, 1) - 1.

`flow_warp_pixel_formula` evaluates the spec's bilinear formula directly in float64 (the exact answer, including
the validity mask); fastops' kernels are tested against both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _base(b: int, h: int, w: int, dtype, device):
    ys = torch.arange(h, dtype=dtype, device=device).view(1, h, 1).expand(b, h, w)
    xs = torch.arange(w, dtype=dtype, device=device).view(1, 1, w).expand(b, h, w)
    return xs, ys


def recipe_grid(flow: Tensor, units: str = "pixel") -> Tensor:
    """The normalised sampling grid `[B, H, W, 2]` the recipe builds from a `[B, 2, H, W]` flow."""
    b, _, h, w = flow.shape
    xs, ys = _base(b, h, w, flow.dtype, flow.device)
    dx, dy = max(w - 1, 1), max(h - 1, 1)
    if units == "pixel":
        gx = 2.0 * (xs + flow[:, 0]) / dx - 1.0
        gy = 2.0 * (ys + flow[:, 1]) / dy - 1.0
    else:
        gx = 2.0 * xs / dx - 1.0 + flow[:, 0]
        gy = 2.0 * ys / dy - 1.0 + flow[:, 1]
    return torch.stack([gx, gy], dim=-1)


def flow_warp_grid_sample(input: Tensor, flow: Tensor, padding_mode: str = "zeros", align_corners: bool = True,
                          units: str = "pixel") -> Tensor:
    """The grid_sample recipe (the anchor); `flow` is `[B, 2, H, W]`."""
    grid = recipe_grid(flow, units)
    return F.grid_sample(input, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)


def sample_positions(flow: Tensor, align_corners: bool = True, units: str = "pixel"):
    """Sample positions (ix, iy) `[B, H, W]` of the spec's formulas, in float64."""
    f = flow.double()
    b, _, h, w = f.shape
    xs, ys = _base(b, h, w, torch.float64, f.device)

    def axis(base, fl, size):
        d = float(max(size - 1, 1))
        if units == "pixel":
            if align_corners:
                return base + fl
            return (base + fl) * size / d - 0.5
        if align_corners:
            return base + fl * (size - 1) / 2.0
        return base * size / d + fl * size / 2.0 - 0.5

    return axis(xs, f[:, 0], w), axis(ys, f[:, 1], h)


def flow_warp_pixel_formula(input: Tensor, flow: Tensor, padding_mode: str = "zeros", align_corners: bool = True,
                            units: str = "pixel"):
    """Exact float64 evaluation of the bilinear formula; returns (out float64, mask float64 [B,1,H,W]).

    NaN/inf positions give 0 (and mask 0). Border mode clamps the position to [0, size-1] first; the mask is
    computed from the unclamped position (1 where every tap with non-zero weight lies inside the map).
    """
    x = input.double()
    b, c, h, w = x.shape
    ix, iy = sample_positions(flow, align_corners, units)
    finite = torch.isfinite(ix) & torch.isfinite(iy)
    ix = torch.where(finite, ix, torch.zeros_like(ix))
    iy = torch.where(finite, iy, torch.zeros_like(iy))

    def valid_axis(p, size):
        p0 = torch.floor(p)
        return (p0 >= 0) & (p0 < size) & ((p == p0) | (p0 + 1 < size))

    mask = (valid_axis(ix, w) & valid_axis(iy, h) & finite).to(torch.float64).unsqueeze(1)
    if padding_mode == "border":
        ix = ix.clamp(0, w - 1)
        iy = iy.clamp(0, h - 1)
    else:
        far = (ix < -1) | (ix > w) | (iy < -1) | (iy > h)
        finite = finite & ~far
        ix = torch.where(far, torch.zeros_like(ix), ix)
        iy = torch.where(far, torch.zeros_like(iy), iy)
    x0 = torch.floor(ix)
    y0 = torch.floor(iy)
    fx = ix - x0
    fy = iy - y0
    x0 = x0.long()
    y0 = y0.long()
    flat = x.reshape(b, c, h * w)
    out = torch.zeros(b, c, h, w, dtype=torch.float64, device=x.device)
    for dy_, dx_, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy),
                          (1, 1, fx * fy)):
        xx = x0 + dx_
        yy = y0 + dy_
        inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h) & finite
        idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(b, 1, h * w).expand(b, c, h * w)
        vals = torch.gather(flat, 2, idx).reshape(b, c, h, w)
        # Taps outside the map are never read (a NaN at the clamped index must not leak through a 0 weight).
        out = out + torch.where(inside.unsqueeze(1), vals * wgt.unsqueeze(1), 0.0)
    return out, mask


def flow_warp(input: Tensor, flow: Tensor, padding_mode: str = "zeros", align_corners: bool = True,
              units: str = "pixel", return_mask: bool = False):
    """`impl="reference"`: the grid_sample recipe (pixel units with align_corners=True: the exact formula,
    which the recipe matches up to fp32 rounding), plus the mask from the pixel formula. Returns (out, mask) like
    the op (mask empty unless `return_mask`); `flow` is `[B, 2, H, W]`."""
    if units == "pixel" and align_corners:
        out = flow_warp_pixel_formula(input, flow, padding_mode, align_corners, units)[0].to(input.dtype)
    else:
        out = flow_warp_grid_sample(input, flow, padding_mode, align_corners, units)
    if input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    if return_mask:
        mask = flow_warp_pixel_formula(input[:, :0], flow, padding_mode, align_corners, units)[1].to(input.dtype)
        return out, mask
    return out, input.new_empty((0,))
