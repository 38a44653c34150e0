"""DensePose ops (fastops/ops/densepose.py) against the detectron2 transcription (fastops/reference/densepose.py):
chart decoding (packed and pasted), point sampling forward/backward, and the drop-in checks (opcheck, gradcheck,
compile, TorchScript, autocast, threads, errors, properties)."""
import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fastops
from fastops.reference import densepose as ref


def _maps(R, S=28, K=25, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(R, 2, S, S, generator=g).to(dtype)
    fine = torch.randn(R, K, S, S, generator=g).to(dtype)
    u = torch.rand(R, K, S, S, generator=g).to(dtype)
    v = torch.rand(R, K, S, S, generator=g).to(dtype)
    return coarse, fine, u, v


def _boxes(R, seed=0, lo=1.0, hi=120.0, img=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(R, 2, generator=g) * img * 1.2 - img * 0.2  # some partly outside the image
    wh = torch.rand(R, 2, generator=g) * (hi - lo) + lo
    return torch.cat([xy, xy + wh], 1)


def _assert_packed_equal(got, want, uv_atol=2.5e-7):
    lab, uv, off, ib = got
    rl, ruv, roff, rib = want
    assert torch.equal(ib, rib) and torch.equal(off, roff)
    assert lab.dtype == torch.uint8 and uv.dtype == torch.float32
    assert torch.equal(lab, rl), f"{(lab != rl).sum().item()} labels differ"
    torch.testing.assert_close(uv, ruv, rtol=0, atol=uv_atol, equal_nan=True)


def _assert_packed_equal_up_to_ties(got, want, coarse, fine):
    """Labels equal except where the transcription's own interpolated scores tie to the last bits: ATen's CPU
    kernel does not round every pixel the same way (its vectorised and scalar loops differ), so an exact tie of
    two channels (common with integer-valued maps) can break either way. U/V compared where the labels agree."""
    lab, uv, off, ib = got
    rl, ruv, roff, rib = want
    assert torch.equal(ib, rib) and torch.equal(off, roff)
    for i in (lab != rl).nonzero().flatten().tolist():
        r = int((off <= i).nonzero().max())
        q = i - int(off[r])
        w, h = ib[r, 2:].tolist()
        py, px = q // w, q % w
        cz = F.interpolate(coarse[r:r + 1], (h, w), mode="bilinear", align_corners=False)[0, :, py, px]
        cfg = int(cz.argmax())
        fz = F.interpolate(fine[r:r + 1], (h, w), mode="bilinear", align_corners=False)[0, :, py, px]
        top = float(fz.max())
        # either the coarse decision or the fine argmax is a near-tie
        near_c = any(abs(float(cz[c]) - float(cz[cfg])) <= 2.4e-7 * max(1.0, abs(float(cz[cfg])))
                     for c in range(cz.numel()) if (c > 0) != (cfg > 0))
        near_f = any(abs(float(fz[c]) - top) <= 2.4e-7 * max(1.0, abs(top)) and c != int(fz.argmax())
                     for c in range(fz.numel()))
        assert near_c or near_f, f"pixel {i} (box {r}, {py}, {px}): {lab[i]} vs {rl[i]} is not a near-tie"
    for r in range(ib.shape[0]):
        a, b = int(off[r]), int(off[r + 1])
        keep = (lab[a:b] == rl[a:b]).repeat(2)
        torch.testing.assert_close(uv[2 * a:2 * b][keep], ruv[2 * a:2 * b][keep], rtol=0, atol=2.5e-7,
                                   equal_nan=True)


# ---- chart decoding -------------------------------------------------------------------------------------------------

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


def test_threads_do_not_change_results():
    coarse, fine, u, v = _maps(9, 28, seed=5)
    boxes = _boxes(9, hi=150.0)
    scores = torch.rand(9)
    maps = torch.randn(6, 5, 7, 7)
    ri = torch.randint(0, 6, (300,))
    pts = torch.rand(300, 2) * 7
    g = torch.randn(300, 5)
    outs = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            gm = torch.ops.fastops._roi_point_sample_backward(g, maps, ri, pts)
            outs.append((*fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes),
                         fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 90, 90), gm))
    finally:
        torch.set_num_threads(old)
    for x, y in zip(*outs):
        assert torch.equal(x, y)


