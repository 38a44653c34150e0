"""fastops.patch_torchvision(): torchvision detection models give the same results with fastops' kernels."""
import pytest
import torch
import torchvision
from torchvision.models.detection import maskrcnn_resnet50_fpn

import fastops


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
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-3)


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
