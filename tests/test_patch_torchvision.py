"""fastops.patch_torchvision(): torchvision detection models give the same results with fastops' kernels."""
import re

import pytest
import torch
import torchvision
from torchvision.models.detection import maskrcnn_resnet50_fpn, roi_heads

import fastops
import fastops.patch


def _model(**kw):
    torch.manual_seed(0)
    # box_score_thresh=0: a randomly initialised head scores ~1/num_classes, so keep every detection.
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, min_size=256, max_size=320,
                                 box_score_thresh=0.0, box_detections_per_img=30, rpn_pre_nms_top_n_test=300,
                                 rpn_post_nms_top_n_test=100, **kw)


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 240, 300, generator=g), torch.rand(3, 256, 256, generator=g)]


def test_context_manager_swaps_and_restores():
    originals = (torchvision.ops.roi_align, torchvision.ops.poolers._multiscale_roi_align,
                 torchvision.ops.boxes.batched_nms, torchvision.models.detection.roi_heads.paste_masks_in_image)
    with fastops.patch_torchvision():
        assert torchvision.ops.roi_align is fastops.roi_align
        assert torchvision.ops.poolers._multiscale_roi_align is not originals[1]
        assert fastops.is_patched()
    assert (torchvision.ops.roi_align, torchvision.ops.poolers._multiscale_roi_align,
            torchvision.ops.boxes.batched_nms,
            torchvision.models.detection.roi_heads.paste_masks_in_image) == originals
    assert not fastops.is_patched()


def test_function_form_and_unpatch():
    original = torchvision.ops.roi_align
    fastops.patch_torchvision()
    try:
        assert torchvision.ops.roi_align is fastops.roi_align
    finally:
        fastops.unpatch_torchvision()
    assert torchvision.ops.roi_align is original


def _state():
    import importlib

    return [getattr(importlib.import_module(m), a) for m, a, _ in fastops.patch._replacements()]


def test_with_block_inside_a_call_leaves_the_patch_applied():
    originals = _state()
    fastops.patch_torchvision()
    try:
        patched = _state()
        with fastops.patch_torchvision():
            assert _state() == patched
        assert fastops.is_patched()
        assert _state() == patched
        assert torchvision.ops.roi_align is fastops.roi_align
    finally:
        fastops.unpatch_torchvision()
    assert not fastops.is_patched()
    assert _state() == originals


def test_nested_with_blocks_restore_the_outer_state():
    originals = _state()
    with fastops.patch_torchvision():
        patched = _state()
        with fastops.patch_torchvision():
            pass
        assert fastops.is_patched() and _state() == patched
        with fastops.patch_torchvision():
            fastops.unpatch_torchvision()  # an explicit unpatch inside: the block's exit restores what it found
            assert not fastops.is_patched()
        assert _state() == patched
    assert _state() == originals and not fastops.is_patched()


def test_docstring_lists_every_swapped_name():
    doc = re.sub(r"\s+", " ", fastops.patch.__doc__)
    for module, attr, replacement in fastops.patch._replacements():
        assert f"``{module}.{attr}``" in doc, (module, attr)
    with fastops.patch_torchvision():
        assert all(v is r for v, (_, _, r) in zip(_state(), fastops.patch._replacements()))


