"""densepose_chart_to_iuv, densepose_paste_iuv, roi_point_sample: samples for tests/test_impls.py."""
import torch

import fastops
from impl_samples import Sample


def _chart(device, paste=False):
    g = torch.Generator().manual_seed(0)
    R, S = 4, 14
    coarse = torch.randn(R, 2, S, S, generator=g)
    fine = torch.randn(R, 25, S, S, generator=g)
    u, v = torch.rand(R, 25, S, S, generator=g), torch.rand(R, 25, S, S, generator=g)
    boxes = torch.tensor([[3.5, 4.2, 40.0, 31.0], [-10.0, 20.0, 12.0, 60.0], [7.2, 7.9, 7.6, 8.1],
                          [20.0, 5.0, 70.0, 22.5]])
    args = [t.to(device) for t in (coarse, fine, u, v, boxes)]
    if paste:
        return (*args, torch.tensor([0.9, 0.5, 0.7, 0.9], device=device), 40, 64), {}
    return tuple(args), {}


def _points(device):
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 5, 7, 7, generator=g)
    ri = torch.randint(0, 3, (50,), generator=g)
    pts = torch.rand(50, 2, generator=g) * 7
    pts[0] = 7.0
    return (maps.to(device), ri.to(device), pts.to(device)), {}


SAMPLES = [
    Sample("densepose_chart_to_iuv", fastops.densepose_chart_to_iuv, _chart, impls=("cpp", "triton"), atol=5e-7, rtol=0),
    Sample("densepose_paste_iuv", fastops.densepose_paste_iuv, lambda d: _chart(d, True), impls=("cpp", "triton"), atol=1,
           rtol=0),
    Sample("roi_point_sample", fastops.roi_point_sample, _points, grad=(0,), impls=("cpp", "triton")),
]
