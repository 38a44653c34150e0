"""DensePose chart post-processing and chart losses in plain PyTorch: a transcription of detectron2's DensePose
project arithmetic (``densepose/converters/chart_output_to_chart_result.py`` and ``densepose/modeling/losses``),
written for fastops (impl="reference" and the tests' oracle). Conventions: docs/densepose.md.

Post-processing, per detection (``densepose_chart_predictor_output_to_result``):

* the box ``(x1, y1, x2, y2)`` becomes XYWH ``(x1, y1, x2 - x1, y2 - y1)`` in the boxes' dtype, truncated to
  integers (``.long()``, toward zero), ``w = max(w, 1)``, ``h = max(h, 1)``;
* coarse and fine segmentation are resized to ``(h, w)`` with ``F.interpolate(bilinear, align_corners=False)``;
  ``labels = argmax(fine) * (argmax(coarse) > 0)`` (torch's argmax: the first maximum, NaN counts as the maximum);
* U and V are resized the same way and gathered at the chosen part (``uv`` float32, 0 on background);
* ``quantize``: ``IUV = [labels, (uv * 255).clamp(0, 255).byte()]`` (``quantize_densepose_chart_result``); NaN in
  U/V quantizes to 0 here (torch's float -> uint8 conversion of NaN is undefined).

Losses (``DensePoseChartLoss`` with ``BilinearInterpolationHelper``): the annotated points of each RoI are
mapped into the S x S predictor grid, the maps are sampled bilinearly at them, then smooth-L1 on U/V (foreground
points), cross-entropy on the 25 fine parts (all valid points), cross-entropy on the coarse segmentation.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


# ---- post-processing ----------------------------------------------------------------------------------------------

def int_boxes_xywh(boxes: Tensor) -> Tensor:
    """[R, 4] XYXY (float) -> [R, 4] int64 XYWH as detectron2 computes it: widths in the boxes' dtype, truncated
    toward zero, w and h at least 1."""
    xywh = torch.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
    ib = xywh.long()
    return torch.cat([ib[:, :2], ib[:, 2:].clamp(min=1)], 1)


def resample_fine_and_coarse_segm_to_bbox(fine: Tensor, coarse: Tensor, box_xywh: List[int]) -> Tensor:
    """labels [1, h, w] (int64) of one detection: fine [1, K, S, S], coarse [1, Kc, S, S]."""
    w, h = max(int(box_xywh[2]), 1), max(int(box_xywh[3]), 1)
    coarse_bbox = F.interpolate(coarse, (h, w), mode="bilinear", align_corners=False).argmax(dim=1)
    fine_bbox = F.interpolate(fine, (h, w), mode="bilinear", align_corners=False).argmax(dim=1)
    return fine_bbox * (coarse_bbox > 0).long()


def resample_uv_to_bbox(u: Tensor, v: Tensor, labels: Tensor, box_xywh: List[int]) -> Tensor:
    """uv [2, h, w] float32 of one detection: U/V of the part each pixel is labelled with (0 on background)."""
    w, h = max(int(box_xywh[2]), 1), max(int(box_xywh[3]), 1)
    u_bbox = F.interpolate(u, (h, w), mode="bilinear", align_corners=False)
    v_bbox = F.interpolate(v, (h, w), mode="bilinear", align_corners=False)
    uv = torch.zeros([2, h, w], dtype=torch.float32, device=u.device)
    for part_id in range(1, u_bbox.size(1)):
        sel = labels == part_id
        uv[0][sel] = u_bbox[0, part_id][sel].float()
        uv[1][sel] = v_bbox[0, part_id][sel].float()
    return uv


def chart_to_results(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor,
                     boxes: Tensor) -> Tuple[List[Tensor], List[Tensor], Tensor]:
    """Per detection ``labels [h, w]`` (int64) and ``uv [2, h, w]`` (float32), and the int XYWH boxes [R, 4]."""
    ib = int_boxes_xywh(boxes)
    labels, uvs = [], []
    for i, box in enumerate(ib.tolist()):
        lab = resample_fine_and_coarse_segm_to_bbox(fine[i:i + 1], coarse[i:i + 1], box).squeeze(0)
        labels.append(lab)
        uvs.append(resample_uv_to_bbox(u[i:i + 1], v[i:i + 1], lab, box))
    return labels, uvs, ib


def quantize_uv(uv: Tensor) -> Tensor:
    """(uv * 255).clamp(0, 255).byte(), NaN -> 0."""
    return torch.nan_to_num(uv * 255, nan=0.0).clamp(0, 255).to(torch.uint8)


def chart_to_iuv(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor,
                 boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Packed results, as fastops.densepose_chart_to_iuv returns them: labels (uint8, flat), uv (float32, flat,
    each detection's [2, h, w] block at 2 * offsets[i]), offsets [R + 1] (pixels) and the int XYWH boxes."""
    labels, uvs, ib = chart_to_results(coarse, fine, u, v, boxes)
    sizes = [int(lab.numel()) for lab in labels]
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    if sizes:
        offsets[1:] = torch.tensor(sizes, dtype=torch.int64).cumsum(0)
    dev = boxes.device
    lab = torch.cat([x.flatten() for x in labels]).to(torch.uint8) if labels else torch.empty(0, dtype=torch.uint8,
                                                                                            device=dev)
    uv = torch.cat([x.flatten() for x in uvs]) if uvs else torch.empty(0, dtype=torch.float32, device=dev)
    return lab, uv, offsets.to(dev), ib


