"""Helpers the Triton backends share, re-derived here so that production code never imports the reference
(tests/test_<family>.py checks each one against `fastops.reference`)."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor


def fpn_level_range(spatial_scales: Sequence[float]) -> Tuple[int, int]:
    """(k_min, k_max) of an FPN pyramid from its first and last scales, k = -log2(scale) (torchvision's rule)."""
    return int(round(-math.log2(spatial_scales[0]))), int(round(-math.log2(spatial_scales[-1])))


def fpn_levels(rois: Tensor, k_min: int, k_max: int, canonical_scale: int, canonical_level: int) -> Tensor:
    """0-based FPN level of each RoI (FPN eq. 1 as torchvision's LevelMapper), int32; -1 for a negative area.

    ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)`` clamped to [k_min, k_max], with the
    area of the unscaled box (x1, y1, x2, y2 = rois[:, 1:5]), computed in float32 (float64 for float64 boxes).
    """
    acc = torch.float64 if rois.dtype == torch.float64 else torch.float32
    x1, y1, x2, y2 = (rois[:, i].to(acc) for i in range(1, 5))
    size = torch.sqrt((x2 - x1) * (y2 - y1))
    k = torch.floor(torch.log2(size / canonical_scale) + canonical_level + torch.tensor(1e-6, dtype=acc))
    k = k.clamp(k_min, k_max) - k_min
    return torch.where(k.isnan(), torch.full_like(k, -1), k).to(torch.int32)
