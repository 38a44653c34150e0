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
