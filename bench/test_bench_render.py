"""Rendering targets: anchor (mmpose / CenterNet transcriptions, as they run) vs fastops, 1 and 2 threads, on
docs/heatmaps.md's workloads."""
import pytest
import torch

import fastops
from fastops.reference import render as R

from benchutil import HEATMAP_SHAPE, heatmap_keypoints, record, run

SIDES = ("anchor", "fastops")
B, K, H, W = HEATMAP_SHAPE


@pytest.mark.parametrize("mode", ["msra", "udp", "dark"])
@pytest.mark.parametrize("side", SIDES)
def test_render_gaussian_heatmaps(benchmark, threads, mode, side):
    """anchor: mmpose's per-sample NumPy encoder."""
    kp = heatmap_keypoints()
    vis = torch.ones(B, K)
    record(benchmark, "render_gaussian_heatmaps", f"{B}x{K} kpts {H}x{W} sigma2 {mode}", threads, side)
    impl = "reference" if side == "anchor" else "cpp"
    rounds = 5 if side == "anchor" else 50
    run(benchmark, lambda: fastops.render_gaussian_heatmaps(kp, (H, W), 2.0, vis, mode=mode, impl=impl),
        rounds=rounds)


def test_render_gaussian_heatmaps_floor(benchmark, threads):
    """The spec's "best plain PyTorch" for MSRA targets: whole-batch, separable and exact
    (fastops.reference.render.render_msra_torch); listed as "floor" beside the msra row."""
    kp = heatmap_keypoints()
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
