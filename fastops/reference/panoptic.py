"""Plain-PyTorch transcription of UPSNet's test-time panoptic head (uber-research/UPSNet: SegTerm, MaskTerm and
the `enable_void` branch of resnet_upsnet.py's test path), written against our argument layout.

It builds the full `[S + N (+1), H, W]` panoptic logit tensor, as UPSNet does; it is the anchor of the
benchmarks and the expected result of the tests.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor


_LIM = 2.0 ** 40


def _trunc(v: float) -> int:
    return int(v)  # toward zero, like Python int() / Tensor.long()


def _half_pixel_source(dst: Tensor, scale: Tensor) -> Tensor:
    """scale * (dst + 0.5) - 0.5 rounded once to scale's dtype, as PyTorch's vectorised CPU builds (one contracted
    FMA) and CUDA compute it. float32: the float64 value is exact (a 24-bit scale times a < 2^28 index needs < 53
    bits), so one rounding remains; float64: exact rationals."""
    if scale.dtype == torch.float32:
        return (scale.double() * (dst.double() + 0.5) - 0.5).float()
    s = Fraction(float(scale))
    vals = [float(s * (Fraction(int(d)) + Fraction(1, 2)) - Fraction(1, 2)) for d in dst.tolist()]
    return torch.tensor(vals, dtype=torch.float64, device=dst.device)


def _lerp_axis(dst: Tensor, in_size: int, out_size: int, acc):
    """PyTorch's half-pixel (align_corners=False) bilinear source taps for output indices `dst` (identity when the
    sizes match, as F.interpolate)."""
    if in_size == out_size:
        return dst, dst, torch.ones_like(dst, dtype=acc), torch.zeros_like(dst, dtype=acc)
    scale = torch.tensor(in_size, dtype=acc) / torch.tensor(out_size, dtype=acc)
    src = _half_pixel_source(dst, scale).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    l1 = (src - i0.to(acc)).clamp(0, 1)
    i1 = i0 + (i0 < in_size - 1).long()
    return i0, i1, 1 - l1, l1


def resized_crop(m: Tensor, bh: int, bw: int, ys: Tensor, xs: Tensor) -> Tensor:
    """Rows `ys` x columns `xs` of `F.interpolate(m[None, None], (bh, bw), mode="bilinear")[0, 0]`, without
    building the `bh x bw` map (huge boxes). Same arithmetic as PyTorch's CPU kernel (accumulate in float32 for
    float/half inputs, float64 for float64)."""
    acc = torch.float64 if m.dtype == torch.float64 else torch.float32
    y0, y1, ly0, ly1 = _lerp_axis(ys, m.shape[0], bh, acc)
    x0, x1, lx0, lx1 = _lerp_axis(xs, m.shape[1], bw, acc)
    v = m.to(acc)
    top = lx0 * v[y0][:, x0] + lx1 * v[y0][:, x1]
    bot = lx0 * v[y1][:, x0] + lx1 * v[y1][:, x1]
    return (ly0[:, None] * top + ly1[:, None] * bot).to(m.dtype)


def check_detections(boxes: Tensor, labels: Tensor, num_things: int) -> None:
    """The kernel's data-dependent checks (RuntimeError, same messages as the CPU kernel)."""
    for i, lab in enumerate(labels.detach().cpu().tolist()):
        if not 1 <= lab <= num_things:
            raise RuntimeError(f"panoptic_fuse: labels must be thing classes in [1, {num_things}], got {lab} at "
                               f"index {i}")
    finite = torch.isfinite(boxes.detach()).all(dim=1).cpu()
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0, 0])
        raise RuntimeError(f"panoptic_fuse: boxes must be finite, got a non-finite value at index {i}")


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
            # Coordinates are bounded to +-2^40 first (panoptic.h bound_coord; a larger box is clipped by any map).
            x1, y1, x2, y2 = (min(max(v, -_LIM), _LIM) for v in bx[i])
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
            if yb > ya and xb > xa and bh * bw > 2 ** 22:  # huge box: resize only the visible crop
                ys = torch.arange(ya - r1, yb - r1, device=x.device)
                xs = torch.arange(xa - r0, xb - r0, device=x.device)
                mask_energy[0, i, ya:yb, xa:xb] = resized_crop(mask_logits[i], bh, bw, ys, xs)
            elif yb > ya and xb > xa:
                m = F.interpolate(mask_logits[i].view(1, 1, *mask_logits.shape[1:]), size=(bh, bw), mode="bilinear",
                                  align_corners=False)
                mask_energy[0, i, ya:yb, xa:xb] = m[0, 0, ya - r1:yb - r1, xa - r0:xb - r0]
        inst_logits = seg_inst + mask_energy
    parts = [seg_logits, inst_logits]
    if void:
        if c > s:
            thing_max = torch.max(x[:, s:], dim=1, keepdim=True)[0]
        else:  # no thing channels: -inf (the void channel never wins)
            thing_max = torch.full((1, 1, h, w), float("-inf"), dtype=x.dtype, device=x.device)
        void_logits = thing_max - torch.max(seg_inst, dim=1, keepdim=True)[0]
        parts.append(void_logits)
    return torch.cat(parts, dim=1)


def panoptic_fuse(semantic_logits: Tensor, mask_logits: Tensor, boxes: Tensor, labels: Tensor, num_stuff: int,
                  output_size=None, void: bool = True) -> Tensor:
    """UPSNet's panoptic output: argmax over the panoptic logits (first index on ties; NaN beats every number and
    the first NaN channel wins, as torch.argmax), void -> 255, int32."""
    check_detections(boxes, labels, semantic_logits.shape[0] - num_stuff)
    logits = upsnet_panoptic_logits(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size, void)
    out = torch.argmax(logits, dim=1)[0]
    if void:
        out[out == logits.shape[1] - 1] = 255
    return out.to(torch.int32)
