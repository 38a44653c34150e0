"""torchvision Mask R-CNN inference without (anchor) and with (fastops) fastops.patch_torchvision(), 1 and 2 threads."""
import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from benchutil import patched, record, run

_MODEL = {}


def _model():
    if not _MODEL:
        torch.manual_seed(0)
        # A random head scores every class ~1/num_classes: keep all detections so the post-processing does the
        # work it does on a trained model (100 detections, their masks pasted into the image).
        _MODEL["m"] = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
        _MODEL["x"] = [torch.rand(3, 800, 1216, generator=torch.Generator().manual_seed(1))]
    return _MODEL["m"], _MODEL["x"]


@pytest.mark.parametrize("side", ("anchor", "fastops"))
def test_maskrcnn_inference(benchmark, threads, side):
    model, images = _model()

    def step():
        with torch.no_grad(), patched(side):
            return model(images)

    record(benchmark, "maskrcnn_resnet50_fpn", "inference 1x800x1216, 100 dets", threads, side)
    run(benchmark, step, rounds=2)
