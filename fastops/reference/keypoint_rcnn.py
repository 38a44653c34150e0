"""Plain PyTorch transcription of torchvision's Keypoint R-CNN post-processing that fastops' keypoint_rcnn op
replaces (the tests' expected results, the benchmarks' anchor and ``impl="reference"``):
``torchvision.models.detection.roi_heads.heatmaps_to_keypoints`` (written from its published conventions: one
bicubic ``F.interpolate`` per RoI to ``ceil(max(box side, 1))``, first argmax, ``+0.5`` and size correction).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def heatmaps_to_keypoints(maps: Tensor, rois: Tensor) -> Tuple[Tensor, Tensor]:
    """torchvision's loop: ``maps [R, K, H, W]``, ``rois [R, 4]`` -> ``(keypoints [R, K, 3], scores [R, K])``,
    float32. RoIs must be finite: ValueError (torchvision's ``int()`` raises ValueError for NaN, OverflowError
    for inf)."""
    if rois.numel() and not bool(torch.isfinite(rois).all()):
        raise ValueError("roi_heatmaps_to_keypoints: rois must be finite")
    x0 = rois[:, 0]
    y0 = rois[:, 1]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    wceil = widths.ceil()
    hceil = heights.ceil()
    K = maps.shape[1]
    xy = torch.zeros((len(rois), 3, K), dtype=torch.float32, device=maps.device)
    scores = torch.zeros((len(rois), K), dtype=torch.float32, device=maps.device)
    for i in range(len(rois)):
        rw = int(wceil[i].item())
        rh = int(hceil[i].item())
        cw = widths[i] / rw
        ch = heights[i] / rh
        up = F.interpolate(maps[i][:, None], size=(rh, rw), mode="bicubic", align_corners=False)[:, 0]
        pos = up.reshape(K, -1).argmax(dim=1)
        xi = pos % rw
        yi = torch.div(pos - xi, rw, rounding_mode="floor")
        xy[i, 0, :] = (xi.float() + 0.5) * cw + x0[i]
        xy[i, 1, :] = (yi.float() + 0.5) * ch + y0[i]
        xy[i, 2, :] = 1
        scores[i, :] = up[torch.arange(K, device=up.device), yi, xi]
    return xy.permute(0, 2, 1), scores