# ---- point sampling -------------------------------------------------------------------------------------------------

def _points(R=6, C=5, S=9, P=200, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(R, C, S, S, generator=g, dtype=dtype)
    ri = torch.randint(0, R, (P,), generator=g)
    pts = (torch.rand(P, 2, generator=g, dtype=dtype) * S)
    pts[:5] = torch.tensor([[0.0, 0.0], [S, S], [S - 1, 0.5], [S - 0.25, S - 0.75], [3.0, 4.0]], dtype=dtype)
    return maps, ri, pts


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


def test_deterministic_mode():
    maps, ri, pts = _points(P=500)
    maps.requires_grad_(True)
    g = torch.randn(500, maps.size(1), dtype=maps.dtype)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a, = torch.autograd.grad(fastops.roi_point_sample(maps, ri, pts), maps, g)
        b, = torch.autograd.grad(fastops.roi_point_sample(maps, ri, pts), maps, g)
    finally:
        torch.use_deterministic_algorithms(old)
    assert torch.equal(a, b)


def test_opcheck():
    maps, ri, pts = _points(R=3, C=4, S=6, P=40, dtype=torch.float32)
    torch.library.opcheck(torch.ops.fastops.roi_point_sample.default, (maps.requires_grad_(True), ri, pts))
    coarse, fine, u, v = _maps(2, 6)
    boxes = _boxes(2, hi=12.0)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.fastops.densepose_paste_iuv.default,
                          (coarse, fine, u, v, boxes, torch.rand(2), 10, 12), test_utils=utils)
    torch.library.opcheck(torch.ops.fastops.densepose_chart_to_iuv.default, (coarse, fine, u, v, boxes),
                          test_utils=("test_schema", "test_autograd_registration"))


def test_compile_fullgraph():
    maps, ri, pts = _points(R=3, C=4, S=6, P=40, dtype=torch.float32)
    maps.requires_grad_(True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(m, r, p):
        return fastops.roi_point_sample(m, r, p).square().sum()

    a, = torch.autograd.grad(loss(maps, ri, pts), maps)
    b, = torch.autograd.grad(ref.roi_point_sample(maps, ri, pts).square().sum(), maps)
    torch.testing.assert_close(a, b)

    coarse, fine, u, v = _maps(4, 14)
    boxes = _boxes(4, hi=40.0)
    scores = torch.rand(4)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def post(c, f, uu, vv, b, s):
        lab, uv, off, ib = fastops.densepose_chart_to_iuv(c, f, uu, vv, b)
        return lab, uv, off, ib, fastops.densepose_paste_iuv(c, f, uu, vv, b, s, 50, 60)

    got = post(coarse, fine, u, v, boxes, scores)
    _assert_packed_equal(got[:4], ref.chart_to_iuv(coarse, fine, u, v, boxes))
    want = ref.paste_iuv(coarse, fine, u, v, boxes, scores, 50, 60)
    assert torch.equal(got[4][0], want[0]) and (got[4].int() - want.int()).abs().max() <= 1


def test_torchscript_roundtrip():
    class Post(torch.nn.Module):
        def forward(self, coarse, fine, u, v, boxes, scores, maps, ri, pts):
            lab, uv, off, ib = fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes)
            iuv = fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 40, 40)
            return lab, uv, off, ib, iuv, fastops.roi_point_sample(maps, ri, pts)

    coarse, fine, u, v = _maps(3, 10)
    boxes = _boxes(3, hi=30.0)
    maps, ri, pts = _points(dtype=torch.float32)
    args = (coarse, fine, u, v, boxes, torch.rand(3), maps, ri, pts)
    eager = Post()(*args)
    scripted = torch.jit.script(Post())
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    for a, b in zip(eager, loaded(*args)):
        assert torch.equal(a, b)


