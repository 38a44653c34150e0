"""Plain-PyTorch references for the NMS family (the tests' expected results and ``impl="reference"``).

* ``nms`` / ``batched_nms``: torchvision's nms kernel, called as ``torch.ops.torchvision.nms`` so that
  ``fastops.patch_torchvision()`` (which swaps ``torchvision.ops.nms``) never turns the reference into fastops (float16/bfloat16 upcast to float32, which torchvision's CPU
  kernel does not accept), ``batched_nms`` as torchvision's per-class ("vanilla") path, with a stable final sort.
* ``fast_nms``: a transcription of YOLACT's ``Detect.fast_nms`` / ``Detect.cc_fast_nms`` (dbolya/yolact,
  layers/functions/detection.py) including the ``conf_scores > conf_thresh`` filter that ``Detect.detect`` applies
  first; sorts are stable (ties by lower index), the one deliberate difference.
* ``soft_nms``: mmcv's ``soft_nms`` semantics (ops/csrc/pytorch/cpu/nms.cpp): repeatedly select the highest score,
  decay the others (naive / linear when ``iou >= iou_threshold``, gaussian always), drop boxes whose score falls
  below ``min_score`` (or becomes NaN: inf * 0). Ties select the lower original index; NaN scores are dropped; a
  NaN IoU counts as 0.
* ``multiclass_nms``: what users write around ``torchvision.ops.batched_nms`` (threshold, per-class top-k, NMS,
  sort, ``max_det`` cut).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torchvision
from torch import Tensor


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    cd = _compute_dtype(boxes)
    return torch.ops.torchvision.nms(boxes.to(cd), scores.to(cd), float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's per-class path: NMS for each value of ``idxs``, then all survivors by descending score."""
    cd = _compute_dtype(boxes)
    boxes, scores = boxes.to(cd), scores.to(cd)
    keep_mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for c in torch.unique(idxs):
        cur = torch.where(idxs == c)[0]
        keep_mask[cur[torch.ops.torchvision.nms(boxes[cur], scores[cur], float(iou_threshold))]] = True
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True, stable=True)[1]]


def multiclass_nms(boxes: Tensor, scores: Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5,
                   pre_nms_top_k: int = -1, max_det: int = 100, pad: bool = False):
    """Threshold, per-class top-k, per-class NMS (torchvision), sort, cut; the user-side recipe."""
    n, c = scores.shape
    cand = scores > score_threshold                      # [N, C], in the scores' dtype
    idx, labels = cand.nonzero(as_tuple=True)            # row-major: (box, class)
    s = scores[idx, labels]
    b = boxes[idx] if boxes.dim() == 2 else boxes[idx, labels]
    if pre_nms_top_k > 0 and s.numel() > 0:
        order = s.float().sort(descending=True, stable=True)[1] if s.dtype != torch.float64 else \
            s.sort(descending=True, stable=True)[1]
        order = order[labels[order].sort(stable=True)[1]]  # grouped by class, by score inside each class
        lab = labels[order]
        first = torch.ones_like(lab, dtype=torch.bool)
        first[1:] = lab[1:] != lab[:-1]
        pos = torch.arange(lab.numel(), device=lab.device)
        start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0)[0]
        sel = order[(pos - start) < pre_nms_top_k]
        sel = sel.sort()[0]                                # back to row-major order
        idx, labels, s, b = idx[sel], labels[sel], s[sel], b[sel]
    keep = batched_nms(b, s, labels, iou_threshold)      # descending score, ties by row-major position
    if max_det > 0:
        keep = keep[:max_det]
    out = (b[keep], s[keep], labels[keep], idx[keep])
    if not pad:
        return out
    m = keep.numel()
    ob = boxes.new_zeros((max_det, 4))
    os_ = scores.new_zeros((max_det,))
    ol = torch.full((max_det,), -1, dtype=torch.int64, device=scores.device)
    oi = torch.full((max_det,), -1, dtype=torch.int64, device=scores.device)
    ob[:m], os_[:m], ol[:m], oi[:m] = out
    return ob, os_, ol, oi, torch.tensor(m, dtype=torch.int64, device=scores.device)


def jaccard(a: Tensor, b: Tensor) -> Tensor:
    """YOLACT's box_utils.jaccard for [..., n, 4] x [..., m, 4] -> [..., n, m] (non-crowd)."""
    max_xy = torch.min(a[..., :, None, 2:], b[..., None, :, 2:])
    min_xy = torch.max(a[..., :, None, :2], b[..., None, :, :2])
    wh = torch.clamp(max_xy - min_xy, min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]))[..., :, None]
    area_b = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))[..., None, :]
    return inter / (area_a + area_b - inter)


