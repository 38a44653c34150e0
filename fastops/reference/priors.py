"""Plain PyTorch/NumPy transcriptions of the prior-box code that the `priors` family replaces: the tests' oracle,
the benchmarks' anchors and ``impl="reference"``.

Written from the published conventions (not copied) of biubug6/Pytorch_Retinaface ``utils/box_utils.py``
(``point_form``, ``jaccard``, ``match``, ``encode``, ``encode_landm``, ``decode``, ``decode_landm``),
``utils/nms/py_cpu_nms.py`` (NumPy greedy NMS with the ``+ 1`` pixel convention), ``detect.py``'s post-processing
and ``layers/modules/multibox_loss.py``; and of dbolya/yolact's ``match`` (greedy exclusive forced matching).

One deliberate difference from the original, stated in docs/priors.md: the score orderings (top-k and NMS) are
stable (ties keep the lower prior index first); the original's ``argsort()[::-1]`` is NumPy's unstable quicksort.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# ------------------------------------------------------------------------------------------------------------------
# box_utils.py
# ------------------------------------------------------------------------------------------------------------------


def point_form(boxes: Tensor) -> Tensor:
    return torch.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)


def intersect(box_a: Tensor, box_b: Tensor) -> Tensor:
    A, B = box_a.size(0), box_b.size(0)
    max_xy = torch.min(box_a[:, 2:].unsqueeze(1).expand(A, B, 2), box_b[:, 2:].unsqueeze(0).expand(A, B, 2))
    min_xy = torch.max(box_a[:, :2].unsqueeze(1).expand(A, B, 2), box_b[:, :2].unsqueeze(0).expand(A, B, 2))
    inter = torch.clamp((max_xy - min_xy), min=0)
    return inter[:, :, 0] * inter[:, :, 1]


def jaccard(box_a: Tensor, box_b: Tensor) -> Tensor:
    inter = intersect(box_a, box_b)
    area_a = ((box_a[:, 2] - box_a[:, 0]) * (box_a[:, 3] - box_a[:, 1])).unsqueeze(1).expand_as(inter)
    area_b = ((box_b[:, 2] - box_b[:, 0]) * (box_b[:, 3] - box_b[:, 1])).unsqueeze(0).expand_as(inter)
    union = area_a + area_b - inter
    return inter / union


def encode(matched: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    g_cxcy = g_cxcy / (variances[0] * priors[:, 2:])
    g_wh = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    g_wh = torch.log(g_wh) / variances[1]
    return torch.cat([g_cxcy, g_wh], 1)


def encode_landm(matched: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    n, npts = matched.size(0), matched.size(1) // 2
    matched = torch.reshape(matched, (n, npts, 2))
    pc = priors[:, None, :2].expand(n, npts, 2)
    pwh = priors[:, None, 2:].expand(n, npts, 2)
    g_cxcy = matched - pc
    g_cxcy = g_cxcy / (variances[0] * pwh)
    return g_cxcy.reshape(n, -1)


def decode(loc: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def decode_landm(pre: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    pts = [priors[:, :2] + pre[:, 2 * k:2 * k + 2] * variances[0] * priors[:, 2:] for k in range(pre.size(1) // 2)]
    return torch.cat(pts, dim=1) if pts else pre.new_zeros((pre.size(0), 0))


# ------------------------------------------------------------------------------------------------------------------
# py_cpu_nms.py and detect.py
# ------------------------------------------------------------------------------------------------------------------


def py_cpu_nms(dets: np.ndarray, thresh: float, plus_one: bool = True) -> List[int]:
    """The original NumPy NMS (``dets`` rows ``x1, y1, x2, y2, score``); the order is the stable descending sort."""
    one = 1 if plus_one else 0
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + one)
        h = np.maximum(0.0, yy2 - yy1 + one)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        inds = np.where(ovr <= thresh)[0]
        order = order[inds + 1]
    return keep


def detect_one(loc: Tensor, scores: Tensor, landms: Tensor, priors: Tensor, variances: Sequence[float],
               scale_xy: Tuple[float, float], score_threshold: float, iou_threshold: float, top_k: int,
               keep_top_k: int, plus_one: bool = True):
    """detect.py's post-processing of one image: (boxes [n, 4], scores [n], landms [n, 2L]) as tensors."""
    w, h = scale_xy
    scale = torch.tensor([w, h, w, h], dtype=loc.dtype, device=loc.device)
    npts = landms.size(1) // 2
    scale1 = torch.tensor([w, h] * npts, dtype=loc.dtype, device=loc.device)
    loc, scores, landms, priors = loc.detach(), scores.detach(), landms.detach(), priors.detach()
    boxes = (decode(loc, priors, variances) * scale).cpu().numpy()
    lm = (decode_landm(landms, priors, variances) * scale1).cpu().numpy()
    sc = scores.cpu().numpy()
    inds = np.where(sc > sc.dtype.type(score_threshold))[0]
    boxes, lm, sc = boxes[inds], lm[inds], sc[inds]
    order = np.argsort(-sc, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    boxes, lm, sc = boxes[order], lm[order], sc[order]
    finite = np.isfinite(boxes).all(1)  # fastops' rule: a non-finite box is dropped before NMS (docs/priors.md)
    boxes, lm, sc = boxes[finite], lm[finite], sc[finite]
    dets = np.hstack((boxes, sc[:, None])).astype(sc.dtype, copy=False)
    keep = py_cpu_nms(dets, iou_threshold, plus_one)
    dets, lm = dets[keep, :], lm[keep]
    if keep_top_k > 0:
        dets, lm = dets[:keep_top_k, :], lm[:keep_top_k]
    dev = loc.device
    return (torch.from_numpy(np.ascontiguousarray(dets[:, :4])).to(dev),
            torch.from_numpy(np.ascontiguousarray(dets[:, 4])).to(dev),
            torch.from_numpy(np.ascontiguousarray(lm)).reshape(len(keep[:keep_top_k] if keep_top_k > 0 else keep), 2 * npts).to(dev))


def prior_nms(loc, scores, landms, priors, variances, scale_xy, score_threshold, iou_threshold, top_k, keep_top_k,
              pad, plus_one=True):
    """Batched detect_one with the op's outputs: flat ``(boxes [M,4], scores [M], landms [M,2L], counts [B])``, or
    with ``pad`` ``[B, keep_top_k, ...]`` rows (zeros after the valid ones) and ``num_valid [B]``."""
    per = [detect_one(loc[b], scores[b], landms[b], priors, variances, scale_xy, score_threshold, iou_threshold,
                      top_k, keep_top_k, plus_one) for b in range(loc.size(0))]
    counts = torch.tensor([p[1].numel() for p in per], dtype=torch.int64, device=loc.device)
    if not pad:
        nl = landms.size(2)
        if not per:
            return loc.new_zeros((0, 4)), loc.new_zeros((0,)), loc.new_zeros((0, nl)), counts
        return (torch.cat([p[0] for p in per]), torch.cat([p[1] for p in per]), torch.cat([p[2] for p in per]),
                counts)
    B, K, nl = loc.size(0), keep_top_k, landms.size(2)
    ob, os_, ol = loc.new_zeros((B, K, 4)), loc.new_zeros((B, K)), loc.new_zeros((B, K, nl))
    for b, (bx, sc, lm) in enumerate(per):
        n = sc.numel()
        ob[b, :n], os_[b, :n], ol[b, :n] = bx, sc, lm
    return ob, os_, ol, counts


# ------------------------------------------------------------------------------------------------------------------
# match (per image) and the batched wrapper with the op's conventions
# ------------------------------------------------------------------------------------------------------------------


def match_ssd(threshold, truths, priors, variances, labels, landms, hard_threshold: Optional[float]):
    """biubug6's ``match`` for one image (``hard_threshold=0.2`` is its "ignore hard gt" rule; None: ssd.pytorch,
    no such rule). Returns ``(loc [P,4], conf [P], landm [P,2L], overlap [P], idx [P])``; an image without
    (valid) gt gives zeros, conf 0, overlap 0 and idx -1 (the original leaves landm_t unset there)."""
    P = priors.size(0)
    nl = landms.size(1)
    if truths.size(0) == 0:
        return (priors.new_zeros((P, 4)), labels.new_zeros((P,)), priors.new_zeros((P, nl)), priors.new_zeros((P,)),
                torch.full((P,), -1, dtype=torch.int64, device=priors.device))
    overlaps = jaccard(truths, point_form(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1, keepdim=True)
    if hard_threshold is not None:
        valid_gt_idx = best_prior_overlap[:, 0] >= hard_threshold
    else:
        valid_gt_idx = torch.ones_like(best_prior_overlap[:, 0], dtype=torch.bool)
    best_prior_idx_filter = best_prior_idx[valid_gt_idx, :]
    if best_prior_idx_filter.shape[0] <= 0:
        return (priors.new_zeros((P, 4)), labels.new_zeros((P,)), priors.new_zeros((P, nl)), priors.new_zeros((P,)),
                torch.full((P,), -1, dtype=torch.int64, device=priors.device))
    best_truth_overlap, best_truth_idx = overlaps.max(0, keepdim=True)
    best_truth_idx.squeeze_(0)
    best_truth_overlap.squeeze_(0)
    best_prior_idx.squeeze_(1)
    best_prior_idx_filter.squeeze_(1)
    best_truth_overlap.index_fill_(0, best_prior_idx_filter, 2)
    for j in range(best_prior_idx.size(0)):
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx]
    conf[best_truth_overlap < threshold] = 0
    loc = encode(matches, priors, variances)
    landm = encode_landm(landms[best_truth_idx], priors, variances)
    return loc, conf, landm, best_truth_overlap, best_truth_idx


def match_yolact(pos_threshold, neg_threshold, truths, priors, variances, labels):
    """dbolya/yolact's ``match`` for one image without crowd boxes (labels as given: YOLACT passes label + 1)."""
    P = priors.size(0)
    if truths.size(0) == 0:
        return (priors.new_zeros((P, 4)), labels.new_zeros((P,)), priors.new_zeros((P,)),
                torch.full((P,), -1, dtype=torch.int64, device=priors.device))
    overlaps = jaccard(truths, point_form(priors))
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    for _ in range(overlaps.size(0)):
        best_prior_overlap, best_prior_idx = overlaps.max(1)
        j = best_prior_overlap.max(0)[1]
        i = best_prior_idx[j]
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_truth_overlap[i] = 2
        best_truth_idx[i] = j
    conf = labels[best_truth_idx].clone()
    conf[best_truth_overlap < pos_threshold] = -1
    conf[best_truth_overlap < neg_threshold] = 0
    loc = encode(truths[best_truth_idx], priors, variances)
    return loc, conf, best_truth_overlap, best_truth_idx


def match_priors(gt_boxes, gt_labels, gt_landms, counts, priors, pos_threshold, neg_threshold, variances, mode,
                 hard_threshold):
    """The per-image loop over the original ``match`` with the op's conventions: padded gt ``[B, G, ...]`` with
    ``counts [B]``; returns ``(loc [B,P,4], conf [B,P], landm [B,P,2L], overlap [B,P], idx [B,P])``."""
    outs = []
    for b in range(gt_boxes.size(0)):
        n = int(counts[b])
        t, lab, lm = gt_boxes[b, :n], gt_labels[b, :n], gt_landms[b, :n]
        if mode == "yolact":
            loc, conf, ov, idx = match_yolact(pos_threshold, neg_threshold, t, priors, variances, lab)
            landm = (encode_landm(lm[idx], priors, variances) if n > 0   # landmarks encoded like RetinaFace's
                     else priors.new_zeros((priors.size(0), lm.size(1))))
        else:
            loc, conf, landm, ov, idx = match_ssd(neg_threshold, t, priors, variances, lab, lm, hard_threshold)
            if pos_threshold > neg_threshold and n > 0:  # the neutral band (YOLACT's rule) when asked for
                conf[(idx >= 0) & (ov >= neg_threshold) & (ov < pos_threshold)] = -1
        outs.append((loc, conf, landm, ov, idx))
    if not outs:
        P, nl = priors.size(0), gt_landms.size(2)
        return (priors.new_zeros((0, P, 4)), gt_labels.new_zeros((0, P)), priors.new_zeros((0, P, nl)),
                priors.new_zeros((0, P)), gt_labels.new_zeros((0, P)))
    return tuple(torch.stack([o[k] for o in outs]) for k in range(5))


# ------------------------------------------------------------------------------------------------------------------
# multibox_loss.py (RetinaFace)
# ------------------------------------------------------------------------------------------------------------------


def log_sum_exp(x: Tensor) -> Tensor:
    x_max = x.data.max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1, keepdim=True)) + x_max


