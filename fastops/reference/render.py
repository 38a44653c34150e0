"""Plain NumPy/PyTorch transcriptions of the target renderers that fastops' render ops replace (the tests' expected
results, the benchmarks' anchors and ``impl="reference"``).

Written from the published conventions (not copied) of mmpose 1.x codecs ``generate_gaussian_heatmaps``
(MSRAHeatmap, unbiased=False), ``generate_udp_gaussian_heatmaps`` (UDPHeatmap) and
``generate_unbiased_gaussian_heatmaps`` (MSRAHeatmap, unbiased=True); xingyizhou/CenterNet ``gaussian2D``,
``draw_umich_gaussian`` and ``gaussian_radius``; princeton-vl/CornerNet's corrected ``gaussian_radius``.
Functions named ``mmpose_``/``centernet_``/``cornernet_`` follow the original per-sample APIs; the others wrap them
into fastops' batched signatures.
"""
from __future__ import annotations

import math
from itertools import product
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

# ------------------------------------------------------------------------------------------------------------------
# mmpose: rendering (per sample: keypoints [N, K, 2], visible [N, K] -> heatmaps [K, H, W], weights [N, K])
# ------------------------------------------------------------------------------------------------------------------


def _profile(d2, sigma, kernel):
    """The unnormalised kernel at squared distance d2: Gaussian, or the 'cauchy' sigma / (d2 + sigma^2)^1.5."""
    if kernel == "gaussian":
        return np.exp(-d2 / (2 * sigma ** 2))
    return sigma / ((d2 + sigma ** 2) ** 1.5)


def _paste_patch(heatmap, patch, left, top, right, bottom):
    """mmpose's window paste: the part of the window [left, right) x [top, bottom) inside `heatmap` takes the
    element-wise max with `patch` (whose top-left is the window's). False when no pixel of the window is inside
    (fastops' rule: that keypoint's weight is 0). The window's size is not the patch's for a fractional 3 sigma
    (each bound is truncated on its own), hence both bounds."""
    H, W = heatmap.shape
    gx1, gx2 = max(0, -left), min(W, right) - left
    gy1, gy2 = max(0, -top), min(H, bottom) - top
    hx1, hx2 = max(0, left), min(W, right)
    hy1, hy2 = max(0, top), min(H, bottom)
    if hx2 <= hx1 or hy2 <= hy1:
        # mmpose's outside test (right < 0 instead of right <= 0) is off by one and keeps the weight of this
        # undrawn keypoint
        return False
    region = heatmap[hy1:hy2, hx1:hx2]
    np.maximum(region, patch[gy1:gy2, gx1:gx2], out=region)
    return True


def _mmpose_window_heatmaps(heatmap_size, keypoints, keypoints_visible, sigma, kernel, subpixel):
    # The loop MSRAHeatmap(unbiased=False) and UDPHeatmap share: a (2*3sigma+1) window around the rounded
    # keypoint; the patch is centred on the window's centre pixel (msra) or on the sub-pixel keypoint (udp).
    N, K, _ = keypoints.shape
    W, H = heatmap_size
    heatmaps = np.zeros((K, H, W), dtype=np.float32)
    weights = keypoints_visible.astype(np.float32).copy()
    radius = sigma * 3
    size = 2 * radius + 1
    gx = np.arange(0, size, 1, dtype=np.float32)
    gy = gx[:, None]
    for n, k in product(range(N), range(K)):
        if not keypoints_visible[n, k] >= 0.5:
            weights[n, k] = 0  # fastops' rule (mmpose keeps the visibility value there)
            continue
        if not np.all(np.isfinite(keypoints[n, k])):
            weights[n, k] = 0
            continue
        mu = (keypoints[n, k] + np.float32(0.5)).astype(np.int64)
        left, top = (mu - radius).astype(np.int64)
        right, bottom = (mu + radius + 1).astype(np.int64)
        if left >= W or top >= H or right < 0 or bottom < 0:
            weights[n, k] = 0
            continue
        x0, y0 = size // 2, size // 2
        if subpixel:
            x0 = x0 + (keypoints[n, k, 0] - mu[0])
            y0 = y0 + (keypoints[n, k, 1] - mu[1])
        patch = _profile((gx - x0) ** 2 + (gy - y0) ** 2, sigma, kernel)
        if not _paste_patch(heatmaps[k], patch, left, top, right, bottom):
            weights[n, k] = 0
    return heatmaps, weights


