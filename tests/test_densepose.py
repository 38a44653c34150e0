"""DensePose ops (fastops/ops/densepose.py) against the detectron2 transcription (fastops/reference/densepose.py):
chart decoding (packed and pasted), point sampling forward/backward, gradcheck, properties. Drop-in checks:
test_densepose_dropin.py; errors: test_bad_inputs_densepose.py."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastops
from densepose_helpers import _assert_packed_equal, _assert_packed_equal_up_to_ties, _boxes, _maps, _points
from fastops.reference import densepose as ref


@pytest.mark.parametrize("S", [28, 112, 7])
def test_chart_to_iuv_matches_transcription(S):
    R = 12
    coarse, fine, u, v = _maps(R, S)
    boxes = _boxes(R, hi=200.0)
    boxes[0] = torch.tensor([10.2, 11.7, 10.9, 12.1])  # 1-pixel box (w, h truncate to 0 -> 1)
    boxes[1] = torch.tensor([-30.0, -5.0, 20.0, 40.0])  # partly outside the image
    boxes[2] = torch.tensor([50.0, 50.0, 40.0, 45.0])  # x2 < x1: w = max(int(-10), 1) = 1
    _assert_packed_equal(fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes),
                         ref.chart_to_iuv(coarse, fine, u, v, boxes))


def test_chart_to_iuv_float64_and_half():
    coarse, fine, u, v = _maps(5, 14, dtype=torch.float64)
    boxes = _boxes(5, hi=60.0)
    _assert_packed_equal(fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes),
                         ref.chart_to_iuv(coarse, fine, u, v, boxes), uv_atol=1e-7)
    coarse, fine, u, v = _maps(5, 14, dtype=torch.float16)
    # float16 maps: interpolated in float32 and rounded to float16 (as F.interpolate returns them)
    _assert_packed_equal(fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes),
                         ref.chart_to_iuv(coarse, fine, u, v, boxes), uv_atol=1e-3)  # 1 half ulp


def test_empty_detections():
    coarse, fine, u, v = _maps(0)
    lab, uv, off, ib = fastops.densepose_chart_to_iuv(coarse, fine, u, v, torch.zeros(0, 4))
    assert lab.numel() == 0 and uv.numel() == 0 and off.tolist() == [0] and ib.shape == (0, 4)
    iuv = fastops.densepose_paste_iuv(coarse, fine, u, v, torch.zeros(0, 4), torch.zeros(0), 8, 9)
    assert iuv.shape == (3, 8, 9) and iuv.dtype == torch.uint8 and not iuv.any()


def test_argmax_tie_rule_and_nan():
    S, K = 4, 25
    coarse = torch.zeros(3, 2, S, S)
    fine = torch.zeros(3, K, S, S)
    u = torch.rand(3, K, S, S)
    v = torch.rand(3, K, S, S)
    coarse[:, 1] = 1.0               # foreground everywhere...
    coarse[2, 0] = 1.0               # ...except detection 2: coarse tie -> channel 0 -> background
    fine[:, 3] = 2.0
    fine[:, 7] = 2.0                 # tie between parts 3 and 7: the first (3) wins
    fine[1, 9, 0, 0] = float("nan")  # a NaN score wins its argmax (torch.argmax)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0]])
    got = fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes)
    want = ref.chart_to_iuv(coarse, fine, u, v, boxes)
    _assert_packed_equal(got, want)
    per = fastops.densepose_unpack(*got)
    assert (per[0][0] == 3).all() and (per[2][0] == 0).all() and per[1][0][0, 0] == 9
    assert (per[2][1] == 0).all()


def test_constant_maps_exact():
    coarse, fine, u, v = _maps(3, 10)
    coarse[:, 1] += 10
    fine[:] = 0.5
    fine[:, 4] = 0.75
    u[:] = 0.25
    boxes = _boxes(3)
    got = fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes)
    assert (got[0] == 4).all() and (got[1].view(-1)[:1] == 0.25).all()
    for lab, uv in fastops.densepose_unpack(*got):
        assert (uv[0] == 0.25).all()
    _assert_packed_equal(got, ref.chart_to_iuv(coarse, fine, u, v, boxes))


def test_paste_iuv_matches_transcription():
    R = 15
    coarse, fine, u, v = _maps(R, 28, seed=3)
    coarse[:, 1] += 0.5
    boxes = _boxes(R, seed=4, hi=70.0, img=60.0)
    scores = torch.rand(R)
    scores[3] = scores[5]  # equal scores: the lower index wins
    boxes[5] = boxes[3]
    got = fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 60, 75)
    want = ref.paste_iuv(coarse, fine, u, v, boxes, scores, 60, 75)
    assert got.shape == (3, 60, 75) and got.dtype == torch.uint8
    assert torch.equal(got[0], want[0])
    assert (got.int() - want.int()).abs().max() <= 1  # U/V quantization of a 1-ulp different value
    assert (got != want).float().mean() < 1e-3
    assert got[0].any()


def test_paste_iuv_clamps_uv_outside_unit_range():
    # an untrained head's U/V leave [0, 1]: detectron2 quantizes (x * 255).clamp(0, 255) (a dropped upper clamp
    # wraps 1.5 * 255 to 126 in uint8 and passed every other test)
    R = 4
    coarse, fine, u, v = _maps(R, 14, seed=5)
    coarse[:, 1] += 2.0  # foreground almost everywhere
    u, v = u * 3 - 1, v * 3 - 1  # [-1, 2)
    boxes = _boxes(R, seed=6, hi=40.0, img=50.0)
    scores = torch.rand(R, generator=torch.Generator().manual_seed(7))
    got = fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 50, 50)
    want = ref.paste_iuv(coarse, fine, u, v, boxes, scores, 50, 50)
    fg = want[0] > 0
    assert (want[1][fg] == 255).any() and (want[2][fg] == 0).any()
    assert torch.equal(got[0], want[0]) and (got.int() - want.int()).abs().max() <= 1


def test_roi_point_sample_last_cell_reads_only_its_taps():
    # a point in a row's last cell (x in [Sw - 1, Sw]) has its right tap clamped onto the same cell with weight 0:
    # an infinite value in the next row's first cell must not leak in (a right tap at xl + 1 gives inf * 0 = NaN)
    maps = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    maps[..., 0] = float("inf")
    ri = torch.tensor([0, 1, 1, 0])
    pts = torch.tensor([[6.0, 0.5], [5.5, 2.25], [5.0, 3.0], [5.75, 4.0]], dtype=torch.float64)
    got = fastops.roi_point_sample(maps, ri, pts)
    want = ref.roi_point_sample(maps, ri, pts)
    assert torch.isfinite(want).all() and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_roi_point_sample_matches_transcription(dtype):
    maps, ri, pts = _points(dtype=dtype)
    maps.requires_grad_(True)
    got = fastops.roi_point_sample(maps, ri, pts)
    want = ref.roi_point_sample(maps, ri, pts)
    assert torch.equal(got, want)  # same per-op rounding (no fused multiply-add in these kernels)
    g = torch.randn_like(got)
    ga, = torch.autograd.grad(got, maps, g)
    gb, = torch.autograd.grad(want, maps, g)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)


def test_point_grid_matches_transcription():
    g = torch.Generator().manual_seed(2)
    P = 100
    gt = torch.cat([torch.rand(P, 2, generator=g) * 50, torch.rand(P, 2, generator=g) * 80 + 5], 1)
    est = gt + torch.randn(P, 4, generator=g) * 4
    est[:, 2:] = est[:, 2:].clamp(min=2)
    xn, yn = torch.rand(P, generator=g) * 256, torch.rand(P, generator=g) * 256
    pts, valid = fastops.densepose_point_grid(xn, yn, gt, est, 112)
    rpts, rvalid = ref.point_grid(xn, yn, gt, est, 112)
    assert torch.equal(pts, rpts) and torch.equal(valid, rvalid) and 0 < valid.sum() < P
    # the transcription's per-axis helper (detectron2's _linear_interpolation_utilities) gives the same taps
    xlo, xhi, xw, xv = ref.linear_interpolation_utilities(xn, gt[:, 0], gt[:, 2], est[:, 0], est[:, 2], 112)
    lo = pts[:, 0].floor().long().clamp(0, 111)
    assert torch.equal(xlo, lo) and torch.equal(xv & valid, valid)


def test_gradcheck_float64():
    maps, ri, pts = _points(R=3, C=2, S=5, P=30)
    maps.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: fastops.roi_point_sample(m, ri, pts), (maps,))


@given(R=st.integers(0, 4), S=st.integers(1, 12), K=st.integers(1, 6), Kc=st.integers(1, 3),
       seed=st.integers(0, 10_000), quant=st.booleans())
def test_property_chart_to_iuv(R, S, K, Kc, seed, quant):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(R, Kc, S, S, generator=g)
    fine = torch.randn(R, K, S, S, generator=g)
    if quant:  # many exact ties
        coarse, fine = coarse.round(), fine.round()
    u, v = torch.rand(R, K, S, S, generator=g), torch.rand(R, K, S, S, generator=g)
    xy = torch.rand(R, 2, generator=g) * 40 - 10
    boxes = torch.cat([xy, xy + torch.rand(R, 2, generator=g) * 50], 1)
    got = fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes)
    want = ref.chart_to_iuv(coarse, fine, u, v, boxes)
    _assert_packed_equal_up_to_ties(got, want, coarse, fine)
    scores = torch.rand(R, generator=g).round(decimals=1)
    pg = fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 30, 35)
    pw = ref.paste_iuv(coarse, fine, u, v, boxes, scores, 30, 35)
    if torch.equal(got[0], want[0]):  # same labels: the same pasted map (U/V quantization within 1)
        assert torch.equal(pg[0], pw[0]) and (pg.int() - pw.int()).abs().max() <= 1


@given(R=st.integers(1, 4), C=st.integers(1, 5), Sh=st.integers(1, 8), Sw=st.integers(1, 8),
       P=st.integers(0, 40), seed=st.integers(0, 10_000))
def test_property_roi_point_sample(R, C, Sh, Sw, P, seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(R, C, Sh, Sw, generator=g, dtype=torch.float64, requires_grad=True)
    ri = torch.randint(0, R, (P,), generator=g)
    pts = torch.rand(P, 2, generator=g, dtype=torch.float64) * torch.tensor([Sw, Sh], dtype=torch.float64)
    if P:
        pts[0] = torch.tensor([Sw, Sh], dtype=torch.float64)
        pts[P // 2] = pts[P // 2].floor()
    got = fastops.roi_point_sample(maps, ri, pts)
    want = ref.roi_point_sample(maps, ri, pts)
    assert torch.equal(got, want)
    gw = torch.randn(P, C, generator=g, dtype=torch.float64)
    a, = torch.autograd.grad(got, maps, gw)
    b, = torch.autograd.grad(want, maps, gw)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
