"""Prior-box (anchor) detection heads: `prior_nms` (RetinaFace's post-processing) and `match_priors` (the MultiBox
loss's prior-to-gt matching of RetinaFace / SSD / YOLACT), batched.

Conventions and anchors: docs/priors.md. Compiled kernels: ``torch.ops.fastops.<name>`` (schemas in
csrc/priors/priors.cpp); ``impl="reference"`` runs the transcriptions of biubug6/Pytorch_Retinaface and
dbolya/yolact in fastops.reference.priors. Priors are centre-size ``(cx, cy, w, h)`` rows (relative to the image
in RetinaFace), gt and decoded boxes point form ``(x1, y1, x2, y2)``; variances ``(0.1, 0.2)``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

import fastops.registrations.priors as _reg
from fastops._library import check_int, check_tensor, dispatch, reference_module, triton_module
from fastops.ops._keypoints import autocast_float32, choice, finite_float, traced_call

MODES = tuple(_reg.MODES)
_BOX_DTYPES = (torch.float32, torch.float64)
_I64 = (-(2**63), 2**63 - 1)

torch.fx.wrap("prior_nms")
torch.fx.wrap("match_priors")


def prior_nms(loc: Tensor, scores: Tensor, landms: Optional[Tensor], priors: Tensor,
              scale_xy: Tuple[float, float] = (1.0, 1.0), score_threshold: float = 0.02, iou_threshold: float = 0.4,
              pre_nms_top_k: int = 5000, max_det: int = 750, variances: Tuple[float, float] = (0.1, 0.2),
              pad: bool = False, plus_one: bool = True, impl: str = "auto") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """RetinaFace's ``detect.py`` post-processing for a batch, in one op.

    Per image: decode every box (``decode``) and landmark (``decode_landm``) against ``priors`` with
    ``variances``, scale to pixels (``x * scale_x``, ``y * scale_y``), keep the priors with ``score >
    score_threshold`` (compared in the scores' dtype), the ``pre_nms_top_k`` best of them (``<= 0``: all) by
    descending score (ties: lower prior index first), greedy NMS with ``py_cpu_nms``'s pixel convention
    (``plus_one``: width ``x2 - x1 + 1``; a box is dropped when its IoU with a kept one is ``> iou_threshold``),
    then the ``max_det`` best survivors (the original's ``keep_top_k``; ``<= 0``: all).

    Args:
        loc: ``[B, P, 4]`` box regressions; scores: ``[B, P]`` face probabilities (softmax column 1);
        landms: ``[B, P, 2L]`` landmark regressions (RetinaFace: L = 5) or None; priors: ``[P, 4]``; all float32 or
        float64 (float16/bfloat16 under autocast: computed in float32).

    Returns:
        ``pad=False``: ``(boxes [M, 4], scores [M], landmarks [M, 2L], counts int64 [B])``, the images' detections
        concatenated in image order (:func:`split_detections` makes the per-image list);
        ``pad=True``: ``(boxes [B, max_det, 4], scores [B, max_det], landmarks [B, max_det, 2L], num_valid int64
        [B])`` with zero rows after each image's ``num_valid`` detections (static shapes: ``torch.compile
        (fullgraph=True)`` with any batch; the unpadded form compiles too, its M being data-dependent).

    NaN/inf: a NaN score never passes the threshold; a candidate whose decoded box is not finite (NaN loc or
    prior, ``exp`` overflow) is dropped after the top-k, before NMS (the original would keep it and let its NaN
    IoUs suppress every later box); NaN landmarks are passed through. The NMS is fastops' ``nms`` kernel on the
    boxes ``(x1, y1, x2 + 1, y2 + 1)``: in float32 its IoU can differ from NumPy's ``x2 - x1 + 1`` by a rounding,
    which changes a decision only for an IoU within ~1e-6 of the threshold; equal scores are ordered by prior
    index (the original's NumPy quicksort is unstable there).

    Autocast (CPU and CUDA): float16/bfloat16 inputs are computed in float32 and the outputs are float32.
    ONNX (both exporters, opset 18; batch and prior counts dynamic): the decode arithmetic, ``TopK`` per image,
    one ``NonMaxSuppression`` over the batch (candidates scored by their rank, so the order is TopK's), ``GatherND``
    / ``ScatterND`` for the outputs. Differences (docs/priors.md): onnxruntime's ``Exp`` (boxes and landmarks
    within a few ulp), its float32 IoU (float64 inputs too), so a decision can change for an IoU within ~1e-6 of
    the threshold. TorchScript: scripts (the scripted function calls the compiled op).
    """
    if torch.jit.is_scripting():
        lm = landms if landms is not None else loc.new_zeros((loc.size(0), loc.size(1), 0))
        r = torch.ops.fastops.prior_nms(loc, scores, lm, priors, variances[0], variances[1], scale_xy[0],
                                        scale_xy[1], score_threshold, iou_threshold, pre_nms_top_k, max_det, pad,
                                        plus_one)
        return r[0], r[1], r[2], r[3]
    leaf = traced_call(_PUBLIC["prior_nms"], (loc, scores, landms, priors), loc, scores, landms, priors, scale_xy,
                       score_threshold, iou_threshold, pre_nms_top_k, max_det, variances, pad, plus_one, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_prior_nms, loc, loc, scores, landms, priors, scale_xy, score_threshold, iou_threshold,
                            pre_nms_top_k, max_det, variances, pad, plus_one, impl)


def _float(name, v):
    # torch.compile(dynamic=True) traces Python floats as SymFloats: checked in eager mode only
    return v if torch.compiler.is_compiling() else finite_float(name, v)


def _pair(name, v) -> Tuple[float, float]:
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"{name} must be a pair of floats, got {v!r}")
    return _float(name, v[0]), _float(name, v[1])


def _prior_nms(loc, scores, landms, priors, scale_xy, score_threshold, iou_threshold, pre_nms_top_k, max_det,
               variances, pad, plus_one, impl):
    check_tensor("loc", loc, dim=3, dtypes=_BOX_DTYPES)
    B, P = loc.shape[:2]
    if loc.size(2) != 4:
        raise ValueError(f"loc must have shape [B, P, 4], got {tuple(loc.shape)}")
    if landms is None:
        landms = loc.new_zeros((B, P, 0))
    for name, t, shape in (("scores", scores, (B, P)), ("landms", landms, None), ("priors", priors, (P, 4))):
        check_tensor(name, t, dtypes=(loc.dtype,), device=loc.device)
        ok = tuple(t.shape) == shape if shape else (t.dim() == 3 and tuple(t.shape[:2]) == (B, P)
                                                    and t.size(2) % 2 == 0)
        if not ok:
            want = f"[{B}, {P}, 2L]" if shape is None else str(list(shape))
            raise ValueError(f"{name} must have shape {want} (B, P from loc), got {tuple(t.shape)}")
    sx, sy = _pair("scale_xy", scale_xy)
    v0, v1 = _pair("variances", variances)
    sthr = _float("score_threshold", score_threshold)
    ithr = _float("iou_threshold", iou_threshold)
    top_k = check_int("pre_nms_top_k", pre_nms_top_k, low=_I64[0], high=_I64[1])
    if pad:
        max_det = check_int("max_det", max_det, low=1, high=2**31 - 1)
    else:
        max_det = min(check_int("max_det", max_det, low=_I64[0], high=_I64[1]), 2**31 - 1)
    pad, plus_one = bool(pad), bool(plus_one)
    return tuple(dispatch(
        "prior_nms", impl, loc.device,
        cpp=lambda: torch.ops.fastops.prior_nms(loc, scores, landms, priors, v0, v1, sx, sy, sthr, ithr, top_k,
                                                max_det, pad, plus_one),
        reference=lambda: reference_module("priors").prior_nms(loc, scores, landms, priors, (v0, v1), (sx, sy),
                                                               sthr, ithr, top_k, max_det, pad, plus_one),
        triton=lambda: triton_module("priors").prior_nms_triton(loc, scores, landms, priors, v0, v1, sx, sy, sthr,
                                                                ithr, top_k, max_det, pad, plus_one)))


def split_detections(boxes: Tensor, scores: Tensor, landms: Tensor, counts: Tensor) -> List[Tuple[Tensor, Tensor,
                                                                                                     Tensor]]:
    """The unpadded :func:`prior_nms` outputs as one ``(boxes, scores, landmarks)`` per image."""
    sizes = [int(c) for c in counts.tolist()]
    return list(zip(boxes.split(sizes), scores.split(sizes), landms.split(sizes)))


def match_priors(gt_boxes: Tensor, gt_labels: Tensor, priors: Tensor, counts: Optional[Tensor] = None,
                 gt_landms: Optional[Tensor] = None, pos_threshold: float = 0.35,
                 neg_threshold: Optional[float] = None, variances: Tuple[float, float] = (0.1, 0.2),
                 mode: str = "ssd", hard_threshold: Optional[float] = None,
                 impl: str = "auto") -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The MultiBox loss's prior-to-gt matching for a batch (the original loops over the images).

    GT layout: padded ``gt_boxes [B, G, 4]`` (point form, in the priors' units), ``gt_labels int64 [B, G]``,
    ``gt_landms [B, G, 2L]`` (or None) and ``counts int64 [B]`` (image b owns rows ``[0, counts[b])``; None: all G).
    Padding rows are never read.

    Per image, with ``ov[g, p]`` the IoU of gt g and prior p (``jaccard(truths, point_form(priors))``):
      * every prior takes its best gt (``ov.max(0)``: first maximum; a NaN IoU wins, as in ``torch.max``);
      * ``mode="ssd"`` (biubug6 RetinaFace, ssd.pytorch): each gt's best prior (``ov.max(1)``) is forced to it with
        overlap 2, the gts in increasing order (when two gts pick the same prior the later one keeps it, the
        original's loop order); ``hard_threshold`` (RetinaFace: 0.2) ignores gts whose best overlap is below it
        for the forcing overlap (they still take their prior, as in the original), and an image with no gt at or
        above it gets all-zero targets;
      * ``mode="yolact"`` (dbolya/yolact without crowd boxes): repeatedly the best remaining (gt, prior) pair
        (first maximum of the per-gt maxima) is forced and its gt row and prior column are removed;
      * ``conf = label; conf[ov < pos_threshold] = -1; conf[ov < neg_threshold] = 0`` (``neg_threshold`` None:
        equal to ``pos_threshold``, so no -1: RetinaFace/SSD; YOLACT passes ``label + 1``, 0.5 and 0.4);
      * ``loc = encode(gt[idx], priors, variances)``, ``landm = encode_landm(landms[idx], ...)``.
    Crowd boxes (YOLACT's ``crowd_iou_threshold``) are not supported: the bundled YOLACT has none.

    Returns:
        ``(loc [B, P, 4], conf int64 [B, P], landm [B, P, 2L], overlap [B, P], idx int64 [B, P])``; an image
        without gt (or, with ``hard_threshold``, without a valid one) has zeros, conf 0, overlap 0 and idx -1.

    NaN/inf: as the original code (NaN IoUs follow ``torch.max``'s NaN rule above; a zero-width gt gives ``log(0)
    = -inf`` box targets). Equal to the per-image loop (fastops.reference.priors.match_priors) up to the last ulp
    of ``log`` (libm vs ATen); indices, conf and overlaps exactly.

    Autocast (CPU and CUDA): float16/bfloat16 boxes are matched in float32. ONNX: not exported (training targets,
    not part of an inference graph): both exporters stop with a RuntimeError saying so.
    TorchScript: scripts (the scripted function calls the compiled op).
    """
    if torch.jit.is_scripting():
        c = counts if counts is not None else torch.full((gt_boxes.size(0),), gt_boxes.size(1), dtype=torch.int64,
                                                          device=gt_boxes.device)
        lm = gt_landms if gt_landms is not None else gt_boxes.new_zeros((gt_boxes.size(0), gt_boxes.size(1), 0))
        neg = neg_threshold if neg_threshold is not None else pos_threshold
        r = torch.ops.fastops.match_priors(gt_boxes, gt_labels, lm, c, priors, pos_threshold, neg, variances[0],
                                           variances[1], mode, hard_threshold)
        return r[0], r[1], r[2], r[3], r[4]
    leaf = traced_call(_PUBLIC["match_priors"], (gt_boxes, gt_labels, priors, counts, gt_landms), gt_boxes, gt_labels, priors,
                       counts, gt_landms, pos_threshold, neg_threshold, variances, mode, hard_threshold, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_match_priors, gt_boxes, gt_boxes, gt_labels, priors, counts, gt_landms, pos_threshold,
                            neg_threshold, variances, mode, hard_threshold, impl)


def _match_priors(gt_boxes, gt_labels, priors, counts, gt_landms, pos_threshold, neg_threshold, variances, mode,
                  hard_threshold, impl):
    check_tensor("gt_boxes", gt_boxes, dim=3, dtypes=_BOX_DTYPES)
    B, G = gt_boxes.shape[:2]
    if gt_boxes.size(2) != 4:
        raise ValueError(f"gt_boxes must have shape [B, G, 4], got {tuple(gt_boxes.shape)}")
    check_tensor("gt_labels", gt_labels, dtypes=(torch.int64,), device=gt_boxes.device)
    if tuple(gt_labels.shape) != (B, G):
        raise ValueError(f"gt_labels must have shape [{B}, {G}], got {tuple(gt_labels.shape)}")
    check_tensor("priors", priors, dim=2, dtypes=(gt_boxes.dtype,), device=gt_boxes.device)
    if priors.size(1) != 4:
        raise ValueError(f"priors must have shape [P, 4], got {tuple(priors.shape)}")
    if counts is None:
        counts = torch.full((B,), G, dtype=torch.int64, device=gt_boxes.device)
    check_tensor("counts", counts, dim=1, dtypes=(torch.int64,), device=gt_boxes.device)
    if counts.size(0) != B:
        raise ValueError(f"counts must have shape [{B}], got {tuple(counts.shape)}")
    if not torch.compiler.is_compiling() and counts.numel() and bool(((counts < 0) | (counts > G)).any()):
        raise ValueError(f"counts must be in [0, G = {G}], got {counts.tolist()}")
    if gt_landms is None:
        gt_landms = gt_boxes.new_zeros((B, G, 0))
    check_tensor("gt_landms", gt_landms, dim=3, dtypes=(gt_boxes.dtype,), device=gt_boxes.device)
    if tuple(gt_landms.shape[:2]) != (B, G) or gt_landms.size(2) % 2:
        raise ValueError(f"gt_landms must have shape [{B}, {G}, 2L], got {tuple(gt_landms.shape)}")
    pos = _float("pos_threshold", pos_threshold)
    neg = pos if neg_threshold is None else _float("neg_threshold", neg_threshold)
    v0, v1 = _pair("variances", variances)
    choice("mode", mode, MODES)
    hard = None if hard_threshold is None else _float("hard_threshold", hard_threshold)
    return tuple(dispatch(
        "match_priors", impl, gt_boxes.device,
        cpp=lambda: torch.ops.fastops.match_priors(gt_boxes, gt_labels, gt_landms, counts, priors, pos, neg, v0, v1,
                                                   mode, hard),
        reference=lambda: reference_module("priors").match_priors(gt_boxes, gt_labels, gt_landms, counts, priors,
                                                                  pos, neg, (v0, v1), mode, hard),
        triton=lambda: triton_module("priors").match_priors_triton(gt_boxes, gt_labels, gt_landms, counts, priors,
                                                                   pos, neg, v0, v1, mode, hard)))


# the original functions: torch.fx.wrap patches the module globals while tracing, the leaf records these
_PUBLIC = {"prior_nms": prior_nms, "match_priors": match_priors}
