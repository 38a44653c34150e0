"""RetinaFace (models/retinaface.py): the fastops path against the reference path (the original's decode +
py_cpu_nms post-processing and MultiBoxLoss with its per-image match loop), the original's parameter names and
checkpoint loading.

Small inputs (160 x 160: 1,050 priors) keep the file fast; the heads' 1x1 convs are scaled down so that at random
initialisation the scores spread around 0.5 instead of saturating, and boxes stay near their priors."""
import pytest
import torch

from model_helpers import assert_state_dicts_equal, run_both

import fastops
from fastops.models.retinaface import RetinaFace, build_retinaface, prior_boxes

SIZE = 160


def _tame(m):
    with torch.no_grad():
        for h in list(m.ClassHead) + list(m.BboxHead) + list(m.LandmarkHead):
            h.conv1x1.weight.mul_(0.05)
    return m


@pytest.fixture(scope="module")
def mnet():
    torch.manual_seed(0)
    return _tame(RetinaFace("mobilenet0.25"))


def _images(b=2, seed=1, h=SIZE, w=SIZE):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _targets(ns=(4, 0, 2), seed=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in ns:
        c = torch.rand(n, 2, generator=g) * 0.8 + 0.1
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.03
        lab = torch.where(torch.rand(n, 1, generator=g) < 0.3, -1.0, 1.0)  # -1: a face without landmarks
        out.append(torch.cat([c - wh / 2, c + wh / 2, torch.rand(n, 10, generator=g), lab], 1))
    return out


def test_original_parameter_names():
    m = RetinaFace("mobilenet0.25")
    keys = set(m.state_dict())
    for k in ("body.stage1.0.0.weight", "body.stage2.5.3.weight", "body.stage3.1.4.running_var",
              "fpn.output1.0.weight", "fpn.merge2.1.num_batches_tracked", "ssh1.conv3X3.0.weight",
              "ssh3.conv7x7_3.1.bias", "ssh2.conv5X5_1.0.weight", "ClassHead.0.conv1x1.weight",
              "BboxHead.2.conv1x1.bias", "LandmarkHead.1.conv1x1.weight"):
        assert k in keys, k
    assert not any(k.startswith(("body.fc", "body.avg")) for k in keys)  # dropped by the layer getter
    r = RetinaFace("resnet50")
    rk = set(r.state_dict())
    assert {"body.conv1.weight", "body.layer1.0.conv1.weight", "body.layer4.2.bn3.running_mean",
            "fpn.output3.0.weight", "ClassHead.0.conv1x1.weight"} <= rk
    assert not any(k.startswith("body.fc") for k in rk)
    assert r.state_dict()["fpn.output1.0.weight"].shape == (256, 512, 1, 1)
    assert m.state_dict()["fpn.output1.0.weight"].shape == (64, 64, 1, 1)


def test_checkpoint_file_round_trip(tmp_path, mnet):
    # the published files are DataParallel state dicts: every key prefixed with "module."
    sd = {"module." + k: v.clone() for k, v in mnet.state_dict().items()}
    path = tmp_path / "mobilenet0.25_Final.pth"
    torch.save(sd, path)
    m = build_retinaface("mobilenet0.25", checkpoint=path)
    assert_state_dicts_equal(m, mnet)
    x = _images(1)
    mnet.eval()
    m.eval()
    for u, v in zip(m(x), mnet(x)):
        assert torch.equal(u, v)
    torch.save({"state_dict": mnet.state_dict()}, tmp_path / "wrapped.pth")
    RetinaFace("mobilenet0.25", checkpoint=tmp_path / "wrapped.pth")
    bad = dict(mnet.state_dict())
    bad["ssh1.conv7X7_3.0.weight"] = bad.pop("ssh1.conv7x7_3.0.weight")  # a misspelt original name fails
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="conv7"):
        RetinaFace("mobilenet0.25", checkpoint=tmp_path / "bad.pth")


@pytest.mark.parametrize("pad", [False, True])
def test_detect_equals_reference(mnet, pad):
    mnet.eval()
    x = _images(2, h=SIZE, w=192)
    a, r = run_both(mnet, lambda m: m.detect(x, pad=pad))
    if pad:
        assert torch.equal(a[3], r[3]) and a[3].min() > 10
        a, r = list(zip(*a[:3])), list(zip(*r[:3]))
    assert len(a) == len(r) == 2
    for da, dr in zip(a, r):
        for u, v in zip(da, dr):
            assert u.shape == v.shape
            torch.testing.assert_close(u, v, rtol=2e-6, atol=1e-4)
    if not pad:
        assert all(d[1].numel() > 10 for d in a)
        assert (a[0][1][:-1] >= a[0][1][1:]).all()  # scores descending
        s = torch.softmax(mnet(x)[1], -1)[..., 1]
        assert 0.3 < float(s.min()) and float(s.max()) < 0.7  # not saturated: the NMS has work


def test_training_step_equals_reference(mnet):
    mnet.train()
    x, t = _images(3, seed=2), _targets()

    def step(m):
        m.zero_grad()
        out = m.training_step(x, t)
        out["loss"].backward()
        return ({k: v.detach() for k, v in out.items()},
                {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})

    (la, ga), (lr, gr) = run_both(mnet, step)
    assert set(la) == {"loss_l", "loss_c", "loss_landm", "loss"}
    for k in la:
        torch.testing.assert_close(la[k], lr[k], rtol=1e-6, atol=0)
        assert la[k] > 0
    assert set(ga) == set(gr) and len(ga) > 50
    for k in ga:
        torch.testing.assert_close(ga[k], gr[k], rtol=1e-5, atol=1e-7, msg=k)
    mnet.eval()


def test_training_step_uses_match_priors(mnet, monkeypatch):
    calls = []
    real = fastops.match_priors

    def spy(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(fastops, "match_priors", spy)
    mnet.train()
    mnet.impl = "auto"
    mnet.training_step(_images(2), _targets((3, 1)))
    mnet.eval()
    assert calls == [torch.Size([2, 3, 4])]


def test_postprocess_compiles(mnet):
    mnet.eval()
    x = _images(2)
    with torch.no_grad():
        loc, conf, lm = mnet(x)

    @torch.compile(fullgraph=True, backend="eager")
    def post(loc, conf, lm):
        return mnet.postprocess(loc, conf, lm, (SIZE, SIZE), pad=True)

    got = post(loc, conf, lm)
    want = mnet.postprocess(loc, conf, lm, (SIZE, SIZE), pad=True)
    for u, v in zip(got, want):
        assert torch.equal(u, v)


def test_priors_count_and_resnet_forward():
    assert prior_boxes((640, 640)).shape == (16800, 4)
    torch.manual_seed(0)
    r = _tame(RetinaFace("resnet50")).eval()
    with torch.no_grad():
        loc, conf, lm = r(_images(1, h=64, w=64))
    assert loc.shape == (1, 168, 4) and conf.shape == (1, 168, 2) and lm.shape == (1, 168, 10)
