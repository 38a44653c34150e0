"""CenterNet and the CornerNet-style corner pooling module: the fastops path (impl="auto") against the same model
with the reference ops (impl="reference"): eval outputs, a training step (targets, loss, gradients),
torch.compile of the post-processing, and a state-dict round trip through a file."""
import copy

import pytest
import torch
from helpers import needs_inductor_vec
from model_helpers import assert_state_dicts_equal, random_images, run_both

from fastops.models.centernet import CenterNet, CornerNetHead, CornerPool, build_centernet

NUM_CLASSES = 3
IMG = 64  # heads at 16 x 16


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    m = CenterNet(NUM_CLASSES, **kw)
    # random init gives an almost flat heatmap (bias -2.19, tiny weights); spread it so decoding has real peaks
    with torch.no_grad():
        for mod in m.deconv_layers:
            if isinstance(mod, torch.nn.ConvTranspose2d):
                torch.nn.init.kaiming_normal_(mod.weight)
        torch.nn.init.normal_(m.hm[2].weight, std=3.0)
        torch.nn.init.normal_(m.wh[2].weight, std=5.0)
        torch.nn.init.normal_(m.reg[2].weight, std=0.05)
    return m


@pytest.fixture(scope="module")
def model():
    return _model().eval()


def _images(b=2, seed=1):
    return random_images(b, IMG, seed)


def _boxes(b=2, n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, n, 2, generator=g) * (IMG - 8)
    wh = 2 + torch.rand(b, n, 2, generator=g) * 40
    boxes = torch.cat([xy, (xy + wh).clamp(max=IMG + 3)], dim=-1)  # some run past the image edge (clipped)
    labels = torch.randint(0, NUM_CLASSES, (b, n), generator=g)
    labels[0, -1] = -1  # padding
    labels[1, -2:] = -1
    boxes[1, 0, 2] = boxes[1, 0, 0]  # zero width: skipped like CenterNet
    return boxes, labels


def test_parameter_names_follow_msra_resnet(model):
    keys = set(model.state_dict())
    for k in ("conv1.weight", "bn1.running_mean", "layer4.1.bn2.weight", "deconv_layers.0.weight",
              "deconv_layers.1.weight", "deconv_layers.7.running_var", "hm.0.weight", "hm.2.bias", "wh.2.weight",
              "reg.2.bias"):
        assert k in keys
    assert not any(k.startswith("fc.") for k in keys)
    assert not any(k.startswith("deconv_layers.") and k.endswith(".bias") and k.split(".")[1] in "036"
                   for k in keys)  # deconvs have no bias
    fresh = CenterNet(NUM_CLASSES)
    assert torch.all(fresh.hm[2].bias == -2.19)


@pytest.mark.parametrize("k", [20, 100])
def test_eval_outputs_match_reference(model, k):
    x = _images()
    with torch.no_grad():
        out = model(x)
    dets, ref = run_both(model, lambda m: m.postprocess(out, k))
    assert dets.shape == ref.shape == (2, k, 6)
    torch.testing.assert_close(dets, ref, rtol=1e-5, atol=1e-5)
    # a real spread of scores and classes was decoded (not just ties at the prior)
    assert dets[..., 4].max() - dets[..., 4].min() > 0.05
    assert len(set(dets[..., 5].flatten().tolist())) == NUM_CLASSES


def test_detect_full_inference_matches_reference(model):
    x = _images(b=1, seed=5)
    dets, ref = run_both(model, lambda m: m.detect(x))
    assert dets.shape == (1, 100, 6)
    torch.testing.assert_close(dets, ref, rtol=1e-5, atol=1e-5)


def test_postprocess_without_reg_head():
    torch.manual_seed(3)
    m = CenterNet(NUM_CLASSES, reg_offset=False, head_conv=0).eval()
    with torch.no_grad():
        torch.nn.init.normal_(m.hm.weight, std=0.3)
        out = m(_images(b=1))
    assert "reg" not in out
    dets, ref = run_both(m, lambda mm: mm.postprocess(out, 30))
    torch.testing.assert_close(dets, ref, rtol=1e-5, atol=1e-5)


