"""fastops.flow_warp against the grid_sample recipes and the exact float64 pixel formula."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastops
from fastops.reference.flow_warp import flow_warp_grid_sample, flow_warp_pixel_formula, sample_positions

COMBOS = list(itertools.product(("zeros", "border"), (True, False), ("pixel", "normalized")))


def _data(b=2, c=5, h=7, w=9, dtype=torch.float64, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    f = (torch.randn(b, 2, h, w, generator=g, dtype=torch.float64) * scale).to(dtype)
    return x, f


def _flow_for(units, f, h, w):
    # Normalised flows are in grid units: scale so that displacements are a few pixels either way.
    return f if units == "pixel" else f * (2.0 / max(w - 1, 1))


@pytest.mark.parametrize("padding_mode,align_corners,units", COMBOS)
@pytest.mark.parametrize("flow_layout", ("B2HW", "BHW2"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_matches_grid_sample_recipe(padding_mode, align_corners, units, flow_layout, dtype):
    x, f = _data(dtype=dtype)
    f = _flow_for(units, f, 7, 9)
    expected = flow_warp_grid_sample(x, f, padding_mode, align_corners, units)
    arg = f if flow_layout == "B2HW" else f.permute(0, 2, 3, 1).contiguous()
    out = fastops.flow_warp(x, arg, padding_mode=padding_mode, align_corners=align_corners, units=units,
                            flow_layout=flow_layout)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("padding_mode,align_corners,units", COMBOS)
@pytest.mark.parametrize("memory_format", (torch.contiguous_format, torch.channels_last))
def test_exact_pixel_formula_and_mask(padding_mode, align_corners, units, memory_format):
    x, f = _data(b=2, c=4, h=6, w=11, scale=4.0, seed=1)
    f = _flow_for(units, f, 6, 11)
    x = x.contiguous(memory_format=memory_format)
    out, mask = fastops.flow_warp(x, f, padding_mode=padding_mode, align_corners=align_corners, units=units,
                                  return_mask=True)
    exp, exp_mask = flow_warp_pixel_formula(x, f, padding_mode, align_corners, units)
    torch.testing.assert_close(out, exp, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(mask, exp_mask, atol=0, rtol=0)
    assert mask.shape == (2, 1, 6, 11)
    assert out.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("memory_format", (torch.contiguous_format, torch.channels_last))
def test_identity_and_integer_flows_are_exact(dtype, memory_format):
    x = torch.randn(2, 3, 8, 10).to(dtype).contiguous(memory_format=memory_format)
    zero = torch.zeros(2, 2, 8, 10, dtype=dtype)
    assert torch.equal(fastops.flow_warp(x, zero), x)
    # Integer shift (u, v) = (2, -1): out[y, x] = in[y - 1, x + 2], zeros outside.
    shift = torch.zeros(2, 2, 8, 10, dtype=dtype)
    shift[:, 0] = 2
    shift[:, 1] = -1
    out = fastops.flow_warp(x, shift)
    exp = torch.zeros_like(x)
    exp[:, :, 1:, :-2] = x[:, :, :-1, 2:]
    assert torch.equal(out, exp)
    # Border padding: clamp the source index.
    ys = (torch.arange(8) - 1).clamp(0, 7)
    xs = (torch.arange(10) + 2).clamp(0, 9)
    assert torch.equal(fastops.flow_warp(x, shift, padding_mode="border"), x[:, :, ys][:, :, :, xs])


@pytest.mark.parametrize("impl", ("cpp", "triton", "reference"))
@pytest.mark.parametrize("padding_mode,align_corners,units", COMBOS)
def test_nan_inf_rule(impl, padding_mode, align_corners, units):
    # Input NaN/inf reach the outputs whose in-map taps include them (even at weight 0, as grid_sample); a sample
    # entirely outside the map is exactly 0 even when the clamped tap it would read is NaN; non-finite flow -> 0.
    x, f = _data(b=1, c=2, h=5, w=6, scale=0.0)
    x[0, 0, 0, 0] = float("nan")
    x[0, 1, 4, 5] = float("inf")
    f[0, 0, 2, :] = -40.0   # row 2: far left of the map
    f[0, 1, 3, :] = 40.0    # row 3: far below
    f[0, 0, 1, 1] = -1.0    # (1, 1) samples (0, 1)... exactly; integer position
    f[0, 1, 1, 1] = -1.0    # ... -> (0, 0): the NaN pixel, weight 1
    f[0, 0, 1, 3] = float("nan")
    f[0, 1, 4, 2] = float("-inf")
    f = _flow_for(units, f, 5, 6)
    out, mask = fastops.flow_warp(x, f, padding_mode=padding_mode, align_corners=align_corners, units=units,
                                  return_mask=True, impl=impl)
    if units == "pixel" and align_corners:
        exp, exp_mask = flow_warp_pixel_formula(x, f, padding_mode, align_corners, units)
        torch.testing.assert_close(out, exp, equal_nan=True, atol=1e-12, rtol=0)
        assert torch.isnan(out[0, 0, 1, 1])
        assert torch.isnan(out[0, 0, 0, 0])
    else:  # grid_sample, with the flow rule applied (its result at a NaN position is unspecified)
        exp = flow_warp_grid_sample(x, f, padding_mode, align_corners, units)
        exp = torch.where(torch.isfinite(f).all(1, keepdim=True), exp, 0.0)
        torch.testing.assert_close(out, exp, equal_nan=True, atol=1e-12, rtol=0)
    assert out[0, :, 1, 3].eq(0).all() and mask[0, 0, 1, 3] == 0 and out[0, :, 4, 2].eq(0).all()
    if padding_mode == "zeros":
        assert out[0, :, 2].eq(0).all() and out[0, :, 3].eq(0).all()  # never the NaN at a clamped tap


def test_grid_sample_recipe_is_not_exact_but_we_are():
    # The recipe's normalise/unnormalise round trip is off by rounding in fp32; the pixel formula is exact.
    x = torch.randn(1, 4, 64, 333)
    zero = torch.zeros(1, 2, 64, 333)
    assert torch.equal(fastops.flow_warp(x, zero), x)
    torch.testing.assert_close(flow_warp_grid_sample(x, zero), x, atol=1e-3, rtol=0)


@pytest.mark.parametrize("padding_mode", ("zeros", "border"))
def test_flows_leaving_the_image_and_non_finite(padding_mode):
    x, f = _data(b=1, c=3, h=5, w=6)
    f = f * 0
    f[0, 0, 0, :] = 1e30
    f[0, 1, 1, :] = -1e30
    f[0, 0, 2, 0] = float("nan")
    f[0, 1, 2, 1] = float("inf")
    f[0, 0, 2, 2] = -float("inf")
    f[0, 0, 3, :] = 7.5  # just outside on the right
    f[0, 0, 4, :] = -6.0  # exactly one column left of the map for x = 0 (x + u = -6 .. -1)
    out, mask = fastops.flow_warp(x, f, padding_mode=padding_mode, return_mask=True)
    exp, exp_mask = flow_warp_pixel_formula(x, f, padding_mode)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, exp, atol=1e-12, rtol=0)
    assert torch.equal(mask, exp_mask)
    assert (out[0, :, 2, :3] == 0).all()  # NaN/inf positions give 0 in both modes
    if padding_mode == "zeros":
        assert (out[0, :, 0] == 0).all() and (out[0, :, 1] == 0).all() and (out[0, :, 3] == 0).all()
    g = torch.randn_like(out)
    xr, fr = x.clone().requires_grad_(), f.clone().requires_grad_()
    gi, gf = torch.autograd.grad(fastops.flow_warp(xr, fr, padding_mode=padding_mode), (xr, fr), g)
    assert torch.isfinite(gi).all() and torch.isfinite(gf).all()


@pytest.mark.parametrize("padding_mode,align_corners,units", COMBOS)
@pytest.mark.parametrize("shape", ((1, 2, 1, 7), (2, 3, 6, 1), (1, 2, 1, 1)))
def test_size_one_axes(padding_mode, align_corners, units, shape):
    b, c, h, w = shape
    x, f = _data(b, c, h, w, scale=1.5)
    out, mask = fastops.flow_warp(x, f, padding_mode=padding_mode, align_corners=align_corners, units=units,
                                  return_mask=True)
    exp, exp_mask = flow_warp_pixel_formula(x, f, padding_mode, align_corners, units)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, exp, atol=1e-12, rtol=0)
    assert torch.equal(mask, exp_mask)
    if not (units == "pixel" and align_corners):  # there the recipe collapses W=1 to ix=0; the formula does not
        torch.testing.assert_close(out, flow_warp_grid_sample(x, f, padding_mode, align_corners, units),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("memory_format", (torch.contiguous_format, torch.channels_last))
def test_half_precision(dtype, memory_format):
    x, f = _data(b=2, c=6, h=9, w=12, dtype=dtype, scale=2.5)
    x = x.contiguous(memory_format=memory_format)
    out = fastops.flow_warp(x, f)
    assert out.dtype == dtype and out.is_contiguous(memory_format=memory_format)
    exp, _ = flow_warp_pixel_formula(x.double(), f.double())
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    torch.testing.assert_close(out.double(), exp, atol=tol, rtol=tol)
    xr, fr = x.clone().requires_grad_(), f.clone().requires_grad_()
    g = torch.randn(x.shape).to(dtype)
    gi, gf = torch.autograd.grad(fastops.flow_warp(xr, fr), (xr, fr), g)
    xd, fd = x.double().requires_grad_(), f.double().requires_grad_()
    ri, rf = torch.autograd.grad(flow_warp_grid_sample(xd, fd), (xd, fd), g.double())
    assert gi.dtype == dtype and gf.dtype == dtype
    torch.testing.assert_close(gi.double(), ri, atol=tol * 4, rtol=tol)
    torch.testing.assert_close(gf.double(), rf, atol=tol * 20, rtol=tol * 4)


@pytest.mark.parametrize("padding_mode,align_corners,units", COMBOS)
def test_gradients_match_recipe(padding_mode, align_corners, units):
    x, f = _data(b=2, c=5, h=7, w=9)
    f = _flow_for(units, f, 7, 9)
    g = torch.randn(x.shape, dtype=torch.float64)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xr = x.contiguous(memory_format=fmt).requires_grad_()
        fr = f.clone().requires_grad_()
        gi, gf = torch.autograd.grad(fastops.flow_warp(xr, fr, padding_mode=padding_mode,
                                                       align_corners=align_corners, units=units), (xr, fr), g)
        ri, rf = torch.autograd.grad(flow_warp_grid_sample(xr, fr, padding_mode, align_corners, units), (xr, fr), g)
        torch.testing.assert_close(gi, ri, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(gf, rf, atol=1e-12, rtol=1e-12)
        assert gi.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("padding_mode,align_corners,units", [("zeros", True, "pixel"), ("border", False, "pixel"),
                                                              ("zeros", False, "normalized")])
def test_gradcheck(padding_mode, align_corners, units):
    x, f = _data(b=1, c=3, h=5, w=6, scale=1.3, seed=3)
    f = _flow_for(units, f, 5, 6)
    f = f + 0.013  # keep positions off the integer kinks (finite differences are not defined there)
    x.requires_grad_()
    f.requires_grad_()
    fn = lambda a, b: fastops.flow_warp(a, b, padding_mode=padding_mode, align_corners=align_corners,  # noqa
                                        units=units)
    assert torch.autograd.gradcheck(fn, (x, f))
    # The BHW2 layout itself (a [B, H, W, 2] flow read through its strides), not a permute back to B2HW.
    fb = f.detach().permute(0, 2, 3, 1).contiguous().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: fastops.flow_warp(a, b, padding_mode=padding_mode, align_corners=align_corners, units=units,
                                       flow_layout="BHW2"), (x, fb))


def test_gradients_only_where_required():
    x, f = _data()
    orig = torch.ops.fastops._flow_warp_backward

    xr = x.clone().requires_grad_()
    (gi,) = torch.autograd.grad(fastops.flow_warp(xr, f).sum(), (xr,))
    fr = f.clone().requires_grad_()
    (gf,) = torch.autograd.grad(fastops.flow_warp(x, fr).sum(), (fr,))
    xd, fd = x.clone().requires_grad_(), f.clone().requires_grad_()
    ri, rf = torch.autograd.grad(flow_warp_grid_sample(xd, fd).sum(), (xd, fd))
    torch.testing.assert_close(gi, ri)
    torch.testing.assert_close(gf, rf)
    # The backward op itself skips (returns empty) what is not asked for.
    gi2, gf2 = orig(torch.ones_like(x), x, f, "zeros", True, "pixel", True, False)
    assert gf2.numel() == 0 and gi2.shape == x.shape
    gi3, gf3 = orig(torch.ones_like(x), x, f, "zeros", True, "pixel", False, True)
    assert gi3.numel() == 0 and gf3.shape == f.shape


def test_deterministic_and_thread_independent():
    x, f = _data(b=1, c=33, h=40, w=37, dtype=torch.float32, scale=6.0)
    g = torch.randn(x.shape)
    results = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            for fmt in (torch.contiguous_format, torch.channels_last):
                xr = x.contiguous(memory_format=fmt).requires_grad_()
                fr = f.clone().requires_grad_()
                out = fastops.flow_warp(xr, fr)
                results.append((fmt, out.detach(), *torch.autograd.grad(out, (xr, fr), g)))
    finally:
        torch.set_num_threads(old)
    for fmt in (torch.contiguous_format, torch.channels_last):
        rs = [r[1:] for r in results if r[0] == fmt]
        for r in rs[1:]:
            for a, b in zip(rs[0], r):
                assert torch.equal(a, b)


def test_non_contiguous_inputs():
    x, f = _data(b=2, c=8, h=10, w=12)
    xs = x[:, ::2, :, 1:]  # strided channels, offset columns
    fs = torch.randn(2, 4, 10, 11, dtype=torch.float64)[:, 1:3] * 2
    out = fastops.flow_warp(xs, fs)
    torch.testing.assert_close(out, flow_warp_grid_sample(xs, fs), atol=1e-12, rtol=0)
    # BHW2 flow given as a permuted view, channels_last input, expanded gradient.
    fb = f.permute(0, 2, 3, 1)
    xcl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    fbr = fb.clone().requires_grad_()
    out = fastops.flow_warp(xcl, fbr, flow_layout="BHW2")
    gi, gf = torch.autograd.grad(out.sum(), (xcl, fbr))
    xd, fd = x.clone().requires_grad_(), f.clone().requires_grad_()
    ri, rf = torch.autograd.grad(flow_warp_grid_sample(xd, fd).sum(), (xd, fd))
    torch.testing.assert_close(gi, ri)
    torch.testing.assert_close(gf, rf.permute(0, 2, 3, 1))
    assert gf.shape == fb.shape


@pytest.mark.parametrize("shape", ((0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)))
def test_empty(shape):
    b, c, h, w = shape
    x = torch.randn(shape, requires_grad=True)
    f = torch.randn(b, 2, h, w, requires_grad=True)
    out, mask = fastops.flow_warp(x, f, return_mask=True)
    assert out.shape == shape and mask.shape == (b, 1, h, w)
    gi, gf = torch.autograd.grad(out.sum(), (x, f), allow_unused=True)
    assert gi.shape == shape and gf.shape == f.shape
    if c == 0:
        assert (gf == 0).all()


def test_errors():
    x, f = _data()
    with pytest.raises(ValueError, match="flow must have shape"):
        fastops.flow_warp(x, f[:, :, :-1])
    with pytest.raises(ValueError, match="flow must have shape"):
        fastops.flow_warp(x, f, flow_layout="BHW2")
    with pytest.raises(ValueError, match="flow must have shape"):
        fastops.flow_warp(x, torch.cat([f, f], 1))
    with pytest.raises(ValueError, match="flow must have the same dtype"):
        fastops.flow_warp(x, f.float())
    with pytest.raises(ValueError, match="input must be 4-D"):
        fastops.flow_warp(x[0], f)
    with pytest.raises(ValueError, match="padding_mode"):
        fastops.flow_warp(x, f, padding_mode="reflection")
    with pytest.raises(ValueError, match="units"):
        fastops.flow_warp(x, f, units="percent")
    with pytest.raises(ValueError, match="flow_layout"):
        fastops.flow_warp(x, f, flow_layout="HW2")
    with pytest.raises(ValueError, match="impl"):
        fastops.flow_warp(x, f, impl="cuda")
    with pytest.raises(ValueError, match="input must have dtype"):
        fastops.flow_warp(x.long(), f)
    # The raw op checks too (no Python wrapper in front).
    with pytest.raises(RuntimeError, match="flow must have the input's batch and spatial size"):
        torch.ops.fastops.flow_warp(x, f[:1], "zeros", True, "pixel", False)
    with pytest.raises(RuntimeError, match="padding_mode"):
        torch.ops.fastops.flow_warp(x, f, "mirror", True, "pixel", False)


def test_reference_impl():
    x, f = _data()
    out, mask = fastops.flow_warp(x, f, return_mask=True, impl="reference")
    exp, exp_mask = flow_warp_pixel_formula(x, f)
    torch.testing.assert_close(out, exp)
    assert torch.equal(mask, exp_mask)


@pytest.mark.parametrize("memory_format", (torch.contiguous_format, torch.channels_last))
@pytest.mark.parametrize("return_mask", (False, True))
def test_opcheck(memory_format, return_mask):
    x, f = _data(b=2, c=3, h=5, w=6, dtype=torch.float32)
    x = x.contiguous(memory_format=memory_format).requires_grad_()
    f.requires_grad_()
    torch.library.opcheck(torch.ops.fastops.flow_warp.default, (x, f, "border", False, "pixel", return_mask))
    g = torch.randn(x.shape)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.fastops._flow_warp_backward.default,
                              (g, x.detach(), f.detach(), "zeros", True, "normalized", *need))


def test_compile_and_export():
    x, f = _data(b=1, c=3, h=6, w=7, dtype=torch.float32)

    def fn(a, b):
        out, mask = fastops.flow_warp(a, b, padding_mode="border", return_mask=True)
        return out * mask

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    xr, fr = x.clone().requires_grad_(), f.clone().requires_grad_()
    res = compiled(xr, fr)
    torch.testing.assert_close(res, fn(x, f))
    gi, gf = torch.autograd.grad(res.sum(), (xr, fr))
    xe, fe = x.clone().requires_grad_(), f.clone().requires_grad_()
    ei, ef = torch.autograd.grad(fn(xe, fe).sum(), (xe, fe))
    torch.testing.assert_close(gi, ei)
    torch.testing.assert_close(gf, ef)

    class M(torch.nn.Module):
        def forward(self, a, b):
            return fastops.flow_warp(a, b, flow_layout="BHW2", units="normalized", align_corners=False)

    fb = f.permute(0, 2, 3, 1).contiguous() * 0.1
    ep = torch.export.export(M(), (x, fb))
    torch.testing.assert_close(ep.module()(x, fb), M()(x, fb))


@settings(deadline=None)  # the profile's example count (tests/conftest.py: "ci" 200, "long" 5000)
@given(b=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       scale=st.floats(0.0, 12.0), combo=st.sampled_from(COMBOS), cl=st.booleans(), seed=st.integers(0, 10 ** 6))
def test_property_odd_shapes(b, c, h, w, scale, combo, cl, seed):
    padding_mode, align_corners, units = combo
    x, f = _data(b, c, h, w, scale=scale, seed=seed)
    f = _flow_for(units, f, h, w)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    out, mask = fastops.flow_warp(x, f, padding_mode=padding_mode, align_corners=align_corners, units=units,
                                  return_mask=True)
    exp, exp_mask = flow_warp_pixel_formula(x, f, padding_mode, align_corners, units)
    torch.testing.assert_close(out, exp, atol=1e-11, rtol=1e-11)
    assert torch.equal(mask, exp_mask)
    if h > 1 and w > 1:
        # Gradients are one-sided at integer positions (the two sides round differently): step off them.
        xr, fr = x.clone().requires_grad_(), (f + 0.0137).requires_grad_()
        g = torch.randn(x.shape, dtype=torch.float64)
        gi, gf = torch.autograd.grad(fastops.flow_warp(xr, fr, padding_mode=padding_mode,
                                                       align_corners=align_corners, units=units), (xr, fr), g)
        ri, rf = torch.autograd.grad(flow_warp_grid_sample(xr, fr, padding_mode, align_corners, units), (xr, fr), g)
        torch.testing.assert_close(gi, ri, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(gf, rf, atol=1e-10, rtol=1e-10)


@settings(deadline=None, max_examples=80)
@given(b=st.integers(1, 2), c=st.integers(8, 20), h=st.integers(1, 30), w=st.integers(1, 30),
       scale=st.floats(0.0, 40.0), combo=st.sampled_from(COMBOS), seed=st.integers(0, 10 ** 6))
def test_property_float32_channel_blocks(b, c, h, w, scale, combo, seed):
    """float32 NCHW with 8 or more channels: the AVX2 kernel's channel-block path (8 channels per vector from a
    channel-interleaved copy of the rows the taps reach; leftover channels and border pixels on the scalar path)."""
    padding_mode, align_corners, units = combo
    x, f = _data(b, c, h, w, scale=scale, seed=seed)
    x, f = x.float(), _flow_for(units, f, h, w).float()
    out, mask = fastops.flow_warp(x, f, padding_mode=padding_mode, align_corners=align_corners, units=units,
                                  return_mask=True)
    exp, exp_mask = flow_warp_pixel_formula(x.double(), f.double(), padding_mode, align_corners, units)
    torch.testing.assert_close(out.double(), exp, atol=2e-5, rtol=2e-5)
    if h > 1 and w > 1:
        # The NCHW float32 backward: its layout changes (NCHW <-> channels_last, 8 x 8 AVX2 tiles plus leftover
        # channels/pixels) around the channels_last scatter, against float64 grid_sample gradients off the integer
        # positions (one-sided gradients there).
        xr, fr = x.clone().requires_grad_(), (f + 0.0137).requires_grad_()
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        gi, gf = torch.autograd.grad(fastops.flow_warp(xr, fr, padding_mode=padding_mode,
                                                       align_corners=align_corners, units=units), (xr, fr), g)
        x64, f64 = xr.detach().double().requires_grad_(), fr.detach().double().requires_grad_()
        ri, rf = torch.autograd.grad(flow_warp_grid_sample(x64, f64, padding_mode, align_corners, units), (x64, f64),
                                     g.double())
        torch.testing.assert_close(gi.double(), ri, atol=1e-4, rtol=1e-4)
        # The flow gradient jumps where a sample position crosses a grid line (the taps change): pixels whose
        # float64 position is within 1e-3 px of one may fall on the other side in float32 (seen: ix 1e-6 from an
        # integer, a jump of 22.7). Those pixels are left out of the flow-gradient comparison.
        ix, iy = sample_positions(fr.detach(), align_corners, units)
        smooth = ((ix - ix.round()).abs() > 1e-3) & ((iy - iy.round()).abs() > 1e-3)
        smooth = smooth.unsqueeze(1).expand_as(gf)
        torch.testing.assert_close(gf.double()[smooth], rf[smooth], atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("shape,scale", [((1, 19, 23, 37), 3.0), ((2, 16, 40, 64), 9.0), ((1, 8, 200, 200), 150.0)])
def test_float32_channel_blocks_with_non_finite_inputs(shape, scale):
    """The channel-block path reads all four taps of a pixel (0 * inf = NaN at a zero-weight tap, as grid_sample)
    and leaves out-of-map taps to the border pixels' scalar path; flows on a 1/64 grid keep the float32 positions
    exact, so NaN placement is comparable with the float64 formula. The last case's flow reaches the whole map
    (the row copy would not fit in cache: the scalar path)."""
    b, c, h, w = shape
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g)
    x.view(-1)[torch.randint(0, x.numel(), (40,), generator=g)] = float("inf")
    x.view(-1)[torch.randint(0, x.numel(), (40,), generator=g)] = float("nan")
    f = (torch.randn(b, 2, h, w, generator=g) * scale * 64).round() / 64
    for padding_mode in ("zeros", "border"):
        out, mask = fastops.flow_warp(x, f, padding_mode=padding_mode, return_mask=True)
        exp, exp_mask = flow_warp_pixel_formula(x.double(), f.double(), padding_mode)
        assert torch.equal(out.isnan(), exp.isnan())
        torch.testing.assert_close(out.double(), exp, atol=2e-5, rtol=2e-5, equal_nan=True)
        assert torch.equal(mask, exp_mask.to(mask.dtype))


# ---- Triton (interpreted on the CPU: small and few) --------------------------------------------------------------

@pytest.mark.parametrize("padding_mode,align_corners,units", [("zeros", True, "pixel"), ("border", False, "pixel"),
                                                              ("zeros", False, "normalized"),
                                                              ("border", True, "normalized")])
@pytest.mark.parametrize("memory_format", (torch.contiguous_format, torch.channels_last))
def test_triton(padding_mode, align_corners, units, memory_format):
    x, f = _data(b=2, c=5, h=6, w=7, scale=3.0, seed=5)
    f = _flow_for(units, f, 6, 7)
    xr = x.contiguous(memory_format=memory_format).requires_grad_()
    fr = f.permute(0, 2, 3, 1).contiguous().requires_grad_()
    out, mask = fastops.flow_warp(xr, fr, padding_mode=padding_mode, align_corners=align_corners, units=units,
                                  flow_layout="BHW2", return_mask=True, impl="triton")
    exp, exp_mask = flow_warp_pixel_formula(x, f, padding_mode, align_corners, units)
    torch.testing.assert_close(out, exp, atol=1e-12, rtol=1e-12)
    assert torch.equal(mask, exp_mask) and out.is_contiguous(memory_format=memory_format)
    g = torch.randn(x.shape, dtype=torch.float64)
    gi, gf = torch.autograd.grad(out, (xr, fr), g)
    xd, fd = x.clone().requires_grad_(), f.clone().requires_grad_()
    ri, rf = torch.autograd.grad(flow_warp_grid_sample(xd, fd, padding_mode, align_corners, units), (xd, fd), g)
    torch.testing.assert_close(gi, ri, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(gf, rf.permute(0, 2, 3, 1), atol=1e-12, rtol=1e-12)


def test_triton_half_opcheck_and_gradcheck():
    x, f = _data(b=1, c=3, h=5, w=6, dtype=torch.float16, scale=2.0)
    out = fastops.flow_warp(x, f, impl="triton")
    torch.testing.assert_close(out.double(), flow_warp_pixel_formula(x.double(), f.double())[0], atol=1e-2, rtol=1e-2)
    import fastops.triton.flow_warp as _registers_triton_ops  # noqa: F401

    x32, f32 = x.float(), f.float()
    torch.library.opcheck(torch.ops.fastops.flow_warp_triton.default, (x32, f32, "zeros", True, "pixel", True))
    xd, fd = _data(b=1, c=2, h=4, w=5, scale=1.3, seed=7)
    xd.requires_grad_()
    fd = (fd + 0.013).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fastops.flow_warp(a, b, padding_mode="border", impl="triton"),
                                    (xd, fd))


# ---- layout (issue 10) ---------------------------------------------------------------------------------------------

def test_option_strings_match_cpp():
    from fastops.registrations import flow_warp as reg

    x, f = _data(b=1, c=2, h=3, w=4)
    for pm in reg.PADDING_MODES:
        for units in reg.UNITS:
            torch.ops.fastops.flow_warp(x, f, pm, True, units, False)
    with pytest.raises(RuntimeError, match="padding_mode"):
        torch.ops.fastops.flow_warp(x, f, "reflection", True, "pixel", False)
    with pytest.raises(RuntimeError, match="units"):
        torch.ops.fastops.flow_warp(x, f, "zeros", True, "pixels", False)


# ---- drop-in conventions (issue 12) --------------------------------------------------------------------------------

def test_torchscript_save_load(tmp_path):
    x, f = _data(b=1, c=3, h=5, w=6, dtype=torch.float32)
    scripted = torch.jit.script(fastops.flow_warp)
    torch.testing.assert_close(scripted(x, f), fastops.flow_warp(x, f), atol=0, rtol=0)

    class M(torch.nn.Module):
        def forward(self, a, b):
            out = fastops.flow_warp(a, b, "border", False, "pixel", "BHW2", True)
            assert isinstance(out, tuple)
            return out[0] * out[1]

    fb = f.permute(0, 2, 3, 1).contiguous()
    m = torch.jit.script(M())
    path = tmp_path / "m.pt"
    m.save(str(path))
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(x, fb), M()(x, fb), atol=0, rtol=0)


def test_fx_symbolic_trace_keeps_a_leaf_call():
    class M(torch.nn.Module):
        def forward(self, a, b):
            return fastops.flow_warp(a, b, units="normalized") * 2

    gm = torch.fx.symbolic_trace(M())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert fastops.flow_warp in targets and len(targets) == 2
    x, f = _data(b=1, c=3, h=5, w=6, dtype=torch.float32)
    torch.testing.assert_close(gm(x, f * 0.1), M()(x, f * 0.1), atol=0, rtol=0)


@pytest.mark.parametrize("impl", ("cpp", "triton", "reference"))
def test_autocast_bf16_features_fp32_flow(impl):
    x, f = _data(b=1, c=4, h=6, w=7, dtype=torch.float32, scale=2.0)
    xb = x.bfloat16().requires_grad_()
    fr = f.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fastops.flow_warp(xb, fr, impl=impl)
    assert out.dtype == torch.bfloat16
    # torchvision's roi_align rule: computed in float32 from the (bf16-rounded) features, cast back.
    exp = fastops.flow_warp(xb.detach().float(), f, impl=impl).bfloat16()
    torch.testing.assert_close(out, exp, atol=0, rtol=0)
    gi, gf = torch.autograd.grad(out.float().sum(), (xb, fr))
    assert gi.dtype == torch.bfloat16 and gf.dtype == torch.float32 and torch.isfinite(gf).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the raw op has an autocast kernel too
        o2, _ = torch.ops.fastops.flow_warp(xb.detach(), f, "zeros", True, "pixel", False)
    assert o2.dtype == torch.bfloat16
    torch.testing.assert_close(o2, fastops.flow_warp(xb.detach().float(), f).bfloat16(), atol=0, rtol=0)


def test_triton_backward_honours_deterministic_mode():
    x, f = _data(b=1, c=3, h=5, w=6, dtype=torch.float32)
    xr, fr = x.clone().requires_grad_(), f.clone().requires_grad_()
    torch.use_deterministic_algorithms(True)
    try:
        out = fastops.flow_warp(xr, fr, impl="triton")
        with pytest.raises(RuntimeError, match="flow_warp"):
            torch.autograd.grad(out.sum(), (xr,))
        (gf,) = torch.autograd.grad(fastops.flow_warp(x, fr, impl="triton").sum(), (fr,))  # no scatter: fine
        gi, _ = torch.autograd.grad(fastops.flow_warp(xr, fr, impl="cpp").sum(), (xr, fr))  # deterministic
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.isfinite(gf).all() and torch.isfinite(gi).all()


# ---- ONNX (issue 13) -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dynamo", (False, True), ids=("torchscript", "dynamo"))
@pytest.mark.parametrize("padding_mode,align_corners,units", COMBOS)
def test_onnx_export_runs_in_onnxruntime(dynamo, padding_mode, align_corners, units):
    import io

    import numpy as np
    import onnx
    import onnxruntime as ort

    import fastops.onnx

    class M(torch.nn.Module):
        def forward(self, a, b):
            return fastops.flow_warp(a, b, padding_mode, align_corners, units, "B2HW", True)

    x, f = _data(b=2, c=3, h=5, w=7, dtype=torch.float32, scale=2.5)
    f = _flow_for(units, f, 5, 7)
    f[0, 0, 1, 1] = float("nan")
    buf = io.BytesIO()
    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(M(), (x, f), buf, dynamo=True, input_names=["x", "f"],
                          dynamic_shapes=({0: batch}, {0: batch}),
                          custom_translation_table=fastops.onnx.translations())
    else:
        torch.onnx.export(M(), (x, f), buf, dynamo=False, opset_version=16, input_names=["x", "f"],
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "f": {0: "b", 2: "h", 3: "w"}})
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for b in (2, 3):  # a batch size other than the traced one
        xb, fb = _data(b=b, c=3, h=5, w=7, dtype=torch.float32, scale=2.5, seed=b)
        fb = _flow_for(units, fb, 5, 7)
        got = sess.run(None, {"x": xb.numpy(), "f": fb.numpy()})
        out, mask = M()(xb, fb)
        np.testing.assert_allclose(got[0], out.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(got[1], mask.numpy())
