"""UPSNet-style panoptic model on torchvision's Mask R-CNN (models/panoptic.py): fastops path against the reference
path (impl="reference": torchvision's RoIAlign/NMS/paste and the UPSNet fusion transcription).

Small images (96x128) and few proposals keep the file fast on a 2-core CPU. The random-init classifier is
re-initialised with a larger spread so that detection scores are well separated (no near-ties whose order could
depend on the last bit of a RoIAlign sum).
"""
import functools

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from model_helpers import (assert_grads_close, assert_state_dicts_equal, detection_images, detection_targets,
                           random_boxes, reload_from_file)

import fastops
from fastops.models.panoptic import UPSNet, load_panoptic_checkpoint

NUM_THINGS, NUM_STUFF = 4, 3
H, W = 96, 128
KW = dict(min_size=H, max_size=W, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=60,
          rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=60, box_batch_size_per_image=48,
          box_detections_per_img=30, panoptic_score_threshold=0.0)


def _build(impl="auto", seed=0, **kw):
    torch.manual_seed(seed)
    m = UPSNet(NUM_THINGS, NUM_STUFF, impl=impl, **{**KW, **kw})
    with torch.no_grad():
        m.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.005)
        m.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.001)
        m.fcn_head.score.weight.normal_(0, 0.1)
    return m.eval()


def _pair(**kw):
    a = _build("auto", **kw)
    b = _build("reference", seed=1, **kw)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.fixture(scope="module")
def pair():
    return _pair()


_images = functools.partial(detection_images, H, W)


def _target(g, k=3):
    """k boxes inside the image, their box-shaped masks, and the semantic map they are painted into."""
    boxes = random_boxes(g, k, H, W, 0.2, 0.6, 30, 16)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H - 1)
    masks = torch.zeros(k, H, W, dtype=torch.uint8)
    sem = torch.randint(0, NUM_STUFF, (H, W), generator=g)
    labels = torch.randint(1, NUM_THINGS + 1, (k,), generator=g)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        masks[i, y1:y2, x1:x2] = 1
        sem[y1:y2, x1:x2] = NUM_STUFF + labels[i] - 1
    sem[:4] = 255
    return {"boxes": boxes, "labels": labels, "masks": masks, "semantic": sem}


_targets = functools.partial(detection_targets, _target)


def _assert_grads_close(got, want, rtol=2e-3):
    assert_grads_close(got, want, rtol)


