"""Plain NumPy/PyTorch transcriptions of the keypoint decoders that fastops' decode ops replace (the tests' expected
results, the benchmarks' anchors and ``impl="reference"``).

Written from the published conventions (not copied) of mmpose 1.x ``get_heatmap_maximum``, ``refine_keypoints``,
``refine_keypoints_dark``, ``refine_keypoints_dark_udp`` and ``gaussian_blur`` (OpenCV's GaussianBlur with sigma 0 on
a zero-padded map, transcribed here without cv2), and princeton-vl/pytorch_stacked_hourglass ``HeatmapParser.adjust``.
"""
from __future__ import annotations

from itertools import product
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

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
        # mmpose slices [border:-border], empty for blur_kernel=1 (border 0); [border:border + H] is the same map
        dr[border:border + H, border:border + W] = heatmaps[k].copy()
        dr = opencv_gaussian_blur(dr, kernel)
        heatmaps[k] = dr[border:border + H, border:border + W].copy()
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
    """Batched mmpose decode: a per-sample loop of get_heatmap_maximum + the chosen refinement (as mmpose runs).
    Where a refinement produces a non-finite coordinate (it read a NaN or inf), the integer location is kept
    (fastops' rule; mmpose returns NaN there)."""
    hm_all = heatmaps.detach().float().cpu().numpy()
    B, K = hm_all.shape[:2]
    coords = np.zeros((B, K, 2), np.float32)
    scores = np.zeros((B, K), np.float32)
    for b in range(B if K > 0 else 0):
        hm = hm_all[b].copy()
        locs, vals = mmpose_get_heatmap_maximum(hm)
        kp = locs[None].copy()  # the refinements work in place; locs stays the integer location
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
        # fastops' NaN/inf rule: a refined coordinate that is not finite falls back to the integer location
        coords[b] = np.where(np.isfinite(kp[0]), kp[0], locs)
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
