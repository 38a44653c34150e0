"""RoIAlign: torchvision.ops vs fastops side by side (spec workloads A and B, and a 4-level FPN), 1 and 2 threads."""
import pytest
import torch
import torchvision

import fastops
from benchutil import record, run

SIDES = ("anchor", "fastops")


def _rois(k, lo, hi, n=2, h=800, w=1216, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = torch.rand(k, 2, generator=g) * (hi - lo) + lo
    ctr = torch.rand(k, 2, generator=g) * torch.tensor([float(w), float(h)])
    b = torch.cat([ctr - size / 2, ctr + size / 2], 1)
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    return torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), b], 1)


# (name, rois, sampling_ratio): A = P2 of two 800x1216 images, RoIs 32-112 px, sr=2; B = RoIs 32-448 px, adaptive.
WORKLOADS = {
    "A": (lambda: _rois(1000, 32, 112), 2),
    "B": (lambda: _rois(1000, 32, 448), 0),
}
_FEATS = {}


def _features(layout):
    if layout not in _FEATS:
        x = torch.randn(2, 256, 200, 304, generator=torch.Generator().manual_seed(0))
        _FEATS[layout] = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    return _FEATS[layout]


def _fn(side):
    return torchvision.ops.roi_align if side == "anchor" else fastops.roi_align


@pytest.mark.parametrize("side", SIDES)  # (top decorator: side varies fastest, anchor and fastops back to back)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_roi_align_forward(benchmark, threads, workload, layout, side):
    make_rois, sr = WORKLOADS[workload]
    x, rois, fn = _features(layout), make_rois(), _fn(side)
    record(benchmark, "roi_align fwd", f"{workload} [2,256,200,304] {layout} K=1000", threads, side)
    run(benchmark, lambda: fn(x, rois, 7, 0.25, sr, True), rounds=3)


@pytest.mark.parametrize("side", SIDES)  # (top decorator: side varies fastest, anchor and fastops back to back)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_roi_align_forward_backward(benchmark, threads, workload, layout, side):
    make_rois, sr = WORKLOADS[workload]
    x, rois, fn = _features(layout).detach().requires_grad_(), make_rois(), _fn(side)
    grad = torch.randn(rois.size(0), 256, 7, 7)

    def step():
        x.grad = None
        fn(x, rois, 7, 0.25, sr, True).backward(grad)

    record(benchmark, "roi_align fwd+bwd", f"{workload} [2,256,200,304] {layout} K=1000", threads, side)
    run(benchmark, step, rounds=2 if workload == "B" else 3)


_FPN = {}


def _fpn():
    if not _FPN:
        g = torch.Generator().manual_seed(0)
        _FPN["feats"] = {f"p{i}": torch.randn(2, 256, 200 // 2 ** (i - 2), 304 // 2 ** (i - 2), generator=g)
                         for i in range(2, 6)}
        rois = _rois(1000, 16, 600)
        _FPN["boxes"] = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    return _FPN["feats"], _FPN["boxes"]


@pytest.mark.parametrize("side", SIDES)
def test_multi_scale_roi_align(benchmark, threads, side):
    feats, boxes = _fpn()
    names = ["p2", "p3", "p4", "p5"]
    pool = (torchvision.ops.MultiScaleRoIAlign if side == "anchor" else fastops.MultiScaleRoIAlign)(names, 7, 2)
    shapes = [(800, 1216), (800, 1216)]
    record(benchmark, "MultiScaleRoIAlign", "P2-P5 of 2x800x1216, K=1000, sr=2", threads, side)
    run(benchmark, lambda: pool(feats, boxes, shapes), rounds=3)