def paste_iuv(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor, boxes: Tensor, scores: Tensor, height: int,
              width: int) -> Tensor:
    """Image-level IUV [3, height, width] uint8: each detection's quantized IUV pasted at its int box; a pixel
    takes the foreground (label > 0) of the highest-scoring detection covering it (ties: the lower index);
    background elsewhere (0, 0, 0)."""
    labels, uvs, ib = chart_to_results(coarse, fine, u, v, boxes)
    out = torch.zeros(3, height, width, dtype=torch.uint8, device=boxes.device)
    taken = torch.zeros(height, width, dtype=torch.bool, device=boxes.device)
    order = sorted(range(len(labels)), key=lambda i: (-float(scores[i]), i))
    for i in order:
        x, y, w, h = ib[i].tolist()
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x0 >= x1 or y0 >= y1:
            continue
        lab = labels[i][y0 - y:y1 - y, x0 - x:x1 - x]
        q = quantize_uv(uvs[i][:, y0 - y:y1 - y, x0 - x:x1 - x])
        sel = (lab > 0) & ~taken[y0:y1, x0:x1]
        out[0, y0:y1, x0:x1][sel] = lab[sel].to(torch.uint8)
        out[1, y0:y1, x0:x1][sel] = q[0][sel]
        out[2, y0:y1, x0:x1][sel] = q[1][sel]
        taken[y0:y1, x0:x1] |= sel
    return out


# ---- losses -------------------------------------------------------------------------------------------------------

def linear_interpolation_utilities(v_norm: Tensor, v0_src: Tensor, size_src: Tensor, v0_dst: Tensor,
                                   size_dst: Tensor, size_z: int):
    """One axis of detectron2's helper: a point at ``v0_src + v_norm * size_src / 256`` (image pixels; v_norm in
    the GT box's 256 grid) mapped into the estimated box's ``size_z`` grid. Returns (lo, hi, weight, valid)."""
    v = v0_src + v_norm * size_src / 256.0
    valid = (v - v0_dst >= 0) & (v - v0_dst < size_dst)
    v_grid = (v - v0_dst) * size_z / size_dst
    v_lo = v_grid.floor().long().clamp(min=0, max=size_z - 1)
    v_hi = (v_lo + 1).clamp(max=size_z - 1)
    v_grid = torch.min(v_hi.to(v_grid.dtype), v_grid)
    return v_lo, v_hi, v_grid - v_lo.to(v_grid.dtype), valid


