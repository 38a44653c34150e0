"""Heatmaps and keypoints: fastops kernels against the NumPy/PyTorch transcriptions of mmpose, the stacked-hourglass
parser, CenterNet and CornerNet (fastops/reference/heatmaps.py)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastops
from fastops.reference import heatmaps as R

LOW = (torch.float16, torch.bfloat16)
TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-5, 1e-6), torch.float16: (1e-2, 2e-3),
       torch.bfloat16: (2e-2, 1e-2)}


def close(a, b, dtype=torch.float32, rtol=None, atol=None):
    r, t = TOL[dtype]
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol or r, atol=atol or t, equal_nan=True)


def special_keypoints(B, K, H, W, gen=None):
    """Random keypoints plus the hard cases: outside the map, on the border, exact .5 positions."""
    kp = torch.rand(B, K, 2, generator=gen) * torch.tensor([W + 12.0, H + 12.0]) - 6
    extra = torch.tensor([[0.0, 0.0], [W - 1.0, H - 1.0], [W - 0.5, 3.5], [2.5, H - 0.5], [-0.5, -0.5],
                          [10.5, 7.5], [-3.2, 5.0], [W + 2.7, 4.0], [5.0, -9.9], [W / 2, H + 0.4]])
    n = min(K, extra.size(0))
    kp[0, :n] = extra[:n]
    return kp


# ---- rendering ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["msra", "udp", "dark"])
@pytest.mark.parametrize("kernel", ["gaussian", "cauchy"])
@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0, 3.0])
def test_render_matches_mmpose(mode, kernel, sigma):
    B, K, H, W = 3, 12, 24, 20
    kp = special_keypoints(B, K, H, W)
    vis = (torch.rand(B, K) > 0.2).float()
    hm, wt = fastops.render_gaussian_heatmaps(kp, (H, W), sigma, vis, mode=mode, kernel=kernel)
    rh, rw = R.render_gaussian_heatmaps(kp, (H, W), sigma, vis, mode, kernel)
    close(hm, rh)
    close(wt, rw, atol=0)
    assert hm.shape == (B, K, H, W) and wt.shape == (B, K)


@pytest.mark.parametrize("mode", ["msra", "udp", "dark"])
def test_render_multi_instance_and_visibility(mode):
    B, N, K, H, W = 2, 3, 5, 16, 18
    kp = torch.rand(B, N, K, 2) * torch.tensor([W + 4.0, H + 4.0]) - 2
    kp[0, 1, 2] = float("nan")
    vis = torch.tensor([1.0, 0.0, 0.7, 0.3, 2.0]).repeat(B, N, 1)
    hm, wt = fastops.render_gaussian_heatmaps(kp, (H, W), 1.5, vis, mode=mode)
    rh, rw = R.render_gaussian_heatmaps(kp, (H, W), 1.5, vis, mode)
    close(hm, rh)
    close(wt, rw, atol=0)
    assert wt.shape == (B, N, K)
    assert (wt[..., 1] == 0).all() and (wt[..., 3] == 0).all() and wt[0, 1, 2] == 0


def test_render_peak_at_integer_centre_and_no_visible():
    hm, wt = fastops.render_gaussian_heatmaps(torch.tensor([[[5.4, 6.5]]]), (12, 12), 2.0)
    assert hm[0, 0, 7, 5] == 1.0 and wt[0, 0] == 1
    hm, wt = fastops.render_gaussian_heatmaps(torch.tensor([[[-20.0, 3.0]]]), (12, 12), 2.0)
    assert hm.abs().sum() == 0 and wt[0, 0] == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_render_dtypes(dtype):
    B, K, H, W = 2, 6, 16, 12
    kp = special_keypoints(B, K, H, W)
    for mode in ("msra", "dark"):
        hm, wt = fastops.render_gaussian_heatmaps(kp.to(dtype), (H, W), 2.0, mode=mode)
        assert hm.dtype == dtype and wt.dtype == dtype
        rh, rw = R.render_gaussian_heatmaps(kp.to(dtype).float(), (H, W), 2.0, None, mode)
        close(hm, rh, dtype)


def test_render_noncontiguous_and_empty():
    kp = torch.rand(4, 2, 7) * 10
    kpn = kp.transpose(1, 2)  # [4, 7, 2] non-contiguous
    a, _ = fastops.render_gaussian_heatmaps(kpn, (12, 11), 1.0)
    b, _ = fastops.render_gaussian_heatmaps(kpn.contiguous(), (12, 11), 1.0)
    assert torch.equal(a, b)
    h, w = fastops.render_gaussian_heatmaps(torch.zeros(0, 17, 2), (8, 8))
    assert h.shape == (0, 17, 8, 8) and w.shape == (0, 17)
    h, w = fastops.render_gaussian_heatmaps(torch.zeros(2, 0, 2), (8, 8))
    assert h.shape == (2, 0, 8, 8) and w.shape == (2, 0)
    h, w = fastops.render_gaussian_heatmaps(torch.rand(2, 3, 2), (0, 8))
    assert h.shape == (2, 3, 0, 8)


def test_center_heatmap_matches_centernet():
    B, N, C, H, W = 3, 9, 4, 30, 34
    centers = torch.rand(B, N, 2) * torch.tensor([W + 10.0, H + 10.0]) - 5
    centers[0, 0] = torch.tensor([-1.5, 3.0])
    centers[0, 1] = torch.tensor([W + 1.0, H - 1.0])
    radii = torch.randint(0, 7, (B, N))
    labels = torch.randint(-1, C, (B, N))
    out = fastops.render_center_heatmap(centers, radii, labels, C, (H, W))
    ref = R.render_center_heatmap(centers, radii, labels, C, (H, W))
    close(out, ref, atol=0, rtol=0)
    # float radii are truncated like int()
    out2 = fastops.render_center_heatmap(centers.double(), radii.double() + 0.7, labels, C, (H, W))
    close(out2, ref.double(), torch.float64, atol=1e-7)


def test_center_heatmap_errors():
    with pytest.raises(RuntimeError, match="num_classes"):
        fastops.render_center_heatmap(torch.zeros(1, 1, 2), torch.ones(1, 1), torch.tensor([[5]]), 3, (8, 8))
    with pytest.raises(ValueError, match="labels"):
        fastops.render_center_heatmap(torch.zeros(1, 1, 2), torch.ones(1, 1), torch.ones(1, 1), 3, (8, 8))
    with pytest.raises(ValueError, match="radii"):
        fastops.render_center_heatmap(torch.zeros(1, 2, 2), torch.ones(1, 1), torch.ones(1, 2).long(), 3, (8, 8))


@pytest.mark.parametrize("variant", ["centernet", "cornernet"])
def test_gaussian_radius(variant):
    h = torch.rand(50, dtype=torch.float64) * 200 + 1
    w = torch.rand(50, dtype=torch.float64) * 200 + 1
    for o in (0.3, 0.7):
        close(fastops.gaussian_radius(h, w, o, variant=variant), R.gaussian_radius(h, w, o, variant), torch.float64,
              rtol=1e-12, atol=1e-12)
    r32 = fastops.gaussian_radius(h.float(), w.float()[:1], variant=variant)
    assert r32.dtype == torch.float32 and r32.shape == (50,)
    # the published CenterNet radius is larger than CornerNet's corrected one
    if variant == "centernet":
        assert (fastops.gaussian_radius(h, w) > fastops.gaussian_radius(h, w, variant="cornernet")).all()


# ---- decoding ----------------------------------------------------------------------------------------------------

def realistic_maps(B, K, H, W, sigma=2.0, noise=0.02, dtype=torch.float32):
    kp = torch.rand(B, K, 2) * torch.tensor([W - 1.0, H - 1.0])
    hm, _ = R.render_gaussian_heatmaps(kp, (H, W), sigma, None, "dark")
    return (hm + noise * torch.rand_like(hm)).to(dtype)


REFINES = ["none", "quarter", "hourglass", "dark", "dark_udp"]


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
        rc, rs = R.heatmap_argmax(hm.float(), refine)
        assert c.dtype == dtype
        close(c, rc, dtype, atol=0.3 if dtype == torch.bfloat16 else 5e-3)


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
    (ri,) = torch.autograd.grad(R.soft_argmax(hm, beta, normalize), hm, g)
    close(gi, ri, rtol=1e-4, atol=1e-6)


def test_soft_argmax_gradcheck_and_dtypes():
    hm = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: fastops.soft_argmax(h, 2.0), (hm,))
    assert torch.autograd.gradcheck(lambda h: fastops.soft_argmax(h, 0.7, normalize=True), (hm,))
    x = torch.randn(2, 3, 8, 8)
    for dt in LOW:
        close(fastops.soft_argmax(x.to(dt)), R.soft_argmax(x.to(dt).float()), dt, atol=0.05, rtol=0.02)
    assert fastops.soft_argmax(torch.zeros(0, 3, 4, 4)).shape == (0, 3, 2)


def test_peaks_match_centernet_topk():
    heat = torch.rand(2, 7, 20, 24)
    s, l, y, x = fastops.heatmap_peaks(heat, 50)
    rs, ri, rc, ry, rx = R.centernet_topk(R.centernet_nms(heat), 50)
    close(s, rs, atol=0, rtol=0)
    assert torch.equal(l, rc.long()) and torch.equal(y, ry.long()) and torch.equal(x, rx.long())


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_peaks_ties_flat_and_negative(kernel):
    heat = torch.randint(0, 4, (2, 3, 9, 11)).float() / 4  # many ties
    heat[1, 0] = -torch.rand(9, 11)
    heat[1, 1] = 0.5  # flat: every pixel is a peak
    out = fastops.heatmap_peaks(heat, 60, kernel)
    ref = R.heatmap_peaks(heat, 60, kernel)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    # k larger than C*H*W is clamped
    assert fastops.heatmap_peaks(heat[:, :1, :2, :2], 10)[0].shape == (2, 4)


def test_peaks_nan_never_wins():
    heat = torch.rand(1, 2, 8, 8)
    heat[0, 0, 3, 3] = float("nan")
    s, l, y, x = fastops.heatmap_peaks(heat, 128)
    assert not torch.isnan(s).any()
    ref = R.heatmap_peaks(heat, 128)
    assert torch.equal(s, ref[0]) and torch.equal(x, ref[3])


def test_centernet_decode():
    heat = torch.rand(2, 6, 16, 20)
    wh = torch.rand(2, 2, 16, 20) * 10
    reg = torch.rand(2, 2, 16, 20)
    close(fastops.centernet_decode(heat, wh, reg, 40), R.centernet_ctdet_decode(heat, wh, reg, 40))
    close(fastops.centernet_decode(heat, wh, None, 40), R.centernet_ctdet_decode(heat, wh, None, 40))
    # wh / reg read in place with any strides
    whn = wh.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    regn = torch.rand(2, 16, 20, 2).permute(0, 3, 1, 2)
    close(fastops.centernet_decode(heat, whn, regn, 40), R.centernet_ctdet_decode(heat, whn, regn, 40))
    for dt in (torch.float64,) + LOW:
        d = fastops.centernet_decode(heat.to(dt), wh.to(dt), reg.to(dt), 10)
        assert d.dtype == dt
        close(d, R.centernet_decode(heat.to(dt), wh.to(dt), reg.to(dt), 10), dt)
    assert fastops.centernet_decode(torch.rand(0, 3, 4, 4), torch.rand(0, 2, 4, 4), None, 5).shape == (0, 5, 6)


def test_decode_errors():
    heat = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="wh"):
        fastops.centernet_decode(heat, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="reg"):
        fastops.centernet_decode(heat, torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8).double())
    with pytest.raises(ValueError, match="k"):
        fastops.heatmap_peaks(heat, -1)
    with pytest.raises(ValueError, match="kernel"):
        fastops.heatmap_peaks(heat, 5, kernel=2)


# ---- corner pooling ----------------------------------------------------------------------------------------------

MODES = ["top", "bottom", "left", "right"]


@pytest.mark.parametrize("mode", MODES)
def test_corner_pool_forward_backward(mode):
    x = torch.randint(0, 5, (2, 3, 7, 9)).float()  # many ties: CornerNet's tie rule matters
    out = fastops.corner_pool(x, mode)
    assert torch.equal(out, R.cornernet_pool_forward(x, mode))
    assert torch.equal(out, R.mmcv_corner_pool(x, mode))
    g = torch.randn(2, 3, 7, 9)
    xr = x.clone().requires_grad_(True)
    (gi,) = torch.autograd.grad(fastops.corner_pool(xr, mode), xr, g)
    close(gi, R.cornernet_pool_backward(x, g, mode), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_corner_pool_gradcheck(mode):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fastops.corner_pool(t, mode), (x,))


def test_corner_pool_dtypes_noncontiguous_empty():
    x = torch.randn(2, 3, 6, 5)
    for dt in (torch.float64,) + LOW:
        for mode in MODES:
            assert torch.equal(fastops.corner_pool(x.to(dt), mode), R.mmcv_corner_pool(x.to(dt), mode))
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(fastops.corner_pool(xc, "left"), R.mmcv_corner_pool(x, "left"))
    assert fastops.corner_pool(torch.zeros(0, 2, 3, 3)).shape == (0, 2, 3, 3)
    assert fastops.corner_pool(torch.zeros(1, 2, 0, 3), "left").shape == (1, 2, 0, 3)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), mode=st.sampled_from(MODES), seed=st.integers(0, 1000))
def test_corner_pool_property(h, w, mode, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, (1, 2, h, w), generator=g).float()
    gr = torch.randn(1, 2, h, w, generator=g)
    xr = x.clone().requires_grad_(True)
    out = fastops.corner_pool(xr, mode)
    assert torch.equal(out, R.cornernet_pool_forward(x, mode))
    (gi,) = torch.autograd.grad(out, xr, gr)
    close(gi, R.cornernet_pool_backward(x, gr, mode), rtol=1e-6, atol=1e-6)


@settings(max_examples=15, deadline=None)
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
    close(c, rc, atol=1e-3 if refine.startswith("dark") else 0, rtol=1e-3 if refine.startswith("dark") else 0)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 10), w=st.integers(1, 10), k=st.integers(0, 30), seed=st.integers(0, 1000))
def test_peaks_property_odd_shapes(h, w, k, seed):
    g = torch.Generator().manual_seed(seed)
    heat = torch.randint(0, 5, (2, 3, h, w), generator=g).float()
    for a, b in zip(fastops.heatmap_peaks(heat, k), R.heatmap_peaks(heat, k)):
        assert torch.equal(a, b)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 13), w=st.integers(1, 13), n=st.integers(1, 3), sigma=st.sampled_from([0.7, 1.0, 1.5, 2.5]),
       mode=st.sampled_from(["msra", "udp", "dark"]), seed=st.integers(0, 1000))
def test_render_property_odd_shapes(h, w, n, sigma, mode, seed):
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(2, n, 3, 2, generator=g) * torch.tensor([w + 8.0, h + 8.0]) - 4
    hm, wt = fastops.render_gaussian_heatmaps(kp, (h, w), sigma, mode=mode)
    rh, rw = R.render_gaussian_heatmaps(kp, (h, w), sigma, None, mode)
    close(hm, rh)
    close(wt, rw, atol=0)


# ---- threads, errors, opcheck, compile, export -------------------------------------------------------------------

def test_same_results_one_and_two_threads():
    old = torch.get_num_threads()
    kp = special_keypoints(8, 17, 32, 24)
    hm = realistic_maps(8, 17, 32, 24)
    heat = torch.rand(2, 20, 32, 32)
    x = torch.randn(2, 8, 16, 16)
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            xr = x.clone().requires_grad_(True)
            y = fastops.corner_pool(xr, "left")
            (gi,) = torch.autograd.grad(y, xr, torch.ones_like(y))
            outs.append([*fastops.render_gaussian_heatmaps(kp, (32, 24), 2.0, mode="dark"),
                         *fastops.heatmap_argmax(hm, refine="dark"), fastops.soft_argmax(hm),
                         *fastops.heatmap_peaks(heat, 100), y, gi])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_errors():
    kp = torch.rand(2, 3, 2)
    with pytest.raises(ValueError, match="keypoints"):
        fastops.render_gaussian_heatmaps(torch.rand(2, 3, 3), (8, 8))
    with pytest.raises(ValueError, match="sigma"):
        fastops.render_gaussian_heatmaps(kp, (8, 8), 0.0)
    with pytest.raises(ValueError, match="mode"):
        fastops.render_gaussian_heatmaps(kp, (8, 8), mode="x")
    with pytest.raises(ValueError, match="kernel"):
        fastops.render_gaussian_heatmaps(kp, (8, 8), kernel="x")
    with pytest.raises(ValueError, match="visible"):
        fastops.render_gaussian_heatmaps(kp, (8, 8), visible=torch.ones(2, 4))
    with pytest.raises(ValueError, match="heatmap_size"):
        fastops.render_gaussian_heatmaps(kp, (8, 8, 1))
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
    with pytest.raises(ValueError, match="mode"):
        fastops.corner_pool(torch.rand(1, 1, 2, 2), "diag")
    with pytest.raises(ValueError, match="min_overlap"):
        fastops.gaussian_radius(torch.ones(2), torch.ones(2), 1.5)
    with pytest.raises(ValueError, match="variant"):
        fastops.gaussian_radius(torch.ones(2), torch.ones(2), variant="x")
    with pytest.raises(ValueError, match="impl"):
        fastops.corner_pool(torch.rand(1, 1, 2, 2), impl="x")
    with pytest.raises(RuntimeError, match="mode"):
        torch.ops.fastops.corner_pool(torch.rand(1, 1, 2, 2), "diag")


def test_nonfinite_inputs_never_crash():
    kp = torch.tensor([[[float("nan"), 1.0], [float("inf"), 2.0], [1e30, -1e30], [3.0, 3.0]]])
    for mode in ("msra", "udp", "dark"):
        hm, wt = fastops.render_gaussian_heatmaps(kp, (8, 8), 1.0, mode=mode)
        assert wt[0].tolist() == [0, 0, 0, 1]
    c = torch.tensor([[[float("nan"), 2.0], [1e30, 1.0]]])
    out = fastops.render_center_heatmap(c, torch.tensor([[3, 10**12]]), torch.tensor([[0, 0]]), 1, (8, 8))
    assert out.abs().sum() == 0
    hm = torch.full((1, 2, 6, 6), float("nan"))
    for refine in REFINES:
        fastops.heatmap_argmax(hm, refine=refine)
    fastops.soft_argmax(hm)
    fastops.heatmap_peaks(hm, 5)


def _opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_opcheck_all_ops():
    kp = torch.rand(2, 1, 5, 2) * 10
    _opcheck(torch.ops.fastops.render_gaussian_heatmaps.default, (kp, None, 12, 10, 2.0, "msra", "gaussian"))
    _opcheck(torch.ops.fastops.render_gaussian_heatmaps.default,
             (kp, torch.ones(2, 1, 5), 12, 10, 1.5, "dark", "cauchy"))
    _opcheck(torch.ops.fastops.render_center_heatmap.default,
             (torch.rand(2, 3, 2) * 8, torch.randint(0, 3, (2, 3)), torch.randint(-1, 2, (2, 3)), 2, 8, 9))
    _opcheck(torch.ops.fastops.gaussian_radius.default, (torch.rand(5) * 9 + 1, torch.rand(5) * 9 + 1, 0.7, "centernet"))
    hm = realistic_maps(2, 3, 10, 12)
    for refine in REFINES:
        _opcheck(torch.ops.fastops.heatmap_argmax.default, (hm, refine, 11))
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    _opcheck(torch.ops.fastops.soft_argmax.default, (x, 1.5, False))
    _opcheck(torch.ops.fastops._soft_argmax_backward.default,
             (torch.randn(2, 3, 2, dtype=torch.float64), x.detach(), torch.rand(2, 3, 2, dtype=torch.float64), 1.5,
              True))
    _opcheck(torch.ops.fastops.heatmap_peaks.default, (torch.rand(2, 3, 6, 7), 10, 3))
    _opcheck(torch.ops.fastops.centernet_decode.default,
             (torch.rand(2, 3, 6, 7), torch.rand(2, 2, 6, 7), torch.rand(2, 2, 6, 7), 10))
    _opcheck(torch.ops.fastops.centernet_decode.default, (torch.rand(2, 3, 6, 7), torch.rand(2, 2, 6, 7), None, 10))
    for mode in MODES:
        _opcheck(torch.ops.fastops.corner_pool.default, (x, mode))
    xd = x.detach()
    _opcheck(torch.ops.fastops._corner_pool_backward.default,
             (torch.randn_like(xd), xd, torch.ops.fastops.corner_pool(xd, "top"), "top"))


def test_compile_fullgraph_and_export():
    def f(kp, hm, heat, wh, x):
        t, w = fastops.render_gaussian_heatmaps(kp, (16, 12), 2.0, mode="udp")
        c, s = fastops.heatmap_argmax(hm, refine="dark")
        d = fastops.centernet_decode(heat, wh, None, 7)
        p = fastops.corner_pool(x, "left")
        return t, w, c, s, d, p, fastops.soft_argmax(hm, 2.0)

    args = (torch.rand(2, 5, 2) * 10, realistic_maps(2, 3, 12, 10), torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 8),
            torch.randn(1, 2, 5, 6))

    def g(kp, hm, heat, wh, x):
        r = fastops.gaussian_radius(wh[0, 0].flatten() * 10 + 1, wh[0, 1].flatten() * 10 + 1)
        cm = fastops.render_center_heatmap(kp, r[:10].reshape(2, 5), (r[:10].reshape(2, 5) > 2).long(), 2, (9, 7))
        return (r, cm) + fastops.heatmap_peaks(heat, 9, 3)

    eg = g(*args)
    for a, b in zip(eg, torch.compile(g, fullgraph=True, backend="aot_eager")(*args)):
        assert torch.equal(a, b)
    eager = f(*args)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)

    class M(torch.nn.Module):
        def forward(self, kp, hm, heat, wh, x):
            return f(kp, hm, heat, wh, x)

    ep = torch.export.export(M(), args)
    for a, b in zip(eager, ep.module()(*args)):
        assert torch.equal(a, b)


def test_compile_backward():
    x = torch.randn(1, 2, 6, 5, requires_grad=True)

    def f(x):
        return fastops.corner_pool(x, "top").sum() + fastops.soft_argmax(x).sum()

    (g1,) = torch.autograd.grad(f(x), x)
    (g2,) = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(x), x)
    close(g1, g2, rtol=1e-6, atol=1e-6)


# ---- Triton (TRITON_INTERPRET=1 on CPU tensors; small cases: the interpreter is slow) ----------------------------

@pytest.mark.parametrize("mode", ["msra", "udp", "dark"])
def test_triton_render(mode):
    kp = special_keypoints(2, 10, 12, 10)
    vis = (torch.rand(2, 10) > 0.3).float()
    for kernel, sigma in (("gaussian", 1.5), ("cauchy", 2.0)):
        hm, wt = fastops.render_gaussian_heatmaps(kp, (12, 10), sigma, vis, mode=mode, kernel=kernel, impl="triton")
        rh, rw = R.render_gaussian_heatmaps(kp, (12, 10), sigma, vis, mode, kernel)
        close(hm, rh)
        close(wt, rw, atol=0)
    kp2 = torch.rand(1, 2, 3, 2) * 10
    hm, wt = fastops.render_gaussian_heatmaps(kp2, (8, 9), 1.0, mode=mode, impl="triton")
    rh, rw = R.render_gaussian_heatmaps(kp2, (8, 9), 1.0, None, mode)
    close(hm, rh)
    assert wt.shape == (1, 2, 3)


def test_triton_soft_argmax():
    hm = torch.randn(2, 3, 5, 7)
    for normalize in (False, True):
        close(fastops.soft_argmax(hm, 1.5, normalize=normalize, impl="triton"), R.soft_argmax(hm, 1.5, normalize),
              rtol=1e-5, atol=1e-5)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: fastops.soft_argmax(h, 2.0, impl="triton"), (x,))
    torch.library.opcheck(torch.ops.fastops.soft_argmax_triton.default, (x, 2.0, False),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("mode", MODES)
def test_triton_corner_pool(mode):
    x = torch.randint(0, 4, (1, 2, 5, 6)).float()
    g = torch.randn(1, 2, 5, 6)
    xr = x.clone().requires_grad_(True)
    out = fastops.corner_pool(xr, mode, impl="triton")
    assert torch.equal(out, R.cornernet_pool_forward(x, mode))
    (gi,) = torch.autograd.grad(out, xr, g)
    close(gi, R.cornernet_pool_backward(x, g, mode), rtol=1e-6, atol=1e-6)
    if mode == "top":
        xd = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: fastops.corner_pool(t, mode, impl="triton"), (xd,))
        torch.library.opcheck(torch.ops.fastops.corner_pool_triton.default, (xd, mode),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
        f = torch.compile(lambda t: fastops.corner_pool(t, mode, impl="triton"), fullgraph=True, backend="aot_eager")
        assert torch.equal(f(x), out.detach())


def test_triton_center_heatmap_and_radius():
    c = torch.rand(2, 5, 2) * 20 - 2
    c[0, 0] = torch.tensor([-1.5, 3.0])
    r = torch.randint(0, 6, (2, 5))
    lab = torch.randint(-1, 3, (2, 5))
    out = fastops.render_center_heatmap(c, r, lab, 3, (12, 14), impl="triton")
    close(out, R.render_center_heatmap(c, r, lab, 3, (12, 14)), atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="num_classes"):
        fastops.render_center_heatmap(c, r, lab + 5, 3, (12, 14), impl="triton")
    h = torch.rand(20, dtype=torch.float64) * 100 + 1
    w = torch.rand(20, dtype=torch.float64) * 100 + 1
    for variant in ("centernet", "cornernet"):
        close(fastops.gaussian_radius(h, w, 0.7, variant=variant, impl="triton"), R.gaussian_radius(h, w, 0.7, variant),
              torch.float64, rtol=1e-12, atol=1e-12)


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


def test_triton_peaks_and_decode():
    heat = torch.randint(0, 4, (2, 3, 6, 7)).float() / 4
    heat[1, 0] = -torch.rand(6, 7)
    for k in (5, 200):
        for a, b in zip(fastops.heatmap_peaks(heat, k, impl="triton"), R.heatmap_peaks(heat, k)):
            assert torch.equal(a, b)
    heat = torch.rand(2, 3, 6, 7)
    wh = torch.rand(2, 2, 6, 7) * 5
    reg = torch.rand(2, 6, 7, 2).permute(0, 3, 1, 2)
    close(fastops.centernet_decode(heat, wh, reg, 10, impl="triton"), R.centernet_ctdet_decode(heat, wh, reg, 10))
    d64 = fastops.centernet_decode(heat.double(), wh.double(), None, 10, impl="triton")
    close(d64, R.centernet_ctdet_decode(heat.double(), wh.double(), None, 10), torch.float64)
    torch.library.opcheck(torch.ops.fastops.heatmap_peaks_triton.default, (heat, 7, 3),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("mode", MODES)
def test_corner_pool_row_blocks(mode):
    # 33 rows: four full 8-row blocks of the interleaved left/right scans and a 1-row tail
    x = torch.randint(0, 6, (1, 2, 33, 21)).float()
    g = torch.randn(1, 2, 33, 21)
    xr = x.clone().requires_grad_(True)
    out = fastops.corner_pool(xr, mode)
    assert torch.equal(out, R.cornernet_pool_forward(x, mode))
    (gi,) = torch.autograd.grad(out, xr, g)
    close(gi, R.cornernet_pool_backward(x, g, mode), rtol=1e-6, atol=1e-6)


def test_triton_opcheck_remaining_ops():
    import fastops.triton.heatmaps  # noqa: F401  (registers the *_triton ops)

    utils = ("test_schema", "test_faketensor")
    ops = torch.ops.fastops
    kp = torch.rand(1, 2, 3, 2) * 6
    torch.library.opcheck(ops.render_gaussian_heatmaps_triton.default, (kp, None, 6, 5, 1.0, "udp", "gaussian"),
                          test_utils=utils)
    torch.library.opcheck(ops.render_center_heatmap_triton.default,
                          (torch.rand(1, 2, 2) * 5, torch.tensor([[1, 2]]), torch.tensor([[0, -1]]), 2, 5, 6),
                          test_utils=utils)
    torch.library.opcheck(ops.gaussian_radius_triton.default,
                          (torch.rand(4) * 9 + 1, torch.rand(4) * 9 + 1, 0.7, "cornernet"), test_utils=utils)
    torch.library.opcheck(ops.heatmap_argmax_triton.default, (realistic_maps(1, 2, 6, 7), "quarter", 11),
                          test_utils=utils)
    torch.library.opcheck(ops.centernet_decode_triton.default,
                          (torch.rand(1, 2, 5, 6), torch.rand(1, 2, 5, 6), None, 4), test_utils=utils)
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    torch.library.opcheck(ops._corner_pool_backward_triton.default,
                          (torch.randn_like(x), x, ops.corner_pool(x, "right"), "right"), test_utils=utils)
    torch.library.opcheck(ops._soft_argmax_backward_triton.default,
                          (torch.randn(1, 1, 2, dtype=torch.float64), x, torch.rand(1, 1, 2, dtype=torch.float64), 1.0,
                           False), test_utils=utils)