def multibox_loss_from_targets(loc_data, conf_data, landm_data, loc_t, conf_t, landm_t, negpos_ratio=7,
                               num_classes=2):
    """MultiBoxLoss.forward after the matching loop (shared by the reference and the fast path)."""
    zeros = torch.tensor(0, device=conf_t.device)
    pos1 = conf_t > zeros
    num_pos_landm = pos1.long().sum(1, keepdim=True)
    N1 = max(num_pos_landm.data.sum().float(), 1)
    pos_idx1 = pos1.unsqueeze(pos1.dim()).expand_as(landm_data)
    landm_p = landm_data[pos_idx1].view(-1, landm_data.size(2))
    landm_tt = landm_t[pos_idx1].view(-1, landm_data.size(2))
    loss_landm = F.smooth_l1_loss(landm_p, landm_tt, reduction="sum")

    pos = conf_t != zeros
    conf_t = conf_t.clone()
    conf_t[pos] = 1

    pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)
    loc_p = loc_data[pos_idx].view(-1, 4)
    loc_tt = loc_t[pos_idx].view(-1, 4)
    loss_l = F.smooth_l1_loss(loc_p, loc_tt, reduction="sum")

    num = loc_data.size(0)
    batch_conf = conf_data.view(-1, num_classes)
    loss_c = log_sum_exp(batch_conf) - batch_conf.gather(1, conf_t.view(-1, 1))
    loss_c[pos.view(-1, 1)] = 0
    loss_c = loss_c.view(num, -1)
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    num_neg = torch.clamp(negpos_ratio * num_pos, max=pos.size(1) - 1)
    neg = idx_rank < num_neg.expand_as(idx_rank)

    pos_idx = pos.unsqueeze(2).expand_as(conf_data)
    neg_idx = neg.unsqueeze(2).expand_as(conf_data)
    conf_p = conf_data[(pos_idx.long() + neg_idx.long()).gt(0)].view(-1, num_classes)
    targets_weighted = conf_t[(pos.long() + neg.long()).gt(0)]
    loss_c = F.cross_entropy(conf_p, targets_weighted, reduction="sum")

    N = max(num_pos.data.sum().float(), 1)
    return loss_l / N, loss_c / N, loss_landm / N1


