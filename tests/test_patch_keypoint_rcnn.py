"""fastops.patch_torchvision() on torchvision's Keypoint R-CNN: same keypoints and scores in inference, same losses
and gradients in training, and a scripted patched model runs fastops::roi_heatmaps_to_keypoints."""
import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn, roi_heads

import fastops
import fastops.patch


def _model():
    torch.manual_seed(0)
    # box_score_thresh=0: a randomly initialised head scores ~1/num_classes, so keep every detection.
    return keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=256, max_size=320,
                                     box_score_thresh=0.0, box_detections_per_img=20, rpn_pre_nms_top_n_test=300,
                                     rpn_post_nms_top_n_test=100)


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 240, 300, generator=g), torch.rand(3, 256, 256, generator=g)]


def _boost_keypoint_head(model):
    # random keypoint logits are nearly flat: scale the predictor so the maps have real peaks
    with torch.no_grad():
        for p in model.roi_heads.keypoint_predictor.parameters():
            p.mul_(20)
    return model


@torch.no_grad()
def test_heatmaps_to_keypoints_swap_alone_is_exact(monkeypatch):
    model = _boost_keypoint_head(_model()).eval()
    images = _images()
    expected = model(images)
    monkeypatch.setattr(roi_heads, "heatmaps_to_keypoints", fastops.patch._heatmaps_to_keypoints)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        actual = model(images)
    assert "fastops::roi_heatmaps_to_keypoints" in {e.name for e in prof.events()}
    for e, a in zip(expected, actual):
        assert len(a["boxes"]) > 0
        assert torch.equal(a["boxes"], e["boxes"])
        assert torch.equal(a["keypoints"], e["keypoints"])
        assert torch.equal(a["keypoints_scores"], e["keypoints_scores"])


@torch.no_grad()
def test_patched_model_inference_matches():
    model = _boost_keypoint_head(_model()).eval()
    images = _images()
    expected = model(images)
    with fastops.patch_torchvision():
        assert roi_heads.heatmaps_to_keypoints is fastops.patch._heatmaps_to_keypoints
        actual = model(images)
    assert roi_heads.heatmaps_to_keypoints is not fastops.patch._heatmaps_to_keypoints
    for e, a in zip(expected, actual):
        assert len(a["boxes"]) > 0
        assert torch.equal(a["labels"], e["labels"])
        torch.testing.assert_close(a["boxes"], e["boxes"], atol=1e-3, rtol=1e-4)
        # the patched RoIAlign / NMS differ from torchvision's in the last bits only: the upsampled maps' maxima
        # stay at the same pixels
        torch.testing.assert_close(a["keypoints"], e["keypoints"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a["keypoints_scores"], e["keypoints_scores"], atol=1e-3, rtol=1e-4)


@pytest.fixture
def fresh_jit_types():
    """Scripting this model under the patch registers torchvision's module classes (ResNet's Bottleneck, ...) in
    TorchScript's process-wide type store; a later test scripting Mask R-CNN then fails with "Can't redefine method:
    forward on class Bottleneck". Forget them afterwards, so each scripting test starts from a clean store."""
    yield
    torch._C._jit_clear_class_registry()
    torch.jit._recursive.concrete_type_store = torch.jit._recursive.ConcreteTypeStore()
    torch.jit._state._clear_class_state()


@torch.no_grad()
def test_scripted_patched_model_runs_fastops(tmp_path, fresh_jit_types):
    model = _boost_keypoint_head(_model()).eval()
    images = _images()
    with fastops.patch_torchvision():
        eager = model(images)
        scripted = torch.jit.script(model)
    path = tmp_path / "kprcnn.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    for m in (scripted, loaded):
        assert "fastops::roi_heatmaps_to_keypoints" in str(m.roi_heads.inlined_graph)
        _, out = m(images)
        for e, a in zip(eager, out):
            assert torch.equal(a["keypoints"], e["keypoints"])
            assert torch.equal(a["keypoints_scores"], e["keypoints_scores"])


def _targets(images):
    targets = []
    for img in images:
        boxes = torch.tensor([[10.0, 20.0, 120.0, 150.0], [50.0, 40.0, 200.0, 230.0]])
        g = torch.Generator().manual_seed(2)
        kp = torch.rand(2, 17, 3, generator=g)
        kp[..., 0] = boxes[:, None, 0] + kp[..., 0] * (boxes[:, None, 2] - boxes[:, None, 0])
        kp[..., 1] = boxes[:, None, 1] + kp[..., 1] * (boxes[:, None, 3] - boxes[:, None, 1])
        kp[..., 2] = (kp[..., 2] > 0.2).float()
        kp[0, 3, :2] = boxes[0, 2:]  # on the box's far corner: torchvision's boundary rule
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 1]), "keypoints": kp})
    return targets


def test_patched_training_step_matches(monkeypatch):
    model = _model().train()
    images = _images()
    targets = _targets(images)

    def losses():
        torch.manual_seed(123)  # the RPN / RoI samplers draw random subsets
        model.zero_grad()
        out = model(images, targets)
        sum(out.values()).backward()
        grads = [(n, p.grad.clone()) for n, p in model.named_parameters() if p.grad is not None]
        return {k: v.detach() for k, v in out.items()}, grads

    expected, expected_grads = losses()
    assert "loss_keypoint" in expected
    # The keypoint swap alone: training (keypoints_to_heatmap + keypointrcnn_loss) is untouched, bit for bit.
    with monkeypatch.context() as m:
        m.setattr(roi_heads, "heatmaps_to_keypoints", fastops.patch._heatmaps_to_keypoints)
        actual, actual_grads = losses()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    assert all(an == en and torch.equal(a, e) for (an, a), (en, e) in zip(actual_grads, expected_grads))
    # The whole patch: RoIAlign's float32 sums differ from torchvision's in the last bits.
    with fastops.patch_torchvision():
        actual, actual_grads = losses()
    assert expected.keys() == actual.keys()
    for k in expected:
        torch.testing.assert_close(actual[k], expected[k], atol=1e-4, rtol=1e-4)
    # on the scale of the RoI heads' gradients (the keypoint predictor's bias gradients are ~1e-9: compared with
    # each tensor's own scale, last-bit differences of the pooled features look like 100 % errors)
    heads = [(a, e) for (name, a), (_, e) in zip(actual_grads, expected_grads) if name.startswith("roi_heads.")]
    scale = max(float(e.abs().max()) for _, e in heads)
    for a, e in heads:
        torch.testing.assert_close(a, e, atol=2e-3 * scale, rtol=1e-3)
