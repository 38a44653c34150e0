"""The priors family (RetinaFace's hot paths): anchor (the original's code, transcribed in
fastops.reference.priors: torch decode + NumPy py_cpu_nms; the per-image match loop) vs fastops, 1 and 2 threads.

  * prior_nms: one 640 x 640 image (16,800 priors), detect.py's defaults (score > 0.02, top 5000, NMS 0.4, keep
    750); scores spread like a random-initialised network's (every prior passes the threshold: 5,000 boxes enter
    NMS, the heaviest case) and a sparse case (2% of the priors above the threshold, like a trained model);
  * match_priors: 32 images x 16,800 priors x 1-50 faces (the MultiBox loss's matching, threshold 0.35).
The whole detect() of the bundled model: bench/test_bench_retinaface.py.
"""
import pytest
import torch

import fastops
from fastops.models.retinaface import prior_boxes
from fastops.reference import priors as R

from benchutil import record, run

SIDES = ("anchor", "fastops")
VAR = (0.1, 0.2)


def _heads(sparse):
    g = torch.Generator().manual_seed(0)
    pri = prior_boxes((640, 640))
    P = pri.size(0)
    loc = torch.randn(1, P, 4, generator=g) * 0.3
    lm = torch.randn(1, P, 10, generator=g) * 0.3
    if sparse:
        sc = torch.rand(1, P, generator=g) * 0.02
        hot = torch.randperm(P, generator=g)[: P // 50]
        sc[0, hot] = torch.rand(hot.numel(), generator=g)
    else:
        sc = torch.rand(1, P, generator=g) * 0.1 + 0.45
    return loc, sc, lm, pri


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("workload", ["dense", "sparse"])
def test_prior_nms(benchmark, threads, side, workload):
    loc, sc, lm, pri = _heads(workload == "sparse")
    record(benchmark, "prior_nms", f"640x640 16800 priors {workload}", threads, side)
    args = (loc, sc, lm, pri, (640.0, 640.0), 0.02, 0.4, 5000, 750)
    if side == "anchor":
        fn = lambda: R.prior_nms(loc, sc, lm, pri, VAR, (640.0, 640.0), 0.02, 0.4, 5000, 750, False)  # noqa: E731
    else:
        fn = lambda: fastops.prior_nms(*args)  # noqa: E731
    run(benchmark, fn, rounds=3 if side == "anchor" else 20)


def _gt():
    g = torch.Generator().manual_seed(1)
    B, G = 32, 50
    c = torch.rand(B, G, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(B, G, 2, generator=g) * 0.25 + 0.01
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1)
    labels = torch.ones(B, G, dtype=torch.int64)
    lmk = torch.rand(B, G, 10, generator=g)
    counts = torch.randint(1, G + 1, (B,), generator=g)
    return boxes, labels, lmk, counts, prior_boxes((640, 640))


@pytest.mark.parametrize("side", SIDES)
def test_match_priors(benchmark, threads, side):
    boxes, labels, lmk, counts, pri = _gt()
    record(benchmark, "match_priors", "32 x 16800 priors x <=50 faces", threads, side)
    if side == "anchor":
        fn = lambda: R.match_priors(boxes, labels, lmk, counts, pri, 0.35, 0.35, VAR, "ssd", 0.2)  # noqa: E731
    else:
        fn = lambda: fastops.match_priors(boxes, labels, pri, counts, lmk, 0.35, None, VAR, "ssd", 0.2)  # noqa: E731
    run(benchmark, fn, rounds=3 if side == "anchor" else 10)