def multibox_loss(predictions, priors, targets, threshold=0.35, variances=(0.1, 0.2), negpos_ratio=7):
    """RetinaFace's MultiBoxLoss: ``targets`` a list of ``[n, 15]`` rows ``(x1, y1, x2, y2, 10 landmark coords,
    label)`` in relative coordinates; the matching loop runs image by image, as in the original."""
    loc_data, conf_data, landm_data = predictions
    num, num_priors = loc_data.size(0), priors.size(0)
    nl = landm_data.size(2)
    loc_t = loc_data.new_zeros((num, num_priors, 4))
    landm_t = loc_data.new_zeros((num, num_priors, nl))
    conf_t = torch.zeros((num, num_priors), dtype=torch.int64, device=loc_data.device)
    with torch.no_grad():
        for idx in range(num):
            truths = targets[idx][:, :4].data
            labels = targets[idx][:, -1].data
            landms = targets[idx][:, 4:4 + nl].data
            loc, conf, landm, _, _ = match_ssd(threshold, truths, priors.data, variances, labels, landms, 0.2)
            loc_t[idx], conf_t[idx], landm_t[idx] = loc, conf.long(), landm
    return multibox_loss_from_targets(loc_data, conf_data, landm_data, loc_t, conf_t, landm_t, negpos_ratio,
                                      conf_data.size(2))
