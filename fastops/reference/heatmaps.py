"""Plain NumPy/PyTorch transcriptions of the heatmap codecs that fastops' heatmap ops replace.

Written from the published conventions (not copied) of:
- mmpose 1.x codecs: ``generate_gaussian_heatmaps`` (MSRAHeatmap, unbiased=False), ``generate_udp_gaussian_heatmaps``
  (UDPHeatmap), ``generate_unbiased_gaussian_heatmaps`` (MSRAHeatmap, unbiased=True), ``get_heatmap_maximum``,
  ``refine_keypoints``, ``refine_keypoints_dark``, ``refine_keypoints_dark_udp`` and ``gaussian_blur`` (OpenCV's
  GaussianBlur with sigma 0 on a zero-padded map, transcribed here without cv2);
- princeton-vl/pytorch_stacked_hourglass ``HeatmapParser.adjust`` (quarter offset towards the larger neighbour, +0.5);
- xingyizhou/CenterNet ``gaussian2D``, ``draw_umich_gaussian``, ``gaussian_radius``, ``_nms``, ``_topk``,
  ``_transpose_and_gather_feat``, ``ctdet_decode``; princeton-vl/CornerNet's corrected ``gaussian_radius``;
- CornerNet's TopPool/BottomPool/LeftPool/RightPool (forward: running max; backward: the gradient goes to the
  element the running max came from, the first one met in the scan on ties) and mmcv's ``torch.cummax`` form.

These are the tests' expected results, the benchmarks' anchors (per-sample NumPy loops, as the originals run) and
``impl="reference"``. The functions whose names start with ``mmpose_``/``centernet_``/``cornernet_``/``hourglass_``
follow the original per-sample APIs; the ones without prefix wrap them into fastops' batched signatures.
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


def mmpose_msra_heatmaps(heatmap_size, keypoints, keypoints_visible, sigma, kernel="gaussian"):
    """MSRAHeatmap(unbiased=False): integer centre, (2*3sigma+1) patch, element-wise max over instances."""
    N, K, _ = keypoints.shape
    W, H = heatmap_size
    heatmaps = np.zeros((K, H, W), dtype=np.float32)
    weights = keypoints_visible.astype(np.float32).copy()
    radius = sigma * 3
    size = 2 * radius + 1
    gx = np.arange(0, size, 1, dtype=np.float32)
    gy = gx[:, None]
    c0 = size // 2
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
        d2 = (gx - c0) ** 2 + (gy - c0) ** 2
        if kernel == "gaussian":
            patch = np.exp(-d2 / (2 * sigma ** 2))
        else:
            patch = sigma / ((d2 + sigma ** 2) ** 1.5)
        gx1, gx2 = max(0, -left), min(W, right) - left
        gy1, gy2 = max(0, -top), min(H, bottom) - top
        hx1, hx2 = max(0, left), min(W, right)
        hy1, hy2 = max(0, top), min(H, bottom)
        if hx2 <= hx1 or hy2 <= hy1:
            # fastops' rule (spec): a window entirely outside the map gets weight 0; mmpose's test above is off by
            # one (right < 0 instead of right <= 0) and keeps the weight of this undrawn keypoint
            weights[n, k] = 0
            continue
        region = heatmaps[k, hy1:hy2, hx1:hx2]
        np.maximum(region, patch[gy1:gy2, gx1:gx2], out=region)
    return heatmaps, weights


def mmpose_udp_heatmaps(heatmap_size, keypoints, keypoints_visible, sigma, kernel="gaussian"):
    """UDPHeatmap (gaussian): MSRA's window, Gaussian centred at the sub-pixel keypoint."""
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
            weights[n, k] = 0
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
        x0 = size // 2 + (keypoints[n, k, 0] - mu[0])
        y0 = size // 2 + (keypoints[n, k, 1] - mu[1])
        d2 = (gx - x0) ** 2 + (gy - y0) ** 2
        if kernel == "gaussian":
            patch = np.exp(-d2 / (2 * sigma ** 2))
        else:
            patch = sigma / ((d2 + sigma ** 2) ** 1.5)
        gx1, gx2 = max(0, -left), min(W, right) - left
        gy1, gy2 = max(0, -top), min(H, bottom) - top
        hx1, hx2 = max(0, left), min(W, right)
        hy1, hy2 = max(0, top), min(H, bottom)
        if hx2 <= hx1 or hy2 <= hy1:
            # fastops' rule (spec): a window entirely outside the map gets weight 0; mmpose's test above is off by
            # one (right < 0 instead of right <= 0) and keeps the weight of this undrawn keypoint
            weights[n, k] = 0
            continue
        region = heatmaps[k, hy1:hy2, hx1:hx2]
        np.maximum(region, patch[gy1:gy2, gx1:gx2], out=region)
    return heatmaps, weights


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
        d2 = (x - mu[0]) ** 2 + (y - mu[1]) ** 2
        if kernel == "gaussian":
            g = np.exp(-d2 / (2 * sigma ** 2))
        else:
            g = sigma / ((d2 + sigma ** 2) ** 1.5)
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
# mmpose: decoding (per sample: heatmaps [K, H, W])
# ------------------------------------------------------------------------------------------------------------------


