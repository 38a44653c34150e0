"""Heatmaps and keypoints: anchor (mmpose / CenterNet / CornerNet-mmcv transcriptions, as they run) vs fastops,
1 and 2 threads, on the spec's workloads (docs/heatmaps.md)."""
import pytest
import torch

import fastops
from fastops.reference import heatmaps as R

from benchutil import record, run

SIDES = ("anchor", "fastops")
B, K, H, W = 32, 17, 64, 48


def _keypoints():
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, K, 2, generator=g) * torch.tensor([W - 1.0, H - 1.0])


def _maps():
    g = torch.Generator().manual_seed(1)
    hm, _ = R.render_gaussian_heatmaps(_keypoints(), (H, W), 2.0, None, "dark")
    return hm + 0.01 * torch.rand(hm.shape, generator=g)


@pytest.mark.parametrize("mode", ["msra", "udp", "dark"])
@pytest.mark.parametrize("side", SIDES)
def test_render_gaussian_heatmaps(benchmark, threads, mode, side):
    """anchor: mmpose's per-sample NumPy encoder."""
    kp = _keypoints()
    vis = torch.ones(B, K)
    record(benchmark, "render_gaussian_heatmaps", f"{B}x{K} kpts {H}x{W} sigma2 {mode}", threads, side)
    impl = "reference" if side == "anchor" else "cpp"
    rounds = 5 if side == "anchor" else 50
    run(benchmark, lambda: fastops.render_gaussian_heatmaps(kp, (H, W), 2.0, vis, mode=mode, impl=impl),
        rounds=rounds)


def test_render_gaussian_heatmaps_floor(benchmark, threads):
    """The spec's "best plain PyTorch" for MSRA targets: whole-batch, separable and exact
    (fastops.reference.heatmaps.render_msra_torch); listed as "floor" beside the msra row."""
    kp = _keypoints()
    record(benchmark, "render_gaussian_heatmaps", f"{B}x{K} kpts {H}x{W} sigma2 msra", threads, "floor")
    run(benchmark, lambda: R.render_msra_torch(kp, (H, W), 2.0), rounds=50)


@pytest.mark.parametrize("side", SIDES)
def test_render_center_heatmap(benchmark, threads, side):
    g = torch.Generator().manual_seed(2)
    b, n, c, h, w = 4, 32, 80, 128, 128
    centers = torch.rand(b, n, 2, generator=g) * torch.tensor([w, h])
    radii = torch.randint(0, 12, (b, n), generator=g)
    labels = torch.randint(0, c, (b, n), generator=g)
    record(benchmark, "render_center_heatmap", f"{b}x{n} objs {c}x{h}x{w}", threads, side)
    impl = "reference" if side == "anchor" else "cpp"
    run(benchmark, lambda: fastops.render_center_heatmap(centers, radii, labels, c, (h, w), impl=impl),
        rounds=5 if side == "anchor" else 20)


@pytest.mark.parametrize("refine", ["none", "quarter", "dark", "dark_udp"])
@pytest.mark.parametrize("side", SIDES)
def test_heatmap_argmax(benchmark, threads, refine, side):
    hm = _maps()
    record(benchmark, "heatmap_argmax", f"{B}x{K}x{H}x{W} {refine}", threads, side)
    impl = "reference" if side == "anchor" else "cpp"
    run(benchmark, lambda: fastops.heatmap_argmax(hm, refine=refine, impl=impl),
        rounds=5 if side == "anchor" else 50)


@pytest.mark.parametrize("side", SIDES)
def test_soft_argmax_fwd_bwd(benchmark, threads, side):
    hm = torch.randn(B, K, H, W, requires_grad=True)
    g = torch.randn(B, K, 2)
    impl = "reference" if side == "anchor" else "cpp"

    def step():
        (gi,) = torch.autograd.grad(fastops.soft_argmax(hm, 1.0, impl=impl), hm, g)
        return gi

    record(benchmark, "soft_argmax fwd+bwd", f"{B}x{K}x{H}x{W} (anchor: torch.softmax)", threads, side)
    run(benchmark, step, rounds=20)


@pytest.mark.parametrize("side", SIDES)
def test_centernet_decode(benchmark, threads, side):
    g = torch.Generator().manual_seed(3)
    heat = torch.rand(1, 80, 128, 128, generator=g)
    wh = torch.rand(1, 2, 128, 128, generator=g) * 50
    reg = torch.rand(1, 2, 128, 128, generator=g)
    record(benchmark, "centernet_decode", "[1,80,128,128] K=100", threads, side)
    if side == "anchor":
        fn = lambda: R.centernet_ctdet_decode(heat, wh, reg, 100)  # noqa: E731
    else:
        fn = lambda: fastops.centernet_decode(heat, wh, reg, 100)  # noqa: E731
    run(benchmark, fn, rounds=5 if side == "anchor" else 20)


@pytest.mark.parametrize("mode", ["top", "left"])
@pytest.mark.parametrize("side", SIDES)
def test_corner_pool_fwd_bwd(benchmark, threads, mode, side):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 128, 128, 128, generator=g, requires_grad=True)
    go = torch.randn(1, 128, 128, 128, generator=g)
    pool = (lambda t: R.mmcv_corner_pool(t, mode)) if side == "anchor" else (lambda t: fastops.corner_pool(t, mode))

    def step():
        (gi,) = torch.autograd.grad(pool(x), x, go)
        return gi

    record(benchmark, "corner_pool fwd+bwd", f"[1,128,128,128] {mode} (anchor: torch.cummax)", threads, side)
    run(benchmark, step, rounds=10)
