"""Stacked Hourglass: the fastops path (impl="auto") against the same model with the reference ops
(impl="reference"): eval outputs, a training step (targets, loss, gradients), torch.compile of the decoding, and a
state-dict round trip through a file."""
import copy

import pytest
import torch
from model_helpers import assert_state_dicts_equal, random_images, run_both

from fastops.models.hourglass import StackedHourglass, build_hourglass

K = 5
IMG = 64  # heatmaps 16 x 16
CFG = dict(nstack=2, inp_dim=32, oup_dim=K, depth=3)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return StackedHourglass(**{**CFG, **kw})


@pytest.fixture(scope="module")
def model():
    return _model().eval()


def _images(b=2, seed=1):
    return random_images(b, IMG, seed)


def _keypoints(b=2, n=None, seed=2):
    g = torch.Generator().manual_seed(seed)
    shape = (b, K, 2) if n is None else (b, n, K, 2)
    kp = torch.rand(shape, generator=g) * (IMG + 8) - 4  # a few just outside the image
    vis = (torch.rand(shape[:-1], generator=g) > 0.2).float()
    return kp, vis


def test_parameter_names_follow_original(model):
    keys = set(model.state_dict())
    for k in ("pre.0.conv.weight", "pre.0.bn.running_var", "pre.1.skip_layer.conv.weight", "pre.4.conv3.conv.bias",
              "hgs.0.0.up1.bn1.weight", "hgs.1.0.low2.low2.low2.conv2.conv.weight", "hgs.0.0.low3.skip_layer.conv.bias",
              "features.1.0.bn3.weight", "features.0.1.bn.weight", "outs.1.conv.weight",
              "merge_features.0.conv.conv.weight", "merge_preds.0.conv.conv.bias"):
        assert k in keys, k
    assert not any(k.startswith("merge_preds.1") for k in keys)


