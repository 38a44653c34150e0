"""heatmap_argmax (every refinement) and soft_argmax (forward and gradient): samples for tests/test_impls.py."""
import torch

import fastops
from impl_samples import Sample


def _maps(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    B, K, H, W = 2, 4, 12, 14
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    c = torch.rand(B, K, 2, generator=g, dtype=torch.float64) * torch.tensor([W - 1.0, H - 1.0])
    hm = torch.exp(-((xs - c[..., 0, None, None]) ** 2 + (ys - c[..., 1, None, None]) ** 2) / 4.5)
    hm = hm + 0.02 * torch.rand(B, K, H, W, generator=g, dtype=torch.float64)
    hm[0, 0] = -1.0  # score <= 0: coordinates -1
    hm[1, 0] = 0
    hm[1, 0, 1, 7] = 1.0  # sharp peak: DARK's clamp needs the full-map rescale
    return hm.to(dtype).to(device)


def _argmax(refine):
    def make(device):
        return (_maps(device),), {"refine": refine, "blur_kernel": 5}
    return make


def _soft(normalize, dtype=torch.float32):
    def make(device):
        return (_maps(device, dtype), 1.5), {"normalize": normalize}
    return make


SAMPLES = [
    Sample(f"heatmap_argmax-{r}", fastops.heatmap_argmax, _argmax(r),
           atol=2e-4 if r.startswith("dark") else 0, rtol=0)
    for r in ("none", "quarter", "hourglass", "dark", "dark_udp")
] + [
    Sample("soft_argmax", fastops.soft_argmax, _soft(False), grad=(0,), atol=1e-5, rtol=1e-5),
    Sample("soft_argmax-normalize-f64", fastops.soft_argmax, _soft(True, torch.float64), grad=(0,), atol=1e-12,
           rtol=1e-10),
]
