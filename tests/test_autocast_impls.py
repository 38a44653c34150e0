"""Autocast (issue 12): under ``torch.autocast("cpu", dtype=bfloat16)`` every impl of an op (cpp, reference,
Triton under the interpreter) and the compiled op called directly return the same dtypes, following the rule each
op's docstring states: paste_masks keeps the masks' dtype (torchvision's paste_masks_in_image under autocast);
the keypoint_rcnn, priors and densepose ops compute in float32 and return float32 (integer / uint8 outputs keep
their dtype)."""
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

import fastops
from densepose_helpers import _boxes as dp_boxes, _maps as dp_maps

BF16 = torch.bfloat16


def _autocast(fn):
    with torch.autocast("cpu", dtype=BF16):
        return fn()


def _dtypes(out):
    return [t.dtype for t in (out if isinstance(out, (tuple, list)) else (out,))]


def _impls(fn, impls):
    return {impl: _autocast(lambda: fn(impl)) for impl in impls}


def _same_dtypes(outs, want):
    for impl, out in outs.items():
        assert _dtypes(out) == want, (impl, _dtypes(out), want)


# ---- masks: paste_masks ---------------------------------------------------------------------------------------

def _paste_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(4, 1, 7, 7, generator=g)
    xy = torch.rand(4, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + torch.rand(4, 2, generator=g) * 25 + 1], 1)
    return masks, boxes


@pytest.mark.parametrize("masks_dtype", [BF16, torch.float16, torch.float32])
@pytest.mark.parametrize("boxes_dtype", [BF16, torch.float32])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_paste_masks_autocast_keeps_masks_dtype(masks_dtype, boxes_dtype, threshold):
    masks, boxes = _paste_inputs()
    masks, boxes = masks.to(masks_dtype), boxes.to(boxes_dtype)
    try:
        tv = _autocast(lambda: paste_masks_in_image(masks, boxes, (40, 45)))
    except RuntimeError as e:  # torchvision's own torch.stack of float16 masks fails under bfloat16 autocast
        assert masks_dtype == torch.float16 and "prioritize" in str(e)
        tv = paste_masks_in_image(masks, boxes, (40, 45))
    want_dtype = torch.bool if threshold is not None else tv.dtype
    assert tv.dtype == masks_dtype  # torchvision's behaviour, the rule fastops follows
    outs = _impls(lambda impl: fastops.paste_masks(masks, boxes, (40, 45), 1, threshold, impl),
                  ("cpp", "reference", "triton"))
    outs["direct"] = _autocast(lambda: torch.ops.fastops.paste_masks(masks[:, 0], boxes, 40, 45, 1, threshold))
    _same_dtypes(outs, [want_dtype])
    plain = {impl: fastops.paste_masks(masks, boxes, (40, 45), 1, threshold, impl) for impl in ("cpp", "reference")}
    for impl in ("cpp", "reference", "triton"):  # autocast changes nothing: the same result as without it
        expect = plain["cpp" if impl == "triton" else impl]
        if threshold is None:
            torch.testing.assert_close(outs[impl], expect, rtol=0, atol=1e-2 if masks_dtype != torch.float32 else 1e-6)
        else:
            assert (outs[impl] != expect).float().mean() < 0.01
    assert torch.equal(outs["direct"].reshape(outs["cpp"].shape), outs["cpp"])
    if threshold is None:  # and torchvision's values, to the masks dtype's rounding
        tol = 1e-2 if masks_dtype != torch.float32 else 1e-6
        torch.testing.assert_close(outs["cpp"].float(), tv.float(), rtol=0, atol=tol)


# ---- keypoint_rcnn --------------------------------------------------------------------------------------------

