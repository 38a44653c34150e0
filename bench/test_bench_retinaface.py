"""RetinaFace (models/retinaface.py): the whole detect() of MobileNet-0.25 on one 640 x 640 image, fastops path vs
reference path (the original's decode + NumPy py_cpu_nms), 1 and 2 threads. The post-processing and matching ops
alone (prior_nms at 16,800 priors, match_priors at 32 x 16,800 x <= 50): bench/test_bench_priors.py."""
import pytest
import torch

from fastops.models.retinaface import RetinaFace

from benchutil import record, run

SIDES = ("anchor", "fastops")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RetinaFace("mobilenet0.25").eval()
    with torch.no_grad():
        for h in list(m.ClassHead) + list(m.BboxHead) + list(m.LandmarkHead):
            h.conv1x1.weight.mul_(0.05)
    return m


@pytest.mark.parametrize("side", SIDES)
def test_detect(benchmark, threads, side, model):
    x = torch.randn(1, 3, 640, 640, generator=torch.Generator().manual_seed(2))
    record(benchmark, "retinaface_detect", "mobilenet0.25 1x3x640x640", threads, side)
    model.impl = "reference" if side == "anchor" else "auto"
    run(benchmark, lambda: model.detect(x), rounds=3)
