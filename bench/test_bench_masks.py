"""Instance mask assembly: anchors (YOLACT's postprocess / lincomb loss in plain PyTorch, torchvision's
paste_masks_in_image) vs fastops, 1 and 2 threads, with peak extra memory measured in a fork."""
import pytest
import torch
import torchvision.models.detection.roi_heads as tv_roi_heads

import fastops
from fastops.reference import masks as ref

from benchutil import peak_extra_mb, record, run

SIDES = ("anchor", "fastops")
N_DETS = 100


def _yolact_inputs():
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(138, 138, 32, generator=g)
    coeffs = torch.randn(N_DETS, 32, generator=g) * 0.5
    xy = torch.rand(N_DETS, 2, generator=g) * 0.7
    wh = torch.rand(N_DETS, 2, generator=g) * 0.5 + 0.05  # mean box ~9% of the image, as in the spec
    boxes = torch.cat([xy, (xy + wh).clamp(max=1.0)], 1)
    return protos, coeffs, boxes


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("size", [(550, 550), (1080, 1920)], ids=["550x550", "1080x1920"])
def test_yolact_masks(benchmark, threads, size, side):
    protos, coeffs, boxes = _yolact_inputs()
    if side == "anchor":
        def fn():
            return ref.yolact_postprocess_masks(protos, coeffs, boxes, size, True, 0.5)
    else:
        def fn():
            return fastops.yolact_masks(protos, coeffs, boxes, size, threshold=0.5)
    peak = peak_extra_mb(fn)
    record(benchmark, "yolact_masks", f"100 dets 138x138x32 -> {size[0]}x{size[1]} thr", threads, side, peak)
    out = run(benchmark, fn, rounds=3 if size[0] > 1000 else 5)
    assert out.shape == (N_DETS,) + size and out.dtype == torch.bool


@pytest.mark.parametrize("side", SIDES)
def test_yolact_mask_loss(benchmark, threads, side):
    protos, coeffs, boxes = _yolact_inputs()
    g = torch.Generator().manual_seed(1)
    keep = ref.crop(torch.ones(138, 138, N_DETS), boxes).permute(2, 0, 1)
    gt = (torch.rand(N_DETS, 138, 138, generator=g) > 0.5).float() * keep
    loss_fn = ref.lincomb_mask_loss if side == "anchor" else fastops.yolact_mask_loss

    def fn():
        p = protos.detach().requires_grad_()
        c = coeffs.detach().requires_grad_()
        loss = loss_fn(p, c, boxes, gt).sum()
        loss.backward()
        return p.grad, c.grad

    peak = peak_extra_mb(fn)
    record(benchmark, "yolact_mask_loss", "100 dets 138x138x32 fwd+bwd", threads, side, peak)
    gp, gc = run(benchmark, fn, rounds=7)
    assert gp.shape == protos.shape and gc.shape == coeffs.shape


def _paste_inputs():
    g = torch.Generator().manual_seed(2)
    H, W = 800, 1216
    masks = torch.rand(N_DETS, 1, 28, 28, generator=g)
    wh = torch.rand(N_DETS, 2, generator=g) * 304 + 16
    xy = torch.rand(N_DETS, 2, generator=g) * torch.tensor([W - 330.0, H - 330.0])
    return masks, torch.cat([xy, xy + wh], 1), (H, W)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("threshold", [None, 0.5], ids=["float", "bool"])
def test_paste_masks(benchmark, threads, threshold, side):
    """float: torchvision's output (the 389 MB float planes; fastops writes only the pages under the boxes, whose
    first-touch faults are most of its time); bool: `> 0.5` masks, 4x fewer bytes to touch."""
    masks, boxes, shape = _paste_inputs()
    if side == "anchor":
        def fn():
            out = tv_roi_heads.paste_masks_in_image(masks, boxes, shape)
            return out if threshold is None else out > threshold
    else:
        def fn():
            return fastops.paste_masks(masks, boxes, shape, threshold=threshold)
    peak = peak_extra_mb(fn)
    kind = "float" if threshold is None else "bool"
    record(benchmark, "paste_masks", f"100 masks 28x28 -> 800x1216 {kind}", threads, side, peak)
    out = run(benchmark, fn, rounds=5)
    assert out.shape == (N_DETS, 1) + shape