def mmpose_msra_heatmaps(heatmap_size, keypoints, keypoints_visible, sigma, kernel="gaussian"):
    """MSRAHeatmap(unbiased=False): integer centre, (2*3sigma+1) patch, element-wise max over instances."""
    return _mmpose_window_heatmaps(heatmap_size, keypoints, keypoints_visible, sigma, kernel, subpixel=False)


def mmpose_udp_heatmaps(heatmap_size, keypoints, keypoints_visible, sigma, kernel="gaussian"):
    """UDPHeatmap (gaussian): MSRA's window, Gaussian centred at the sub-pixel keypoint."""
    return _mmpose_window_heatmaps(heatmap_size, keypoints, keypoints_visible, sigma, kernel, subpixel=True)


def mmpose_unbiased_heatmaps(heatmap_size, keypoints, keypoints_visible, sigma, kernel="gaussian"):
    """MSRAHeatmap(unbiased=True) (DARK): sub-pixel Gaussian over the whole map."""
    N, K, _ = keypoints.shape
    W, H = heatmap_size
    heatmaps = np.zeros((K, H, W), dtype=np.float32)
    weights = keypoints_visible.astype(np.float32).copy()
    radius = sigma * 3
    x = np.arange(0, W, 1, dtype=np.float32)
    y = np.arange(0, H, 1, dtype=np.float32)[:, None]
    for n, k in product(range(N), range(K)):
        if not keypoints_visible[n, k] >= 0.5:
            weights[n, k] = 0
            continue
        if not np.all(np.isfinite(keypoints[n, k])):
            weights[n, k] = 0
            continue
        mu = keypoints[n, k]
        left, top = mu - radius
        right, bottom = mu + radius + 1
        if left >= W or top >= H or right < 0 or bottom < 0:
            weights[n, k] = 0
            continue
        g = _profile((x - mu[0]) ** 2 + (y - mu[1]) ** 2, sigma, kernel)
        np.maximum(g, heatmaps[k], out=heatmaps[k])
    return heatmaps, weights


_RENDERERS = {"msra": mmpose_msra_heatmaps, "udp": mmpose_udp_heatmaps, "dark": mmpose_unbiased_heatmaps}


def render_gaussian_heatmaps(keypoints: Tensor, heatmap_size, sigma: float = 2.0, visible: Optional[Tensor] = None,
                             mode: str = "msra", kernel: str = "gaussian") -> Tuple[Tensor, Tensor]:
    """Batched form of the mmpose encoders: a per-sample NumPy loop, as mmpose runs in its data pipeline."""
    H, W = heatmap_size
    single = keypoints.dim() == 3
    kp = keypoints[:, None] if single else keypoints
    B, N, K, _ = kp.shape
    vis = torch.ones(B, N, K) if visible is None else (visible[:, None] if single else visible)
    kp_np = kp.detach().float().cpu().numpy()
    vis_np = vis.detach().float().cpu().numpy()
    fn = _RENDERERS[mode]
    hms = np.zeros((B, K, H, W), np.float32)
    wts = np.zeros((B, N, K), np.float32)
    for b in range(B):
        hms[b], wts[b] = fn((W, H), kp_np[b], vis_np[b], sigma, kernel)
    hm = torch.from_numpy(hms).to(keypoints.dtype)
    wt = torch.from_numpy(wts).to(keypoints.dtype)
    return hm, (wt[:, 0] if single else wt)


# ------------------------------------------------------------------------------------------------------------------
# CenterNet / CornerNet: targets
# ------------------------------------------------------------------------------------------------------------------