def _assert_results_equal(got, want, max_pan_mismatch=1e-3):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g["labels"], w["labels"])
        torch.testing.assert_close(g["scores"], w["scores"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(g["masks"], w["masks"], rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(g["panoptic_instances"], w["panoptic_instances"])
        assert g["panoptic"].dtype == torch.int32 and g["panoptic"].shape == w["panoptic"].shape
        mism = (g["panoptic"] != w["panoptic"]).float().mean().item()
        assert mism <= max_pan_mismatch, mism


def test_inference_matches_reference(pair):
    fast, ref = pair
    imgs = _images()
    with torch.no_grad():
        got, want = fast(imgs), ref(imgs)
    for w in want:
        assert w["labels"].numel() >= 10
        ids = torch.unique(w["panoptic"])
        assert (ids >= NUM_STUFF).any() and (ids < NUM_STUFF).any()  # things and stuff both present
    _assert_results_equal(got, want)


def test_inference_resized_input_matches_reference(pair):
    """An image that the transform resizes: boxes, masks and the panoptic map come back at the original size."""
    fast, ref = pair
    img = torch.rand(3, 72, 90, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got, want = fast([img]), ref([img])
    assert got[0]["panoptic"].shape == (72, 90) and got[0]["masks"].shape[-2:] == (72, 90)
    _assert_results_equal(got, want)


def _heads(model, imgs):
    il, _ = model.transform(imgs)
    feats = model.features(il.tensors)
    proposals, _ = model.rpn(il, feats)
    cl, br = model.box_heads(feats, proposals, il.image_sizes)
    return il, feats, proposals, cl, br


def test_postprocess_stages_match_reference(pair):
    """From the same head outputs: detection post-processing, then mask paste + panoptic fusion."""
    fast, ref = pair
    with torch.no_grad():
        il, feats, proposals, cl, br = _heads(fast, _images(seed=3))
        sem = fast.semantic_logits(feats)
        dets = {}
        for name, m in (("fast", fast), ("ref", ref)):
            dets[name] = m.detect(cl, br, proposals, il.image_sizes)
        for a, b in zip(dets["fast"], dets["ref"]):
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
        boxes, scores, labels = dets["fast"]
        mlog = fast.mask_logits(feats, boxes, labels, il.image_sizes)
        for i in range(len(boxes)):
            args = (sem[i], mlog[i], boxes[i], labels[i], scores[i], il.image_sizes[i], (H, W))
            _assert_results_equal([fast.fuse(*args)], [ref.fuse(*args)])


def test_training_step_matches_reference():
    fast, ref = _pair()
    imgs, targets = _images(seed=4), _targets()
    res = {}
    for name, m in (("fast", fast), ("ref", ref)):
        m.train()
        torch.manual_seed(11)  # the RPN / RoI samplers draw random subsets
        losses = m(imgs, targets)
        sum(losses.values()).backward()
        res[name] = ({k: v.detach() for k, v in losses.items()},
                     {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
        m.eval()
    lf, lr = res["fast"][0], res["ref"][0]
    assert set(lf) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                       "loss_semantic"}
    for k in lr:
        torch.testing.assert_close(lf[k], lr[k], rtol=1e-4, atol=1e-6, msg=k)
    gf, gr = res["fast"][1], res["ref"][1]
    assert set(gf) == set(gr) and "fcn_head.score.weight" in gf and "roi_heads.mask_head.0.0.weight" in gf
    _assert_grads_close(gf, gr)


def test_compile_postprocess(pair):
    """detect (with batched_nms) and fuse (paste_masks + panoptic_fuse) each compile as ONE graph, and the compiled
    fastops path matches the reference model (torchvision's ops + the UPSNet transcription), not eager fastops."""
    fast, ref = pair
    with torch.no_grad(), torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True,
                                                     capture_scalar_outputs=True):
        il, feats, proposals, cl, br = _heads(fast, _images(seed=6, n=1))
        sem = fast.semantic_logits(feats)
        want = ref.detect(cl, br, proposals, il.image_sizes)
        torch._dynamo.reset()
        got = torch.compile(fast.detect, fullgraph=True, backend="aot_eager")(cl, br, proposals, il.image_sizes)
        for a, b in zip(got, want):
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
        boxes, scores, labels = want
        assert boxes[0].shape[0] >= 5
        mlog = fast.mask_logits(feats, boxes, labels, il.image_sizes)
        args = (sem[0], mlog[0], boxes[0], labels[0], scores[0], il.image_sizes[0], (H, W))
        want_f = ref.fuse(*args)
        got_f = torch.compile(fast.fuse, fullgraph=True, backend="aot_eager")(*args)
    _assert_results_equal([got_f], [want_f], max_pan_mismatch=0)


def test_state_dict_roundtrip(pair, tmp_path):
    fast, _ = pair
    other = reload_from_file(fast, _build(seed=7), load_panoptic_checkpoint, tmp_path / "upsnet.pth")
    imgs = _images(seed=8, n=1)
    with torch.no_grad():
        _assert_results_equal(other(imgs), fast(imgs), max_pan_mismatch=0)


@pytest.mark.parametrize("wrap", ("state_dict", "model", "module_prefix", "wrapped_module_prefix"))
def test_checkpoint_wrappers_load(pair, tmp_path, wrap):
    fast, _ = pair
    sd = fast.state_dict()
    if "module_prefix" in wrap:
        sd = {"module." + k: v for k, v in sd.items()}
    obj = {"state_dict": sd, "epoch": 3} if wrap == "state_dict" else \
        {"model": sd, "optimizer": {}} if wrap in ("model", "wrapped_module_prefix") else sd
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    other = _build(seed=9)
    load_panoptic_checkpoint(other, str(path))
    assert_state_dicts_equal(other, fast)


def test_torchvision_maskrcnn_checkpoint_loads(pair, tmp_path):
    fast, _ = pair
    torch.manual_seed(3)
    det = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_THINGS + 1)
    path = tmp_path / "maskrcnn.pth"
    torch.save(det.state_dict(), path)
    other = _build(seed=9)
    res = load_panoptic_checkpoint(other, str(path), strict=False)
    assert res.unexpected_keys == []
    assert all(k.startswith("fcn_head.") for k in res.missing_keys)
    torch.testing.assert_close(other.state_dict()["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                               det.state_dict()["roi_heads.mask_predictor.mask_fcn_logits.weight"])


# ---- VPSNet-style temporal mode --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def temporal_pair():
    return _pair(temporal=True)


def _frames(seed=12):
    g = torch.Generator().manual_seed(seed)
    f0 = torch.rand(3, H, W, generator=g)
    f1 = torch.roll(f0, shifts=(2, 3), dims=(1, 2)) + 0.02 * torch.rand(3, H, W, generator=g)
    return [[f0], [f1]]


def test_temporal_matches_reference(temporal_pair):
    fast, ref = temporal_pair
    frames = _frames()
    with torch.no_grad():
        got, want = fast.video(frames), ref.video(frames)
        single = fast([frames[1][0]])
    for a, b in zip(got, want):
        _assert_results_equal(a, b)
    # the second frame used the warped previous features
    assert not torch.equal(got[1][0]["scores"], single[0]["scores"])


def test_temporal_training_matches_reference():
    """In float64: the flow gradient reaches the flow net through a long chain of cancelling sums, where float32
    rounding of the two warps (exact position vs grid_sample's normalised grid) is amplified to ~1e-3."""
    fast, ref = (m.double() for m in _pair(temporal=True))
    frames, targets = _frames(seed=13), _targets(seed=14, n=1)
    frames = [[f.double() for f in fr] for fr in frames]
    targets = [{k: (v.double() if v.is_floating_point() else v) for k, v in t.items()} for t in targets]
    res = {}
    for name, m in (("fast", fast), ("ref", ref)):
        with torch.no_grad():
            _, state = m.forward_frame(frames[0])
        m.train()
        m.zero_grad()
        torch.manual_seed(15)
        losses, _ = m.forward_frame(frames[1], state, targets)
        sum(losses.values()).backward()
        res[name] = ({k: v.detach() for k, v in losses.items()},
                     {k: p.grad.clone() for k, p in m.named_parameters()
                      if p.grad is not None and k.startswith(("flow_net.", "temporal_fuse."))})
        m.eval()
    for k in res["ref"][0]:
        torch.testing.assert_close(res["fast"][0][k], res["ref"][0][k], rtol=1e-9, atol=1e-12, msg=k)
    assert "flow_net.predict_flow.weight" in res["fast"][1]
    _assert_grads_close(res["fast"][1], res["ref"][1], rtol=1e-7)


def test_reference_refuses_patched_torchvision(pair):
    _, ref = pair
    with fastops.patch_torchvision():
        with pytest.raises(RuntimeError, match="unpatch_torchvision"):
            ref(_images(n=1))


def test_impl_argument():
    with pytest.raises(ValueError, match="impl"):
        UPSNet(NUM_THINGS, NUM_STUFF, impl="fast", **KW)
    m = _build()
    m.impl = "reference"
    assert type(m.roi_heads.box_roi_pool).__module__.startswith("torchvision")
    m.impl = "auto"
    assert isinstance(m.roi_heads.box_roi_pool, fastops.MultiScaleRoIAlign)
