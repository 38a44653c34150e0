"""Keypoint R-CNN (roi_heatmaps_to_keypoints): what every backend shares (the fake kernel of the compiled op and
of its `_triton` twin, autocast)."""
import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)
from fastops.registrations import register_fakes, register_float32_autocast


def heatmaps_to_keypoints_fake(maps, rois):
    R, K = maps.shape[0], maps.shape[1]
    return maps.new_empty((R, K, 3), dtype=torch.float32), maps.new_empty((R, K), dtype=torch.float32)


FAKES = {"roi_heatmaps_to_keypoints": heatmaps_to_keypoints_fake}

register_fakes(FAKES)

# Autocast (CPU and CUDA): float16/bfloat16 maps and RoIs (mixed dtypes accepted) are upsampled in float32, as
# fastops.ops.keypoint_rcnn does for every impl; the outputs are float32 (as torchvision's).
AUTOCAST_FLOAT32 = ("roi_heatmaps_to_keypoints",)
register_float32_autocast(AUTOCAST_FLOAT32)