def test_autocast_float32():
    maps, ri, pts = _points(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fastops.roi_point_sample(maps.bfloat16(), ri, pts)
        direct = torch.ops.fastops.roi_point_sample(maps.bfloat16(), ri, pts)
    assert out.dtype == torch.float32 and direct.dtype == torch.float32
    torch.testing.assert_close(out, ref.roi_point_sample(maps.bfloat16().float(), ri, pts.float()))
    coarse, fine, u, v = _maps(2, 10)
    boxes = _boxes(2, hi=30.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fastops.densepose_chart_to_iuv(coarse.bfloat16(), fine.bfloat16(), u.bfloat16(), v.bfloat16(), boxes)
    want = ref.chart_to_iuv(coarse.bfloat16().float(), fine.bfloat16().float(), u.bfloat16().float(),
                            v.bfloat16().float(), boxes)
    _assert_packed_equal(got, want)


def test_reference_impl_dispatch():
    maps, ri, pts = _points()
    assert torch.equal(fastops.roi_point_sample(maps, ri, pts, impl="reference"), ref.roi_point_sample(maps, ri, pts))


# ---- bad input ------------------------------------------------------------------------------------------------------

def test_bad_inputs_raise_value_error():
    coarse, fine, u, v = _maps(2, 8)
    boxes = _boxes(2)
    nan_boxes = boxes.clone()
    nan_boxes[1, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        fastops.densepose_chart_to_iuv(coarse, fine, u, v, nan_boxes)
    with pytest.raises(ValueError, match="finite"):
        fastops.densepose_paste_iuv(coarse, fine, u, v, nan_boxes, torch.rand(2), 10, 10)
    with pytest.raises(ValueError, match="u must have fine's shape"):
        fastops.densepose_chart_to_iuv(coarse, fine, u[:, :24], v, boxes)
    with pytest.raises(ValueError, match="coarse"):
        fastops.densepose_chart_to_iuv(coarse[:, :, :7], fine, u, v, boxes)
    with pytest.raises(ValueError, match="boxes"):
        fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes[:1])
    with pytest.raises(ValueError, match="scores"):
        fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, torch.tensor([0.5, float("nan")]), 10, 10)
    with pytest.raises(ValueError, match="height"):
        fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, torch.rand(2), -1, 10)
    maps, ri, pts = _points()
    with pytest.raises(ValueError, match="roi_index"):
        fastops.roi_point_sample(maps, ri + maps.size(0), pts)
    with pytest.raises(ValueError, match="roi_index"):
        fastops.roi_point_sample(maps, ri - 100, pts)
    for bad in (-0.5, maps.size(-1) + 0.1, float("nan"), float("inf")):
        p = pts.clone()
        p[7, 1] = bad
        with pytest.raises(ValueError, match="inside the RoI"):
            fastops.roi_point_sample(maps, ri, p)
    with pytest.raises(ValueError, match="points"):
        fastops.roi_point_sample(maps, ri, pts[:-1])
    with pytest.raises(ValueError, match="roi_index"):
        fastops.roi_point_sample(maps, ri.int(), pts)


