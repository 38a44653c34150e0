"""panoptic_fuse vs a plain-PyTorch transcription of UPSNet's test-time panoptic head.

Workload from the spec: 53 stuff + 80 thing classes, 50 instances (28x28 mask logits), output 800x1216, semantic
logits at 1/4 resolution upsampled on the fly (UPSNet's fcn_output), with the void channel. "smooth" semantic
logits are spatially coherent like a real head's output (a coarse random field, upsampled, plus noise);
"iid" logits are independent per low-res pixel (the worst case for the kernel's channel pruning).
"""
import pytest
import torch
import torch.nn.functional as F

import fastops
from benchutil import peak_extra_mb, record, run
from fastops.reference.panoptic import panoptic_fuse as upsnet_fuse

S, T, N, H, W = 53, 80, 50, 800, 1216


def _data(kind):
    g = torch.Generator().manual_seed(0)
    h, w = H // 4, W // 4
    if kind == "smooth":
        coarse = torch.randn(1, S + T, h // 8, w // 8, generator=g) * 3
        sem = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        sem = sem + 0.3 * torch.randn(S + T, h, w, generator=g)
    else:
        sem = torch.randn(S + T, h, w, generator=g) * 2
    masks = torch.randn(N, 28, 28, generator=g) * 3
    x1 = torch.rand(N, generator=g) * W * 0.8
    y1 = torch.rand(N, generator=g) * H * 0.8
    x2 = (x1 + torch.rand(N, generator=g) * W * 0.3).clamp(max=W - 1)
    y2 = (y1 + torch.rand(N, generator=g) * H * 0.3).clamp(max=H - 1)
    boxes = torch.stack([x1, y1, x2, y2], 1)
    labels = torch.randint(1, T + 1, (N,), generator=g)
    return sem, masks, boxes, labels


@pytest.mark.parametrize("side", ("anchor", "fastops"))
@pytest.mark.parametrize("kind", ("smooth", "iid"))
def test_panoptic_fuse(benchmark, threads, kind, side):
    sem, masks, boxes, labels = _data(kind)
    if side == "anchor":
        fn = lambda: upsnet_fuse(sem, masks, boxes, labels, S, (H, W), True)  # noqa: E731
    else:
        fn = lambda: fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=S, output_size=(H, W))  # noqa
    peak = peak_extra_mb(fn) if threads == 1 else None
    record(benchmark, "panoptic_fuse", f"800x1216 53+80cls 50inst {kind} void", threads, side, peak_mb=peak)
    run(benchmark, fn, rounds=3 if side == "anchor" else 7)
