"""Sample inputs of the masks family (yolact_masks, yolact_mask_loss, paste_masks) for tests/test_impls.py.

Small shapes (the Triton interpreter is slow); boxes cross the borders, one is inverted, one is NaN; float64 for
the gradients so that cpp/triton and the reference agree to rounding.
"""
from __future__ import annotations

import torch

import fastops
from impl_samples import Sample

_BOXES = [[0.1, 0.2, 0.6, 0.7], [0.9, 0.0, 0.3, 0.5], [-0.2, 0.4, 0.5, 1.3], [0.0, 0.0, 1.0, 1.0],
          [0.3, float("nan"), 0.6, 0.8]]


def _yolact(device, dtype=torch.float32, n=5, hp=9, wp=11, p=4):
    g = torch.Generator().manual_seed(11)
    protos = torch.randn(hp, wp, p, generator=g, dtype=torch.float64)
    coeffs = torch.randn(n, p, generator=g, dtype=torch.float64)
    boxes = torch.tensor(_BOXES[:n], dtype=torch.float64)
    return protos.to(device, dtype), coeffs.to(device, dtype), boxes.to(device, dtype)


def _masks_float(device):
    p, c, b = _yolact(device)
    return (p, c, b, (13, 17)), {"threshold": None}


def _masks_proto_res(device):
    p, c, b = _yolact(device)
    return (p, c, b, None), {"threshold": None}


def _masks_negative_threshold(device):
    # thresholds at 0.5 may tie by summation order; -0.1 and 0.97 are far from every value's rounding
    p, c, b = _yolact(device)
    return (p, c, b, (13, 17)), {"threshold": -0.1}


def _masks_no_crop(device):
    p, c, b = _yolact(device, n=3)
    return (p, c, b, (7, 5)), {"crop": False, "threshold": None}


def _loss(device):
    p, c, b = _yolact(device, dtype=torch.float64, n=4)
    g = torch.Generator().manual_seed(12)
    gt = (torch.rand(4, p.size(0), p.size(1), generator=g, dtype=torch.float64) > 0.5).double().to(device)
    return (p, c, b, gt), {}


def _paste(device, threshold=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(13)
    masks = torch.rand(4, 1, 6, 6, generator=g, dtype=torch.float64).to(device, dtype)
    boxes = torch.tensor([[2.0, 3.0, 17.5, 12.2], [-5.5, 4.0, 9.0, 30.0], [10.0, -2.0, 40.0, 8.0],
                          [float("inf"), 0.0, 5.0, 5.0]], dtype=torch.float64).to(device, dtype)
    return (masks, boxes, (19, 23)), {"padding": 1, "threshold": threshold}


SAMPLES = [
    Sample("yolact_masks-float", fastops.yolact_masks, _masks_float),
    Sample("yolact_masks-proto_res", fastops.yolact_masks, _masks_proto_res),
    Sample("yolact_masks-negative_threshold", fastops.yolact_masks, _masks_negative_threshold),
    Sample("yolact_masks-no_crop", fastops.yolact_masks, _masks_no_crop),
    Sample("yolact_mask_loss-float64", fastops.yolact_mask_loss, _loss, grad=(0, 1), atol=1e-9, rtol=1e-9),
    Sample("paste_masks-float", fastops.paste_masks, _paste),
    Sample("paste_masks-negative_threshold", fastops.paste_masks, lambda d: _paste(d, threshold=-0.1)),
    Sample("paste_masks-threshold", fastops.paste_masks, lambda d: _paste(d, threshold=0.5)),
    Sample("paste_masks-float64", fastops.paste_masks, lambda d: _paste(d, dtype=torch.float64)),
]
