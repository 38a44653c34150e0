"""YOLACT / YolactEdge (models/yolact.py): the fastops path against the reference-op path (impl="reference").

Small inputs (160x160, prototypes 40x40) and 9 classes keep the file fast on a 2-core CPU; with random
initialisation every prior scores about 1/9 per class, so Fast NMS has plenty to do.
"""
import math
from itertools import product

import pytest
import torch

from model_helpers import assert_grads_close, reload_from_file

import fastops
from fastops.models.yolact import (Yolact, YolactEdge, decode_boxes, encode_boxes, load_yolact_checkpoint,
                                   make_priors, point_form)

SIZE = 160
NUM_CLASSES = 9


def _tame(m):
    """Random-init ResNet features are large (C5 std ~30 with untrained BN statistics), which saturates the
    softmax (every score 1.0: all ties) and the tanh; scale the head's output convs so that the scores, boxes and
    coefficients spread like a trained model's."""
    with torch.no_grad():
        head = m.prediction_layers[0]
        head.conf_layer.weight.mul_(0.05)
        head.bbox_layer.weight.mul_(0.01)
        head.mask_layer.weight.mul_(0.02)
    return m


def _build(cls=Yolact, impl="auto", seed=0, **kw):
    torch.manual_seed(seed)
    return _tame(cls(NUM_CLASSES, SIZE, impl=impl, **kw)).eval()


def _pair(cls=Yolact, **kw):
    """(fastops model, reference model) with identical weights."""
    a = _build(cls, "auto", **kw)
    b = _build(cls, "reference", seed=1, **kw)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.fixture(scope="module")
def yolact_pair():
    return _pair()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _targets(n_img=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n_img):
        n = 3 + k
        ctr = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.15
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1).clamp(0, 1)
        masks = torch.zeros(n, SIZE, SIZE)
        for i, (x1, y1, x2, y2) in enumerate((boxes * SIZE).tolist()):
            # an ellipse inside the box
            yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            masks[i] = ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1).float()
        out.append({"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES - 1, (n,), generator=g), "masks": masks})
    return out


def _assert_grads_close(got, want, rtol=1e-3):
    assert_grads_close(got, want, rtol)


def _assert_dets_equal(got, want, max_mask_mismatch=1e-3, rtol=None, atol=None):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g["labels"], w["labels"])
        torch.testing.assert_close(g["scores"], w["scores"], rtol=rtol, atol=atol)
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=rtol, atol=atol)
        assert g["masks"].shape == w["masks"].shape and g["masks"].dtype == torch.bool
        # thresholded masks: only pixels within summation-order rounding of 0.5 may differ
        diff = (g["masks"] != w["masks"]).float().mean().item() if g["masks"].numel() else 0.0
        assert diff <= max_mask_mismatch, diff


# ---- building blocks -------------------------------------------------------------------------------------------

def _priors_loop(conv_h, conv_w, scale, ars, max_size):
    """dbolya/yolact PredictionModule.make_priors (use_pixel_scales, square anchors), as written there."""
    data = []
    for j, i in product(range(conv_h), range(conv_w)):
        x = (i + 0.5) / conv_w
        y = (j + 0.5) / conv_h
        for ar in ars:
            ar = math.sqrt(ar)
            w = scale * ar / max_size
            h = w
            data += [x, y, w, h]
    return torch.Tensor(data).view(-1, 4)


def test_priors_match_yolact():
    for (h, w), s in zip([(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)], [24, 48, 96, 192, 384]):
        torch.testing.assert_close(make_priors(h, w, s, (1, 0.5, 2), 550), _priors_loop(h, w, s, (1, 0.5, 2), 550),
                                   rtol=0, atol=0)
    m = Yolact(81, 550).eval()
    with torch.no_grad():
        out = m.heads(torch.zeros(1, 3, 550, 550))
    assert out["priors"].shape == (19248, 4)
    assert out["proto"].shape == (1, 138, 138, 32)
    assert out["loc"].shape == (1, 19248, 4) and out["conf"].shape == (1, 19248, 81)
    assert out["mask"].shape == (1, 19248, 32)
    assert out["mask"].abs().max() <= 1  # tanh coefficients


def test_box_coding_roundtrip():
    pri = make_priors(5, 5, 96, (1, 0.5, 2), 160, square_anchors=False)
    gt = point_form(pri) * 0.9 + 0.03
    torch.testing.assert_close(decode_boxes(encode_boxes(gt, pri), pri), gt, rtol=1e-5, atol=1e-6)


