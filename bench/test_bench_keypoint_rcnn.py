"""Keypoint R-CNN: torchvision's heatmaps_to_keypoints (anchor) vs fastops.roi_heatmaps_to_keypoints, a whole
keypointrcnn_resnet50_fpn inference and a training step without / with fastops.patch_torchvision(), 1 and 2
threads. The training step's keypoint loss (keypoints_to_heatmap + keypointrcnn_loss) is torchvision's on both
sides: ~16 ms against ~44 s for the keypoint head's forward + backward on 100 RoIs (docs/keypoint_rcnn.md), not
worth an op; in training the patch swaps RoIAlign (forward and backward) and NMS."""
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


def _training_inputs():
    """2 x 512 x 512 images, 4 people each; box_batch_size_per_image=32 keeps the keypoint head at <= 16 RoIs
    (its eight 512-channel 3 x 3 convolutions cost ~0.4 s per RoI forward + backward on one core)."""
    g = torch.Generator().manual_seed(3)
    images, targets = [], []
    for _ in range(2):
        images.append(torch.rand(3, 512, 512, generator=g))
        xy = torch.rand(4, 2, generator=g) * 300
        boxes = torch.cat([xy, xy + 60 + torch.rand(4, 2, generator=g) * 140], 1)
        kp = torch.rand(4, 17, 3, generator=g)
        kp[..., :2] = boxes[:, None, :2] + kp[..., :2] * (boxes[:, None, 2:] - boxes[:, None, :2])
        kp[..., 2] = (kp[..., 2] > 0.2).float()
        targets.append({"boxes": boxes, "labels": torch.ones(4, dtype=torch.int64), "keypoints": kp})
    return images, targets


@pytest.mark.parametrize("side", SIDES)
def test_keypointrcnn_training_step(benchmark, threads, side):
    torch.manual_seed(0)
    model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=512, max_size=512,
                                      box_batch_size_per_image=32).train()
    images, targets = _training_inputs()

    def step():
        torch.manual_seed(123)  # the samplers draw the same proposals on both sides
        model.zero_grad(set_to_none=True)
        if side == "fastops":
            with fastops.patch_torchvision():
                losses = model(images, targets)
        else:
            losses = model(images, targets)
        sum(losses.values()).backward()

    record(benchmark, "keypointrcnn_resnet50_fpn", "training step 2x512x512, <=16 keypoint RoIs", threads, side)
    run(benchmark, step, rounds=1)
