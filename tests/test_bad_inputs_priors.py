"""prior_nms / match_priors: bad and extreme inputs straight into the compiled ops (no Python checks in front),
each in a fresh interpreter (tests/isolated.py), so a crash fails one test. Shape and value errors through the
public functions are in tests/test_priors.py (test_errors)."""
from isolated import expect_error, expect_ok

SETUP = """
from fastops.models.retinaface import prior_boxes
pri = prior_boxes((32, 32))
P = pri.size(0)
loc = torch.randn(2, P, 4); sc = torch.rand(2, P); lm = torch.randn(2, P, 10)
gt = torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.6, 0.9]]]).repeat(2, 1, 1)
lab = torch.ones(2, 2, dtype=torch.long); glm = torch.rand(2, 2, 10); cnt = torch.tensor([2, 1])
"""


def _err(call, match):
    expect_error(SETUP + call, RuntimeError, match)


def test_prior_nms_shape_mismatch_is_an_error():
    _err("torch.ops.fastops.prior_nms(loc, sc, lm, pri[:-3], 0.1, 0.2, 32., 32., 0.1, 0.4, 100, 10, False, True)",
         "priors must have one row per prior")
    _err("torch.ops.fastops.prior_nms(loc, sc[:, :-1], lm, pri, 0.1, 0.2, 32., 32., 0.1, 0.4, 100, 10, False, True)",
         "scores must have shape")
    _err("torch.ops.fastops.prior_nms(loc, sc, lm[..., :9], pri, 0.1, 0.2, 32., 32., 0.1, 0.4, 100, 10, False, True)",
         "landms must have shape")
    _err("torch.ops.fastops.prior_nms(loc, sc, lm, pri, 0.1, 0.2, 32., 32., 0.1, 0.4, 100, 0, True, True)",
         "pad=True needs")


def test_prior_nms_nan_inf_empty_never_crash():
    expect_ok(SETUP + """
loc[0, ::3] = float("nan"); loc[1, ::5, 2] = 1e30; sc[0, ::2] = float("nan"); lm[:, ::4] = float("inf")
pri2 = pri.clone(); pri2[::7] = float("nan")
for p in (pri, pri2):
    for pad in (False, True):
        b, s, l, c = torch.ops.fastops.prior_nms(loc, sc, lm, p, 0.1, 0.2, 32., 32., 0.0, 0.4, -1, 50, pad, True)
        assert torch.isfinite(b).all() and (c >= 0).all()
b, s, l, c = torch.ops.fastops.prior_nms(loc[:0], sc[:0], lm[:0], pri, 0.1, 0.2, 32., 32., 0.0, 0.4, 10, 10,
                                         False, True)
assert b.shape == (0, 4) and c.shape == (0,)
e = torch.empty(1, 0, 4)
b, s, l, c = torch.ops.fastops.prior_nms(e, torch.empty(1, 0), torch.empty(1, 0, 10), torch.empty(0, 4), 0.1, 0.2,
                                         1., 1., 0., .4, 5, 5, True, True)
assert c.tolist() == [0] and b.shape == (1, 5, 4)
z = torch.zeros(2, P, 4); z[..., 2:] = -1e3   # zero-size boxes (exp underflow): w = h = 0
b, s, l, c = torch.ops.fastops.prior_nms(z, sc, lm, pri, 0.1, 0.2, 32., 32., 0.0, 0.4, -1, -1, False, True)
assert (c > 0).all()
""")


def test_match_bad_counts_and_shapes_are_errors():
    _err("torch.ops.fastops.match_priors(gt, lab, glm, cnt + 5, pri, .35, .35, .1, .2, 'ssd', 0.2)",
         "counts")
    _err("torch.ops.fastops.match_priors(gt, lab, glm, cnt - 5, pri, .35, .35, .1, .2, 'ssd', 0.2)",
         "counts")
    _err("torch.ops.fastops.match_priors(gt, lab[:, :1], glm, cnt, pri, .35, .35, .1, .2, 'ssd', 0.2)",
         "gt_labels")
    _err("torch.ops.fastops.match_priors(gt, lab, glm, cnt, pri[:, :3], .35, .35, .1, .2, 'ssd', 0.2)",
         "priors")
    _err("torch.ops.fastops.match_priors(gt, lab, glm, cnt, pri, .35, .35, .1, .2, 'crowd', 0.2)",
         "mode")


def test_match_nan_zero_size_empty_never_crash():
    expect_ok(SETUP + """
gt[0, 0, 0] = float("nan"); gt[1, 1, 2:] = gt[1, 1, :2]; glm[0, 1] = float("nan")
for mode in ("ssd", "yolact"):
    for p in (pri, pri[:1], pri[:0]):
        out = torch.ops.fastops.match_priors(gt, lab, glm, cnt, p, .35, .35, .1, .2, mode, 0.2)
        assert out[0].shape == (2, p.size(0), 4)
out = torch.ops.fastops.match_priors(gt[:, :0], lab[:, :0], glm[:, :0], torch.zeros(2, dtype=torch.long), pri,
                                     .35, .35, .1, .2, 'ssd', None)
assert (out[4] == -1).all() and (out[1] == 0).all()
out = torch.ops.fastops.match_priors(gt[:0], lab[:0], glm[:0], cnt[:0], pri, .35, .35, .1, .2, 'yolact', None)
assert out[0].shape == (0, P, 4)
""")