def centernet_gaussian2d(shape, sigma=1.0):
    m, n = [(s - 1.0) / 2.0 for s in shape]
    y, x = np.ogrid[-m:m + 1, -n:n + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h


def centernet_draw_umich_gaussian(heatmap, center, radius, k=1):
    diameter = 2 * radius + 1
    gaussian = centernet_gaussian2d((diameter, diameter), sigma=diameter / 6)
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape[0:2]
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    # the original slices with possibly negative bounds; numpy's wrap-around only ever meets an empty gaussian
    # slice there, which the size test below skips
    if y + bottom <= 0 or x + right <= 0:
        return heatmap
    masked_heatmap = heatmap[y - top:y + bottom, x - left:x + right]
    masked_gaussian = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
        np.maximum(masked_heatmap, masked_gaussian * k, out=masked_heatmap)
    return heatmap


def render_center_heatmap(centers: Tensor, radii: Tensor, labels: Tensor, num_classes: int, heatmap_size) -> Tensor:
    H, W = heatmap_size
    B, N, _ = centers.shape
    out = np.zeros((B, num_classes, H, W), np.float32)
    c = centers.detach().double().cpu().numpy()
    r = radii.detach().cpu().numpy()
    lab = labels.detach().cpu().numpy()
    for b, n in product(range(B), range(N)):
        if lab[b, n] < 0 or not np.all(np.isfinite(c[b, n])):
            continue
        radius = max(0, int(r[b, n]))
        centernet_draw_umich_gaussian(out[b, int(lab[b, n])], c[b, n], radius)
    return torch.from_numpy(out).to(centers.dtype)


def centernet_gaussian_radius(det_size, min_overlap=0.7):
    height, width = det_size
    a1 = 1
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    sq1 = np.sqrt(b1 ** 2 - 4 * a1 * c1)
    r1 = (b1 + sq1) / 2
    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    sq2 = np.sqrt(b2 ** 2 - 4 * a2 * c2)
    r2 = (b2 + sq2) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    sq3 = np.sqrt(b3 ** 2 - 4 * a3 * c3)
    r3 = (b3 + sq3) / 2
    return min(r1, r2, r3)


def cornernet_gaussian_radius(det_size, min_overlap=0.7):
    height, width = det_size
    a1 = 1
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    sq1 = np.sqrt(b1 ** 2 - 4 * a1 * c1)
    r1 = (b1 - sq1) / (2 * a1)
    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    sq2 = np.sqrt(b2 ** 2 - 4 * a2 * c2)
    r2 = (b2 - sq2) / (2 * a2)
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    sq3 = np.sqrt(b3 ** 2 - 4 * a3 * c3)
    r3 = (b3 + sq3) / (2 * a3)
    return min(r1, r2, r3)


def gaussian_radius(heights: Tensor, widths: Tensor, min_overlap: float = 0.7, variant: str = "centernet") -> Tensor:
    fn = centernet_gaussian_radius if variant == "centernet" else cornernet_gaussian_radius
    h, w = torch.broadcast_tensors(heights, widths)
    hn = h.detach().double().cpu().numpy().reshape(-1)
    wn = w.detach().double().cpu().numpy().reshape(-1)
    out = np.array([fn((a, b), min_overlap) for a, b in zip(hn, wn)], dtype=np.float64).reshape(h.shape)
    return torch.from_numpy(out).to(heights.dtype)


# ------------------------------------------------------------------------------------------------------------------
# Plain-PyTorch batched renderer (the "best plain PyTorch" of the spec's table): separable and exact, MSRA windows
# ------------------------------------------------------------------------------------------------------------------


def render_msra_torch(keypoints: Tensor, heatmap_size, sigma: float) -> Tuple[Tensor, Tensor]:
    """MSRAHeatmap targets for [B, K, 2] keypoints with whole-batch tensor ops: per-axis Gaussians masked to the
    window, then one outer product per map."""
    H, W = heatmap_size
    radius = 3.0 * sigma
    mu = torch.trunc(keypoints + 0.5)
    left = torch.trunc(mu - radius)
    right = torch.trunc(mu + radius + 1)
    c = left + math.floor((2 * radius + 1) / 2)
    valid = (left[..., 0] < W) & (left[..., 1] < H) & (right[..., 0] >= 0) & (right[..., 1] >= 0)
    xs = torch.arange(W, dtype=keypoints.dtype, device=keypoints.device)
    ys = torch.arange(H, dtype=keypoints.dtype, device=keypoints.device)
    f = -1.0 / (2 * sigma * sigma)
    gx = torch.exp((xs - c[..., 0:1]) ** 2 * f) * ((xs >= left[..., 0:1]) & (xs < right[..., 0:1]))
    gy = torch.exp((ys - c[..., 1:2]) ** 2 * f) * ((ys >= left[..., 1:2]) & (ys < right[..., 1:2]))
    gy = gy * valid[..., None]
    return gy[..., :, None] * gx[..., None, :], valid.to(keypoints.dtype)