def mmpose_get_heatmap_maximum(heatmaps):
    K, H, W = heatmaps.shape
    flat = heatmaps.reshape(K, -1)
    y_locs, x_locs = np.unravel_index(np.argmax(flat, axis=1), shape=(H, W))
    locs = np.stack((x_locs, y_locs), axis=-1).astype(np.float32)
    vals = np.amax(flat, axis=1)
    locs[vals <= 0.0] = -1
    return locs, vals


def mmpose_refine_keypoints(keypoints, heatmaps):
    """Quarter offset; keypoints [N, K, 2] float32."""
    N, K = keypoints.shape[:2]
    H, W = heatmaps.shape[1:]
    for n, k in product(range(N), range(K)):
        x, y = keypoints[n, k, :2].astype(int)
        if 1 < x < W - 1 and 0 < y < H:
            dx = heatmaps[k, y, x + 1] - heatmaps[k, y, x - 1]
        else:
            dx = 0.0
        if 1 < y < H - 1 and 0 < x < W:
            dy = heatmaps[k, y + 1, x] - heatmaps[k, y - 1, x]
        else:
            dy = 0.0
        keypoints[n, k] += np.sign([dx, dy], dtype=np.float32) * 0.25
    return keypoints


def opencv_gaussian_kernel(ksize: int) -> np.ndarray:
    """OpenCV getGaussianKernel(ksize, sigma<=0) for float images: the fixed tables up to 7 taps, then the formula."""
    small = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
             7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}
    if ksize in small:
        return np.array(small[ksize], dtype=np.float64)
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) * 0.5
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def opencv_gaussian_blur(img: np.ndarray, ksize: int) -> np.ndarray:
    """cv2.GaussianBlur(img, (ksize, ksize), 0) for a float32 image whose border never matters (zero-padded input)."""
    k = opencv_gaussian_kernel(ksize).astype(np.float32)
    r = ksize // 2
    H, W = img.shape
    p = np.pad(img, ((r, r), (r, r)), mode="reflect")  # BORDER_REFLECT_101; only reaches mmpose's zero padding
    rows = np.zeros((H + 2 * r, W), np.float32)
    for j in range(ksize):
        rows += k[j] * p[:, j:j + W]
    out = np.zeros((H, W), np.float32)
    for i in range(ksize):
        out += k[i] * rows[i:i + H]
    return out


def mmpose_gaussian_blur(heatmaps, kernel=11):
    assert kernel % 2 == 1
    border = (kernel - 1) // 2
    K, H, W = heatmaps.shape
    for k in range(K):
        origin_max = np.max(heatmaps[k])
        dr = np.zeros((H + 2 * border, W + 2 * border), dtype=np.float32)
        dr[border:-border, border:-border] = heatmaps[k].copy()
        dr = opencv_gaussian_blur(dr, kernel)
        heatmaps[k] = dr[border:-border, border:-border].copy()
        heatmaps[k] *= origin_max / np.max(heatmaps[k])
    return heatmaps


