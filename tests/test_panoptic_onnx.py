"""ONNX export of panoptic_fuse (issue 13): the decomposition in fastops/registrations/panoptic.py, exported once per
exporter with dynamic instance count (and semantic size), checked (onnx.checker, no fastops domain), run in
onnxruntime and compared with eager fastops: ids exact."""
import pytest
import torch

import fastops
from keypoints_helpers import onnx_session

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])


class Fuse(torch.nn.Module):
    def __init__(self, num_stuff, output_size, void):
        super().__init__()
        self.args = num_stuff, output_size, void

    def forward(self, sem, masks, boxes, labels):
        S, size, void = self.args
        return fastops.panoptic_fuse(sem, masks, boxes, labels, S, size, void)


def _inputs(S, T, h, w, N, M, H, W, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sem = torch.randn(S + T, h, w, generator=g).to(dtype) * 2
    masks = torch.randn(N, M, M, generator=g).to(dtype) * 3
    xy = torch.rand(N, 2, generator=g) * torch.tensor([W + 4.0, H + 4.0]) - 4
    wh = torch.rand(N, 2, generator=g) * torch.tensor([W / 2, H / 2]) + 0.3
    boxes = torch.cat([xy, xy + wh], 1).to(dtype)
    if N > 2:
        boxes[0] = torch.tensor([-3.7, 1.5, 2.5, 3.5])  # negative corner (trunc toward zero), .5 (round half even)
        boxes[1] = torch.tensor([2.2, 0.4, W + 9.0, H + 3.0])  # larger than the map
        boxes[2] = torch.tensor([5.0, 5.0, 5.2, 5.9])  # one-pixel box
    labels = torch.randint(1, T + 1, (N,), generator=g)
    return sem, masks, boxes, labels


@EXPORTERS
@pytest.mark.parametrize("upsample", [False, True], ids=["same-size", "upsample"])
@pytest.mark.parametrize("void", [True, False])
def test_panoptic_fuse_onnx(dynamo, upsample, void):
    S, T, M = 3, 4, 7
    h, w = (6, 8) if upsample else (23, 31)
    H, W = 23, 31
    m = Fuse(S, (H, W) if upsample else None, void)
    args = _inputs(S, T, h, w, 5, M, H, W, 0)
    dyn = {1: {0: "N"}, 2: {0: "N"}, 3: {0: "N"}}
    if upsample:
        dyn[0] = {1: "h", 2: "w"}
    run = onnx_session(m, args, dynamo, dynamic=dyn)
    cases = [(5, 0, (h, w)), (9, 1, (h, w)), (3, 2, (h, w)), (0, 3, (h, w))]
    if upsample:
        cases += [(4, 4, (5, 13)), (6, 5, (H, W))]  # another semantic size; the output size itself
    seen = set()
    for N, seed, (hh, ww) in cases:
        args = _inputs(S, T, hh, ww, N, M, H, W, seed)
        (got,) = run(*args)
        expected = m(*args)
        assert got.dtype == torch.int32
        assert torch.equal(got, expected), (N, seed, (got != expected).sum())
        seen |= set(expected.unique().tolist())
    assert any(0 <= i < S for i in seen) and any(S <= i < 255 for i in seen)  # stuff and instances both win
    if void:
        assert 255 in seen


@EXPORTERS
def test_panoptic_fuse_onnx_float64_and_4d_masks(dynamo):
    S, T, M, H, W = 2, 3, 5, 14, 12
    m = Fuse(S, None, True)
    sem, masks, boxes, labels = _inputs(S, T, H, W, 4, M, H, W, 7, torch.float64)
    run = onnx_session(m, (sem, masks[:, None], boxes, labels.to(torch.int32)), dynamo,
                       dynamic={1: {0: "N"}, 2: {0: "N"}, 3: {0: "N"}})
    for N, seed in ((4, 7), (8, 8)):
        sem, masks, boxes, labels = _inputs(S, T, H, W, N, M, H, W, seed, torch.float64)
        args = (sem, masks[:, None], boxes, labels.to(torch.int32))
        assert torch.equal(run(*args)[0], m(*args))
