"""UPSNet-style panoptic model end to end: reference path (anchor: torchvision RoIAlign/NMS/paste + UPSNet fusion
transcription, impl="reference") vs fastops, 1 and 2 threads.

* post-processing from the head outputs (box decoding + per-class NMS, then mask pasting and panoptic fusion at the
  image size) with COCO-panoptic class counts (80 things, 53 stuff), 1000 proposals, on a 512x768 input;
* full inference of one 512x768 image; a VPSNet-style temporal step (flow, warp of P2-P5, fusion, inference).

The random-init classifier is scaled so that scores spread like a trained model's (100 detections survive).
"""
import pytest
import torch

from benchutil import record, run
from fastops.models.panoptic import UPSNet

SIDES = ("anchor", "fastops")
H, W = 512, 768
_CACHE = {}


def _impl(side):
    return "reference" if side == "anchor" else "auto"


def _model(temporal=False):
    if temporal not in _CACHE:
        torch.manual_seed(0)
        m = UPSNet(80, 53, min_size=H, max_size=W, temporal=temporal).eval()
        with torch.no_grad():
            m.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.3)
            m.fcn_head.score.weight.normal_(0, 0.1)
        img = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1))
        _CACHE[temporal] = (m, img)
    return _CACHE[temporal]


def _heads():
    if "heads" not in _CACHE:
        m, img = _model()
        with torch.no_grad():
            il, _ = m.transform([img])
            feats = m.features(il.tensors)
            proposals, _ = m.rpn(il, feats)
            cl, br = m.box_heads(feats, proposals, il.image_sizes)
            sem = m.semantic_logits(feats)
            boxes, scores, labels = m.detect(cl, br, proposals, il.image_sizes)
            mlog = m.mask_logits(feats, boxes, labels, il.image_sizes)
        _CACHE["heads"] = (cl, br, proposals, il.image_sizes, sem, mlog)
    return _CACHE["heads"]


def _postprocess(m, cl, br, proposals, sizes, sem, mlog):
    boxes, scores, labels = m.detect(cl, br, proposals, sizes)
    # the mask head's logits for these detections are an input here (computed once above, same detections)
    return m.fuse(sem[0], mlog[0][: boxes[0].shape[0]], boxes[0], labels[0], scores[0], sizes[0], (H, W))


@pytest.mark.parametrize("side", SIDES)
def test_panoptic_postprocess(benchmark, threads, side):
    m, _ = _model()
    heads = _heads()
    m.impl = _impl(side)
    with torch.no_grad():
        n = _postprocess(m, *heads)["labels"].numel()
    record(benchmark, "upsnet postprocess", f"1000 proposals, 80+53 classes, {n} dets -> {H}x{W}", threads, side)
    with torch.no_grad():
        run(benchmark, lambda: _postprocess(m, *heads), rounds=5)


@pytest.mark.parametrize("side", SIDES)
def test_panoptic_inference(benchmark, threads, side):
    m, img = _model()
    m.impl = _impl(side)
    record(benchmark, "upsnet inference", f"3x{H}x{W}, 80+53 classes", threads, side)
    with torch.no_grad():
        run(benchmark, lambda: m([img]), rounds=2)


@pytest.mark.parametrize("side", SIDES)
def test_vps_temporal_step(benchmark, threads, side):
    m, img = _model(temporal=True)
    m.impl = _impl(side)
    with torch.no_grad():
        _, state = m.forward_frame([img])
    cur = torch.roll(img, shifts=(4, 6), dims=(1, 2))
    record(benchmark, "vps temporal step", f"3x{H}x{W}, warp P2-P5 + inference", threads, side)
    with torch.no_grad():
        run(benchmark, lambda: m.forward_frame([cur], state), rounds=2)