def fast_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200, max_det: int = 100,
             score_threshold: float = 0.05, cross_class: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """YOLACT's Detect.detect filter + fast_nms (or cc_fast_nms). ``scores`` is ``[C, N]``."""
    cd = _compute_dtype(boxes)
    if scores.size(0) == 0 or scores.size(1) == 0:  # no class or no detection: nothing to keep
        e = torch.empty((0,), dtype=torch.int64, device=boxes.device)
        return e, e.clone(), scores.new_empty(0)
    conf, _ = scores.max(dim=0)
    keep = conf > score_threshold
    det = keep.nonzero().squeeze(1)
    sc = scores[:, keep].to(cd)
    bx = boxes[keep].to(cd)
    empty = (det.new_empty(0), det.new_empty(0), scores.new_empty(0))
    if sc.size(1) == 0:
        return empty
    if cross_class:
        s, classes = sc.max(dim=0)
        _, order = s.sort(dim=0, descending=True, stable=True)
        if top_k > 0:
            order = order[:top_k]
        b = bx[order]
        iou = jaccard(b, b)
        iou.triu_(diagonal=1)
        iou_max, _ = torch.max(iou, dim=0)
        sel = order[iou_max <= iou_threshold]
        if max_det > 0:
            sel = sel[:max_det]
        return det[sel], classes[sel], scores[classes[sel], det[sel]]
    s, idx = sc.sort(dim=1, descending=True, stable=True)
    if top_k > 0:
        idx = idx[:, :top_k].contiguous()
        s = s[:, :top_k]
    num_classes, num_dets = idx.size()
    b = bx[idx.view(-1), :].view(num_classes, num_dets, 4)
    iou = jaccard(b, b)
    iou.triu_(diagonal=1)
    iou_max, _ = iou.max(dim=1)
    keep = iou_max <= iou_threshold
    classes = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(keep)[keep]
    idx = idx[keep]
    s = s[keep]
    s, order = s.sort(dim=0, descending=True, stable=True)
    if max_det > 0:
        order = order[:max_det]
    classes, idx = classes[order], idx[order]
    return det[idx], classes, scores[classes, det[idx]]


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3,
             method: str = "linear") -> Tuple[Tensor, Tensor]:
    """mmcv soft-NMS semantics (see the module docstring). Returns ``(dets[M, 5], keep[M])`` in selection order."""
    if method not in ("linear", "gaussian", "naive"):
        raise ValueError(f"method must be 'linear', 'gaussian' or 'naive', got {method!r}")
    cd = _compute_dtype(boxes)
    b = boxes.to(cd)
    s = scores.to(cd).clone()
    ids = torch.arange(boxes.size(0), device=boxes.device)
    alive = ~torch.isnan(s)
    b, s, ids = b[alive], s[alive], ids[alive]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    sel, sel_scores = [], []
    while ids.numel() > 0:
        j = int(torch.argmax(s))  # first maximum = lower original index (ids stay ascending)
        sel.append(int(ids[j]))
        sel_scores.append(s[j].clone())
        rest = torch.ones_like(ids, dtype=torch.bool)
        rest[j] = False
        bj, aj = b[j], area[j]
        b, s, ids, area = b[rest], s[rest], ids[rest], area[rest]
        w = (torch.min(bj[2], b[:, 2]) - torch.max(bj[0], b[:, 0])).clamp(min=0)
        h = (torch.min(bj[3], b[:, 3]) - torch.max(bj[1], b[:, 1])).clamp(min=0)
        inter = w * h
        o = inter / ((aj + area) - inter)
        o = torch.where(torch.isnan(o), torch.zeros_like(o), o)
        if method == "naive":
            wt = torch.where(o >= iou_threshold, torch.zeros_like(o), torch.ones_like(o))
        elif method == "linear":
            wt = torch.where(o >= iou_threshold, 1 - o, torch.ones_like(o))
        else:
            wt = torch.exp(-(o * o) / sigma)
        s = s * wt
        alive = s >= min_score  # also drops a NaN decayed score (inf * 0)
        b, s, ids, area = b[alive], s[alive], ids[alive], area[alive]
    keep = torch.tensor(sel, dtype=torch.int64, device=boxes.device)
    dets = torch.empty((len(sel), 5), dtype=boxes.dtype, device=boxes.device)
    if sel:
        dets[:, :4] = boxes[keep]
        dets[:, 4] = torch.stack(sel_scores).to(boxes.dtype)
    return dets, keep