def point_grid(x_norm: Tensor, y_norm: Tensor, box_gt_xywh: Tensor, box_est_xywh: Tensor, size: int):
    """Per point (boxes already gathered per point): the point in the estimated box's S x S grid,
    ``(x_grid, y_grid)`` [P, 2], and whether it falls inside that box."""
    x = box_gt_xywh[:, 0] + x_norm * box_gt_xywh[:, 2] / 256.0
    y = box_gt_xywh[:, 1] + y_norm * box_gt_xywh[:, 3] / 256.0
    vx = (x - box_est_xywh[:, 0] >= 0) & (x - box_est_xywh[:, 0] < box_est_xywh[:, 2])
    vy = (y - box_est_xywh[:, 1] >= 0) & (y - box_est_xywh[:, 1] < box_est_xywh[:, 3])
    xg = (x - box_est_xywh[:, 0]) * size / box_est_xywh[:, 2]
    yg = (y - box_est_xywh[:, 1]) * size / box_est_xywh[:, 3]
    return torch.stack([xg, yg], 1), vx & vy


def _axis(g: Tensor, size: int):
    lo = g.floor().long().clamp(min=0, max=size - 1)
    hi = (lo + 1).clamp(max=size - 1)
    w = torch.min(hi.to(g.dtype), g) - lo.to(g.dtype)
    return lo, hi, w


def roi_point_sample(maps: Tensor, roi_index: Tensor, points: Tensor) -> Tensor:
    """[R, C, S, S] sampled at ``points`` [P, 2] = (x, y) in the S x S grid of RoI ``roi_index`` -> [P, C]:
    detectron2's ``extract_at_points`` (lo = floor clamped to [0, S-1], hi = lo + 1 clamped, the weight measured
    from lo after clamping the coordinate to hi; the four taps summed in the order ylo-xlo, ylo-xhi, yhi-xlo,
    yhi-xhi)."""
    S = maps.shape[-1]
    x_lo, x_hi, x_w = _axis(points[:, 0].to(maps.dtype), S)
    y_lo, y_hi, y_w = _axis(points[:, 1].to(maps.dtype), maps.shape[-2])
    w00 = ((1.0 - x_w) * (1.0 - y_w))[:, None]
    w01 = (x_w * (1.0 - y_w))[:, None]
    w10 = ((1.0 - x_w) * y_w)[:, None]
    w11 = (x_w * y_w)[:, None]
    r = roi_index
    z = maps.permute(0, 2, 3, 1)  # [R, S, S, C]: z[r, y, x] is the C vector
    return (z[r, y_lo, x_lo] * w00 + z[r, y_lo, x_hi] * w01 + z[r, y_hi, x_lo] * w10 + z[r, y_hi, x_hi] * w11)


def chart_losses(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor, roi_index: Tensor, points: Tensor,
                 part_gt: Tensor, u_gt: Tensor, v_gt: Tensor, coarse_gt: Tensor, *, w_points: float = 0.01,
                 w_part: float = 1.0, w_segm: float = 5.0) -> Dict[str, Tensor]:
    """detectron2's DensePoseChartLoss on valid points (already filtered by ``point_grid``'s mask):
    ``loss_densepose_U/V``: smooth-L1 (beta 1, sum) of U/V sampled at the GT part, foreground points only, times
    ``w_points``; ``loss_densepose_I``: cross-entropy of the 25 fine parts sampled at the points, times ``w_part``;
    ``loss_densepose_S``: cross-entropy of the coarse segmentation [R, 2, S, S] against ``coarse_gt`` [R, S, S],
    times ``w_segm``."""
    fg = part_gt > 0
    u_est = roi_point_sample(u, roi_index, points).gather(1, part_gt[:, None]).squeeze(1)[fg]
    v_est = roi_point_sample(v, roi_index, points).gather(1, part_gt[:, None]).squeeze(1)[fg]
    fine_est = roi_point_sample(fine, roi_index, points)
    return {
        "loss_densepose_U": F.smooth_l1_loss(u_est, u_gt[fg], reduction="sum") * w_points,
        "loss_densepose_V": F.smooth_l1_loss(v_est, v_gt[fg], reduction="sum") * w_points,
        "loss_densepose_I": F.cross_entropy(fine_est, part_gt.long()) * w_part,
        "loss_densepose_S": F.cross_entropy(coarse, coarse_gt.long()) * w_segm,
    }
