"""YOLACT end to end: reference ops (anchor, impl="reference") vs fastops, 1 and 2 threads.

* post-processing from the head outputs (softmax, decode, Fast NMS, mask assembly to the image size) at the default
  550 input (19248 priors, 80 classes, prototypes 138x138), on a 550x550 and a 1080x1920 output image;
* full inference of one 550x550 image (backbone, FPN, heads, post-processing);
* a YolactEdge non-keyframe (partial backbone, flow, warp of P4/P5, heads, post-processing).

The random-init output convs are scaled so that scores, boxes and coefficients spread like a trained model's
(100 detections survive);
the anchor and fastops sides run the same model and inputs.
"""
import pytest
import torch

from benchutil import record, run
from fastops.models.yolact import Yolact, YolactEdge

SIDES = ("anchor", "fastops")
_CACHE = {}


def _impl(side):
    return "reference" if side == "anchor" else "auto"


def _model(cls=Yolact):
    if cls not in _CACHE:
        torch.manual_seed(0)
        m = cls(81, 550).eval()
        with torch.no_grad():  # untrained features are large: scale the output convs (see the test file)
            head = m.prediction_layers[0]
            head.conf_layer.weight.mul_(0.05)
            head.bbox_layer.weight.mul_(0.01)
            head.mask_layer.weight.mul_(0.02)
        img = torch.randn(1, 3, 550, 550, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            heads = m.heads(img)
        _CACHE[cls] = (m, img, heads)
    return _CACHE[cls]


@pytest.mark.parametrize("out_size", [(550, 550), (1080, 1920)], ids=["550", "1080p"])
@pytest.mark.parametrize("side", SIDES)
def test_yolact_postprocess(benchmark, threads, out_size, side):
    m, _, heads = _model()
    m.impl = _impl(side)
    with torch.no_grad():
        n = m.postprocess(heads, out_size)[0]["labels"].numel()
    record(benchmark, "yolact postprocess", f"550 input, {n} dets -> {out_size[0]}x{out_size[1]}", threads, side)
    with torch.no_grad():
        run(benchmark, lambda: m.postprocess(heads, out_size), rounds=5)


@pytest.mark.parametrize("side", SIDES)
def test_yolact_inference(benchmark, threads, side):
    m, img, _ = _model()
    m.impl = _impl(side)
    record(benchmark, "yolact inference", "1x3x550x550 -> 550x550", threads, side)
    with torch.no_grad():
        run(benchmark, lambda: m(img), rounds=3)


@pytest.mark.parametrize("side", SIDES)
def test_yolact_edge_nonkeyframe(benchmark, threads, side):
    m, img, _ = _model(YolactEdge)
    m.impl = _impl(side)
    with torch.no_grad():
        _, state = m.forward_frame(img)
    cur = img + 0.05 * torch.randn(img.shape, generator=torch.Generator().manual_seed(2))
    record(benchmark, "yolact_edge non-keyframe", "1x3x550x550 -> 550x550", threads, side)
    with torch.no_grad():
        run(benchmark, lambda: m.forward_frame(cur, state), rounds=3)
