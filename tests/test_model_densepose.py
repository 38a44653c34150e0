"""DensePose R-CNN (models/densepose.py): the fastops path against the reference path (impl="reference": reference
RoIAlign and the detectron2 transcription of the chart post-processing and losses), at random initialisation.

Small images and a narrow DensePose head (64 channels, 2 convs; the default 512 x 8 is built for the state-dict
tests) keep the file fast on a 2-core CPU."""
import functools

import pytest
import torch

from model_helpers import (assert_grads_close, assert_state_dicts_equal, detection_images, detection_targets,
                           random_boxes, run_both)

import fastops
from fastops.models.densepose import (DensePoseRCNN, convert_detectron2_densepose, densepose_chart_losses,
                                      load_densepose_checkpoint)
from fastops.reference import densepose as ref

H, W = 96, 128
KW = dict(min_size=H, max_size=W, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
          rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=30, box_batch_size_per_image=32,
          box_detections_per_img=6, box_score_thresh=0.0, head_channels=64, head_convs=2)


def _build(impl="auto", seed=0, **kw):
    torch.manual_seed(seed)
    m = DensePoseRCNN(2, impl=impl, **{**KW, **kw})
    with torch.no_grad():
        m.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.01)
        m.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.001)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _build()


_images = functools.partial(detection_images, H, W)


def _target(g, k=3, J=40):
    """k boxes and J annotated DensePose points."""
    boxes = random_boxes(g, k, H, W, 0.25, 0.5, 30, 12)
    idx = torch.randint(0, k, (J,), generator=g)
    return {"boxes": boxes, "labels": torch.ones(k, dtype=torch.int64), "dp_index": idx,
            "dp_x": torch.rand(J, generator=g) * 256, "dp_y": torch.rand(J, generator=g) * 256,
            "dp_I": torch.randint(0, 25, (J,), generator=g), "dp_U": torch.rand(J, generator=g),
            "dp_V": torch.rand(J, generator=g), "dp_masks": (torch.rand(k, 32, 32, generator=g) > 0.4).long()}


_targets = functools.partial(detection_targets, _target)


def test_detect_matches_reference(model):
    imgs = _images()
    got, want = run_both(model, lambda m: m.detect(imgs))
    assert len(got) == 2
    total = 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(g["scores"], w["scores"], rtol=1e-4, atol=1e-6)
        assert torch.equal(g["labels"], w["labels"])
        assert torch.equal(g["dp_boxes_xywh"], w["dp_boxes_xywh"]) and torch.equal(g["dp_offsets"], w["dp_offsets"])
        # the maps agree to RoIAlign's float rounding; labels may only flip at near-ties of two parts
        assert (g["dp_labels"] != w["dp_labels"]).float().mean() < 1e-3
        assert (g["iuv"][0] != w["iuv"][0]).float().mean() < 1e-3
        assert g["iuv"].shape == (3, H, W) and g["iuv"].dtype == torch.uint8
        total += g["dp_labels"].numel()
    assert total > 0


def test_postprocess_op_matches_transcription_on_model_maps(model):
    """On the model's own predictor outputs: boxes partly outside the image, 1-pixel boxes, no detections."""
    imgs = _images(seed=3, n=1)
    il, _ = model.transform(imgs, None)
    with torch.no_grad():
        feats = model.backbone(il.tensors)
        boxes = torch.tensor([[-20.0, -10.0, 50.0, 60.0], [40.2, 30.7, 40.9, 31.3], [100.0, 70.0, 160.0, 120.0],
                              [10.0, 10.0, 90.0, 80.0]])
        coarse, fine, u, v = model.chart(feats, [boxes], il.image_sizes)
    scores = torch.tensor([0.3, 0.9, 0.5, 0.2])
    got = fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes)
    want = ref.chart_to_iuv(coarse, fine, u, v, boxes)
    for a, b in zip(got, want):
        if a.dtype == torch.float32:  # float rounding relative to the maps' scale (cancelling taps)
            torch.testing.assert_close(a, b, rtol=0, atol=2.5e-7 * max(u.abs().max(), v.abs().max()).item())
        else:
            assert torch.equal(a, b)
    assert got[3][1, 2:].tolist() == [1, 1]  # the 1-pixel box
    pg = fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, H, W)
    pw = ref.paste_iuv(coarse, fine, u, v, boxes, scores, H, W)
    assert torch.equal(pg[0], pw[0]) and (pg.int() - pw.int()).abs().max() <= 1
    e = fastops.densepose_chart_to_iuv(coarse[:0], fine[:0], u[:0], v[:0], boxes[:0])
    assert e[0].numel() == 0 and e[2].tolist() == [0]
    res = model.postprocess(coarse[:0], fine[:0], u[:0], v[:0], boxes[:0], scores[:0], (H, W))
    assert not res["iuv"].any()


