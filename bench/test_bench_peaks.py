"""Peaks: anchor (CenterNet's ctdet_decode transcription, as it runs) vs fastops, 1 and 2 threads."""
import pytest
import torch

import fastops
from fastops.reference import peaks as R

from benchutil import record, run

SIDES = ("anchor", "fastops")


@pytest.mark.parametrize("side", SIDES)
def test_centernet_decode(benchmark, threads, side):
    g = torch.Generator().manual_seed(3)
    heat = torch.rand(1, 80, 128, 128, generator=g)
    wh = torch.rand(1, 2, 128, 128, generator=g) * 50
    reg = torch.rand(1, 2, 128, 128, generator=g)
    record(benchmark, "centernet_decode", "[1,80,128,128] K=100", threads, side)
    if side == "anchor":
        fn = lambda: R.centernet_ctdet_decode(heat, wh, reg, 100)  # noqa: E731
    else:
        fn = lambda: fastops.centernet_decode(heat, wh, reg, 100)  # noqa: E731
    run(benchmark, fn, rounds=5 if side == "anchor" else 20)
