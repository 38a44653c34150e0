"""Decoding keypoints: anchor (mmpose transcriptions / torch.softmax, as they run) vs fastops, 1 and 2 threads, on
docs/heatmaps.md's workloads."""
import pytest
import torch

import fastops

from benchutil import HEATMAP_SHAPE, heatmap_keypoints, record, run

SIDES = ("anchor", "fastops")
B, K, H, W = HEATMAP_SHAPE


def _maps():
    from fastops.reference import render as RR

    g = torch.Generator().manual_seed(1)
    hm, _ = RR.render_gaussian_heatmaps(heatmap_keypoints(), (H, W), 2.0, None, "dark")
    return hm + 0.01 * torch.rand(hm.shape, generator=g)


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




@pytest.mark.parametrize("refine", ["none", "quarter"])
@pytest.mark.parametrize("side", ("floor", "fastops"))
def test_heatmap_argmax_vs_amax(benchmark, threads, refine, side):
    """The bandwidth floor: torch.amax over the same maps (one read), beside heatmap_argmax none/quarter."""
    hm = _maps()
    record(benchmark, "heatmap_argmax vs amax", f"{B}x{K}x{H}x{W} {refine}", threads,
           "anchor" if side == "floor" else side)
    if side == "floor":
        fn = lambda: hm.amax((2, 3))  # noqa: E731
    else:
        fn = lambda: fastops.heatmap_argmax(hm, refine=refine)  # noqa: E731
    run(benchmark, fn, rounds=50)
