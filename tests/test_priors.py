"""prior_nms / match_priors (fastops/ops/priors.py) against the transcriptions of the original code
(fastops.reference.priors: biubug6's detect.py + py_cpu_nms, its match loop, YOLACT's match)."""
import io

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastops
import fastops.registrations.priors as reg
from fastops.models.retinaface import prior_boxes
from fastops.reference import priors as ref

VAR = (0.1, 0.2)


def _heads(B, P, seed, dtype=torch.float32, nl=10):
    g = torch.Generator().manual_seed(seed)
    loc = (torch.randn(B, P, 4, generator=g) * 0.5).to(dtype)
    scores = torch.rand(B, P, generator=g).to(dtype)
    landms = torch.randn(B, P, nl, generator=g).to(dtype)
    return loc, scores, landms


def _gt(B, G, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(B, G, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(B, G, 2, generator=g) * 0.4 + 0.01
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1).to(dtype)
    labels = torch.where(torch.rand(B, G, generator=g) < 0.3, -1, 1).long()
    lmk = torch.rand(B, G, 10, generator=g).to(dtype)
    counts = torch.randint(0, G + 1, (B,), generator=g)
    return boxes, labels, lmk, counts


def _close_dets(a, r, exact_counts=True):
    assert torch.equal(a[3], r[3])
    for u, v in zip(a[:3], r[:3]):
        assert u.shape == v.shape and u.dtype == v.dtype
        torch.testing.assert_close(u, v, rtol=2e-6, atol=1e-5)  # exp: libm vs ATen's vectorised exp (<= 1 ulp)


def _close_match(a, r):
    loc, conf, landm, ov, idx = a
    assert torch.equal(conf, r[1]) and torch.equal(idx, r[4])
    torch.testing.assert_close(ov, r[3], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(loc, r[0], rtol=2e-6, atol=2e-6, equal_nan=True)  # log: libm vs ATen (<= 1 ulp)
    torch.testing.assert_close(landm, r[2], rtol=0, atol=0, equal_nan=True)


def test_modes_mirror_cpp():
    assert list(torch.ops.fastops._priors_constants()) == [reg.MODES["ssd"], reg.MODES["yolact"]]


def test_prior_boxes_match_original_loop():
    H, W = 64, 96
    anchors = []
    for k, step in enumerate([8, 16, 32]):
        for i in range(-(-H // step)):
            for j in range(-(-W // step)):
                for ms in [[16, 32], [64, 128], [256, 512]][k]:
                    anchors += [(j + 0.5) * step / W, (i + 0.5) * step / H, ms / W, ms / H]
    assert torch.equal(prior_boxes((H, W)), torch.Tensor(anchors).view(-1, 4))
    assert prior_boxes((640, 640)).shape == (16800, 4)


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("top_k,keep,thr,plus_one", [(300, 40, 0.02, True), (-1, -1, 0.5, True),
                                                     (50, 1000, 0.3, False), (5000, 750, 0.9, True)])
def test_prior_nms_matches_original(pad, dtype, top_k, keep, thr, plus_one):
    if pad and keep <= 0:
        pytest.skip("pad needs max_det > 0")
    H, W = 96, 128
    pri = prior_boxes((H, W)).to(dtype)
    loc, sc, lm = _heads(3, pri.size(0), 0, dtype)
    args = (loc, sc, lm, pri, (float(W), float(H)), thr, 0.4, top_k, keep, VAR, pad, plus_one)
    a = fastops.prior_nms(*args)
    r = fastops.prior_nms(*args, impl="reference")
    _close_dets(a, r)
    assert a[3].sum() > 0


def test_prior_nms_real_sized_image():
    pri = prior_boxes((640, 640))
    loc, sc, lm = _heads(1, pri.size(0), 1)
    sc = sc * 0.5 + 0.25
    args = (loc, sc, lm, pri, (640.0, 640.0), 0.02, 0.4, 5000, 750)
    _close_dets(fastops.prior_nms(*args), fastops.prior_nms(*args, impl="reference"))


def test_prior_nms_empty_and_no_landmarks():
    pri = prior_boxes((32, 32))
    loc, sc, lm = _heads(2, pri.size(0), 2)
    for args in [(loc, sc * 0, lm, pri), (loc[:0], sc[:0], lm[:0], pri), (loc, sc, None, pri)]:
        for pad in (False, True):
            a = fastops.prior_nms(*args, pad=pad)
            r = fastops.prior_nms(*args, pad=pad, impl="reference")
            _close_dets(a, r)
    b, s, l, c = fastops.prior_nms(loc, sc * 0, lm, pri)
    assert b.shape == (0, 4) and l.shape == (0, 10) and c.tolist() == [0, 0]


def test_prior_nms_nan_inputs():
    pri = prior_boxes((64, 64))
    loc, sc, lm = _heads(2, pri.size(0), 3)
    sc[0, ::7] = float("nan")
    loc[0, ::5, 2] = float("nan")
    loc[1, ::3, 0] = 1e4   # finite
    loc[1, ::4, 3] = 1e3   # exp overflow: infinite box, dropped
    lm[1, ::2, 3] = float("nan")
    a = fastops.prior_nms(loc, sc, lm, pri, (64.0, 64.0))
    r = fastops.prior_nms(loc, sc, lm, pri, (64.0, 64.0), impl="reference")
    assert torch.equal(a[3], r[3])
    for u, v in zip(a[:3], r[:3]):
        torch.testing.assert_close(u, v, rtol=2e-6, atol=1e-5, equal_nan=True)
    assert torch.isfinite(a[0]).all() and a[3].min() > 0


def test_split_and_model_layout():
    pri = prior_boxes((32, 48))
    loc, sc, lm = _heads(3, pri.size(0), 4)
    flat = fastops.prior_nms(loc, sc, lm, pri, (48.0, 32.0), 0.5, 0.4, 100, 10)
    padded = fastops.prior_nms(loc, sc, lm, pri, (48.0, 32.0), 0.5, 0.4, 100, 10, pad=True)
    per = fastops.ops.priors.split_detections(*flat)
    for b, (bx, s, l) in enumerate(per):
        n = int(padded[3][b])
        assert torch.equal(bx, padded[0][b, :n]) and torch.equal(s, padded[1][b, :n])
        assert torch.equal(l, padded[2][b, :n]) and (padded[1][b, n:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,kw", [("ssd", dict(hard_threshold=0.2)), ("ssd", {}),
                                     ("ssd", dict(pos_threshold=0.5, neg_threshold=0.3)),
                                     ("yolact", dict(pos_threshold=0.5, neg_threshold=0.4))])
def test_match_matches_original_loop(dtype, mode, kw):
    pri = prior_boxes((96, 96)).to(dtype)
    boxes, labels, lmk, counts = _gt(6, 9, 5, dtype)
    counts[0], counts[1] = 0, 9
    a = fastops.match_priors(boxes, labels, pri, counts, lmk, mode=mode, **kw)
    r = fastops.match_priors(boxes, labels, pri, counts, lmk, mode=mode, impl="reference", **kw)
    _close_match(a, r)
    assert (a[4][0] == -1).all() and (a[1][1] != 0).any()


def test_match_tie_rules():
    # two gts with the same best prior: the later gt keeps it (ssd); duplicates and equal IoUs everywhere
    pri = prior_boxes((32, 32))
    box = torch.tensor([0.2, 0.2, 0.7, 0.7])
    boxes = torch.stack([box, box, box + 0.01, torch.tensor([0.0, 0.0, 1.0, 1.0])])[None]
    labels = torch.tensor([[1, 2, 3, 4]])
    for mode in ("ssd", "yolact"):
        a = fastops.match_priors(boxes, labels, pri, mode=mode)
        r = fastops.match_priors(boxes, labels, pri, mode=mode, impl="reference")
        _close_match(a, r)
    # YOLACT with more gts than priors: every column consumed, the loop goes on with -1 rows
    few = pri[:3]
    b, lab, lm, _ = _gt(2, 7, 6)
    _close_match(fastops.match_priors(b, lab, few, mode="yolact"),
                 fastops.match_priors(b, lab, few, mode="yolact", impl="reference"))


def test_match_nan_and_degenerate_gt():
    pri = prior_boxes((64, 64))
    boxes, labels, lmk, _ = _gt(3, 5, 7)
    boxes[0, 1, 2] = float("nan")          # NaN gt box: NaN IoUs win torch.max
    boxes[1, 2, 2:] = boxes[1, 2, :2]      # zero-size gt: IoU 0, log(0) = -inf targets
    lmk[2, 0, 4] = float("nan")
    for mode, hard in (("ssd", 0.2), ("ssd", None), ("yolact", None)):
        a = fastops.match_priors(boxes, labels, pri, None, lmk, 0.35, None, VAR, mode, hard)
        r = fastops.match_priors(boxes, labels, pri, None, lmk, 0.35, None, VAR, mode, hard, impl="reference")
        _close_match(a, r)


@given(B=st.integers(0, 4), G=st.integers(0, 6), side=st.sampled_from([16, 32, 48]), seed=st.integers(0, 2**16),
       mode=st.sampled_from(["ssd", "yolact"]), hard=st.sampled_from([None, 0.2]),
       pos=st.sampled_from([0.35, 0.5]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_match_property(B, G, side, seed, mode, hard, pos, dtype):
    pri = prior_boxes((side, side)).to(dtype)
    boxes, labels, lmk, counts = _gt(B, G, seed, dtype)
    args = (boxes, labels, pri, counts, lmk, pos, 0.4 if mode == "yolact" else None, VAR, mode,
            hard if mode == "ssd" else None)
    _close_match(fastops.match_priors(*args), fastops.match_priors(*args, impl="reference"))


@given(B=st.integers(0, 3), side=st.sampled_from([16, 32, 40]), seed=st.integers(0, 2**16),
       thr=st.floats(0.0, 0.99), iou=st.floats(0.05, 0.95), top_k=st.integers(-1, 300), keep=st.integers(1, 80),
       pad=st.booleans())
def test_prior_nms_property(B, side, seed, thr, iou, top_k, keep, pad):
    pri = prior_boxes((side, side))
    loc, sc, lm = _heads(B, pri.size(0), seed)
    args = (loc, sc, lm, pri, (float(side), float(side)), thr, iou, top_k, keep, VAR, pad)
    _close_dets(fastops.prior_nms(*args), fastops.prior_nms(*args, impl="reference"))


@pytest.mark.parametrize("impl", ["cpp", "triton"])
def test_prior_nms_threshold_strict_and_ties(impl):
    # scores exactly at the threshold never pass (`score > threshold`); equal scores keep prior order in the top-k
    pri = prior_boxes((32, 32))
    loc, _, lm = _heads(2, pri.size(0), 14)
    sc = torch.tensor([0.5, 0.75, 0.25]).repeat(pri.size(0) // 3 + 1)[: pri.size(0)].repeat(2, 1)
    sc[1, 5:] = 0.75
    for top_k in (-1, 7):
        args = (loc, sc, lm, pri, (32.0, 32.0), 0.5, 0.4, top_k, 40)
        a = fastops.prior_nms(*args, impl=impl)
        _close_dets(a, fastops.prior_nms(*args, impl="reference"))
        assert (a[1] > 0.5).all()


# ---- Triton (TRITON_INTERPRET=1, set by conftest.py): small shapes against the original code -----------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pad,top_k,keep,thr,plus_one", [(False, 60, 12, 0.3, True), (True, -1, 25, 0.6, True),
                                                         (False, 0, -1, 0.8, False), (True, 400, 5, 0.02, True)])
def test_triton_prior_nms_matches_original(dtype, pad, top_k, keep, thr, plus_one):
    pri = prior_boxes((32, 48)).to(dtype)
    loc, sc, lm = _heads(2, pri.size(0), 11, dtype)
    args = (loc, sc, lm, pri, (48.0, 32.0), thr, 0.4, top_k, keep, VAR, pad, plus_one)
    a = fastops.prior_nms(*args, impl="triton")
    _close_dets(a, fastops.prior_nms(*args, impl="reference"))
    assert a[3].sum() > 0


def test_triton_prior_nms_nan_empty_and_ties():
    pri = prior_boxes((32, 32))
    loc, sc, lm = _heads(3, pri.size(0), 12)
    sc[0, ::7] = float("nan")
    loc[0, ::5, 2] = float("nan")
    loc[1, ::4, 3] = 1e3                      # exp overflow: infinite box, dropped before NMS
    lm[1, ::2, 3] = float("nan")
    sc[2] = torch.tensor([0.5, 0.7]).repeat(sc.size(1) // 2)  # ties: lower prior index first
    for args in [(loc, sc, lm, pri), (loc, sc * 0, lm, pri), (loc[:0], sc[:0], lm[:0], pri), (loc, sc, None, pri)]:
        for pad in (False, True):
            kw = dict(scale_xy=(32.0, 32.0), pre_nms_top_k=50, max_det=20, pad=pad)
            a = fastops.prior_nms(*args, **kw, impl="triton")
            r = fastops.prior_nms(*args, **kw, impl="reference")
            assert torch.equal(a[3], r[3])
            for u, v in zip(a[:3], r[:3]):
                assert u.shape == v.shape and u.dtype == v.dtype
                torch.testing.assert_close(u, v, rtol=2e-6, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,kw", [("ssd", dict(hard_threshold=0.2)), ("ssd", {}),
                                     ("yolact", dict(pos_threshold=0.5, neg_threshold=0.4))])
def test_triton_match_matches_original(dtype, mode, kw):
    pri = prior_boxes((32, 32)).to(dtype)
    boxes, labels, lmk, counts = _gt(4, 6, 13, dtype)
    counts[0], counts[1] = 0, 6
    a = fastops.match_priors(boxes, labels, pri, counts, lmk, mode=mode, impl="triton", **kw)
    _close_match(a, fastops.match_priors(boxes, labels, pri, counts, lmk, mode=mode, impl="reference", **kw))
    assert (a[4][0] == -1).all() and (a[1][1] != 0).any()


def test_triton_match_ties_nan_and_few_priors():
    pri = prior_boxes((32, 32))
    box = torch.tensor([0.2, 0.2, 0.7, 0.7])
    dup = torch.stack([box, box, box + 0.01, torch.tensor([0.0, 0.0, 1.0, 1.0])])[None]
    boxes, labels, lmk, _ = _gt(3, 5, 7)
    boxes[0, 1, 2] = float("nan")          # NaN IoUs win torch.max
    boxes[1, 2, 2:] = boxes[1, 2, :2]      # zero-size gt: log(0) = -inf targets
    fb, fl, _, _ = _gt(2, 7, 6)
    cases = [((dup, torch.tensor([[1, 2, 3, 4]]), pri), {}),   # two gts with the same best prior: the later keeps it
             ((boxes, labels, pri, None, lmk), {}),
             ((boxes, labels, pri, None, lmk), dict(hard_threshold=0.2)),
             ((fb, fl, pri[:3]), {})]                          # YOLACT: more gts than priors, -1 rows go on
    for args, kw in cases:
        for mode in ("ssd", "yolact"):
            if mode == "yolact" and kw:
                continue
            _close_match(fastops.match_priors(*args, mode=mode, impl="triton", **kw),
                         fastops.match_priors(*args, mode=mode, impl="reference", **kw))


# ---- drop-in: opcheck, compile, TorchScript, autocast, fx --------------------------------------------------------

def _small():
    pri = prior_boxes((32, 32))
    loc, sc, lm = _heads(2, pri.size(0), 8)
    boxes, labels, lmk, counts = _gt(2, 4, 9)
    return pri, loc, sc, lm, boxes, labels, lmk, counts


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck(suffix):
    if suffix:
        import fastops.triton.priors  # noqa: F401  (registers the _triton ops)
    prior_nms, match_priors = (getattr(torch.ops.fastops, n + suffix) for n in ("prior_nms", "match_priors"))
    pri, loc, sc, lm, boxes, labels, lmk, counts = _small()
    torch.library.opcheck(prior_nms, (loc, sc, lm, pri, 0.1, 0.2, 32.0, 32.0, 0.3, 0.4, 100, 20, True, True))
    torch.library.opcheck(prior_nms, (loc, sc, lm, pri, 0.1, 0.2, 32.0, 32.0, 0.3, 0.4, 100, 20, False, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    torch.library.opcheck(match_priors, (boxes, labels, lmk, counts, pri, 0.35, 0.35, 0.1, 0.2, "ssd", 0.2))
    torch.library.opcheck(match_priors, (boxes, labels, lmk, counts, pri, 0.35, 0.35, 0.1, 0.2, "yolact", None))


def test_compile_fullgraph():
    pri, loc, sc, lm, boxes, labels, lmk, counts = _small()

    @torch.compile(fullgraph=True, backend="eager", dynamic=True)
    def post(loc, conf, lm, pri):
        return fastops.prior_nms(loc, conf.softmax(-1)[..., 1], lm, pri, (32.0, 32.0), 0.3, 0.4, 100, 20, pad=True)

    @torch.compile(fullgraph=True, backend="eager")
    def match(boxes, labels, pri, counts, lmk):
        return fastops.match_priors(boxes, labels, pri, counts, lmk, 0.35, None, VAR, "ssd", 0.2)

    conf = torch.stack([sc, 1 - sc], -1)
    got = post(loc, conf, lm, pri)
    want = fastops.prior_nms(loc, conf.softmax(-1)[..., 1], lm, pri, (32.0, 32.0), 0.3, 0.4, 100, 20, pad=True)
    for u, v in zip(got, want):
        assert torch.equal(u, v)
    for u, v in zip(match(boxes, labels, pri, counts, lmk),
                    fastops.match_priors(boxes, labels, pri, counts, lmk, 0.35, None, VAR, "ssd", 0.2)):
        assert torch.equal(u, v)


class _Post(torch.nn.Module):
    def forward(self, loc, sc, lm, pri):
        return fastops.prior_nms(loc, sc, lm, pri, (32.0, 32.0), 0.3, 0.4, 100, 20)


class _Match(torch.nn.Module):
    def forward(self, boxes, labels, pri, counts, lmk):
        return fastops.match_priors(boxes, labels, pri, counts, lmk, 0.35, None, (0.1, 0.2), "ssd", 0.2)


def test_torchscript():
    pri, loc, sc, lm, boxes, labels, lmk, counts = _small()
    for fn, mod, args, extra in ((fastops.prior_nms, _Post(), (loc, sc, lm, pri), ((32.0, 32.0), 0.3, 0.4, 100, 20)),
                                 (fastops.match_priors, _Match(), (boxes, labels, pri, counts, lmk),
                                  (0.35, None, (0.1, 0.2), "ssd", 0.2))):
        direct = torch.jit.script(fn)
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(mod), buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
        want = mod(*args)
        for got in (direct(*args, *extra), loaded(*args)):
            for u, v in zip(got, want):
                assert torch.equal(u, v)


def test_autocast_bfloat16():
    pri, loc, sc, lm, boxes, labels, lmk, counts = _small()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = fastops.prior_nms(loc.bfloat16(), sc.bfloat16(), lm.bfloat16(), pri.bfloat16(), (32.0, 32.0))
        m = fastops.match_priors(boxes.bfloat16(), labels, pri.bfloat16(), counts, lmk.bfloat16())
    r = fastops.prior_nms(loc.bfloat16().float(), sc.bfloat16().float(), lm.bfloat16().float(),
                          pri.bfloat16().float(), (32.0, 32.0))
    assert a[0].dtype == torch.float32 and m[0].dtype == torch.float32
    for u, v in zip(a, r):
        assert torch.equal(u, v)


def test_fx_leaf():
    class M(torch.nn.Module):
        def forward(self, loc, sc, lm, pri):
            return fastops.prior_nms(loc, sc, lm, pri, (32.0, 32.0), 0.3, 0.4, 100, 20, pad=True)

    gm = torch.fx.symbolic_trace(M())
    assert any(n.op == "call_function" and n.target is fastops.prior_nms for n in gm.graph.nodes)


# ---- bad input ---------------------------------------------------------------------------------------------------

def test_errors():
    pri, loc, sc, lm, boxes, labels, lmk, counts = _small()
    with pytest.raises(ValueError, match="priors"):
        fastops.prior_nms(loc, sc, lm, pri[:-1])
    with pytest.raises(ValueError, match="scores"):
        fastops.prior_nms(loc, sc[:, :-1], lm, pri)
    with pytest.raises(ValueError, match="landms"):
        fastops.prior_nms(loc, sc, lm[..., :9], pri)
    with pytest.raises(ValueError, match="max_det"):
        fastops.prior_nms(loc, sc, lm, pri, max_det=0, pad=True)
    with pytest.raises(ValueError, match="pre_nms_top_k"):
        fastops.prior_nms(loc, sc, lm, pri, pre_nms_top_k=2**64)
    with pytest.raises(ValueError, match="iou_threshold"):
        fastops.prior_nms(loc, sc, lm, pri, iou_threshold=float("nan"))
    with pytest.raises(ValueError, match="loc"):
        fastops.prior_nms(loc.half(), sc, lm, pri)
    with pytest.raises(RuntimeError, match="priors"):
        torch.ops.fastops.prior_nms(loc, sc, lm, pri[:-1], 0.1, 0.2, 1.0, 1.0, 0.1, 0.4, 10, 10, False, True)
    with pytest.raises(ValueError, match="counts"):
        fastops.match_priors(boxes, labels, pri, counts + 10)
    with pytest.raises(ValueError, match="counts"):
        fastops.match_priors(boxes, labels, pri, -counts - 1)
    with pytest.raises(RuntimeError, match="counts"):
        torch.ops.fastops.match_priors(boxes, labels, lmk, counts + 10, pri, 0.35, 0.35, 0.1, 0.2, "ssd", None)
    with pytest.raises(ValueError, match="mode"):
        fastops.match_priors(boxes, labels, pri, mode="crowd")
    with pytest.raises(ValueError, match="gt_labels"):
        fastops.match_priors(boxes, labels.int(), pri)
    with pytest.raises(ValueError, match="priors"):
        fastops.match_priors(boxes, labels, pri[:, :3])
