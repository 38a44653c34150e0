"""Plain-PyTorch references for instance mask assembly.

- `sanitize_coordinates`, `crop`, `yolact_postprocess_masks`: YOLACT's (dbolya/yolact) `layers/box_utils.py`
  `sanitize_coordinates`/`crop` and the mask part of `layers/output_utils.py::postprocess`, transcribed.
- `lincomb_mask_loss`: the per-detection part of YOLACT's `MultiBoxLoss.lincomb_mask_loss` for the default
  training config (sigmoid activation, `mask_proto_crop=True`, `mask_proto_normalize_emulate_roi_pooling=True`),
  given the already downsampled ground-truth masks of the matched boxes.
- `paste_masks_in_image`: torchvision's `roi_heads.paste_masks_in_image` is the anchor (called directly); the
  copy here clips the paste window without Python's negative-index wrap-around (torchvision slices with
  `min(y1 + 1, H)` which is negative for a box entirely above/left of the image).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def sanitize_coordinates(_x1: Tensor, _x2: Tensor, img_size: int, padding: int = 0, cast: bool = True):
    _x1 = _x1 * img_size
    _x2 = _x2 * img_size
    if cast:
        _x1 = _x1.long()
        _x2 = _x2.long()
    x1 = torch.min(_x1, _x2)
    x2 = torch.max(_x1, _x2)
    x1 = torch.clamp(x1 - padding, min=0)
    x2 = torch.clamp(x2 + padding, max=img_size)
    return x1, x2


def crop(masks: Tensor, boxes: Tensor, padding: int = 1) -> Tensor:
    """masks [h, w, n] zeroed outside each (relative) box padded by `padding` proto pixels."""
    h, w, n = masks.size()
    x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], w, padding, cast=False)
    y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], h, padding, cast=False)
    cols = torch.arange(w, device=masks.device, dtype=x1.dtype).view(1, -1, 1).expand(h, w, n)
    rows = torch.arange(h, device=masks.device, dtype=x1.dtype).view(-1, 1, 1).expand(h, w, n)
    keep = (cols >= x1.view(1, 1, -1)) & (cols < x2.view(1, 1, -1)) & (rows >= y1.view(1, 1, -1)) \
        & (rows < y2.view(1, 1, -1))
    return masks * keep.to(masks.dtype)


def yolact_postprocess_masks(protos: Tensor, coeffs: Tensor, boxes: Tensor,
                             output_size: Optional[Tuple[int, int]] = None, crop_masks: bool = True,
                             threshold: Optional[float] = 0.5) -> Tensor:
    """YOLACT postprocess, mask part: lincomb, sigmoid, crop, bilinear resize, binarise."""
    masks = protos @ coeffs.t()
    masks = torch.sigmoid(masks)
    if crop_masks:
        masks = crop(masks, boxes)
    masks = masks.permute(2, 0, 1).contiguous()
    if output_size is not None:
        h, w = output_size
        if masks.size(0) == 0:  # YOLACT returns early without detections; interpolate rejects empty input
            masks = masks.new_zeros((0, h, w))
        else:
            masks = F.interpolate(masks.unsqueeze(0), (h, w), mode="bilinear", align_corners=False).squeeze(0)
    if threshold is not None:
        masks = masks.gt(threshold)
    return masks


def center_size(boxes: Tensor) -> Tensor:
    return torch.cat(((boxes[:, 2:] + boxes[:, :2]) / 2, boxes[:, 2:] - boxes[:, :2]), 1)


def lincomb_mask_loss(protos: Tensor, coeffs: Tensor, boxes: Tensor, gt_masks: Tensor) -> Tensor:
    """Per-detection YOLACT mask loss `[N]` (sum over detections gives YOLACT's `loss_m` for one image).

    protos [h, w, P], coeffs [N, P], boxes [N, 4] relative matched gt boxes, gt_masks [N, h, w] (downsampled).
    Returns protos' dtype (YOLACT's normaliser in the boxes' dtype would otherwise promote, e.g. to float64).
    """
    mask_h, mask_w = protos.shape[0], protos.shape[1]
    mask_t = gt_masks.permute(1, 2, 0)
    pred_masks = protos @ coeffs.t()
    pred_masks = torch.sigmoid(pred_masks)
    pred_masks = crop(pred_masks, boxes)
    pre_loss = F.binary_cross_entropy(torch.clamp(pred_masks, 0, 1), mask_t, reduction="none")
    weight = mask_h * mask_w
    pos_gt_csize = center_size(boxes)
    gt_box_width = pos_gt_csize[:, 2] * mask_w
    gt_box_height = pos_gt_csize[:, 3] * mask_h
    return (pre_loss.sum(dim=(0, 1)) / gt_box_width / gt_box_height * weight).to(protos.dtype)


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    return torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1)


def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: Tuple[int, int], padding: int = 1,
                         threshold: Optional[float] = None) -> Tensor:
    """torchvision's paste_masks_in_image (masks [N, 1, M, M] or [N, M, M]) with a clipped paste window."""
    if masks.dim() == 3:
        masks = masks[:, None]
    M = masks.shape[-1]
    scale = float(M + 2 * padding) / M
    masks = F.pad(masks, (padding,) * 4)
    boxes = _expand_boxes(boxes, scale).to(torch.int64)
    im_h, im_w = img_shape
    out = masks.new_zeros((masks.shape[0], 1, im_h, im_w))
    for i, (m, b) in enumerate(zip(masks, boxes.tolist())):
        x0, y0, x1, y1 = b
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, im_w), max(y0, 0), min(y1 + 1, im_h)
        if xb <= xa or yb <= ya:
            continue
        r = F.interpolate(m[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        out[i, 0, ya:yb, xa:xb] = r[ya - y0:yb - y0, xa - x0:xb - x0]
    if threshold is not None:
        out = out > threshold
    return out