def test_roi_heatmaps_to_keypoints_autocast_float32_every_impl():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 4, 12, 12, generator=g).to(BF16)
    rois = torch.tensor([[1.0, 2.0, 30.0, 20.0], [0.0, 0.0, 5.5, 9.0], [3.0, 3.0, 3.5, 40.0]]).to(BF16)
    outs = _impls(lambda impl: fastops.roi_heatmaps_to_keypoints(maps, rois, impl), ("cpp", "reference", "triton"))
    outs["direct"] = _autocast(lambda: torch.ops.fastops.roi_heatmaps_to_keypoints(maps, rois))
    _same_dtypes(outs, [torch.float32, torch.float32])
    for impl in ("reference", "triton", "direct"):
        for a, b in zip(outs[impl], outs["cpp"]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


# ---- priors ---------------------------------------------------------------------------------------------------

def test_priors_autocast_float32_every_impl():
    g = torch.Generator().manual_seed(2)
    P = 30
    priors = torch.cat([torch.rand(P, 2, generator=g) * 0.6 + 0.2, torch.rand(P, 2, generator=g) * 0.2 + 0.05], 1)
    loc, landms = torch.randn(2, P, 4, generator=g) * 0.3, torch.randn(2, P, 10, generator=g)
    scores = torch.rand(2, P, generator=g)
    args = [t.to(BF16) for t in (loc, scores, landms, priors)]
    for pad in (False, True):
        outs = _impls(lambda impl: fastops.prior_nms(*args, (64.0, 64.0), 0.3, 0.4, 20, 10, (0.1, 0.2), pad, True,
                                                     impl), ("cpp", "reference", "triton"))
        _same_dtypes(outs, [torch.float32] * 3 + [torch.int64])
        assert torch.equal(outs["cpp"][3], outs["reference"][3]) and torch.equal(outs["cpp"][3], outs["triton"][3])
    gt = torch.rand(2, 3, 4, generator=g) * 0.5
    gt[..., 2:] += gt[..., :2] + 0.05
    labels = torch.ones(2, 3, dtype=torch.int64)
    gl = torch.rand(2, 3, 10, generator=g)
    outs = _impls(lambda impl: fastops.match_priors(gt.to(BF16), labels, priors.to(BF16), None, gl.to(BF16),
                                                    impl=impl), ("cpp", "reference", "triton"))
    outs["direct"] = _autocast(lambda: torch.ops.fastops.match_priors(
        gt.to(BF16), labels, gl.to(BF16), torch.full((2,), 3), priors.to(BF16), 0.35, 0.35, 0.1, 0.2, "ssd", None))
    _same_dtypes(outs, [torch.float32, torch.int64, torch.float32, torch.float32, torch.int64])
    assert torch.equal(outs["cpp"][4], outs["reference"][4]) and torch.equal(outs["cpp"][4], outs["triton"][4])


# ---- densepose ------------------------------------------------------------------------------------------------

def test_densepose_autocast_float32_every_impl():
    coarse, fine, u, v = (t.to(BF16) for t in dp_maps(2, S=8, K=5))
    boxes = dp_boxes(2, hi=20.0, img=30.0).to(BF16)
    impls = ("cpp", "reference", "triton")
    outs = _impls(lambda impl: fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes, impl), impls)
    outs["direct"] = _autocast(lambda: torch.ops.fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes))
    _same_dtypes(outs, [torch.uint8, torch.float32, torch.int64, torch.int64])
    scores = torch.tensor([0.9, 0.4]).to(BF16)
    outs = _impls(lambda impl: fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 30, 30, impl), impls)
    outs["direct"] = _autocast(lambda: torch.ops.fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 30,
                                                                              30))
    _same_dtypes(outs, [torch.uint8])
    maps = fine
    ri = torch.tensor([0, 1, 1])
    pts = torch.tensor([[0.5, 1.0], [7.0, 7.5], [3.25, 0.0]]).to(BF16)
    outs = _impls(lambda impl: fastops.roi_point_sample(maps, ri, pts, impl), impls)
    outs["direct"] = _autocast(lambda: torch.ops.fastops.roi_point_sample(maps, ri, pts))
    _same_dtypes(outs, [torch.float32])
    for impl in ("reference", "triton", "direct"):
        torch.testing.assert_close(outs[impl], outs["cpp"], rtol=1e-6, atol=1e-6)
