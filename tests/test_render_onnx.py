"""ONNX export of the rendering ops (issue 13): render_gaussian_heatmaps, render_center_heatmap and gaussian_radius
become closed-form arithmetic on Range grids (fastops/registrations/render.py). Each model is exported once with
each exporter, checked (onnx.checker, no fastops domain) and run in onnxruntime at the export shape and at other
sizes of its dynamic dimensions, against eager fastops."""
import pytest
import torch

import fastops
from keypoints_helpers import close, onnx_session, special_keypoints

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])


class Render(torch.nn.Module):
    def __init__(self, size, sigma, mode, kernel, with_visible):
        super().__init__()
        self.args = size, sigma, mode, kernel
        self.with_visible = with_visible

    def forward(self, kp, vis):
        size, sigma, mode, kernel = self.args
        return fastops.render_gaussian_heatmaps(kp, size, sigma, vis if self.with_visible else None, mode=mode,
                                                kernel=kernel)


def _render_inputs(B, N, K, H, W, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    kp = special_keypoints(B * N, K, H, W, g).reshape(B, N, K, 2).to(dtype)
    kp[0, 0, -1] = float("nan")  # not drawn, weight 0
    if K > 2:
        kp[-1, -1, 2] = torch.tensor([3.0, float("inf")])
    vis = torch.rand(B, N, K, generator=g).to(dtype)
    vis[0, -1, 0] = 0.5  # exactly 0.5 is drawn
    return kp, vis


@EXPORTERS
@pytest.mark.parametrize("mode,kernel,sigma", [("msra", "gaussian", 2.0), ("udp", "gaussian", 1.5),
                                               ("dark", "gaussian", 2.0), ("msra", "cauchy", 1.2),
                                               ("udp", "cauchy", 2.0), ("dark", "cauchy", 0.8)])
def test_render_gaussian_heatmaps_onnx(dynamo, mode, kernel, sigma):
    H, W = 13, 11
    m = Render((H, W), sigma, mode, kernel, True)
    kp, vis = _render_inputs(2, 2, 12, H, W, 0)
    run = onnx_session(m, (kp, vis), dynamo, dynamic={0: {0: "B", 1: "N", 2: "K"}, 1: {0: "B", 1: "N", 2: "K"}})
    for B, N, K, seed in ((2, 2, 12, 0), (3, 1, 5, 1), (1, 4, 17, 2)):
        kp, vis = _render_inputs(B, N, K, H, W, seed)
        hm, wt = run(kp, vis)
        ehm, ewt = m(kp, vis)
        assert torch.isfinite(hm).all()
        close(hm, ehm, rtol=1e-5, atol=1e-6)
        assert torch.equal(wt, ewt)  # weights are the visibility or 0: exact
        if mode != "dark":  # the same windows (dark draws the whole map, down to the float underflow)
            assert torch.equal(hm > 0, ehm > 0)


@EXPORTERS
def test_render_without_visible_and_float64(dynamo):
    H, W = 9, 16
    m = Render((H, W), 1.0, "udp", "gaussian", False)
    kp, vis = _render_inputs(2, 3, 4, H, W, 3, torch.float64)
    run = onnx_session(m, (kp, vis), dynamo, dynamic={0: {0: "B", 2: "K"}, 1: {0: "B", 2: "K"}})
    for B, K in ((2, 4), (4, 7)):
        kp, vis = _render_inputs(B, 3, K, H, W, B, torch.float64)
        hm, wt = run(kp, vis)
        ehm, ewt = m(kp, vis)
        assert hm.dtype == torch.float64
        close(hm, ehm, torch.float64, rtol=1e-12, atol=1e-14)
        assert torch.equal(wt, ewt)


class Center(torch.nn.Module):
    def __init__(self, C, size):
        super().__init__()
        self.C, self.size = C, size

    def forward(self, centers, radii, labels):
        return fastops.render_center_heatmap(centers, radii, labels, self.C, self.size)


def _center_inputs(B, N, C, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(B, N, 2, generator=g) * torch.tensor([W + 6.0, H + 6.0]) - 3
    radii = torch.randint(-1, 6, (B, N), generator=g)
    labels = torch.randint(-1, C, (B, N), generator=g)  # -1: padding
    centers[0, 0] = torch.tensor([float("nan"), 2.0])
    centers[-1, -1] = torch.tensor([W - 0.5, -0.2])  # trunc toward zero: row 0
    radii[0, 1] = 40  # covers the map
    return centers, radii, labels


@EXPORTERS
def test_render_center_heatmap_onnx(dynamo):
    C, H, W = 3, 12, 10
    m = Center(C, (H, W))
    args = _center_inputs(2, 6, C, H, W, 0)
    run = onnx_session(m, args, dynamo, dynamic={0: {0: "B", 1: "N"}, 1: {0: "B", 1: "N"}, 2: {0: "B", 1: "N"}})
    for B, N, seed in ((2, 6, 0), (3, 2, 1), (1, 9, 2)):
        args = _center_inputs(B, N, C, H, W, seed)
        (got,) = run(*args)
        close(got, m(*args), rtol=1e-6, atol=1e-7)


@EXPORTERS
@pytest.mark.parametrize("variant", ["centernet", "cornernet"])
def test_gaussian_radius_onnx(dynamo, variant):
    class M(torch.nn.Module):
        def forward(self, h, w):
            return fastops.gaussian_radius(h, w, 0.7, variant=variant)

    g = torch.Generator().manual_seed(0)
    h, w = torch.rand(7, generator=g) * 100, torch.rand(7, generator=g) * 100
    run = onnx_session(M(), (h, w), dynamo, dynamic={0: {0: "N"}, 1: {0: "N"}})
    for n in (7, 3, 20):
        h, w = torch.rand(n, generator=g) * 100, torch.rand(n, generator=g) * 100
        h[0], w[1] = 0.0, float("nan")
        (got,) = run(h, w)
        close(got, M()(h, w), rtol=1e-6, atol=1e-6)