def mmpose_refine_keypoints_dark(keypoints, heatmaps, blur_kernel_size):
    N, K = keypoints.shape[:2]
    H, W = heatmaps.shape[1:]
    heatmaps = mmpose_gaussian_blur(heatmaps, blur_kernel_size)
    np.maximum(heatmaps, 1e-10, out=heatmaps)
    np.log(heatmaps, out=heatmaps)
    for n, k in product(range(N), range(K)):
        x, y = keypoints[n, k, :2].astype(int)
        if 1 < x < W - 2 and 1 < y < H - 2:
            hm = heatmaps[k]
            dx = 0.5 * (hm[y, x + 1] - hm[y, x - 1])
            dy = 0.5 * (hm[y + 1, x] - hm[y - 1, x])
            dxx = 0.25 * (hm[y, x + 2] - 2 * hm[y, x] + hm[y, x - 2])
            dxy = 0.25 * (hm[y + 1, x + 1] - hm[y - 1, x + 1] - hm[y + 1, x - 1] + hm[y - 1, x - 1])
            dyy = 0.25 * (hm[y + 2, x] - 2 * hm[y, x] + hm[y - 2, x])
            derivative = np.array([[dx], [dy]])
            hessian = np.array([[dxx, dxy], [dxy, dyy]])
            if dxx * dyy - dxy ** 2 != 0:
                offset = -np.linalg.inv(hessian) @ derivative
                keypoints[n, k, :2] += np.squeeze(np.array(offset.T), axis=0)
    return keypoints


def mmpose_refine_keypoints_dark_udp(keypoints, heatmaps, blur_kernel_size):
    """mmpose's DARK-UDP refinement. fastops leaves keypoints whose score is <= 0 (coordinates -1) untouched, where
    mmpose reads a wrapped-around index; the caller passes only keypoints with positive scores here."""
    N, K = keypoints.shape[:2]
    H, W = heatmaps.shape[1:]
    heatmaps = mmpose_gaussian_blur(heatmaps, blur_kernel_size)
    np.clip(heatmaps, 1e-3, 50.0, out=heatmaps)
    np.log(heatmaps, out=heatmaps)
    pad = np.pad(heatmaps, ((0, 0), (1, 1), (1, 1)), mode="edge").flatten()
    for n in range(N):
        index = keypoints[n, :, 0] + 1 + (keypoints[n, :, 1] + 1) * (W + 2)
        index += (W + 2) * (H + 2) * np.arange(0, K)
        index = index.astype(int).reshape(-1, 1)
        i_ = pad[index]
        ix1 = pad[index + 1]
        iy1 = pad[index + W + 2]
        ix1y1 = pad[index + W + 3]
        ix1_y1_ = pad[index - W - 3]
        ix1_ = pad[index - 1]
        iy1_ = pad[index - 2 - W]
        dx = 0.5 * (ix1 - ix1_)
        dy = 0.5 * (iy1 - iy1_)
        derivative = np.concatenate([dx, dy], axis=1).reshape(K, 2, 1)
        dxx = ix1 - 2 * i_ + ix1_
        dyy = iy1 - 2 * i_ + iy1_
        dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
        hessian = np.concatenate([dxx, dxy, dxy, dyy], axis=1).reshape(K, 2, 2)
        hessian = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
        keypoints[n] -= np.einsum("imn,ink->imk", hessian, derivative).squeeze(-1)
    return keypoints


def hourglass_adjust(keypoints, scores, heatmaps):
    """Stacked-hourglass HeatmapParser.adjust on top of the first-maximum locations: +-0.25 towards the larger
    neighbour (neighbours clamped at the border; ties go down), then +0.5; only where the score is > 0."""
    K, H, W = heatmaps.shape
    for k in range(K):
        if not scores[k] > 0:
            continue
        col, row = keypoints[k]
        xx, yy = int(row), int(col)  # the parser names rows x and columns y
        tmp = heatmaps[k]
        if tmp[xx, min(yy + 1, W - 1)] > tmp[xx, max(yy - 1, 0)]:
            col += 0.25
        else:
            col -= 0.25
        if tmp[min(xx + 1, H - 1), yy] > tmp[max(0, xx - 1), yy]:
            row += 0.25
        else:
            row -= 0.25
        keypoints[k] = (col + 0.5, row + 0.5)
    return keypoints


def heatmap_argmax(heatmaps: Tensor, refine: str = "none", blur_kernel: int = 11) -> Tuple[Tensor, Tensor]:
    """Batched mmpose decode: a per-sample loop of get_heatmap_maximum + the chosen refinement (as mmpose runs)."""
    hm_all = heatmaps.detach().float().cpu().numpy()
    B, K = hm_all.shape[:2]
    coords = np.zeros((B, K, 2), np.float32)
    scores = np.zeros((B, K), np.float32)
    for b in range(B):
        hm = hm_all[b].copy()
        locs, vals = mmpose_get_heatmap_maximum(hm)
        kp = locs[None]
        if refine == "quarter":
            kp = mmpose_refine_keypoints(kp, hm)
        elif refine == "dark":
            kp = mmpose_refine_keypoints_dark(kp, hm.copy(), blur_kernel)
        elif refine == "dark_udp":
            pos = vals > 0
            if pos.any():
                sub = mmpose_refine_keypoints_dark_udp(kp[:, pos].copy(), hm[pos].copy(), blur_kernel)
                kp[:, pos] = sub
        elif refine == "hourglass":
            kp = hourglass_adjust(kp[0], vals, hm)[None]
        coords[b] = kp[0]
        scores[b] = vals
    return torch.from_numpy(coords).to(heatmaps.dtype), torch.from_numpy(scores).to(heatmaps.dtype)


