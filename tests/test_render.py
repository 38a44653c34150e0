"""Rendering targets: fastops against the NumPy transcriptions of mmpose's encoders and CenterNet
(fastops/reference/render.py)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastops
from fastops.reference import render as R
from keypoints_helpers import LOW, POOL_MODES, REFINES, close, realistic_maps, special_keypoints  # noqa: F401
from helpers import assert_all_equal, per_thread_count


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
    with pytest.raises(ValueError, match="num_classes"):
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


@settings(deadline=None)
@given(h=st.integers(1, 13), w=st.integers(1, 13), n=st.integers(1, 3), sigma=st.sampled_from([0.7, 1.0, 1.5, 2.5]),
       mode=st.sampled_from(["msra", "udp", "dark"]), seed=st.integers(0, 1000))
def test_render_property_odd_shapes(h, w, n, sigma, mode, seed):
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(2, n, 3, 2, generator=g) * torch.tensor([w + 8.0, h + 8.0]) - 4
    hm, wt = fastops.render_gaussian_heatmaps(kp, (h, w), sigma, mode=mode)
    rh, rw = R.render_gaussian_heatmaps(kp, (h, w), sigma, None, mode)
    close(hm, rh)
    close(wt, rw, atol=0)


# ---- Triton (TRITON_INTERPRET=1 on CPU tensors; small cases: the interpreter is slow) ---------------------------

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


def test_triton_center_heatmap_and_radius():
    c = torch.rand(2, 5, 2) * 20 - 2
    c[0, 0] = torch.tensor([-1.5, 3.0])
    r = torch.randint(0, 6, (2, 5))
    lab = torch.randint(-1, 3, (2, 5))
    out = fastops.render_center_heatmap(c, r, lab, 3, (12, 14), impl="triton")
    close(out, R.render_center_heatmap(c, r, lab, 3, (12, 14)), atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_classes"):
        fastops.render_center_heatmap(c, r, lab + 5, 3, (12, 14), impl="triton")
    h = torch.rand(20, dtype=torch.float64) * 100 + 1
    w = torch.rand(20, dtype=torch.float64) * 100 + 1
    for variant in ("centernet", "cornernet"):
        close(fastops.gaussian_radius(h, w, 0.7, variant=variant, impl="triton"), R.gaussian_radius(h, w, 0.7, variant),
              torch.float64, rtol=1e-12, atol=1e-12)


# ---- threads, errors, bad inputs, opcheck, compile, enums ----------------------------------------------------------

def test_same_results_one_and_two_threads():
    kp = special_keypoints(8, 17, 32, 24)
    assert_all_equal(*per_thread_count(lambda: [*fastops.render_gaussian_heatmaps(kp, (32, 24), 2.0, mode="dark"),
                                                *fastops.render_gaussian_heatmaps(kp, (32, 24), 2.0, mode="msra")]))


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
    with pytest.raises(ValueError, match="min_overlap"):
        fastops.gaussian_radius(torch.ones(2), torch.ones(2), 1.5)
    with pytest.raises(ValueError, match="variant"):
        fastops.gaussian_radius(torch.ones(2), torch.ones(2), variant="x")
    with pytest.raises(ValueError, match="impl"):
        fastops.gaussian_radius(torch.ones(2), torch.ones(2), impl="x")


def test_nonfinite_inputs_never_crash():
    kp = torch.tensor([[[float("nan"), 1.0], [float("inf"), 2.0], [1e30, -1e30], [3.0, 3.0]]])
    for mode in ("msra", "udp", "dark"):
        hm, wt = fastops.render_gaussian_heatmaps(kp, (8, 8), 1.0, mode=mode)
        assert wt[0].tolist() == [0, 0, 0, 1]
        assert torch.isfinite(hm).all()
    c = torch.tensor([[[float("nan"), 2.0], [1e30, 1.0]]])
    out = fastops.render_center_heatmap(c, torch.tensor([[3, 10**12]]), torch.tensor([[0, 0]]), 1, (8, 8))
    assert out.abs().sum() == 0


def _opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_opcheck():
    kp = torch.rand(2, 1, 5, 2) * 10
    _opcheck(torch.ops.fastops.render_gaussian_heatmaps.default, (kp, None, 12, 10, 2.0, "msra", "gaussian"))
    _opcheck(torch.ops.fastops.render_gaussian_heatmaps.default,
             (kp, torch.ones(2, 1, 5), 12, 10, 1.5, "dark", "cauchy"))
    _opcheck(torch.ops.fastops.render_center_heatmap.default,
             (torch.rand(2, 3, 2) * 8, torch.randint(0, 3, (2, 3)), torch.randint(-1, 2, (2, 3)), 2, 8, 9))
    _opcheck(torch.ops.fastops.gaussian_radius.default,
             (torch.rand(5) * 9 + 1, torch.rand(5) * 9 + 1, 0.7, "centernet"))


def test_compile_fullgraph_and_export():
    def f(kp, wh):
        t, w = fastops.render_gaussian_heatmaps(kp, (16, 12), 2.0, mode="udp")
        r = fastops.gaussian_radius(wh[0, 0].flatten() * 10 + 1, wh[0, 1].flatten() * 10 + 1)
        cm = fastops.render_center_heatmap(kp, r[:10].reshape(2, 5), (r[:10].reshape(2, 5) > 2).long(), 2, (9, 7))
        return t, w, r, cm

    args = (torch.rand(2, 5, 2) * 10, torch.rand(1, 2, 8, 8))
    eager = f(*args)
    for a, b in zip(eager, torch.compile(f, fullgraph=True, backend="aot_eager")(*args)):
        assert torch.equal(a, b)

    class M(torch.nn.Module):
        def forward(self, kp):
            return fastops.render_gaussian_heatmaps(kp, (16, 12), 2.0, mode="udp")

    ep = torch.export.export(M(), args[:1])
    for a, b in zip(eager[:2], ep.module()(args[0])):
        assert torch.equal(a, b)


def _header_enum(path, name):
    import os
    import re

    text = open(os.path.join(os.path.dirname(__file__), "..", "csrc", path)).read()
    body = re.search(r"enum " + name + r" : int \{([^}]*)\}", text).group(1)
    return {k.strip(): int(v) for k, v in (item.split("=") for item in body.split(","))}


def test_enums_match_the_cpp_header():
    from fastops.registrations import render as reg

    assert _header_enum("render/render.h", "RenderMode") == {"kMSRA": reg.MODES["msra"], "kUDP": reg.MODES["udp"],
                                                            "kDARK": reg.MODES["dark"]}
    assert _header_enum("render/render.h", "RenderKernel") == {"kGaussian": reg.KERNELS["gaussian"],
                                                              "kCauchy": reg.KERNELS["cauchy"]}
    assert _header_enum("render/render.h", "RadiusVariant") == {"kCenterNet": reg.VARIANTS["centernet"],
                                                               "kCornerNet": reg.VARIANTS["cornernet"]}


@settings(deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), n=st.integers(0, 4), c=st.integers(1, 3), seed=st.integers(0, 10000))
def test_center_heatmap_property(h, w, n, c, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(2, n, 2, generator=g) * torch.tensor([w + 8.0, h + 8.0]) - 4
    radii = torch.randint(-1, 6, (2, n), generator=g)
    labels = torch.randint(-1, c, (2, n), generator=g)
    out = fastops.render_center_heatmap(centers, radii, labels, c, (h, w))
    assert torch.equal(out, R.render_center_heatmap(centers, radii, labels, c, (h, w)))


@settings(deadline=None)
@given(hw=st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=2, max_size=2),
       o=st.floats(0.05, 0.95), variant=st.sampled_from(["centernet", "cornernet"]))
def test_gaussian_radius_property(hw, o, variant):
    h = torch.tensor([hw[0]], dtype=torch.float64)
    w = torch.tensor([hw[1]], dtype=torch.float64)
    close(fastops.gaussian_radius(h, w, o, variant=variant), R.gaussian_radius(h, w, o, variant), torch.float64,
          rtol=1e-12, atol=1e-9)