def test_dbolya_parameter_names(yolact_pair):
    keys = set(yolact_pair[0].state_dict())
    for k in ["backbone.conv1.weight", "backbone.bn1.running_mean", "backbone.layers.0.0.conv1.weight",
              "backbone.layers.3.2.bn3.weight", "backbone.layers.1.0.downsample.0.weight",
              "fpn.lat_layers.0.weight", "fpn.pred_layers.2.bias", "fpn.downsample_layers.1.weight",
              "proto_net.0.weight", "proto_net.2.weight", "proto_net.4.weight", "proto_net.8.weight",
              "proto_net.10.weight", "prediction_layers.0.upfeature.0.weight", "prediction_layers.0.bbox_layer.weight",
              "prediction_layers.0.conf_layer.weight", "prediction_layers.0.mask_layer.bias",
              "semantic_seg_conv.weight"]:
        assert k in keys, k
    assert yolact_pair[0].state_dict()["fpn.lat_layers.0.weight"].shape[1] == 2048  # deepest first, as YOLACT
    assert not any(k.startswith("prediction_layers.1") for k in keys)  # one shared head


# ---- the model: fastops against the reference ops -------------------------------------------------------------

def test_inference_matches_reference(yolact_pair, images):
    fast, ref = yolact_pair
    with torch.no_grad():
        got, want = fast(images), ref(images)
    assert all(d["labels"].numel() > 10 for d in want)
    assert all(d["scores"].max() < 0.99 and d["masks"].any() for d in want)
    _assert_dets_equal(got, want)


def test_postprocess_matches_reference_at_image_size(yolact_pair, images):
    fast, ref = yolact_pair
    with torch.no_grad():
        heads = fast.heads(images[:1])
        got, want = fast.postprocess(heads, (120, 200)), ref.postprocess(heads, (120, 200))
    assert got[0]["masks"].shape[1:] == (120, 200)
    _assert_dets_equal(got, want)


def test_training_step_matches_reference():
    fast, ref = _pair()
    fast.train()
    ref.train()
    imgs = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    targets = _targets()
    losses = {}
    grads = {}
    for name, m in (("fast", fast), ("ref", ref)):
        torch.manual_seed(7)
        ld = m(imgs, targets)
        total = sum(ld.values())
        total.backward()
        losses[name] = {k: v.detach() for k, v in ld.items()}
        grads[name] = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    assert set(losses["fast"]) == {"B", "C", "M", "S"}
    assert losses["fast"]["M"] > 0
    for k in losses["ref"]:
        torch.testing.assert_close(losses["fast"][k], losses["ref"][k], rtol=1e-5, atol=1e-6)
    assert set(grads["fast"]) == set(grads["ref"]) and "proto_net.10.weight" in grads["fast"]
    assert "backbone.bn1.weight" not in grads["fast"]  # frozen BN, as YOLACT trains
    _assert_grads_close(grads["fast"], grads["ref"])


def test_mask_loss_gradients_match_reference_float64():
    """The mask loss alone in float64: fastops.yolact_mask_loss's backward against the reference autograd."""
    fast, ref = _pair()
    fast.double().train()
    ref.double().train()
    imgs = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    targets = _targets(1)
    with torch.no_grad():
        heads = fast.heads(imgs)
    out = {}
    for name, m in (("fast", fast), ("ref", ref)):
        h = {k: v.detach().clone().requires_grad_(k in ("proto", "mask")) for k, v in heads.items()}
        loss = m.loss(h, targets)["M"]
        loss.backward()
        out[name] = (loss.detach(), h["proto"].grad, h["mask"].grad)
    for a, b in zip(out["fast"], out["ref"]):
        # rtol: where |logit| > ~27.6 PyTorch's BCE backward (the reference) divides by max(p(1-p), 1e-12)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-10)


def test_compile_postprocess(yolact_pair, images):
    """The whole postprocess (Fast NMS with its data-dependent detection count, then the masks) compiles as one
    graph (fullgraph=True) and gives the eager detections; the eager path is itself checked against the
    reference-op model elsewhere, and here also directly."""
    fast, ref = yolact_pair
    with torch.no_grad():
        heads = fast.heads(images)
        want = fast.postprocess(heads, (SIZE, SIZE))
        torch._dynamo.reset()
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True):
            compiled = torch.compile(fast.postprocess, fullgraph=True, dynamic=False, backend="aot_eager")
            got = compiled(heads, (SIZE, SIZE))
        _assert_dets_equal(got, ref.postprocess(heads, (SIZE, SIZE)))
    _assert_dets_equal(got, want, max_mask_mismatch=0)


