"""Keypoint R-CNN: torchvision's heatmaps_to_keypoints (anchor) vs fastops.roi_heatmaps_to_keypoints, and a whole
keypointrcnn_resnet50_fpn inference without / with fastops.patch_torchvision(), 1 and 2 threads."""
import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_heatmaps_to_keypoints

import fastops
from benchutil import record, run, run_patched_inference

SIDES = ("anchor", "fastops")


def _detections(peaked):
    """100 detections of [17, 56, 56] maps on boxes with sides uniform in 32-400 px."""
    g = torch.Generator().manual_seed(0)
    R, K = 100, 17
    xy = torch.rand(R, 2, generator=g) * 800
    rois = torch.cat([xy, xy + 32 + torch.rand(R, 2, generator=g) * 368], 1)
    maps = torch.randn(R, K, 56, 56, generator=g)
    if peaked:  # a trained head's logits: one bump per keypoint over low noise
        yy, xx = torch.meshgrid(torch.arange(56.0), torch.arange(56.0), indexing="ij")
        c = torch.rand(R, K, 2, 1, 1, generator=g) * 55
        maps = 10 * torch.exp(-((xx - c[:, :, 0]) ** 2 + (yy - c[:, :, 1]) ** 2) / 8) + 0.5 * maps
    return maps, rois


@pytest.mark.parametrize("maps_kind", ["noise", "peaked"])
@pytest.mark.parametrize("side", SIDES)
def test_heatmaps_to_keypoints(benchmark, threads, side, maps_kind):
    maps, rois = _detections(maps_kind == "peaked")
    record(benchmark, "heatmaps_to_keypoints", f"100x[17,56,56] boxes 32-400px, {maps_kind} maps", threads, side)
    if side == "anchor":
        fn = lambda: tv_heatmaps_to_keypoints(maps, rois)  # noqa: E731
    else:
        fn = lambda: fastops.roi_heatmaps_to_keypoints(maps, rois)  # noqa: E731
    run(benchmark, fn, rounds=3 if side == "anchor" else 10)


@pytest.mark.parametrize("side", SIDES)
def test_keypointrcnn_inference(benchmark, threads, side):
    run_patched_inference(benchmark, threads, side, keypointrcnn_resnet50_fpn, rounds=1)