def test_direct_op_calls_check_too():
    coarse, fine, u, v = _maps(2, 8)
    boxes = _boxes(2)
    nan_boxes = boxes.clone()
    nan_boxes[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="finite"):
        torch.ops.fastops.densepose_chart_to_iuv(coarse, fine, u, v, nan_boxes)
    huge = boxes.clone()
    huge[0, 2] = 1e7
    with pytest.raises(RuntimeError, match="per side"):
        torch.ops.fastops.densepose_chart_to_iuv(coarse, fine, u, v, huge)
    with pytest.raises(RuntimeError, match="fine's shape"):
        torch.ops.fastops.densepose_chart_to_iuv(coarse, fine, u[:, :3], v, boxes)
    maps, ri, pts = _points()
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.fastops.roi_point_sample(maps, ri * 1000, pts)
    p = pts.clone()
    p[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="inside the RoI"):
        torch.ops.fastops.roi_point_sample(maps, ri, p)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.fastops._roi_point_sample_backward(torch.ones(ri.numel(), maps.size(1), dtype=maps.dtype), maps,
                                                     ri - 1000, pts)


# ---- properties -----------------------------------------------------------------------------------------------------

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


# ---- Triton (TRITON_INTERPRET=1 on the CPU, set by conftest.py) --------------------------------------------------

def test_triton_int_boxes_match_reference():
    from fastops.triton._registry import INTERPRET
    if not INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")
    from fastops.triton import densepose as T
    boxes = torch.cat([_boxes(50, hi=200.0), torch.tensor([[3.0, 4.0, 2.0, 3.5], [-7.9, -3.2, -7.1, 9.9]])])
    assert torch.equal(T.int_boxes_xywh(boxes), ref.int_boxes_xywh(boxes))


def test_triton_matches_transcription():
    from fastops.triton._registry import INTERPRET
    if not INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")
    coarse, fine, u, v = _maps(4, 10, K=6)
    boxes = _boxes(4, hi=30.0, img=30.0)
    boxes[0] = torch.tensor([2.2, 3.7, 2.9, 4.1])
    _assert_packed_equal(fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes, impl="triton"),
                         ref.chart_to_iuv(coarse, fine, u, v, boxes))
    scores = torch.tensor([0.5, 0.5, 0.9, 0.1])
    got = fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 30, 33, impl="triton")
    want = ref.paste_iuv(coarse, fine, u, v, boxes, scores, 30, 33)
    assert torch.equal(got[0], want[0]) and (got.int() - want.int()).abs().max() <= 1
    maps, ri, pts = _points(P=60)
    maps.requires_grad_(True)
    out = fastops.roi_point_sample(maps, ri, pts, impl="triton")
    want = ref.roi_point_sample(maps, ri, pts)
    assert torch.equal(out, want)
    g = torch.randn_like(out)
    a, = torch.autograd.grad(out, maps, g)
    b, = torch.autograd.grad(want, maps, g)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    m2 = maps.detach()[:2, :2, :5, :5].clone().requires_grad_(True)
    ri2 = ri[:20] % 2
    p2 = pts[:20] * 5 / 9
    assert torch.autograd.gradcheck(lambda m: fastops.roi_point_sample(m, ri2, p2, impl="triton"), (m2,))
    with pytest.raises(ValueError, match="roi_index"):
        fastops.roi_point_sample(maps, ri + 100, pts, impl="triton")
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.fastops.roi_point_sample_triton(maps.detach(), ri + 100, pts)
    with pytest.raises(RuntimeError, match="finite"):
        torch.ops.fastops.densepose_chart_to_iuv_triton(coarse, fine, u, v, boxes * float("nan"))


def test_triton_opcheck_and_compile():
    from fastops.triton._registry import INTERPRET
    if not INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")
    import fastops.triton.densepose  # noqa: F401  (registers the _triton ops)
    maps, ri, pts = _points(R=2, C=3, S=4, P=10, dtype=torch.float32)
    torch.library.opcheck(torch.ops.fastops.roi_point_sample_triton.default, (maps.requires_grad_(True), ri, pts))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(m):
        return fastops.roi_point_sample(m, ri, pts, impl="triton").sum()

    a, = torch.autograd.grad(f(maps), maps)
    b, = torch.autograd.grad(ref.roi_point_sample(maps, ri, pts).sum(), maps)
    torch.testing.assert_close(a, b)
