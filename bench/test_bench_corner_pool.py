"""Corner pooling: anchor (mmcv's torch.cummax form with autograd) vs fastops, forward+backward, 1 and 2 threads."""
import pytest
import torch

import fastops
from fastops.reference import corner_pool as R

from benchutil import record, run

SIDES = ("anchor", "fastops")


@pytest.mark.parametrize("mode", ["top", "left", "right"])
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
