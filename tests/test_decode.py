"""Decoding keypoints: fastops against the transcriptions of mmpose's decoders and the stacked-hourglass parser
(fastops/reference/decode.py)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastops
from fastops.reference import decode as R
from keypoints_helpers import LOW, POOL_MODES, REFINES, close, realistic_maps, special_keypoints  # noqa: F401
from helpers import assert_all_equal, per_thread_count


@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0, 3.0])
def test_argmax_matches_mmpose(refine, sigma):
    hm = realistic_maps(3, 9, 20, 17, sigma)
    # the hard places: maxima on the border and next to it, a flat map, an all-negative map, a zero map
    hm[0, 0, 0, 5] = 3.0
    hm[0, 1, 19, 16] = 3.0
    hm[0, 2, 1, 1] = 3.0
    hm[0, 3, 18, 15] = 3.0
    hm[1, 0] = 0.25
    hm[1, 1] = -torch.rand(20, 17)
    hm[1, 2] = 0
    c, s = fastops.heatmap_argmax(hm, refine=refine)
    rc, rs = R.heatmap_argmax(hm, refine)
    close(s, rs, atol=0, rtol=0)
    close(c, rc, atol=2e-4 if refine.startswith("dark") else 0, rtol=0)
    assert (c[1, 1] == -1).all() and (c[1, 2] == -1).all()


@pytest.mark.parametrize("blur", [3, 7, 11, 17])
def test_argmax_dark_blur_kernels(blur):
    hm = realistic_maps(2, 6, 32, 24, 2.0)
    for refine in ("dark", "dark_udp"):
        c, _ = fastops.heatmap_argmax(hm, refine=refine, blur_kernel=blur)
        rc, _ = R.heatmap_argmax(hm, refine, blur)
        close(c, rc, atol=2e-4, rtol=0)


def test_argmax_dark_clamped_needs_full_rescale():
    # a sharp peak on a zero background: blurred values near the maximum fall below 1e-3, so dark_udp's clip
    # depends on mmpose's rescale factor (computed here from the whole blurred map)
    hm = torch.zeros(1, 3, 24, 24)
    hm[0, 0, 10, 12] = 1.0
    hm[0, 1, 5, 6] = 40.0
    hm[0, 1, 5, 7] = 20.0
    hm[0, 2] = realistic_maps(1, 1, 24, 24, 1.0, 0)[0, 0] * 80  # max above 50
    for refine in ("dark", "dark_udp"):
        c, _ = fastops.heatmap_argmax(hm, refine=refine, blur_kernel=11)
        rc, _ = R.heatmap_argmax(hm, refine, 11)
        close(c, rc, atol=2e-4, rtol=0)


def test_argmax_nan_and_ties():
    hm = torch.zeros(1, 3, 5, 6)
    hm[0, 0, 2, 3] = float("nan")
    hm[0, 0, 1, 1] = 5
    hm[0, 1, 1, 2] = 2
    hm[0, 1, 3, 1] = 2  # tie: the first in row-major order wins
    hm[0, 2] = 1  # flat: index 0
    c, s = fastops.heatmap_argmax(hm)
    assert torch.isnan(s[0, 0]) and c[0, 0].tolist() == [3, 2]
    assert c[0, 1].tolist() == [2, 1] and c[0, 2].tolist() == [0, 0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_argmax_dtypes(dtype):
    hm = realistic_maps(2, 5, 16, 16, 2.0, 0.0).to(dtype)
    for refine in REFINES:
        c, s = fastops.heatmap_argmax(hm, refine=refine)
        rc, rs = R.heatmap_argmax(hm.to(torch.float64), refine)  # the same values, decoded in float
        assert c.dtype == dtype and s.dtype == dtype
        assert torch.equal(s.double(), rs.to(dtype).double())  # the maximum itself: exact
        if refine in ("none", "quarter", "hourglass"):
            # integer + 0.25 / 0.5 steps are exact in every dtype for maps this size: a wrong quarter offset fails
            assert torch.equal(c.double(), rc.double()), refine
        else:
            # DARK in float on the same values, then one rounding to the dtype: half an ulp at coordinates < 16
            close(c, rc, dtype, atol=0.035 if dtype == torch.bfloat16 else 5e-3, rtol=0)


def test_argmax_3d_noncontiguous_empty():
    hm = realistic_maps(1, 4, 12, 10)[0]
    c, s = fastops.heatmap_argmax(hm, refine="quarter")
    rc, _ = R.heatmap_argmax(hm[None], "quarter")
    assert c.shape == (4, 2) and torch.equal(c, rc[0])
    t = realistic_maps(3, 4, 12, 10).transpose(2, 3)
    c2, _ = fastops.heatmap_argmax(t, refine="dark")
    close(c2, R.heatmap_argmax(t.contiguous(), "dark")[0], atol=2e-4)
    c3, s3 = fastops.heatmap_argmax(torch.zeros(0, 17, 8, 8))
    assert c3.shape == (0, 17, 2) and s3.shape == (0, 17)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("beta", [1.0, 5.0, -0.5])
def test_soft_argmax(normalize, beta):
    hm = torch.randn(3, 4, 9, 13)
    out = fastops.soft_argmax(hm, beta, normalize=normalize)
    close(out, R.soft_argmax(hm, beta, normalize), rtol=1e-5, atol=1e-5)
    hm.requires_grad_(True)
    g = torch.randn(3, 4, 2)
    (gi,) = torch.autograd.grad(fastops.soft_argmax(hm, beta, normalize=normalize), hm, g)
    # reference in float64 (float32 sums in another order differ by a few ulps of the largest gradient element)
    h64 = hm.detach().double().requires_grad_(True)
    (ri,) = torch.autograd.grad(R.soft_argmax(h64, beta, normalize), h64, g.double())
    close(gi.double(), ri, rtol=1e-4, atol=4e-7 * max(1.0, ri.abs().max().item()))


def test_soft_argmax_nan_inf_rule_wide_maps():
    # maps wide enough for the vector loops: a NaN or a +inf anywhere makes the map's coordinates NaN
    hm = torch.rand(1, 3, 9, 40)
    hm[0, 0, 4, 17] = float("nan")
    hm[0, 1, 8, 33] = float("inf")
    out = fastops.soft_argmax(hm, 1.0)
    assert torch.isnan(out[0, :2]).all() and torch.isfinite(out[0, 2]).all()


@pytest.mark.parametrize("case", ["far_below", "near_87", "minus_inf", "huge_scale", "wide_rows"])
def test_soft_argmax_float_paths(case):
    """The float kernel's paths: finite maps with beta >= 0 (lean exponentials; pixels far below the maximum
    underflow to 0), maps with -inf or |beta * max| >= 2^24 (the general path), rows wider than a vector."""
    g = torch.Generator().manual_seed(4)
    hm = torch.randn(2, 3, 7, 40 if case == "wide_rows" else 11, generator=g) * 3
    if case == "far_below":
        hm[0, :, 2:5] = -1e30
    if case == "near_87":  # exponents just above -87 everywhere (no clamp needed) / a few just below (clamped)
        hm = hm.clamp(-3.0, 3.0)
        hm[0, :, 0, 0] = 31.0
        hm[0, :, 3, :] = 31.0 - 87.0 / 2.5 + 0.01
        hm[1, :, 0, 0] = 31.0
        hm[1, :, 3, 2:6] = 31.0 - 99.0 / 2.5
    if case == "minus_inf":
        hm[1, 1, 3, 4:9] = float("-inf")
    if case == "huge_scale":
        hm = hm * 1e7 + 3e7
        hm[:, :, 1, 1] = 3.00001e7 + 1e7 * 10
    for beta in (1.0, 2.5):
        out = fastops.soft_argmax(hm, beta)
        want = R.soft_argmax(hm.double(), beta).float()
        assert torch.isfinite(out).all()
        close(out, want, rtol=1e-5, atol=1e-5)
        hr = hm.clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(fastops.soft_argmax(hr, beta), hr, torch.ones(2, 3, 2))
        h64 = hm.double().requires_grad_(True)
        (ri,) = torch.autograd.grad(R.soft_argmax(h64, beta), h64, torch.ones(2, 3, 2, dtype=torch.float64))
        # float32 rounding of d(coordinate)/d(pixel) = beta * p * (x - E[x]) scales with beta times the map's
        # extent (the baseline-ISA kernel was 1.4 of these units off at a small element of the wide map)
        atol = 4 * torch.finfo(torch.float32).eps * beta * max(hm.shape[-2:])
        close(gi.double(), ri, rtol=1e-4, atol=atol)


def test_soft_argmax_gradcheck_and_dtypes():
    hm = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: fastops.soft_argmax(h, 2.0), (hm,))
    assert torch.autograd.gradcheck(lambda h: fastops.soft_argmax(h, 0.7, normalize=True), (hm,))
    x = torch.randn(2, 3, 8, 8)
    for dt in LOW:
        close(fastops.soft_argmax(x.to(dt)), R.soft_argmax(x.to(dt).float()), dt, atol=0.05, rtol=0.02)
    assert fastops.soft_argmax(torch.zeros(0, 3, 4, 4)).shape == (0, 3, 2)


@pytest.mark.parametrize("impl", ["cpp", "triton"])
@pytest.mark.parametrize("dtype", LOW)
def test_soft_argmax_half_gradients_against_float64(impl, dtype):
    # the low-precision gradient against the float64 gradient of the same (rounded) input: a gradient scaled by
    # 1.5 is off by 50% of its size and fails; the tolerance is a few ulps of the largest gradient
    x = (torch.randn(2, 3, 8, 9) * 2).to(dtype)
    g = torch.randn(2, 3, 2)
    xr = x.clone().requires_grad_(True)
    (gi,) = torch.autograd.grad(fastops.soft_argmax(xr, 1.5, impl=impl), xr, g.to(dtype))
    x64 = x.double().requires_grad_(True)
    (want,) = torch.autograd.grad(R.soft_argmax(x64, 1.5), x64, g.to(dtype).double())
    assert gi.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(gi.double(), want, atol=8 * eps * want.abs().max().item(), rtol=4 * eps)


@settings(deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), refine=st.sampled_from(REFINES), seed=st.integers(0, 1000))
def test_argmax_property_odd_shapes(h, w, refine, seed):
    g = torch.Generator().manual_seed(seed)
    hm = torch.rand(2, 3, h, w, generator=g) + 0.5
    if refine == "dark_udp" and min(h, w) < 3:
        # a 1- or 2-pixel axis makes mmpose's (Hessian + eps I)^-1 amplify rounding noise by 1/eps
        refine = "dark"
    c, s = fastops.heatmap_argmax(hm, refine=refine, blur_kernel=3)
    rc, rs = R.heatmap_argmax(hm, refine, 3)
    assert torch.equal(s, rs)
    if not refine.startswith("dark"):
        close(c, rc, atol=0, rtol=0)
        return
    # DARK's Newton step on a flat, noisy map is ill-conditioned (mmpose's (Hessian + eps I)^-1 can move a point by
    # hundreds of pixels, and float rounding then decides by how many): compare where the step is well-conditioned
    # (the reference moved the point by less than 2 px), and require finite coordinates everywhere
    assert torch.isfinite(c).all()
    base, _ = R.heatmap_argmax(hm, "none", 3)
    ok = ((rc - base).abs() < 2).all(-1)
    close(c[ok], rc[ok], atol=1e-3, rtol=1e-3)


# ---- Triton (TRITON_INTERPRET=1 on CPU tensors; small cases: the interpreter is slow) ---------------------------

def test_triton_soft_argmax():
    hm = torch.randn(2, 3, 5, 7)
    for normalize in (False, True):
        close(fastops.soft_argmax(hm, 1.5, normalize=normalize, impl="triton"), R.soft_argmax(hm, 1.5, normalize),
              rtol=1e-5, atol=1e-5)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: fastops.soft_argmax(h, 2.0, impl="triton"), (x,))
    torch.library.opcheck(torch.ops.fastops.soft_argmax_triton.default, (x, 2.0, False),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_triton_soft_argmax_float64_is_float64():
    # beta and 1/W were computed in float32 (coordinates off by 7e-9, gradients by 2e-7): float64 throughout now
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 9, dtype=torch.float64, generator=g, requires_grad=True)
    gy = torch.randn(2, 3, 2, dtype=torch.float64, generator=g)
    for beta, normalize in ((1.0 / 3.0, False), (2.7, True)):
        out = fastops.soft_argmax(x, beta, normalize=normalize, impl="triton")
        want = fastops.soft_argmax(x, beta, normalize=normalize, impl="reference")
        torch.testing.assert_close(out, want, atol=1e-13, rtol=0)
        (gi,) = torch.autograd.grad(out, x, gy)
        (gw,) = torch.autograd.grad(want, x, gy)
        torch.testing.assert_close(gi, gw, atol=1e-13, rtol=0)


def test_triton_argmax():
    hm = realistic_maps(2, 4, 12, 14, 1.5)
    hm[0, 0] = -1.0
    hm[0, 1, 3, 3] = float("nan")
    hm[1, 0] = 0
    hm[1, 0, 1, 7] = 1.0  # sharp peak: DARK's clamp needs the full-map rescale
    for refine in REFINES:
        c, s = fastops.heatmap_argmax(hm, refine=refine, blur_kernel=5, impl="triton")
        rc, rs = R.heatmap_argmax(hm, refine, 5)
        close(s, rs, atol=0, rtol=0)
        if refine.startswith("dark"):  # a NaN inside the blur window has no meaningful DARK offset
            keep = torch.ones(2, 4, dtype=torch.bool)
            keep[0, 1] = False
            c, rc = c[keep], rc[keep]
        close(c, rc, atol=2e-4 if refine.startswith("dark") else 0, rtol=0)


# ---- threads, errors, bad inputs, opcheck, compile, enums ----------------------------------------------------------

def test_same_results_one_and_two_threads():
    hm = realistic_maps(8, 17, 32, 24)
    assert_all_equal(*per_thread_count(lambda: [*fastops.heatmap_argmax(hm, refine="dark"), fastops.soft_argmax(hm)]))


def test_errors():
    with pytest.raises(ValueError, match="heatmaps"):
        fastops.heatmap_argmax(torch.rand(2, 3))
    with pytest.raises(ValueError, match="heatmaps"):
        fastops.heatmap_argmax(torch.rand(2, 3, 0, 4))
    with pytest.raises(ValueError, match="refine"):
        fastops.heatmap_argmax(torch.rand(2, 3, 4, 4), refine="x")
    with pytest.raises(ValueError, match="blur_kernel"):
        fastops.heatmap_argmax(torch.rand(2, 3, 4, 4), refine="dark", blur_kernel=4)
    with pytest.raises(ValueError, match="heatmaps"):
        fastops.soft_argmax(torch.rand(2, 3, 4, 4).long())
    with pytest.raises(ValueError, match="beta"):
        fastops.soft_argmax(torch.rand(2, 3, 4, 4), float("nan"))
    with pytest.raises(RuntimeError, match="beta"):
        torch.ops.fastops.soft_argmax(torch.rand(2, 3, 4, 4), float("inf"), False)


def _opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_opcheck():
    hm = realistic_maps(2, 3, 10, 12)
    for refine in REFINES:
        _opcheck(torch.ops.fastops.heatmap_argmax.default, (hm, refine, 11))
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    _opcheck(torch.ops.fastops.soft_argmax.default, (x, 1.5, False))
    _opcheck(torch.ops.fastops._soft_argmax_backward.default,
             (torch.randn(2, 3, 2, dtype=torch.float64), x.detach(), torch.rand(2, 3, 2, dtype=torch.float64), 1.5,
              True))
    for dt in (torch.float64, torch.float32):
        xd = x.detach().to(dt).requires_grad_(True)
        _opcheck(torch.ops.fastops._soft_argmax_probs.default, (xd, 1.5, True))
        probs = torch.softmax(xd.detach().flatten(2), -1).view_as(xd)
        _opcheck(torch.ops.fastops._soft_argmax_probs_backward.default,
                 (torch.randn(2, 3, 2, dtype=dt), probs, torch.rand(2, 3, 2, dtype=dt), 1.5, True))


def test_soft_argmax_keeps_probs_for_backward():
    """With a gradient to come, fastops.soft_argmax runs `_soft_argmax_probs` (p saved, float32 / float64), without
    one the plain op; the direct op keeps its own (recomputing) backward. All three against the reference."""
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    g = torch.randn(2, 3, 2, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    out = fastops.soft_argmax(xr, 1.5, normalize=True)
    # the eager fast path's _SoftArgmaxProbs; the general path (here: an int beta) the registered autograd of
    # `_soft_argmax_probs`: the same ops
    assert "SoftArgmaxProbs" in type(out.grad_fn).__name__, type(out.grad_fn).__name__
    slow = fastops.soft_argmax(xr, 2, normalize=True)
    assert "_soft_argmax_probs" in type(slow.grad_fn).__name__, type(slow.grad_fn).__name__
    x3 = x.clone().requires_grad_(True)
    (ws,) = torch.autograd.grad(R.soft_argmax(x3, 2.0, True), x3, g)
    (gs,) = torch.autograd.grad(slow, xr, g)
    close(gs, ws, torch.float64, rtol=1e-10, atol=1e-14)
    c, p = torch.ops.fastops._soft_argmax_probs(xr, 1.5, True)
    assert p.dtype == torch.float64 and not p.requires_grad
    close(p, torch.softmax(1.5 * x.flatten(2), -1).view_as(x), torch.float64, rtol=1e-12, atol=1e-15)
    x2 = x.clone().requires_grad_(True)
    want = R.soft_argmax(x2, 1.5, True)
    (wg,) = torch.autograd.grad(want, x2, g)
    (gi,) = torch.autograd.grad(out, xr, g)
    close(gi, wg, torch.float64, rtol=1e-10, atol=1e-14)
    (gd,) = torch.autograd.grad(torch.ops.fastops.soft_argmax(xr, 1.5, True), xr, g)
    close(gd, wg, torch.float64, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda h: torch.ops.fastops.soft_argmax(h, 0.7, False), (xr,))
    with torch.no_grad():
        assert fastops.soft_argmax(xr, 1.5).grad_fn is None
    # low precision: p in float32, the gradient back in the maps' dtype
    xh = x.to(torch.bfloat16).requires_grad_(True)
    c, p = torch.ops.fastops._soft_argmax_probs(xh, 1.0, False)
    assert c.dtype == torch.bfloat16 and p.dtype == torch.float32
    (gh,) = torch.autograd.grad(c, xh, g.to(torch.bfloat16))
    assert gh.dtype == torch.bfloat16


def test_compile_fullgraph_and_export():
    def f(hm):
        c, s = fastops.heatmap_argmax(hm, refine="dark")
        return c, s, fastops.soft_argmax(hm, 2.0)

    args = (realistic_maps(2, 3, 12, 10),)
    eager = f(*args)
    for a, b in zip(eager, torch.compile(f, fullgraph=True, backend="aot_eager")(*args)):
        assert torch.equal(a, b)

    class M(torch.nn.Module):
        def forward(self, hm):
            return f(hm)

    ep = torch.export.export(M(), args)
    for a, b in zip(eager, ep.module()(*args)):
        assert torch.equal(a, b)


def test_compile_backward():
    x = torch.randn(1, 2, 6, 5, requires_grad=True)

    def f(x):
        return fastops.soft_argmax(x).sum()

    (g1,) = torch.autograd.grad(f(x), x)
    (g2,) = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(x), x)
    close(g1, g2, rtol=1e-6, atol=1e-6)


def test_enums_and_blur_kernel_match_their_sources():
    import os
    import re

    from fastops.registrations import decode as reg

    text = open(os.path.join(os.path.dirname(__file__), "..", "csrc", "decode", "decode.h")).read()
    body = re.search(r"enum Refine : int \{([^}]*)\}", text).group(1)
    cpp = {k.strip(): int(v) for k, v in (item.split("=") for item in body.split(","))}
    names = {"kNone": "none", "kQuarter": "quarter", "kHourglass": "hourglass", "kDark": "dark", "kDarkUDP": "dark_udp"}
    assert {names[k]: v for k, v in cpp.items()} == reg.REFINES
    assert int(re.search(r"constexpr int kMaxBlur = (\d+);", text).group(1)) == reg.MAX_BLUR
    for ks in range(1, reg.MAX_BLUR + 1, 2):
        assert reg.opencv_gaussian_kernel(ks) == pytest.approx(R.opencv_gaussian_kernel(ks).tolist(), abs=1e-15)


@settings(deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), beta=st.sampled_from([0.5, 1.0, 3.0, -1.0]),
       normalize=st.booleans(), seed=st.integers(0, 10000))
def test_soft_argmax_property(h, w, beta, normalize, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, h, w, generator=g, dtype=torch.float64) * 3
    gr = torch.randn(2, 2, 2, generator=g, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    out = fastops.soft_argmax(xr, beta, normalize=normalize)
    (gi,) = torch.autograd.grad(out, xr, gr)
    x2 = x.clone().requires_grad_(True)
    want = R.soft_argmax(x2, beta, normalize)
    (wg,) = torch.autograd.grad(want, x2, gr)
    close(out, want, torch.float64, rtol=1e-12, atol=1e-12)
    close(gi, wg, torch.float64, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("normalize", [False, True])
def test_soft_argmax_onnx(dynamo, normalize):
    from keypoints_helpers import onnx_roundtrip

    class M(torch.nn.Module):
        def forward(self, h):
            return fastops.soft_argmax(h, 1.5, normalize=normalize)

    hm = torch.randn(2, 3, 7, 9)
    (got,) = onnx_roundtrip(M(), (hm,), dynamo)
    close(got, fastops.soft_argmax(hm, 1.5, normalize=normalize), rtol=1e-5, atol=1e-5)
    hm3 = torch.randn(3, 3, 7, 9)  # another batch size through the dynamic axis
    (got3,) = onnx_roundtrip(M(), (hm3,), dynamo)
    close(got3, fastops.soft_argmax(hm3, 1.5, normalize=normalize), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_soft_argmax_onnx_with_grad(dynamo):
    """Maps that require a gradient (a trained head exported in grad mode) still export as soft_argmax's graph."""
    from keypoints_helpers import onnx_roundtrip

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(1.25))

        def forward(self, h):
            return fastops.soft_argmax(h * self.scale, 1.5)

    hm = torch.randn(2, 3, 7, 9)
    (got,) = onnx_roundtrip(M(), (hm,), dynamo)
    close(got, fastops.soft_argmax(hm * 1.25, 1.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_heatmap_argmax_onnx(dynamo):
    from keypoints_helpers import onnx_roundtrip

    class M(torch.nn.Module):
        def forward(self, h):
            return (fastops.heatmap_argmax(h) + fastops.heatmap_argmax(h, refine="quarter")
                    + fastops.heatmap_argmax(h, refine="hourglass"))

    hm = realistic_maps(2, 5, 9, 11)
    hm[0, 0] = -1.0  # score <= 0: -1
    hm[0, 1, 0, 4] = 5.0  # maximum on the border: no quarter offset across it
    hm[1, 2, 8, 10] = 5.0
    got = onnx_roundtrip(M(), (hm,), dynamo)
    for a, b in zip(got, M()(hm)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("refine,blur", [("dark", 11), ("dark", 3), ("dark_udp", 11), ("dark_udp", 5)])
def test_heatmap_argmax_dark_onnx(dynamo, refine, blur):
    """DARK / DARK-UDP: the blur (Pad + Slice taps), the clamp branches and the Taylor step in onnxruntime; one
    export per exporter, run at other batch / keypoint / map sizes (all dynamic)."""
    from keypoints_helpers import onnx_session

    class M(torch.nn.Module):
        def forward(self, h):
            return fastops.heatmap_argmax(h, refine=refine, blur_kernel=blur)

    def maps(B, K, H, W, seed):
        torch.manual_seed(seed)
        hm = realistic_maps(B, K, H, W)
        hm[0, 0] = -1.0  # score <= 0: -1, no refinement
        hm[0, 1].zero_()
        hm[0, 1, 1, 2] = 1.0  # a maximum next to the border (dark leaves it, dark_udp pads by the edge)
        hm[-1, -1] *= 60.0  # maximum above dark_udp's clip at 50: the rescale branch
        hm[-1, 0] = torch.rand(H, W) * 1e-12  # values below the log clamps: the rescale branch
        hm[-1, 0, H // 2, W // 2] = 1e-11
        return hm

    hm = maps(2, 4, 16, 12, 0)
    run = onnx_session(M(), (hm,), dynamo, dynamic={0: {0: "B", 1: "K", 2: "H", 3: "W"}})
    for shape, seed in (((2, 4, 16, 12), 0), ((3, 5, 9, 13), 1), ((1, 6, 24, 20), 2)):
        hm = maps(*shape, seed)
        coords, score = run(hm)
        ec, es = M()(hm)
        assert torch.equal(score, es)
        close(coords, ec, rtol=0, atol=1e-4)
        moved = (ec - ec.round()).abs().amax()
        assert moved > 0.01  # the refinement moved some keypoints (the test is not about integer maxima)


def test_heatmap_argmax_dark_onnx_float64():
    from keypoints_helpers import onnx_session

    class M(torch.nn.Module):
        def forward(self, h):
            return fastops.heatmap_argmax(h, refine="dark_udp", blur_kernel=7)

    hm = realistic_maps(2, 3, 12, 10, dtype=torch.float64)
    (coords, score) = onnx_session(M(), (hm,), False)(hm)
    ec, es = M()(hm)
    assert coords.dtype == torch.float64 and torch.equal(score, es)
    close(coords, ec, torch.float64, rtol=0, atol=1e-9)
