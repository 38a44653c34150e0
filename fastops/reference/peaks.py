"""Plain PyTorch transcriptions of CenterNet's decoding that fastops' peaks ops replace (the tests' expected results,
the benchmarks' anchors and ``impl="reference"``): xingyizhou/CenterNet ``_nms``, ``_topk``,
``_transpose_and_gather_feat`` and ``ctdet_decode`` (written from the published code's conventions, not copied).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

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
    if B * k == 0:
        e = torch.zeros((B, k), dtype=torch.int64, device=heatmaps.device)
        return heatmaps.new_zeros((B, k)), e, e.clone(), e.clone()
    # a window wider than the map sees the whole map (max_pool2d rejects huge kernels)
    kernel = min(kernel, 2 * max(H, W) + 1)
    hm = heatmaps.float() if heatmaps.dtype != torch.float64 else heatmaps
    pad = (kernel - 1) // 2
    hmax = torch.nn.functional.max_pool2d(hm, (kernel, kernel), stride=1, padding=pad)
    # CenterNet's heat * keep, without its inf * 0 = NaN for infinite non-peaks (and NaN pixels score 0)
    heat = torch.where(hmax == hm, hm, torch.zeros_like(hm))
    flat = heat.reshape(B, -1)
    # stable descending sort: ties keep the lower flat index
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    scores = flat.gather(1, order)
    labels = torch.div(order, H * W, rounding_mode="floor")
    pix = order % (H * W)
    return scores.to(heatmaps.dtype), labels, torch.div(pix, W, rounding_mode="floor"), pix % W


def centernet_decode(heat: Tensor, wh: Tensor, reg: Optional[Tensor] = None, k: int = 100) -> Tensor:
    scores, labels, ys, xs = heatmap_peaks(heat, k)
    B, k = scores.shape
    if B * k == 0:
        return heat.new_zeros((B, k, 6))
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
