"""render_gaussian_heatmaps, render_center_heatmap, gaussian_radius: samples for tests/test_impls.py."""
import torch

import fastops
from impl_samples import Sample


def _kp(device, B=2, N=2, K=5, H=12, W=10, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    kp = torch.rand(B, N, K, 2, generator=g, dtype=torch.float64) * torch.tensor([W + 6.0, H + 6.0]) - 3
    kp[0, 0, 0] = torch.tensor([2.5, 3.5])  # exact .5: the integer centre's rounding
    kp[0, 0, 1] = torch.tensor([float("nan"), 1.0])
    vis = (torch.rand(B, N, K, generator=g) > 0.3).to(dtype)
    vis[0, 0, 2] = 0.5  # exactly 0.5 is drawn
    return kp.to(dtype).to(device), vis.to(device)


def _render(mode, kernel, sigma, dtype=torch.float32):
    def make(device):
        kp, vis = _kp(device, dtype=dtype)
        return (kp, (12, 10), sigma, vis), {"mode": mode, "kernel": kernel}
    return make


def _center(device):
    g = torch.Generator().manual_seed(1)
    c = (torch.rand(2, 6, 2, generator=g) * 20 - 3).to(device)
    r = torch.randint(0, 5, (2, 6), generator=g).to(device)
    lab = torch.randint(-1, 3, (2, 6), generator=g).to(device)
    return (c, r, lab, 3, (12, 14)), {}


def _radius(device):
    g = torch.Generator().manual_seed(2)
    h = (torch.rand(20, generator=g, dtype=torch.float64) * 100 + 1).to(device)
    w = (torch.rand(20, generator=g, dtype=torch.float64) * 100 + 1).to(device)
    return (h, w, 0.7), {"variant": "cornernet"}


SAMPLES = [
    Sample(f"render_gaussian_heatmaps-{m}-{k}", fastops.render_gaussian_heatmaps, _render(m, k, s))
    for m in ("msra", "udp", "dark") for k, s in (("gaussian", 1.5), ("cauchy", 2.0))
] + [
    Sample("render_gaussian_heatmaps-msra-f64", fastops.render_gaussian_heatmaps,
           _render("msra", "gaussian", 2.0, torch.float64), atol=1e-7, rtol=1e-6),
    Sample("render_center_heatmap", fastops.render_center_heatmap, _center, atol=0, rtol=0),
    Sample("gaussian_radius-cornernet", fastops.gaussian_radius, _radius, atol=1e-12, rtol=1e-12),
]
