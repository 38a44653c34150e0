"""Plain-PyTorch transcription of UPSNet's test-time panoptic head (uber-research/UPSNet: SegTerm, MaskTerm and
the `enable_void` branch of resnet_upsnet.py's test path), written against our argument layout.

It builds the full `[S + N (+1), H, W]` panoptic logit tensor, as UPSNet does; it is the anchor of the
benchmarks and the expected result of the tests.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _trunc(v: float) -> int:
    return int(v)  # toward zero, like Python int() / Tensor.long()


def upsnet_panoptic_logits(semantic_logits: Tensor, mask_logits: Tensor, boxes: Tensor, labels: Tensor,
                           num_stuff: int, output_size=None, void: bool = True) -> Tensor:
    """The `[1, S + N (+1), H, W]` logits of UPSNet's panoptic head (boxes in output pixels, labels 1..T)."""
    x = semantic_logits.unsqueeze(0)
    if output_size is not None and tuple(output_size) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)  # fcn_output
    _, c, h, w = x.shape
    s = num_stuff
    seg_logits = x[:, :s]
    n = boxes.shape[0]
    bx = boxes.detach().double().cpu().tolist()
    lb = labels.detach().cpu().tolist()
    if n == 0:
        # SegTerm with no detections: a constant -10 "instance" channel, which only enters the void logit.
        seg_inst = torch.full((1, 1, h, w), -10.0, dtype=x.dtype, device=x.device)
        inst_logits = x.new_zeros((1, 0, h, w))
    else:
        seg_inst = x.new_zeros((1, n, h, w))
        mask_energy = x.new_zeros((1, n, h, w))
        for i in range(n):
            x1, y1, x2, y2 = bx[i]
            # SegTerm: the instance's semantic channel inside [int(y1), round(y2) + 1) x [int(x1), round(x2) + 1).
            ya, yb = min(max(_trunc(y1), 0), h), min(max(int(round(y2)) + 1, 0), h)
            xa, xb = min(max(_trunc(x1), 0), w), min(max(int(round(x2)) + 1, 0), w)
            if yb > ya and xb > xa:
                seg_inst[0, i, ya:yb, xa:xb] = x[0, s + int(lb[i]) - 1, ya:yb, xa:xb]
            # MaskTerm: the mask logits resized to the truncated box, pasted and clipped.
            r0, r1, r2, r3 = _trunc(x1), _trunc(y1), _trunc(x2), _trunc(y2)
            bw, bh = max(r2 - r0 + 1, 1), max(r3 - r1 + 1, 1)
            xa, xb = min(max(r0, 0), w), min(max(r2 + 1, 0), w)
            ya, yb = min(max(r1, 0), h), min(max(r3 + 1, 0), h)
            if yb > ya and xb > xa:
                m = F.interpolate(mask_logits[i].view(1, 1, *mask_logits.shape[1:]), size=(bh, bw), mode="bilinear",
                                  align_corners=False)
                mask_energy[0, i, ya:yb, xa:xb] = m[0, 0, ya - r1:yb - r1, xa - r0:xb - r0]
        inst_logits = seg_inst + mask_energy
    parts = [seg_logits, inst_logits]
    if void:
        void_logits = torch.max(x[:, s:], dim=1, keepdim=True)[0] - torch.max(seg_inst, dim=1, keepdim=True)[0]
        parts.append(void_logits)
    return torch.cat(parts, dim=1)


def panoptic_fuse(semantic_logits: Tensor, mask_logits: Tensor, boxes: Tensor, labels: Tensor, num_stuff: int,
                  output_size=None, void: bool = True) -> Tensor:
    """UPSNet's panoptic output: argmax over the panoptic logits (first index on ties), void -> 255, int32."""
    logits = upsnet_panoptic_logits(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size, void)
    out = torch.argmax(logits, dim=1)[0]
    if void:
        out[out == logits.shape[1] - 1] = 255
    return out.to(torch.int32)
