"""DensePose: anchor (the detectron2 transcription, fastops.reference.densepose, as it runs: a Python loop with four
F.interpolate per box, per-part masked copies; gather-based point sampling) vs fastops, 1 and 2 threads.

Peak extra memory (extra_info["peak_mb"]): benchutil.peak_extra_mb, i.e. the RSS high-water mark of one call in a
forked child (VmHWM - VmRSS after malloc_trim and a VmHWM reset), so every tensor the call allocates -- outputs
and temporaries, freed or not -- counts; tracemalloc would see none of them.
"""
import pytest
import torch

import fastops
from fastops.models.densepose import DensePoseRCNN, densepose_chart_losses
from fastops.reference import densepose as R

from benchutil import peak_extra_mb, record, run

SIDES = ("anchor", "fastops")


def _chart(n=100, S=112, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 2, S, S, generator=g)
    fine = torch.randn(n, 25, S, S, generator=g)
    u, v = torch.rand(n, 25, S, S, generator=g), torch.rand(n, 25, S, S, generator=g)
    xy = torch.rand(n, 2, generator=g) * 600
    wh = torch.rand(n, 2, generator=g) * (400 - 32) + 32  # boxes of 32-400 px
    return coarse, fine, u, v, torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("side", SIDES)
def test_postprocess(benchmark, threads, side):
    coarse, fine, u, v, boxes = _chart()
    if side == "anchor":
        fn = lambda: R.chart_to_iuv(coarse, fine, u, v, boxes)  # noqa: E731
    else:
        fn = lambda: fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes)  # noqa: E731
    record(benchmark, "densepose_chart_to_iuv", "100 dets, 112x112 -> boxes 32-400 px", threads, side,
           peak_mb=peak_extra_mb(fn) if threads == 1 else None)
    run(benchmark, fn, rounds=3 if side == "anchor" else 10)


@pytest.mark.parametrize("side", SIDES)
def test_paste(benchmark, threads, side):
    coarse, fine, u, v, boxes = _chart()
    scores = torch.rand(100, generator=torch.Generator().manual_seed(1))
    if side == "anchor":
        fn = lambda: R.paste_iuv(coarse, fine, u, v, boxes, scores, 1000, 1000)  # noqa: E731
    else:
        fn = lambda: fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 1000, 1000)  # noqa: E731
    record(benchmark, "densepose_paste_iuv", "100 dets -> [3,1000,1000]", threads, side,
           peak_mb=peak_extra_mb(fn) if threads == 1 else None)
    run(benchmark, fn, rounds=2 if side == "anchor" else 10)


def _loss_inputs(rois=64, points=196, S=112, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(rois, c, S, S, generator=g).requires_grad_(True) for c in (2, 25, 25, 25)]
    P = rois * points
    ri = torch.arange(rois).repeat_interleave(points)
    pts = torch.rand(P, 2, generator=g) * S
    part = torch.randint(0, 25, (P,), generator=g)
    ug, vg = torch.rand(P, generator=g), torch.rand(P, generator=g)
    cgt = torch.randint(0, 2, (rois, S, S), generator=g)
    return maps, ri, pts, part, ug, vg, cgt


@pytest.mark.parametrize("terms", ["points", "all"])
@pytest.mark.parametrize("side", SIDES)
def test_chart_loss_fwd_bwd(benchmark, threads, side, terms):
    maps, ri, pts, part, ug, vg, cgt = _loss_inputs()
    keys = ("loss_densepose_U", "loss_densepose_V", "loss_densepose_I") if terms == "points" else None

    def fn():
        losses = densepose_chart_losses(*maps, ri, pts, part, ug, vg, cgt,
                                        impl="reference" if side == "anchor" else "auto")
        total = sum(v for k, v in losses.items() if keys is None or k in keys)
        torch.autograd.grad(total, maps[1:] if keys else maps)

    record(benchmark, f"chart_losses_{terms}", "64 RoIs x 196 points, fwd+bwd", threads, side)
    run(benchmark, fn, rounds=5)


@pytest.mark.parametrize("side", SIDES)
def test_detect(benchmark, threads, side):
    torch.manual_seed(0)
    m = DensePoseRCNN(2, min_size=320, max_size=320, box_detections_per_img=20, box_score_thresh=0.0,
                      rpn_post_nms_top_n_test=100, head_channels=128,
                      impl="reference" if side == "anchor" else "auto").eval()
    img = [torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(1))]
    record(benchmark, "DensePoseRCNN.detect", "320x320, 20 dets, head 128x8", threads, side)
    run(benchmark, lambda: m.detect(img), rounds=2)