def soft_argmax(heatmaps: Tensor, beta: float = 1.0, normalize: bool = False) -> Tensor:
    """Integral regression (plain PyTorch, differentiable): softmax over H*W then the expected pixel index."""
    B, K, H, W = heatmaps.shape
    p = torch.softmax(beta * heatmaps.reshape(B, K, H * W).to(torch.float64 if heatmaps.dtype == torch.float64
                                                                else torch.float32), dim=-1).reshape(B, K, H, W)
    xs = torch.arange(W, dtype=p.dtype, device=p.device)
    ys = torch.arange(H, dtype=p.dtype, device=p.device)
    if normalize:
        xs = xs / W
        ys = ys / H
    x = (p.sum(2) * xs).sum(-1)
    y = (p.sum(3) * ys).sum(-1)
    return torch.stack([x, y], dim=-1).to(heatmaps.dtype)


# ------------------------------------------------------------------------------------------------------------------
# CenterNet decoding (plain PyTorch, as the original)
# ------------------------------------------------------------------------------------------------------------------


def centernet_nms(heat: Tensor, kernel: int = 3) -> Tensor:
    pad = (kernel - 1) // 2
    hmax = torch.nn.functional.max_pool2d(heat, (kernel, kernel), stride=1, padding=pad)
    keep = (hmax == heat).float()
    return heat * keep


def centernet_topk(scores: Tensor, K: int = 40):
    batch, cat, height, width = scores.size()
    topk_scores, topk_inds = torch.topk(scores.view(batch, cat, -1), K)
    topk_inds = topk_inds % (height * width)
    topk_ys = torch.div(topk_inds, width, rounding_mode="floor").float()
    topk_xs = (topk_inds % width).float()
    topk_score, topk_ind = torch.topk(topk_scores.view(batch, -1), K)
    topk_clses = torch.div(topk_ind, K, rounding_mode="floor")
    topk_inds = topk_inds.view(batch, -1).gather(1, topk_ind)
    topk_ys = topk_ys.view(batch, -1).gather(1, topk_ind)
    topk_xs = topk_xs.view(batch, -1).gather(1, topk_ind)
    return topk_score, topk_inds, topk_clses, topk_ys, topk_xs


def centernet_transpose_and_gather_feat(feat: Tensor, ind: Tensor) -> Tensor:
    feat = feat.permute(0, 2, 3, 1).contiguous()
    feat = feat.view(feat.size(0), -1, feat.size(3))
    ind = ind.unsqueeze(2).expand(ind.size(0), ind.size(1), feat.size(2))
    return feat.gather(1, ind)


def centernet_ctdet_decode(heat: Tensor, wh: Tensor, reg: Optional[Tensor] = None, K: int = 100) -> Tensor:
    batch = heat.size(0)
    heat = centernet_nms(heat)
    scores, inds, clses, ys, xs = centernet_topk(heat, K=K)
    if reg is not None:
        reg = centernet_transpose_and_gather_feat(reg, inds).view(batch, K, 2)
        xs = xs.view(batch, K, 1) + reg[:, :, 0:1]
        ys = ys.view(batch, K, 1) + reg[:, :, 1:2]
    else:
        xs = xs.view(batch, K, 1) + 0.5
        ys = ys.view(batch, K, 1) + 0.5
    wh = centernet_transpose_and_gather_feat(wh, inds).view(batch, K, 2)
    clses = clses.view(batch, K, 1).float()
    scores = scores.view(batch, K, 1)
    bboxes = torch.cat([xs - wh[..., 0:1] / 2, ys - wh[..., 1:2] / 2,
                        xs + wh[..., 0:1] / 2, ys + wh[..., 1:2] / 2], dim=2)
    return torch.cat([bboxes, scores, clses], dim=2)


