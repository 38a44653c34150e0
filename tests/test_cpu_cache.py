"""The large-block CPU cache (csrc/cpu_memory.h, fastops.empty_cpu_cache): a reused block holds whatever its last
owner left there, so every kernel that takes one must write (or zero) all of it. Each test poisons the block a
first call returned, frees it into the cache, and checks that the next call, which gets that block back, still
equals the reference. Sizes are above the cache's 4 MB floor."""
import os
import subprocess
import sys

import pytest
import torch

import fastops
from fastops.reference import densepose as dp_ref
from fastops.reference.flow_warp import flow_warp_grid_sample

MB = 1 << 20


def _twice(run, check):
    """Calls run() and checks its result; poisons that result's block and drops it into the cache; calls run()
    again, checks that it took the block back, and checks its result."""
    first = run()
    check(first)
    first.detach().fill_(float("nan"))
    del first
    held = fastops.cpu_cache_bytes()
    assert held >= 8 * MB, "the released block was not cached"
    second = run()
    assert fastops.cpu_cache_bytes() < held, "the second call did not reuse the cached block"
    check(second)


@pytest.fixture(autouse=True)
def _empty_cache():
    fastops.empty_cpu_cache()
    yield
    fastops.empty_cpu_cache()


def _point_inputs(R=8, C=25, S=112, P=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(R, C, S, S, generator=g, requires_grad=True)  # 10 MB
    ri = torch.randint(0, R - 1, (P,), generator=g)  # the last RoI gets no point: its planes must still be zero
    pts = torch.rand(P, 2, generator=g) * S
    return maps, ri, pts


@pytest.mark.parametrize("threads", [1, 2])
def test_roi_point_sample_backward_zeroes_a_reused_block(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        maps, ri, pts = _point_inputs()
        gout = torch.randn(ri.numel(), maps.size(1), generator=torch.Generator().manual_seed(1))
        want, = torch.autograd.grad(dp_ref.roi_point_sample(maps, ri, pts), maps, gout)
        def check(got):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert torch.equal(got[-1], torch.zeros_like(got[-1]))

        _twice(lambda: torch.autograd.grad(fastops.roi_point_sample(maps, ri, pts), maps, gout)[0], check)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("channels_last", [False, True])
def test_flow_warp_forward_and_backward_fill_reused_blocks(channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 160, 96, 160, generator=g)  # 9.8 MB
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    flow = torch.randn(1, 2, 96, 160, generator=g) * 4
    x.requires_grad_(True)
    flow.requires_grad_(True)
    want = flow_warp_grid_sample(x, flow)  # float32 grid_sample: its rounding differs by ~1e-4 at these values
    gout = torch.randn(want.shape, generator=g)
    want_gx, want_gf = torch.autograd.grad(want, (x, flow), gout)

    _twice(lambda: fastops.flow_warp(x, flow).detach(),
           lambda got: torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-4))
    _twice(lambda: torch.autograd.grad(fastops.flow_warp(x, flow), (x, flow), gout)[0],
           lambda gx: torch.testing.assert_close(gx, want_gx, rtol=1e-4, atol=2e-4))
    gf = torch.autograd.grad(fastops.flow_warp(x, flow), flow, gout)[0]
    torch.testing.assert_close(gf, want_gf, rtol=1e-4, atol=1e-3)


def test_empty_cpu_cache_releases_and_the_cap_disables():
    maps, ri, pts = _point_inputs()
    g, = torch.autograd.grad(fastops.roi_point_sample(maps, ri, pts).sum(), maps)
    del g
    assert fastops.cpu_cache_bytes() >= 8 * MB
    assert fastops.empty_cpu_cache() >= 8 * MB
    assert fastops.cpu_cache_bytes() == 0
    # FASTOPS_CPU_CACHE_MB=0: released blocks go straight back to the OS.
    code = ("import torch, fastops\n"
            "m = torch.randn(8, 25, 112, 112, requires_grad=True)\n"
            "ri = torch.zeros(10, dtype=torch.int64); p = torch.ones(10, 2)\n"
            "g, = torch.autograd.grad(fastops.roi_point_sample(m, ri, p).sum(), m)\n"
            "del g\n"
            "assert fastops.cpu_cache_bytes() == 0, fastops.cpu_cache_bytes()\n")
    env = dict(os.environ, FASTOPS_CPU_CACHE_MB="0")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def _roi_inputs(channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 64, 160, 160, generator=g)  # 13 MB: its gradient is a cached block
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xy = torch.rand(700, 2, generator=g) * 90
    wh = torch.rand(700, 2, generator=g) * 60 + 4
    # Every RoI on image 0, in its upper-left part: image 1's gradient and most of image 0's must be zeros.
    rois = torch.cat([torch.zeros(700, 1), xy, xy + wh], 1)
    return x.requires_grad_(True), rois


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_roi_align_output_and_gradient_on_reused_blocks(channels_last, threads):
    from torchvision.ops import roi_align as tv_roi_align

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, rois = _roi_inputs(channels_last)
        # One RoI over the bottom edge (its lower bins read no row), one right of the map (no pixel to read) and
        # one on image 1: what they do not read must come back zeros.
        rois = torch.cat([rois, torch.tensor([[0.0, 10, 300, 60, 400], [0.0, 400, 10, 450, 60],
                                              [1.0, 400, 10, 450, 60]])])
        args = ((7, 7), 0.5, 2, True)
        want = tv_roi_align(x, rois, *args)  # [700, 64, 7, 7]: 8.8 MB
        gout = torch.randn(want.shape, generator=torch.Generator().manual_seed(3))
        want_g, = torch.autograd.grad(want, x, gout)
        assert want[-2:].abs().sum() == 0
        # The vectorised NCHW float32 forward (AVX2 copies only) writes every element, and the channels_last one
        # zeroes each RoI's output before filling it: cached outputs. The NCHW baseline-ISA kernels
        # (ATEN_CPU_CAPABILITY=default; make sanitize, whose _cpu_isa() is "native") take the zero-page path.
        if channels_last or torch.ops.fastops._cpu_isa() in ("avx2", "avx512"):
            _twice(lambda: fastops.roi_align(x, rois, *args).detach(),
                   lambda got: torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5))

        def check(g):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, want_g, rtol=1e-5, atol=1e-5)

        _twice(lambda: torch.autograd.grad(fastops.roi_align(x, rois, *args), x, gout)[0], check)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2])