def test_eval_outputs_match_reference(model):
    x = _images()
    with torch.no_grad():
        preds = model(x)
    assert preds.shape == (2, 2, K, IMG // 4, IMG // 4)
    (kp, sc), (kr, sr) = run_both(model, lambda m: m.decode(preds))
    assert kp.shape == (2, K, 2) and sc.shape == (2, K)
    torch.testing.assert_close(sc, sr, rtol=0, atol=0)
    torch.testing.assert_close(kp, kr, rtol=0, atol=0)
    # one stack's maps decode the same way
    (kp1, _), (kr1, _) = run_both(model, lambda m: m.decode(preds[:, 0]))
    torch.testing.assert_close(kp1, kr1, rtol=0, atol=0)


def test_decode_on_known_heatmaps_matches_reference(model):
    # rendered targets decode back to the keypoints (within the parser's quarter pixel), on both paths
    kp, _ = _keypoints(seed=3)
    kp = kp.clamp(4, IMG - 5)
    hm, w = model.build_targets(kp, (IMG // 4, IMG // 4))
    hm = hm + 0.01 * torch.rand(hm.shape, generator=torch.Generator().manual_seed(0))
    (dk, ds), (rk, rs) = run_both(model, lambda m: m.decode(hm))
    torch.testing.assert_close(dk, rk, rtol=0, atol=0)
    torch.testing.assert_close(ds, rs, rtol=0, atol=0)
    assert (dk - kp).abs().max() <= model.stride * 0.75 + 1e-4


def test_predict_full_inference_matches_reference(model):
    x = _images(b=1, seed=4)
    (kp, sc), (kr, sr) = run_both(model, lambda m: m.predict(x))
    torch.testing.assert_close(kp, kr, rtol=0, atol=0)
    torch.testing.assert_close(sc, sr, rtol=0, atol=0)


@pytest.mark.parametrize("people", [None, 3])
def test_targets_match_reference(model, people):
    kp, vis = _keypoints(n=people, seed=5)
    (hm, w), (hr, wr) = run_both(model, lambda m: m.build_targets(kp, (IMG // 4, IMG // 4), vis))
    assert hm.shape == (2, K, IMG // 4, IMG // 4) and w.shape == (2, K)
    torch.testing.assert_close(hm, hr, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w, wr, rtol=0, atol=0)
    assert int((hm == 1).sum()) > 0 and w.sum() > 0


@pytest.mark.parametrize("with_visibility", [False, True])
def test_training_step_loss_and_grads_match_reference(with_visibility):
    base = _model(seed=6).train()
    x = _images()
    kp, vis = _keypoints(n=2, seed=7)
    res = {}
    for impl in ("auto", "reference"):
        m = copy.deepcopy(base)
        m.impl = impl
        total, per_stack = m.training_step(x, kp, vis if with_visibility else None)
        total.backward()
        # skip_layer of a Residual with equal channels is unused (as in the original): its grad stays None
        res[impl] = (total.detach(), per_stack.detach(),
                     {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    (la, pa, ga), (lr, pr, gr) = res["auto"], res["reference"]
    assert torch.isfinite(la) and la > 0 and pa.shape == (2,)
    torch.testing.assert_close(la, lr, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pa, pr, rtol=1e-5, atol=1e-7)
    assert set(ga) == set(gr) and len(ga) > 100
    assert all("skip_layer" in n for n, _ in base.named_parameters() if n not in ga)
    # the targets agree to ~1 ulp of exp (3e-8); through BatchNorm's backward that leaves differences of ~1e-6 of
    # the largest gradient (the bias before BN, whose true gradient is 0, shows it as a large relative error)
    tol = 1e-5 * max(float(g.abs().max()) for g in gr.values())
    for n in ga:
        torch.testing.assert_close(ga[n], gr[n], rtol=1e-4, atol=tol, msg=lambda s: f"{n}: {s}")
    assert ga["outs.1.conv.weight"].abs().sum() > 0 and ga["pre.0.conv.weight"].abs().sum() > 0


def test_target_weights_mask_the_loss(model):
    preds = torch.rand(2, 2, K, 16, 16)
    hm = torch.rand(2, K, 16, 16)
    w = torch.ones(2, K)
    w[:, 1] = 0
    total, _ = model.loss(preds, hm, w)
    preds2 = preds.clone()
    preds2[:, :, 1] += 5  # a keypoint with weight 0 does not count
    total2, _ = model.loss(preds2, hm, w)
    torch.testing.assert_close(total, total2)


def test_compile_decode(model):
    x = _images(b=1, seed=8)
    with torch.no_grad():
        preds = model(x)
    model.impl = "reference"
    kr, sr = model.decode(preds)
    model.impl = "auto"
    kc, sc = torch.compile(model.decode, fullgraph=True)(preds)
    torch.testing.assert_close(kc, kr, rtol=0, atol=0)
    torch.testing.assert_close(sc, sr, rtol=0, atol=0)


def test_state_dict_round_trip(model, tmp_path):
    path = tmp_path / "hourglass.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(99)
    loaded = build_hourglass(**CFG, checkpoint=path).eval()
    assert_state_dicts_equal(loaded, model)
    x = _images(b=1, seed=9)
    for got, want in zip(loaded.predict(x), model.predict(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the original's checkpoint layout: {"state_dict": Trainer(DataParallel(PoseNet)).state_dict(), ...}, NHWC input
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": {"model.module." + k: v for k, v in model.state_dict().items()},
                "optimizer": {}}, wrapped)
    other = StackedHourglass(**CFG, nhwc_input=True, impl="reference").eval()
    other.load_checkpoint(wrapped)
    for got, want in zip(other.predict(x.permute(0, 2, 3, 1)), model.predict(x)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="impl"):
        StackedHourglass(**CFG, impl="fast")
    m = StackedHourglass(**CFG)
    with pytest.raises(ValueError, match="keypoints"):
        m.build_targets(torch.zeros(2, K, 3), (16, 16))
    with pytest.raises(ValueError, match="path"):
        m.load_checkpoint("/nonexistent/hourglass.pt")
