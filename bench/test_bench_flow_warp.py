"""flow_warp vs the grid_sample recipe (FlowNet2/PWC-Net/VPSNet style), with the plain-copy floor.

Workloads from the spec: [2,256,96,160] and [1,128,256,448], fp32 NCHW, pixel flow, zeros padding,
align_corners=True; forward, and forward+backward with both input and flow requiring gradients.

The flow is smooth like an optical-flow network's output (a coarse random field, +-6 px, bilinearly upsampled
16x); "iid" is a stress case with independent per-pixel displacements (random taps, cache-hostile).
Run with THP_MEM_ALLOC_ENABLE=1 on VMs where first-touch page faults of fresh large outputs dominate (both
sides allocate the same outputs; PyTorch's documented switch to back large CPU allocations by huge pages).
"""
import pytest
import torch
import torch.nn.functional as F

import fastops
from benchutil import record, run
from fastops.reference.flow_warp import flow_warp_grid_sample

SHAPES = {"2x256x96x160": (2, 256, 96, 160), "1x128x256x448": (1, 128, 256, 448)}


def _data(shape, requires_grad=False, iid=False):
    g = torch.Generator().manual_seed(0)
    b, c, h, w = shape
    x = torch.randn(shape, generator=g)
    if iid:
        flow = torch.randn(b, 2, h, w, generator=g) * 4.0
    else:
        coarse = torch.randn(b, 2, max(h // 16, 1), max(w // 16, 1), generator=g) * 6.0
        flow = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    if requires_grad:
        x.requires_grad_()
        flow.requires_grad_()
    return x, flow


@pytest.mark.parametrize("side", ("floor", "anchor", "fastops"))
@pytest.mark.parametrize("workload", list(SHAPES))
def test_flow_warp_fwd(benchmark, threads, workload, side):
    x, flow = _data(SHAPES[workload])
    out = torch.empty_like(x)
    if side == "floor":
        fn = lambda: out.copy_(x)  # noqa: E731
    elif side == "anchor":
        fn = lambda: flow_warp_grid_sample(x, flow, "zeros", True, "pixel")  # noqa: E731
    else:
        fn = lambda: fastops.flow_warp(x, flow)  # noqa: E731
    record(benchmark, "flow_warp fwd", f"{workload} pixel zeros fp32", threads, side)
    run(benchmark, fn, rounds=5)


@pytest.mark.parametrize("side", ("anchor", "fastops"))
@pytest.mark.parametrize("workload", list(SHAPES))
def test_flow_warp_fwd_bwd(benchmark, threads, workload, side):
    x, flow = _data(SHAPES[workload], requires_grad=True)
    g = torch.randn(x.shape)
    if side == "anchor":
        f = lambda: flow_warp_grid_sample(x, flow, "zeros", True, "pixel")  # noqa: E731
    else:
        f = lambda: fastops.flow_warp(x, flow)  # noqa: E731

    def fn():
        return torch.autograd.grad(f(), (x, flow), g)

    record(benchmark, "flow_warp fwd+bwd", f"{workload} pixel zeros fp32", threads, side)
    run(benchmark, fn, rounds=3)


@pytest.mark.parametrize("side", ("anchor", "fastops"))
def test_flow_warp_fwd_iid(benchmark, threads, side):
    x, flow = _data(SHAPES["2x256x96x160"], iid=True)
    if side == "anchor":
        fn = lambda: flow_warp_grid_sample(x, flow, "zeros", True, "pixel")  # noqa: E731
    else:
        fn = lambda: fastops.flow_warp(x, flow)  # noqa: E731
    record(benchmark, "flow_warp fwd", "2x256x96x160 iid-flow stress fp32", threads, side)
    run(benchmark, fn, rounds=5)


@pytest.mark.parametrize("side", ("anchor", "fastops"))
def test_flow_warp_fwd_channels_last(benchmark, threads, side):
    x, flow = _data(SHAPES["1x128x256x448"])
    x = x.contiguous(memory_format=torch.channels_last)
    if side == "anchor":
        fn = lambda: flow_warp_grid_sample(x, flow, "zeros", True, "pixel")  # noqa: E731
    else:
        fn = lambda: fastops.flow_warp(x, flow)  # noqa: E731
    record(benchmark, "flow_warp fwd", "1x128x256x448 channels_last fp32", threads, side)
    run(benchmark, fn, rounds=5)
