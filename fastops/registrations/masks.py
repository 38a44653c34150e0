"""Instance mask assembly, what every backend shares: fake kernels, autograd of `yolact_mask_loss` (one
backward factory for the compiled op and its `_triton` twin), the per-detection geometry that the Triton
kernels take as input (re-derived here from YOLACT / torchvision; tests compare it with fastops.reference),
autocast and ONNX registrations (see fastops/registrations/masks_onnx.py for the ONNX decomposition).

Imports neither fastops.ops, fastops.triton nor fastops.reference.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

import fastops._library  # noqa: F401  (loads fastops._C: the schemas these registrations attach to)
from fastops.registrations import register_fakes, register_float32_autocast

# ---- fake kernels (the compiled op and its `_triton` twin use the same function) ------------------------------


def yolact_masks_fake(protos, coeffs, boxes, out_h, out_w, crop, threshold):
    dtype = torch.bool if threshold is not None else protos.dtype
    return protos.new_empty((coeffs.size(0), out_h, out_w), dtype=dtype)


def yolact_mask_loss_fake(protos, coeffs, boxes, gt_masks):
    return protos.new_empty((coeffs.size(0),))


def yolact_mask_loss_backward_fake(grad, protos, coeffs, boxes, gt_masks):
    return protos.new_empty(tuple(protos.shape)), protos.new_empty((coeffs.size(0), coeffs.size(1)))


def paste_masks_fake(masks, boxes, image_h, image_w, padding, threshold):
    dtype = torch.bool if threshold is not None else masks.dtype
    return masks.new_empty((masks.size(0), 1, image_h, image_w), dtype=dtype)


FAKES = {
    "yolact_masks": yolact_masks_fake,
    "yolact_mask_loss": yolact_mask_loss_fake,
    "_yolact_mask_loss_backward": yolact_mask_loss_backward_fake,
    "paste_masks": paste_masks_fake,
}

# ---- autograd of yolact_mask_loss ------------------------------------------------------------------------------


def loss_setup_context(ctx, inputs, output):
    protos, coeffs, boxes, gt_masks = inputs
    ctx.save_for_backward(protos, coeffs, boxes, gt_masks)


def make_loss_backward(backward_op) -> Callable:
    """The backward of `yolact_mask_loss` (or of its `_triton` twin) through `backward_op`
    (grad [N], protos, coeffs, boxes, gt_masks) -> (grad_protos, grad_coeffs)."""

    def backward(ctx, grad):
        protos, coeffs, boxes, gt_masks = ctx.saved_tensors
        gp, gc = backward_op(grad, protos, coeffs, boxes, gt_masks)
        return gp, gc, None, None

    return backward


# ---- geometry shared with the Triton kernels (small torch ops on [N, 4]) ---------------------------------------


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """torchvision's `roi_heads.expand_boxes`: each box scaled about its centre, in the boxes' dtype (the same
    roundings as torchvision's per-coordinate code, on the (x, y) pairs at once; tests/test_masks.py compares it with
    the reference's transcription)."""
    lo, hi = boxes[:, :2], boxes[:, 2:4]
    centre, half = (hi + lo) * 0.5, (hi - lo) * 0.5 * scale
    return torch.cat([centre - half, centre + half], dim=1)


def crop_bounds(a: Tensor, b: Tensor, size: int):
    """YOLACT's `sanitize_coordinates(a, b, size, padding=1, cast=False)`: float bounds (lo, hi) of the kept
    proto coordinates c (`lo <= c < hi`), in the boxes' dtype."""
    sa, sb = a * size, b * size
    lo = torch.clamp(torch.min(sa, sb) - 1, min=0)
    hi = torch.clamp(torch.max(sa, sb) + 1, max=size)
    return lo, hi


def _crop_range(a: Tensor, b: Tensor, size: int) -> Tensor:
    lo, hi = crop_bounds(a, b, size)
    ar = torch.arange(size, device=a.device, dtype=a.dtype)
    c0 = (ar[None, :] < lo[:, None]).sum(1)  # first c with c >= lo (NaN: 0)
    c1 = (ar[None, :] < hi[:, None]).sum(1)
    return torch.stack([c0, torch.maximum(c0, c1)], 1)


def yolact_crops(boxes: Tensor, Hp: int, Wp: int, crop: bool) -> Tensor:
    """int32 [N, 4]: the kept proto rectangle [cx0, cx1) x [cy0, cy1) of each detection (empty when cx1 <= cx0)."""
    N = boxes.size(0)
    if not crop:
        return torch.tensor([0, Wp, 0, Hp], dtype=torch.int32, device=boxes.device).repeat(N, 1).contiguous()
    cx = _crop_range(boxes[:, 0], boxes[:, 2], Wp)
    cy = _crop_range(boxes[:, 1], boxes[:, 3], Hp)
    return torch.cat([cx, cy], 1).to(torch.int32).contiguous()


def loss_box_dims(boxes: Tensor, Hp: int, Wp: int) -> Tensor:
    """float64 [N, 2]: (box_w * Wp, box_h * Hp) of YOLACT's loss normaliser, computed in the boxes' dtype."""
    w = (boxes[:, 2] - boxes[:, 0]) * Wp
    h = (boxes[:, 3] - boxes[:, 1]) * Hp
    return torch.stack([w, h], 1).to(torch.float64).contiguous()


# |expanded box| < 2^40 keeps every later int64 computation exact (same bound as csrc/masks/masks.h)
BOX_LIMIT = 2.0 ** 40


def paste_geometry(boxes: Tensor, M: int, padding: int, H: int, W: int) -> Tensor:
    """int64 [N, 8]: (x0, y0, bw, bh, xa, xb, ya, yb) per mask: torchvision's expanded, int64-truncated box
    origin, the resized mask size, and the visible window [ya, yb) x [xa, xb) (all 0 when nothing is pasted;
    non-finite or absurd boxes paste nothing)."""
    e = expand_boxes(boxes, float(M + 2 * padding) / M)
    valid = (e.abs() < BOX_LIMIT).all(1)  # False for NaN/inf too
    e = torch.where(valid[:, None], e, torch.zeros_like(e)).to(torch.int64)
    x0, y0, x1, y1 = e.unbind(1)
    one = torch.ones_like(x0)
    bw, bh = torch.maximum(x1 - x0 + 1, one), torch.maximum(y1 - y0 + 1, one)
    xa, xb = x0.clamp(min=0), torch.clamp(x1 + 1, max=W)
    ya, yb = y0.clamp(min=0), torch.clamp(y1 + 1, max=H)
    empty = ~valid | (xb <= xa) | (yb <= ya)
    z = torch.zeros_like(x0)
    xa, xb, ya, yb = (torch.where(empty, z, t) for t in (xa, xb, ya, yb))
    return torch.stack([x0, y0, bw, bh, xa, xb, ya, yb], 1).contiguous()


# ---- registrations for the compiled ops -----------------------------------------------------------------------

register_fakes(FAKES)

torch.library.register_autograd("fastops::yolact_mask_loss",
                                make_loss_backward(torch.ops.fastops._yolact_mask_loss_backward),
                                setup_context=loss_setup_context)

# Autocast (CPU and CUDA): every op computes in float32 from whatever float dtypes it is given (mixed
# protos/coeffs/boxes/gt dtypes are accepted under autocast), as torchvision does for roi_align; outputs are
# float32 (or bool with a threshold) and gradients flow back to the original dtypes through the casts.
register_float32_autocast(("yolact_masks", "yolact_mask_loss"))


def paste_masks_autocast(masks: Tensor, boxes: Tensor, image_h: int, image_w: int, padding: int,
                         threshold: Optional[float]) -> Tensor:
    """paste_masks under autocast: the op as without autocast (autocast off inside, no casts), so the result has
    the masks' dtype, as torchvision's paste_masks_in_image (no autocast rule of its own; F.interpolate keeps the
    dtype under autocast). The boxes keep their dtype too: torchvision expands and truncates them in their own
    dtype, and a float32 expansion of bfloat16 boxes would move them by a pixel. fastops.ops.masks does the same
    for every impl."""
    with torch.autocast(masks.device.type, enabled=False):
        return torch.ops.fastops.paste_masks(masks, boxes, image_h, image_w, padding, threshold)


_lib = torch.library.Library("fastops", "IMPL")
for _key in ("AutocastCPU", "AutocastCUDA"):
    _lib.impl("paste_masks", paste_masks_autocast, _key)


# ---- ONNX: TorchScript-exporter symbolics (registered here) and the dynamo exporter's translations -------------


def _const(v, desc):
    from torch.onnx import symbolic_helper

    if symbolic_helper._is_none(v):
        return None
    return symbolic_helper._maybe_get_const(v, desc)


def _yolact_masks_symbolic(g, protos, coeffs, boxes, out_h, out_w, crop, threshold):
    from fastops.registrations import masks_onnx as mo

    return mo.yolact_masks(mo._TS(g), protos, coeffs, boxes, _const(out_h, "i"), _const(out_w, "i"),
                           bool(_const(crop, "b")), _const(threshold, "f"))


def _yolact_mask_loss_symbolic(g, protos, coeffs, boxes, gt_masks):
    from fastops.registrations import masks_onnx as mo

    return mo.yolact_mask_loss(mo._TS(g), protos, coeffs, boxes, gt_masks)


def _paste_masks_symbolic(g, masks, boxes, image_h, image_w, padding, threshold):
    from fastops.registrations import masks_onnx as mo

    return mo.paste_masks(mo._TS(g), masks, boxes, _const(image_h, "i"), _const(image_w, "i"),
                          _const(padding, "i"), _const(threshold, "f"))


def _yolact_masks_onnx(protos, coeffs, boxes, out_h: int, out_w: int, crop: bool = True,
                       threshold: Optional[float] = None):
    from fastops.registrations import masks_onnx as mo

    return mo.yolact_masks(mo._OS(), protos, coeffs, boxes, out_h, out_w, crop, threshold)


def _yolact_mask_loss_onnx(protos, coeffs, boxes, gt_masks):
    from fastops.registrations import masks_onnx as mo

    return mo.yolact_mask_loss(mo._OS(), protos, coeffs, boxes, gt_masks)


def _paste_masks_onnx(masks, boxes, image_h: int, image_w: int, padding: int = 1, threshold: Optional[float] = None):
    from fastops.registrations import masks_onnx as mo

    return mo.paste_masks(mo._OS(), masks, boxes, image_h, image_w, padding, threshold)


def onnx_translations():
    """{op overload: translation} for the dynamo exporter (collected by fastops.onnx.translations())."""
    ops = torch.ops.fastops
    return {ops.yolact_masks.default: _yolact_masks_onnx, ops.yolact_mask_loss.default: _yolact_mask_loss_onnx,
            ops.paste_masks.default: _paste_masks_onnx}


def _register_symbolics() -> None:
    from fastops.registrations.masks_onnx import OPSET

    for name, fn in (("yolact_masks", _yolact_masks_symbolic), ("yolact_mask_loss", _yolact_mask_loss_symbolic),
                     ("paste_masks", _paste_masks_symbolic)):
        torch.onnx.register_custom_op_symbolic(f"fastops::{name}", fn, OPSET)


_register_symbolics()
