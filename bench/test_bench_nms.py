"""NMS family: anchor vs fastops side by side (1 and 2 threads).

Workloads (spec nms.md): boxes clustered around 100 objects in a 1000x1000 image, IoU 0.5.
  nms             torchvision.ops.nms at 1k / 5k / 20k boxes
  batched_nms     torchvision.ops.batched_nms at 20k boxes, 80 classes
  fast_nms        YOLACT-sized input (19248 priors, 80 classes, top_k 200) vs the plain-PyTorch transcription of
                  YOLACT's Detect (score filter + fast_nms)
  multiclass_nms  19248 boxes x 80 classes: threshold / batched_nms / cut written in Python around torchvision
"""
import pytest
import torch
import torchvision

import fastops
from benchutil import record, run
from fastops.reference import nms as ref

SIDES = ("anchor", "fastops")


def clustered(n, objects=100, seed=0, size=1000.0):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(objects, 2, generator=g) * size
    wh = torch.rand(objects, 2, generator=g) * 150 + 20
    o = torch.randint(0, objects, (n,), generator=g)
    jit = torch.randn(n, 4, generator=g)
    c = ctr[o] + jit[:, :2] * 0.1 * wh[o]
    s = wh[o] * (1 + 0.1 * jit[:, 2:]).clamp(min=0.2)
    return torch.cat([c - s / 2, c + s / 2], 1), torch.rand(n, generator=g)


def yolact_scores(n, classes=80, seed=0):
    """[C, N] softmax class scores with a dominant background (YOLACT's conf output without row 0)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(classes + 1, n, generator=g) * 1.5
    logits[0] += 6.0
    return torch.softmax(logits, 0)[1:].contiguous()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("n", [1000, 5000, 20000], ids=lambda n: f"{n // 1000}k")
def test_nms(benchmark, threads, n, side):
    boxes, scores = clustered(n)
    fn = (lambda: torchvision.ops.nms(boxes, scores, 0.5)) if side == "anchor" else \
        (lambda: fastops.nms(boxes, scores, 0.5))
    record(benchmark, "nms", f"{n} clustered boxes, iou 0.5", threads, side)
    run(benchmark, fn, rounds=7)


@pytest.mark.parametrize("side", SIDES)
def test_batched_nms(benchmark, threads, side):
    boxes, scores = clustered(20000)
    idxs = torch.randint(0, 80, (20000,), generator=torch.Generator().manual_seed(1))
    fn = (lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)) if side == "anchor" else \
        (lambda: fastops.batched_nms(boxes, scores, idxs, 0.5))
    record(benchmark, "batched_nms", "20000 clustered boxes, 80 classes", threads, side)
    run(benchmark, fn, rounds=7)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("cross_class", [False, True], ids=["per_class", "cross_class"])
def test_fast_nms(benchmark, threads, cross_class, side):
    boxes, _ = clustered(19248)
    scores = yolact_scores(19248)
    if side == "anchor":
        def fn():
            return ref.fast_nms(boxes, scores, 0.5, 200, 100, 0.05, cross_class)
    else:
        def fn():
            return fastops.fast_nms(boxes, scores, 0.5, 200, 100, 0.05, cross_class=cross_class)
    mode = "cc_fast_nms" if cross_class else "fast_nms"
    record(benchmark, "fast_nms", f"YOLACT {mode}: 19248 priors, 80 cls, top_k 200", threads, side)
    run(benchmark, fn, rounds=7)


def _multiclass_anchor(boxes, scores, score_thr, iou_thr, max_det):
    # what users write around torchvision (mmdet/detectron2 style)
    mask = scores > score_thr
    i, c = mask.nonzero(as_tuple=True)
    s = scores[i, c]
    b = boxes[i]
    keep = torchvision.ops.batched_nms(b, s, c, iou_thr)[:max_det]
    return b[keep], s[keep], c[keep], i[keep]


@pytest.mark.parametrize("side", SIDES)
def test_multiclass_nms(benchmark, threads, side):
    boxes, _ = clustered(19248)
    scores = yolact_scores(19248).t().contiguous()  # [N, C], as detection heads produce it
    if side == "anchor":
        def fn():
            return _multiclass_anchor(boxes, scores, 0.05, 0.5, 100)
    else:
        def fn():
            return fastops.multiclass_nms(boxes, scores, 0.05, 0.5, max_det=100)
    record(benchmark, "multiclass_nms", "19248 boxes x 80 cls, thr 0.05, max_det 100", threads, side)
    run(benchmark, fn, rounds=7)
