"""heatmap_peaks and centernet_decode: samples for tests/test_impls.py."""
import torch

import fastops
from impl_samples import Sample


def _heat(device):
    g = torch.Generator().manual_seed(0)
    heat = torch.randint(0, 4, (2, 3, 6, 7), generator=g).float() / 4  # many ties
    heat[1, 0] = -torch.rand(6, 7, generator=g)
    heat[0, 2, 2, 3] = float("inf")
    return heat.to(device)


def _peaks(k, kernel):
    def make(device):
        return (_heat(device), k, kernel), {}
    return make


def _decode(device):
    g = torch.Generator().manual_seed(1)
    heat = torch.rand(2, 3, 6, 7, generator=g)
    wh = torch.rand(2, 2, 6, 7, generator=g) * 5
    reg = torch.rand(2, 6, 7, 2, generator=g).permute(0, 3, 1, 2)  # strided: read in place
    return (heat.to(device), wh.to(device), reg.to(device), 10), {}


SAMPLES = [
    Sample("heatmap_peaks-k5", fastops.heatmap_peaks, _peaks(5, 3), atol=0, rtol=0),
    Sample("heatmap_peaks-k200-kernel5", fastops.heatmap_peaks, _peaks(200, 5), atol=0, rtol=0),
    Sample("heatmap_peaks-huge-kernel", fastops.heatmap_peaks, _peaks(20, 2**31 + 1), atol=0, rtol=0),
    Sample("centernet_decode", fastops.centernet_decode, _decode, atol=1e-6, rtol=1e-6),
]