def test_targets_match_reference(model):
    boxes, labels = _boxes()
    t, r = run_both(model, lambda m: m.build_targets(boxes, labels, (IMG // 4, IMG // 4)))
    assert set(t) == set(r) == {"hm", "wh", "reg", "ind", "reg_mask"}
    for key in t:
        torch.testing.assert_close(t[key], r[key], rtol=1e-6, atol=1e-6)
    assert t["hm"].shape == (2, NUM_CLASSES, IMG // 4, IMG // 4)
    assert int((t["hm"] == 1).sum()) >= 1
    assert t["reg_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]]


@pytest.mark.parametrize("variant", ["centernet", "cornernet"])
def test_training_step_loss_and_grads_match_reference(variant):
    base = _model(seed=4, radius_variant=variant).train()
    x = _images()
    boxes, labels = _boxes(seed=7)
    results = {}
    for impl in ("auto", "reference"):
        m = copy.deepcopy(base)
        m.impl = impl
        loss, stats = m.training_step(x, boxes, labels)
        loss.backward()
        results[impl] = (loss.detach(), {k: v.detach() for k, v in stats.items()},
                         {n: p.grad.clone() for n, p in m.named_parameters()})
    (la, sa, ga), (lr, sr, gr) = results["auto"], results["reference"]
    assert torch.isfinite(la) and la > 0
    torch.testing.assert_close(la, lr, rtol=1e-5, atol=1e-6)
    for k in sa:
        torch.testing.assert_close(sa[k], sr[k], rtol=1e-5, atol=1e-6)
    assert set(ga) == set(gr)
    for n in ga:
        torch.testing.assert_close(ga[n], gr[n], rtol=1e-4, atol=1e-6, msg=lambda s: f"{n}: {s}")
    assert ga["hm.2.weight"].abs().sum() > 0 and ga["conv1.weight"].abs().sum() > 0


@needs_inductor_vec
def test_compile_postprocess(model):
    x = _images(b=1, seed=9)
    with torch.no_grad():
        out = model(x)
    model.impl = "reference"
    ref = model.postprocess(out, 50)
    model.impl = "auto"
    compiled = torch.compile(model.postprocess, fullgraph=True)
    torch.testing.assert_close(compiled(out, 50), ref, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip(model, tmp_path):
    path = tmp_path / "centernet.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(123)
    loaded = build_centernet(NUM_CLASSES, checkpoint=path).eval()
    assert_state_dicts_equal(loaded, model)
    x = _images(b=1, seed=11)
    torch.testing.assert_close(loaded.detect(x), model.detect(x), rtol=0, atol=0)
    # CenterNet's own checkpoint layout: {"epoch", "state_dict"} with DataParallel's "module." prefix
    wrapped = tmp_path / "model_last.pth"
    torch.save({"epoch": 70, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, wrapped)
    other = CenterNet(NUM_CLASSES, impl="reference").eval()
    other.load_checkpoint(wrapped)
    torch.testing.assert_close(other.detect(x), model.detect(x), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="impl"):
        CenterNet(NUM_CLASSES, impl="fast")
    m = CenterNet(NUM_CLASSES)
    with pytest.raises(ValueError, match="boxes"):
        m.build_targets(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), (16, 16))
    with pytest.raises(ValueError, match="path"):
        m.load_checkpoint("/nonexistent/centernet.pth")


# ---- CornerNet-style corner pooling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("modes", [("top", "left"), ("bottom", "right")])
def test_corner_pool_module_forward_backward_match_reference(modes):
    torch.manual_seed(0)
    base = CornerPool(16, modes, mid_dim=8).train()
    x = torch.randn(2, 16, 12, 10)
    g = torch.randn(2, 16, 12, 10)
    res = {}
    for impl in ("auto", "reference"):
        m = copy.deepcopy(base)
        m.impl = impl
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(g)
        res[impl] = (y.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()})
    torch.testing.assert_close(res["auto"][0], res["reference"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res["auto"][1], res["reference"][1], rtol=1e-4, atol=1e-6)
    for n in res["auto"][2]:
        torch.testing.assert_close(res["auto"][2][n], res["reference"][2][n], rtol=1e-4, atol=1e-6)


def test_corner_pool_ties_follow_cornernet_backward():
    # plateaus: the gradient goes to the first element met in the scan, as CornerNet's backward
    from fastops.models.centernet import corner_pool

    x = torch.tensor([[[[1.0, 3.0, 3.0, 2.0, 3.0]]]])
    g = torch.arange(1.0, 6.0).reshape(1, 1, 1, 5)
    for mode in ("left", "right"):
        grads = []
        for impl in ("auto", "reference"):
            xi = x.clone().requires_grad_(True)
            corner_pool(xi, mode, impl).backward(g)
            grads.append(xi.grad)
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_cornernet_head_matches_reference():
    torch.manual_seed(0)
    head = CornerNetHead(num_classes=2, dim=16, curr_dim=8).eval()
    head.tl_cnv.p1_conv1.conv.weight.data.normal_(std=0.5)
    x = torch.randn(1, 16, 12, 12)
    out, ref = run_both(head, lambda h: h(x))
    assert set(out) == {"tl_heat", "br_heat", "tl_tag", "br_tag", "tl_regr", "br_regr"}
    for k in out:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-6)
    assert "tl_cnv.p1_conv1.conv.weight" in head.state_dict() and "br_heat.1.bias" in head.state_dict()