def test_roi_align_gradient_zeroed_band_by_band_on_a_tall_map(threads):
    """The backward zeroes a reused gradient row band by row band just below the RoIs it accumulates (they come
    top to bottom): a map far taller than the band (1600 rows against ~74), RoIs of every height down to the
    bottom (some taller than the band, several sharing a top row), and rows below the last RoI that only the
    final band zeroes. With threads=2 both images' tasks run at once."""
    from torchvision.ops import roi_align as tv_roi_align

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(11)
        x = torch.randn(2, 16, 1600, 96, generator=g, requires_grad=True)  # 19.7 MB
        y1 = torch.rand(400, generator=g) * 1300
        y1[:8] = 100.0  # (same top row)
        h = torch.rand(400, generator=g) * 40 + 2
        h[8:20] = 250.0  # taller than the band
        x1 = torch.rand(400, generator=g) * 80
        w = torch.rand(400, generator=g) * 15 + 1
        b = torch.randint(0, 2, (400, 1), generator=g).float()
        rois = torch.cat([b, torch.stack([x1, y1, x1 + w, y1 + h], 1)], 1)
        gout = torch.randn(400, 16, 7, 7, generator=g)
        want, = torch.autograd.grad(tv_roi_align(x, rois, 7, 1.0, 2, True), x, gout)
        assert want[:, :, 1580:].abs().sum() == 0 and want[:, :, 200:1300].abs().sum() > 0

        def check(got):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

        _twice(lambda: torch.autograd.grad(fastops.roi_align(x, rois, 7, 1.0, 2, True), x, gout)[0], check)
    finally:
        torch.set_num_threads(old)


def test_multi_scale_gradients_on_reused_blocks():
    """Four levels, one of which no RoI maps to (its gradient must come back all zeros from a poisoned block)."""
    from fastops.reference.roi_align import multi_scale_roi_align as ref_msra

    g = torch.Generator().manual_seed(5)
    sizes = [(200, 200), (100, 100), (50, 50), (25, 25)]
    feats = [torch.randn(1, 64, h, w, generator=g, requires_grad=True) for h, w in sizes]  # P2: 10 MB
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    xy = torch.rand(300, 2, generator=g) * 500
    wh = torch.rand(300, 2, generator=g) * 60 + 8  # small boxes: P2 and P3 only
    rois = torch.cat([torch.zeros(300, 1), xy, xy + wh], 1)
    gout = torch.randn(300, 64, 7, 7, generator=g)
    want = torch.autograd.grad(ref_msra(feats, rois, (7, 7), scales, 2), feats, gout)
    assert want[3].abs().sum() == 0

    def run():
        return torch.autograd.grad(fastops.multi_scale_roi_align(feats, rois, (7, 7), scales, 2), feats, gout)[0]

    _twice(run, lambda g0: torch.testing.assert_close(g0, want[0], rtol=1e-5, atol=1e-5))
    got = torch.autograd.grad(fastops.multi_scale_roi_align(feats, rois, (7, 7), scales, 2), feats, gout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_soft_argmax_probs_and_gradient_on_reused_blocks():
    from fastops.reference.decode import soft_argmax as ref_soft_argmax

    g = torch.Generator().manual_seed(7)
    hm = (torch.randn(32, 17, 64, 48, generator=g) * 3).requires_grad_(True)  # 6.7 MB maps and gradient
    gout = torch.randn(32, 17, 2, generator=g)
    want, = torch.autograd.grad(ref_soft_argmax(hm, 2.0), hm, gout)

    _twice(lambda: torch.autograd.grad(fastops.soft_argmax(hm, 2.0), hm, gout)[0],
           lambda got: torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4))


@pytest.mark.parametrize("mode", ["top", "bottom", "left", "right"])
def test_corner_pool_output_and_gradient_on_reused_blocks(mode):
    from fastops.reference.corner_pool import corner_pool as cornernet_pool  # CornerNet's tie rule in backward

    g = torch.Generator().manual_seed(9)
    # 8.4 MB, W % 8 != 0 (the AVX tiles' leftover columns) and ties from rounding (the record rule).
    x = (torch.randn(1, 128, 128, 129, generator=g) * 4).round().requires_grad_(True)
    gout = torch.randn(x.shape, generator=g)
    want = cornernet_pool(x, mode)
    want_g, = torch.autograd.grad(want, x, gout)
    _twice(lambda: fastops.corner_pool(x.detach(), mode), lambda got: torch.testing.assert_close(got, want.detach()))
    _twice(lambda: torch.autograd.grad(fastops.corner_pool(x, mode), x, gout)[0],
           lambda gi: torch.testing.assert_close(gi, want_g, rtol=1e-5, atol=1e-5))
