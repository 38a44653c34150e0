"""torchvision Mask R-CNN inference without (anchor) and with (fastops) fastops.patch_torchvision(), 1 and 2 threads."""
import pytest
from torchvision.models.detection import maskrcnn_resnet50_fpn

from benchutil import run_patched_inference


@pytest.mark.parametrize("side", ("anchor", "fastops"))
def test_maskrcnn_inference(benchmark, threads, side):
    run_patched_inference(benchmark, threads, side, maskrcnn_resnet50_fpn, rounds=2)