def heatmap_peaks(heatmaps: Tensor, k: int = 100, kernel: int = 3):
    """_nms + a single top-k with fastops' deterministic tie order (score descending, then flat index (c, y, x))."""
    B, C, H, W = heatmaps.shape
    k = min(k, C * H * W)
    heat = centernet_nms(heatmaps.float() if heatmaps.dtype != torch.float64 else heatmaps, kernel)
    heat = torch.nan_to_num(heat, nan=0.0)
    flat = heat.reshape(B, -1)
    n = flat.size(1)
    # stable descending sort: ties keep the lower flat index
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    scores = flat.gather(1, order)
    labels = torch.div(order, H * W, rounding_mode="floor")
    pix = order % (H * W)
    del n
    return scores.to(heatmaps.dtype), labels, torch.div(pix, W, rounding_mode="floor"), pix % W


def centernet_decode(heat: Tensor, wh: Tensor, reg: Optional[Tensor] = None, k: int = 100) -> Tensor:
    scores, labels, ys, xs = heatmap_peaks(heat, k)
    B, k = scores.shape
    W = heat.size(3)
    inds = ys * W + xs
    acc = torch.float64 if heat.dtype == torch.float64 else torch.float32
    whg = centernet_transpose_and_gather_feat(wh.to(acc), inds)
    if reg is not None:
        rg = centernet_transpose_and_gather_feat(reg.to(acc), inds)
        x = xs.to(acc) + rg[..., 0]
        y = ys.to(acc) + rg[..., 1]
    else:
        x = xs.to(acc) + 0.5
        y = ys.to(acc) + 0.5
    out = torch.stack([x - whg[..., 0] / 2, y - whg[..., 1] / 2, x + whg[..., 0] / 2, y + whg[..., 1] / 2,
                       scores.to(acc), labels.to(acc)], dim=-1)
    return out.to(heat.dtype)


# ------------------------------------------------------------------------------------------------------------------
# CornerNet pooling
# ------------------------------------------------------------------------------------------------------------------

_CUMMAX = {"bottom": (2, False), "left": (3, True), "right": (3, False), "top": (2, True)}


def mmcv_corner_pool(x: Tensor, mode: str) -> Tensor:
    """mmcv's CornerPool forward on torch >= 1.5: torch.cummax (differentiable through cummax's backward)."""
    dim, flip = _CUMMAX[mode]
    if flip:
        x = x.flip(dim)
    out, _ = torch.cummax(x, dim=dim)
    if flip:
        out = out.flip(dim)
    return out


def cornernet_pool_forward(x: Tensor, mode: str) -> Tensor:
    """CornerNet's C++ forward: log-step doubling with max, as in its cpools extension."""
    out = x.clone()
    dim = 2 if mode in ("top", "bottom") else 3
    n = x.size(dim)
    ind = 1
    while ind < n:
        if mode in ("top", "left"):  # out[i] = max(out[i], out[i + ind])
            cur = out.narrow(dim, 0, n - ind)
            nxt = out.narrow(dim, ind, n - ind).clone()
        else:  # out[i] = max(out[i], out[i - ind])
            cur = out.narrow(dim, ind, n - ind)
            nxt = out.narrow(dim, 0, n - ind).clone()
        torch.maximum(cur, nxt, out=cur)
        ind <<= 1
    return out


def cornernet_pool_backward(x: Tensor, grad_output: Tensor, mode: str) -> Tensor:
    """CornerNet's C++ backward: scan in the pooling direction keeping the running max and its index (updated only
    on a strictly greater value, so ties keep the element met first), scatter-adding each gradient there."""
    dim = 2 if mode in ("top", "bottom") else 3
    n = x.size(dim)
    order = range(n - 1, -1, -1) if mode in ("top", "left") else range(n)
    out = torch.zeros_like(x)
    max_val = None
    max_ind = None
    for i in order:
        xi = x.select(dim, i)
        if max_val is None:
            max_val = xi.clone()
            max_ind = torch.full_like(xi, i, dtype=torch.long)
        else:
            gt = xi > max_val
            max_val = torch.where(gt, xi, max_val)
            max_ind = torch.where(gt, torch.full_like(max_ind, i), max_ind)
        out.scatter_add_(dim, max_ind.unsqueeze(dim), grad_output.select(dim, i).unsqueeze(dim))
    return out


def corner_pool(x: Tensor, mode: str = "top") -> Tensor:
    return cornernet_pool_forward(x, mode)


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