def test_losses_and_gradients_match_reference():
    m = _build().train()
    imgs, tgts = _images(seed=4), _targets()

    def step(mm):
        mm.zero_grad()
        losses = mm.training_step(imgs, tgts, detector_losses=False)
        sum(losses.values()).backward()
        grads = {k: p.grad.clone() for k, p in mm.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in losses.items()}, grads

    (la, ga), (lr, gr) = run_both(m, step)
    assert set(la) == {"loss_densepose_U", "loss_densepose_V", "loss_densepose_I", "loss_densepose_S"}
    for k in lr:
        torch.testing.assert_close(la[k], lr[k], rtol=1e-4, atol=1e-7, msg=k)
        assert lr[k] > 0
    assert any(k.startswith("densepose_head.") for k in gr) and any(k.startswith("backbone.") for k in gr)
    assert_grads_close(ga, gr, 2e-3)


@pytest.mark.parametrize("R,P,S", [(5, 300, 28), (1, 7, 9)])
def test_chart_losses_function_matches_reference(R, P, S):
    """densepose_chart_losses directly (points anywhere in the grid, background part 0 included, several points per
    plane): losses and the gradients of all four maps equal to the transcription's."""
    g = torch.Generator().manual_seed(R * 1000 + P)
    maps = [torch.randn(R, c, S, S, generator=g, dtype=torch.float64) for c in (2, 25, 25, 25)]
    ri = torch.randint(0, R, (P,), generator=g)
    pts = torch.rand(P, 2, generator=g, dtype=torch.float64) * S
    part = torch.randint(0, 25, (P,), generator=g)
    part[:3] = 0
    ug, vg = torch.rand(P, generator=g, dtype=torch.float64), torch.rand(P, generator=g, dtype=torch.float64)
    cgt = torch.randint(0, 2, (R, S, S), generator=g)
    out = {}
    for impl in ("auto", "reference"):
        leaves = [m.clone().requires_grad_(True) for m in maps]
        losses = densepose_chart_losses(*leaves, ri, pts, part, ug, vg, cgt, impl=impl)
        grads = torch.autograd.grad(sum(losses.values()), leaves)
        out[impl] = ({k: v.detach() for k, v in losses.items()}, grads)
    (la, ga), (lr, gr) = out["auto"], out["reference"]
    assert set(la) == set(lr)
    for k in lr:
        torch.testing.assert_close(la[k], lr[k], rtol=1e-12, atol=1e-14, msg=k)
    for a, b in zip(ga, gr):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_full_training_step_runs():
    m = _build().train()
    losses = m(_images(seed=5), _targets(seed=6))
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_densepose_I"} <= set(losses)
    sum(losses.values()).backward()


def test_compile_fullgraph_postprocess(model):
    imgs = _images(seed=7, n=1)
    il, _ = model.transform(imgs, None)
    with torch.no_grad():
        feats = model.backbone(il.tensors)
        boxes = torch.tensor([[5.0, 6.0, 50.0, 70.0], [30.0, 20.0, 120.0, 90.0]])
        maps = model.chart(feats, [boxes], il.image_sizes)
    scores = torch.tensor([0.4, 0.6])
    post = torch.compile(model.postprocess, fullgraph=True, backend="aot_eager")
    got = post(*maps, boxes, scores, (H, W))
    want = model.postprocess(*maps, boxes, scores, (H, W))
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_state_dict_round_trip_and_detectron2_mapping(tmp_path):
    torch.manual_seed(0)
    a = DensePoseRCNN(2, min_size=H, max_size=W)  # detectron2's head: 512 channels, 8 convs
    names = [k for k in a.state_dict() if k.startswith("densepose_")]
    assert "densepose_head.body_conv_fcn8.weight" in names
    assert a.state_dict()["densepose_head.body_conv_fcn1.weight"].shape == (512, 256, 3, 3)
    assert {"densepose_predictor.ann_index_lowres.weight", "densepose_predictor.index_uv_lowres.weight",
            "densepose_predictor.u_lowres.weight", "densepose_predictor.v_lowres.bias"} <= set(names)
    assert a.state_dict()["densepose_predictor.index_uv_lowres.weight"].shape == (512, 25, 4, 4)
    path = tmp_path / "dp.pth"
    torch.save({"model": a.state_dict()}, path)
    torch.manual_seed(1)
    b = DensePoseRCNN(2, min_size=H, max_size=W, impl="reference")
    load_densepose_checkpoint(b, str(path))
    assert_state_dicts_equal(b, a)
    # detectron2 naming of the DensePose branch
    d2 = {"roi_heads.densepose_head." + k[len("densepose_head."):]: t for k, t in a.state_dict().items()
          if k.startswith("densepose_head.")}
    d2.update({"roi_heads.densepose_predictor." + k[len("densepose_predictor."):]: t
               for k, t in a.state_dict().items() if k.startswith("densepose_predictor.")})
    d2["backbone.bottom_up.res2.0.conv1.weight"] = torch.zeros(1)
    conv = convert_detectron2_densepose(d2)
    assert set(conv) == set(names)
    torch.manual_seed(2)
    c = DensePoseRCNN(2, min_size=H, max_size=W)
    p2 = tmp_path / "d2.pth"
    torch.save({"model": d2}, p2)
    missing, unexpected = load_densepose_checkpoint(c, str(p2), strict=False, detectron2=True)
    assert not unexpected and not any(k.startswith("densepose_") for k in missing)
    for k in names:
        assert torch.equal(c.state_dict()[k], a.state_dict()[k]), k
