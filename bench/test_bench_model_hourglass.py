"""Stacked Hourglass end to end: anchor = the same model with impl="reference" (the stacked-hourglass parser and
mmpose's NumPy MSRA encoder, per sample), fastops = impl="auto"; 1 and 2 threads.

- decoding from the stacked heatmaps to keypoints in input pixels, MPII size (16 images x 16 joints, 64x64, 8 stacks);
- full inference (network + decoding), 2 stacks of 128 channels, 1x3x256x256;
- target rendering of the training step (heatmaps + weights), 16 images x 4 people x 16 joints, 64x64, sigma 1.
"""
import pytest
import torch

from fastops.models.hourglass import StackedHourglass

from benchutil import record, run

SIDES = ("anchor", "fastops")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return StackedHourglass(nstack=2, inp_dim=128, oup_dim=16).eval()


def _impl(side):
    return "reference" if side == "anchor" else "auto"


@pytest.mark.parametrize("side", SIDES)
def test_hourglass_decode(benchmark, threads, model, side):
    preds = torch.rand(16, 8, 16, 64, 64, generator=torch.Generator().manual_seed(1))
    model.impl = _impl(side)
    record(benchmark, "Hourglass decode", "[16,8,16,64,64] -> 16x16 kpts", threads, side)
    run(benchmark, lambda: model.decode(preds), rounds=5 if side == "anchor" else 20)


@pytest.mark.parametrize("side", SIDES)
def test_hourglass_inference(benchmark, threads, model, side):
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    model.impl = _impl(side)
    record(benchmark, "Hourglass inference", "2 stacks x 128 ch, 1x3x256x256, net + decode", threads, side)
    run(benchmark, lambda: model.predict(x), rounds=3)


@pytest.mark.parametrize("side", SIDES)
def test_hourglass_targets(benchmark, threads, model, side):
    g = torch.Generator().manual_seed(3)
    kp = torch.rand(16, 4, 16, 2, generator=g) * 256
    vis = (torch.rand(16, 4, 16, generator=g) > 0.2).float()
    model.impl = _impl(side)
    record(benchmark, "Hourglass targets", "16 imgs x 4 people x 16 kpts -> 64x64, s=1", threads, side)
    run(benchmark, lambda: model.build_targets(kp, (64, 64), vis), rounds=5 if side == "anchor" else 20)
