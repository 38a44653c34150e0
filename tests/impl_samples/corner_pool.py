"""corner_pool (forward and CornerNet's backward, ties and a NaN at the scan start): samples for
tests/test_impls.py."""
import torch

import fastops
from impl_samples import Sample


def _x(mode, nan):
    def make(device):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 4, (1, 2, 5, 6), generator=g).float()  # ties: the first met takes the gradient
        if nan:
            x[0, 0, 4, 5] = float("nan")  # the scan start of top (column 5) and left (row 4)
            x[0, 1, 0, 0] = float("nan")  # the scan start of bottom and right
            x[0, 1, 2, 3] = float("nan")  # mid-scan
        return (x.to(device), mode), {}
    return make


SAMPLES = [
    Sample(f"corner_pool-{m}{'-nan' if nan else ''}", fastops.corner_pool, _x(m, nan), grad=(0,), atol=1e-6,
           rtol=1e-6)
    for m in ("top", "bottom", "left", "right") for nan in (False, True)
]