def test_state_dict_roundtrip(yolact_pair, images, tmp_path):
    fast, _ = yolact_pair
    other = reload_from_file(fast, _build(seed=5), load_yolact_checkpoint, tmp_path / "yolact.pth")
    with torch.no_grad():
        _assert_dets_equal(other(images[:1]), fast(images[:1]), max_mask_mismatch=0)


def test_load_old_checkpoint_layout(yolact_pair, tmp_path):
    """dbolya's checkpoints predate num_batches_tracked and may carry old backbone.layerN keys."""
    fast, _ = yolact_pair
    sd = {k: v for k, v in fast.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["backbone.layer1.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    other = _build(seed=6)
    load_yolact_checkpoint(other, str(path))
    torch.testing.assert_close(other.state_dict()["proto_net.10.weight"], fast.state_dict()["proto_net.10.weight"])


# ---- YolactEdge ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def edge_pair():
    return _pair(YolactEdge)


def test_yolact_edge_video_matches_reference(edge_pair):
    fast, ref = edge_pair
    g = torch.Generator().manual_seed(8)
    frames = [torch.randn(1, 3, SIZE, SIZE, generator=g)]
    frames.append(frames[0] + 0.1 * torch.randn(1, 3, SIZE, SIZE, generator=g))
    with torch.no_grad():
        got = fast.video(frames, keyframe_interval=2)
        want = ref.video(frames, keyframe_interval=2)
        key_on_second = fast(frames[1])
    for a, b in zip(got, want):
        assert b[0]["labels"].numel() > 0
        # the reference warp (YolactEdge's grid_sample recipe) rounds the sample positions through the normalised
        # grid (~1e-6 relative in fp32); the decoded boxes carry that through exp()
        _assert_dets_equal(a, b, rtol=2e-4, atol=1e-3)
    # the non-keyframe really went through the flow path (a keyframe pass of the same frame differs)
    assert not torch.equal(got[1][0]["scores"], key_on_second[0]["scores"])


def test_yolact_edge_flow_training_matches_reference(edge_pair):
    """Gradients through the warped non-keyframe features (flow net, scale/bias) match the reference path."""
    fast, ref = edge_pair
    g = torch.Generator().manual_seed(9)
    key = torch.randn(1, 3, SIZE, SIZE, generator=g)
    cur = key + 0.1 * torch.randn(1, 3, SIZE, SIZE, generator=g)
    res = {}
    for name, m in (("fast", fast), ("ref", ref)):
        m.train()
        m.zero_grad()
        with torch.no_grad():
            _, state = m.forward_frame(key)
        out, _ = m.forward_frame(cur, state)
        loss = out["loc"].square().mean() + out["conf"].logsumexp(-1).mean() + out["proto"].mean()
        loss.backward()
        res[name] = (loss.detach(), {k: p.grad.clone() for k, p in m.flow_net.named_parameters()
                                      if p.grad is not None})
        m.eval()
    torch.testing.assert_close(res["fast"][0], res["ref"][0], rtol=1e-5, atol=1e-6)
    assert res["fast"][1]["pred2.conv.weight"].abs().sum() > 0
    _assert_grads_close(res["fast"][1], res["ref"][1])


def test_yolact_edge_state_dict_names(edge_pair, tmp_path):
    fast, _ = edge_pair
    sd = fast.state_dict()
    assert "flow_net.pred3.scale.bias" in sd and "flow_net_pre_convs.convs.0.0.weight" in sd
    # a YolactEdge-style checkpoint (fpn_phase_1 / fpn_phase_2) loads
    edge_sd = {}
    for k, v in sd.items():
        if k.startswith("fpn.lat_layers"):
            k = k.replace("fpn.", "fpn_phase_1.")
        elif k.startswith("fpn."):
            k = k.replace("fpn.", "fpn_phase_2.")
        edge_sd[k] = v
    path = tmp_path / "edge.pth"
    torch.save(edge_sd, path)
    other = _build(YolactEdge, seed=11)
    load_yolact_checkpoint(other, str(path))
    for k, v in sd.items():
        torch.testing.assert_close(other.state_dict()[k], v, rtol=0, atol=0)


def test_impl_argument_checked():
    with pytest.raises(ValueError, match="impl"):
        Yolact(NUM_CLASSES, SIZE, impl="fast")
    assert fastops.models.yolact.Yolact is Yolact