def _fastops_ops_run(fn):
    """Names of the fastops:: ops that ran during fn() (torch.profiler records every dispatcher op call)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, {e.name for e in prof.events() if e.name.startswith("fastops::")}


def test_mask_targets_of_training_use_fastops_roi_align():
    g = torch.Generator().manual_seed(0)
    gt_masks = (torch.rand(3, 60, 80, generator=g) > 0.5).to(torch.uint8)
    proposals = torch.tensor([[5.0, 4.0, 50.0, 40.0], [0.0, 0.0, 79.0, 59.0], [30.0, 10.0, 70.0, 55.0],
                              [10.0, 20.0, 30.0, 58.0]])
    matched = torch.tensor([0, 2, 1, 2])
    expected = roi_heads.project_masks_on_boxes(gt_masks, proposals, matched, 28)
    with fastops.patch_torchvision():
        assert roi_heads.roi_align is fastops.roi_align
        actual, ran = _fastops_ops_run(lambda: roi_heads.project_masks_on_boxes(gt_masks, proposals, matched, 28))
    assert "fastops::roi_align" in ran
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_maskrcnn_inference_matches():
    model = _model().eval()
    images = _images()
    expected = model(images)
    with fastops.patch_torchvision():
        actual = model(images)
    for e, a in zip(expected, actual):
        assert len(a["boxes"]) > 0
        assert torch.equal(a["labels"], e["labels"])
        torch.testing.assert_close(a["boxes"], e["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a["scores"], e["scores"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a["masks"], e["masks"], atol=2e-3, rtol=1e-3)


def test_maskrcnn_training_step_matches():
    model = _model().train()
    images = _images()
    targets = []
    for img in images:
        h, w = img.shape[-2:]
        boxes = torch.tensor([[10.0, 20.0, 120.0, 150.0], [50.0, 40.0, 200.0, 230.0]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 20:150, 10:120] = 1
        masks[1, 40:230, 50:200] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks})

    def losses():
        torch.manual_seed(123)  # the RPN / RoI samplers draw random subsets
        model.zero_grad()
        out = model(images, targets)
        sum(out.values()).backward()
        grads = [p.grad.clone() for p in model.roi_heads.parameters() if p.grad is not None]
        return {k: v.detach() for k, v in out.items()}, grads

    expected, expected_grads = losses()
    with fastops.patch_torchvision():
        actual, actual_grads = losses()
    assert expected.keys() == actual.keys()
    for k in expected:
        torch.testing.assert_close(actual[k], expected[k], atol=1e-4, rtol=1e-4)
    for a, e in zip(actual_grads, expected_grads):
        # float32 sums over ~1000 sampled RoIs whose pooled features differ in the last bits: compare on the
        # gradient's own scale.
        torch.testing.assert_close(a, e, atol=2e-3 * float(e.abs().max()), rtol=1e-3)


@pytest.mark.parametrize("featmap_names", [["0", "1", "2", "3"], ["0"]])
def test_existing_pooler_module_uses_fastops(featmap_names):
    pool = torchvision.ops.MultiScaleRoIAlign(featmap_names, 7, 2)
    g = torch.Generator().manual_seed(0)
    feats = {str(i): torch.randn(1, 4, 64 // 2 ** i, 64 // 2 ** i, generator=g) for i in range(4)}
    xy = torch.rand(12, 2, generator=g) * 200
    boxes = [torch.cat([xy, xy + torch.rand(12, 2, generator=g) * 120 + 2], 1)]
    expected = pool(feats, boxes, [(256, 256)])
    with fastops.patch_torchvision():
        actual = pool(feats, boxes, [(256, 256)])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# ---- TorchScript -----------------------------------------------------------------------------------------------

def _pooler_inputs():
    g = torch.Generator().manual_seed(0)
    feats = {str(i): torch.randn(2, 4, 64 // 2 ** i, 64 // 2 ** i, generator=g) for i in range(4)}
    boxes = []
    for _ in range(2):
        xy = torch.rand(9, 2, generator=g) * 200
        boxes.append(torch.cat([xy, xy + torch.rand(9, 2, generator=g) * 150 + 2], 1))
    return feats, boxes, [(256, 256), (250, 240)]


def _save_load(scripted, tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path))
    return torch.jit.load(str(path))


@pytest.mark.parametrize("featmap_names,op", [(["0", "1", "2", "3"], "fastops::multi_scale_roi_align"),
                                              (["0"], "fastops::roi_align")])
def test_scripted_pooler_after_patch_runs_fastops(tmp_path, featmap_names, op):
    feats, boxes, shapes = _pooler_inputs()
    pool = torchvision.ops.MultiScaleRoIAlign(featmap_names, 7, 2)
    expected = pool(feats, boxes, shapes)
    with fastops.patch_torchvision():
        scripted = torch.jit.script(pool)
    loaded = _save_load(scripted, tmp_path)
    for m in (scripted, loaded):
        assert op in str(m.inlined_graph) and "torchvision::roi_align" not in str(m.inlined_graph)
        actual, ran = _fastops_ops_run(lambda: m(feats, boxes, shapes))
        assert op in ran
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_module_scripted_before_the_patch_is_warned_about_and_rescripting_picks_fastops_up():
    feats, boxes, shapes = _pooler_inputs()
    pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    before = torch.jit.script(pool)
    assert "torchvision::roi_align" in str(before.inlined_graph)
    with pytest.warns(UserWarning, match="already compiled torchvision"):
        patch = fastops.patch_torchvision()
    with patch:
        after = torch.jit.script(pool)
    assert "fastops::multi_scale_roi_align" in str(after.inlined_graph)
    assert "fastops::" not in str(before.inlined_graph)  # compiled graphs are frozen: hence the warning
    # Unpatching clears the caches too: a new script runs torchvision's kernel again.
    again = torch.jit.script(pool)
    assert "fastops::" not in str(again.inlined_graph) and "torchvision::roi_align" in str(again.inlined_graph)
    torch.testing.assert_close(after(feats, boxes, shapes), again(feats, boxes, shapes), atol=1e-5, rtol=1e-5)


def test_patching_without_compiled_torchvision_code_does_not_warn():
    fastops.patch._clear_torchvision_jit_caches()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fastops.patch_torchvision():
            pass


def test_scripted_paste_masks_replacement_matches_torchvision():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(5, 1, 28, 28, generator=g)
    xy = torch.rand(5, 2, generator=g) * 90
    boxes = torch.cat([xy, xy + torch.rand(5, 2, generator=g) * 60 + 1], 1)
    expected = roi_heads.paste_masks_in_image(masks, boxes, (120, 110))
    scripted = torch.jit.script(fastops.patch._paste_masks_in_image)
    assert "fastops::paste_masks" in str(scripted.graph)
    torch.testing.assert_close(scripted(masks, boxes, (120, 110), 1), expected, atol=2e-3, rtol=1e-3)


@torch.no_grad()
def test_scripted_patched_maskrcnn_saves_loads_and_runs_fastops(tmp_path):
    model = _model().eval()
    images = _images()
    plain = model(images)  # torchvision's kernels
    with fastops.patch_torchvision():
        expected = model(images)
        scripted = torch.jit.script(model)
    loaded = _save_load(scripted, tmp_path)
    graph = str(loaded.inlined_graph)
    for op in ("fastops::multi_scale_roi_align", "fastops::batched_nms", "fastops::paste_masks"):
        assert op in graph, op
    assert "torchvision::roi_align" not in graph and "torchvision::nms" not in graph
    (_, actual), ran = _fastops_ops_run(lambda: loaded(images))
    assert {"fastops::multi_scale_roi_align", "fastops::paste_masks"} <= ran
    assert any(name.startswith("fastops::batched_nms") or name.startswith("fastops::nms") for name in ran)
    for e, a in zip(expected, actual):
        assert torch.equal(a["labels"], e["labels"])
        torch.testing.assert_close(a["boxes"], e["boxes"])
        torch.testing.assert_close(a["masks"], e["masks"])
    for p, a in zip(plain, actual):  # and torchvision's outputs (tolerances of test_maskrcnn_inference_matches)
        assert len(a["boxes"]) > 0 and torch.equal(a["labels"], p["labels"])
        torch.testing.assert_close(a["boxes"], p["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a["scores"], p["scores"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a["masks"], p["masks"], atol=2e-3, rtol=1e-3)


# ---- autocast (issue 12: a patched Mask R-CNN under autocast gives plain torchvision's detections) -------------

def test_batched_nms_under_autocast_follows_torchvisions_float32_rule():
    """torchvision's nms autocast rule computes in float32; its batched_nms (coordinate trick) first adds the
    class offsets to the boxes in the boxes' dtype. In bfloat16 that sum is rounded (spacing 2 px between 256 and
    512): here box 1 (x0 = 6.75, IoU 0.495 with box 0) becomes x0 = 6 (IoU 0.538) and torchvision's bfloat16
    run suppresses it, which its own float32 run does not. fastops computes in float32 from the bfloat16 values
    (the offsets are exact there): torchvision's float32 answer. The model test below uses inputs that this
    rounding does not touch."""
    b = torch.tensor([[0.0, 0, 20, 20], [6.75, 0, 26.75, 20], [80, 80, 100, 100]]).bfloat16()
    s = torch.tensor([0.9, 0.8, 0.7]).bfloat16()
    idx = torch.tensor([4, 4, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tv_bf16 = torchvision.ops.batched_nms(b, s, idx, 0.5)
        got = fastops.batched_nms(b, s, idx, 0.5)
        with fastops.patch_torchvision():
            patched = torchvision.ops.batched_nms(b, s, idx, 0.5)
    want = torchvision.ops.batched_nms(b.float(), s.float(), idx, 0.5)
    assert want.tolist() == [0, 1, 2] and tv_bf16.tolist() == [0, 2]
    assert torch.equal(got, want) and torch.equal(patched, want)


@torch.no_grad()
def test_maskrcnn_under_autocast_matches_torchvision_under_autocast():
    """maskrcnn_resnet50_fpn(weights=None, weights_backbone=None) in eval under torch.autocast("cpu", bfloat16),
    patched vs plain. Small images and 3 detections per image: bfloat16 convolutions on a CPU without native
    bf16 run ATen's slow reference convolution (the mask head dominates: ~10 s per run here).

    Exact: the number of detections, the labels, the result dtypes (bfloat16, as torchvision's). Tolerances, and
    why: both sides pool (RoIAlign) and suppress (NMS) in float32 and round the pooled features to bfloat16
    (torchvision's autocast rule); fastops' float32 sums run in another order, so about 1 in 4,000 pooled values
    rounds to the neighbouring bfloat16 (a relative step of 2**-8). The bfloat16 heads carry that on: boxes within
    0.5 px (coordinates < 64 px: two bfloat16 steps), scores within 2**-7 (two steps below 1), and mask
    probabilities within 0.05 (a 4-conv bfloat16 mask head with random weights, logits up to ~460: 0.023 measured)
    with the thresholded masks (> 0.5) identical. Measured on this input: boxes and labels bitwise equal, scores
    <= 2**-8 apart. Seed 2 is an input where torchvision's own bfloat16 batched_nms rounding (the test above)
    changes nothing: with seed 1 the RPN of the second image keeps other proposals in torchvision's run."""
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, min_size=64, max_size=64,
                                  box_score_thresh=0.0, box_detections_per_img=3, rpn_pre_nms_top_n_test=300,
                                  rpn_post_nms_top_n_test=100).eval()
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 48, 64, generator=g)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(images)
        with fastops.patch_torchvision():
            actual, ran = _fastops_ops_run(lambda: model(images))
    assert {"fastops::multi_scale_roi_align", "fastops::paste_masks"} <= ran
    assert any(name.startswith("fastops::batched_nms") for name in ran)
    for e, a in zip(expected, actual):
        assert len(a["boxes"]) == len(e["boxes"]) == 3
        assert torch.equal(a["labels"], e["labels"])
        for k in ("boxes", "scores", "masks"):
            assert a[k].dtype == e[k].dtype == torch.bfloat16, k
        torch.testing.assert_close(a["boxes"].float(), e["boxes"].float(), atol=0.5, rtol=0)
        torch.testing.assert_close(a["scores"].float(), e["scores"].float(), atol=2 ** -7, rtol=0)
        torch.testing.assert_close(a["masks"].float(), e["masks"].float(), atol=0.05, rtol=0)
        assert torch.equal(a["masks"] > 0.5, e["masks"] > 0.5)
