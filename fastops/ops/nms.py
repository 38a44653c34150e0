"""Non-maximum suppression: `nms`, `batched_nms`, `multiclass_nms`, `fast_nms`, `soft_nms`.

Conventions (see docs/nms.md): boxes ``(x1, y1, x2, y2)``, area ``(x2 - x1) * (y2 - y1)``,
IoU ``inter / (area_a + area_b - inter)`` computed in float32 (float64 for float64 input; float16/bfloat16 boxes are
read as float32), ties in score broken by the lower index (stable descending sort). Compiled kernels:
``torch.ops.fastops.<name>`` (schemas in csrc/nms/nms_cpu.cpp).

NaN handling (defined, never a crash or out-of-bounds read):
  * a NaN score sorts above every number (as ``torch.sort`` does), so in ``nms``/``batched_nms`` it is taken first,
    exactly like torchvision; ``multiclass_nms`` and ``fast_nms`` drop NaN scores at the score threshold
    (``NaN > t`` is false; in ``fast_nms`` a NaN class score makes the detection's maximum NaN, as torch.max does);
    ``soft_nms`` drops NaN scores up front.
  * a NaN coordinate makes every IoU with that box NaN: in ``nms``/``batched_nms``/``multiclass_nms`` such a box
    neither suppresses nor is suppressed (``NaN > t`` is false, as in torchvision); in ``fast_nms`` it suppresses
    every later box of its class and is suppressed by any earlier one (``max`` propagates NaN and ``NaN <= t`` is
    false, as in YOLACT's code); in ``soft_nms`` a NaN IoU counts as 0 (no decay).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from fastops._library import FLOAT_DTYPES, check_impl, check_tensor, cuda_compiled

_SOFT_METHODS = ("linear", "gaussian", "naive")


def _check_threshold(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    return value


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _check_boxes_scores(boxes: Tensor, scores: Tensor) -> None:
    check_tensor("boxes", boxes, dim=2, dtypes=FLOAT_DTYPES)
    if boxes.size(1) != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    check_tensor("scores", scores, dim=1, dtypes=FLOAT_DTYPES, device=boxes.device)
    if scores.size(0) != boxes.size(0):
        raise ValueError(f"scores must have shape [N] with N = {boxes.size(0)} (boxes), got {tuple(scores.shape)}")
    if scores.dtype != boxes.dtype:
        raise ValueError(f"scores must have the dtype of boxes ({boxes.dtype}), got {scores.dtype}")


def _use_triton(impl: str, t: Tensor) -> bool:
    return impl == "triton" or (impl == "auto" and t.is_cuda and not cuda_compiled())


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, impl: str = "auto") -> Tensor:
    """Greedy NMS, a drop-in for ``torchvision.ops.nms`` (same kept indices in the same order).

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)``, float32/64/16 or bfloat16 (any strides).
        scores: ``[N]``, same dtype and device as ``boxes``.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scored box is ``> iou_threshold``.
        impl: ``"auto"``/``"cpp"`` (compiled kernel), ``"triton"`` or ``"reference"`` (torchvision).

    Returns:
        ``int64[M]`` indices of the kept boxes, by decreasing score (ties: lower index first).
    """
    check_impl(impl)
    _check_boxes_scores(boxes, scores)
    thr = _check_threshold("iou_threshold", iou_threshold)
    if impl == "reference":
        from fastops.reference.nms import nms as ref

        return ref(boxes, scores, thr)
    if _use_triton(impl, boxes):
        import fastops.triton.nms  # noqa: F401  (registers fastops::nms_triton)

        return torch.ops.fastops.nms_triton(boxes, scores, thr)
    return torch.ops.fastops.nms(boxes, scores, thr)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *, impl: str = "auto") -> Tensor:
    """NMS independently per category, a drop-in for ``torchvision.ops.batched_nms``.

    One native kernel (no coordinate offsets, no Python loop over classes): works under
    ``torch.compile(fullgraph=True)`` at any size.

    Args:
        boxes: ``[N, 4]``; scores: ``[N]`` (same dtype); idxs: ``[N]`` integer category of each box (any values).
        iou_threshold: as :func:`nms`.

    Returns:
        ``int64[M]`` kept indices, by decreasing score, in exactly torchvision's order: ties by lower index, except
        where torchvision's own per-class path applies (``boxes.numel() > 4000`` on CPU, ``> 100000`` on CUDA),
        whose unstable sort of the survivors' scores we run too, so tied scores come out in the same order.
    """
    check_impl(impl)
    _check_boxes_scores(boxes, scores)
    check_tensor("idxs", idxs, dim=1, device=boxes.device)
    if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
        raise ValueError(f"idxs must be an integer tensor, got {idxs.dtype}")
    if idxs.size(0) != boxes.size(0):
        raise ValueError(f"idxs must have shape [N] with N = {boxes.size(0)} (boxes), got {tuple(idxs.shape)}")
    thr = _check_threshold("iou_threshold", iou_threshold)
    if impl == "reference":
        from fastops.reference.nms import batched_nms as ref

        return ref(boxes, scores, idxs, thr)
    if _use_triton(impl, boxes):
        import fastops.triton.nms  # noqa: F401

        return torch.ops.fastops.batched_nms_triton(boxes, scores, idxs, thr)
    return torch.ops.fastops.batched_nms(boxes, scores, idxs, thr)


def multiclass_nms(boxes: Tensor, scores: Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5, *,
                   pre_nms_top_k: int = -1, max_det: int = 100, pad: bool = False, impl: str = "auto"):
    """Detection post-processing in one op: score threshold, per-class top-k, per-class NMS, ``max_det`` cut.

    Args:
        boxes: ``[N, 4]`` (shared by all classes) or ``[N, C, 4]`` (one box per class).
        scores: ``[N, C]`` class scores (same dtype as ``boxes``).
        score_threshold: class c's candidates are the boxes with ``scores[:, c] > score_threshold`` (compared in
            the scores' dtype, like ``scores > t`` in PyTorch).
        iou_threshold: per-class greedy NMS, as :func:`nms`.
        pre_nms_top_k: when > 0, at most that many highest-scored candidates per class enter NMS.
        max_det: the survivors of all classes, sorted by score (ties: lower box index, then lower class), are cut
            to ``max_det`` (``<= 0``: no cut; ``pad=True`` needs ``max_det > 0``).
        pad: return exactly ``max_det`` rows (padding: box 0, score 0, label -1, index -1) and ``num_valid``.

    Returns:
        ``(boxes[M, 4], scores[M], labels int64[M], indices int64[M])``, ``indices`` pointing into N; with
        ``pad=True`` M is ``max_det`` and a fifth output ``num_valid`` (int64 scalar tensor) is appended.
    """
    check_impl(impl)
    check_tensor("scores", scores, dim=2, dtypes=FLOAT_DTYPES)
    check_tensor("boxes", boxes, dim=(2, 3), dtypes=FLOAT_DTYPES, device=scores.device)
    n, c = scores.shape
    if tuple(boxes.shape) not in ((n, 4), (n, c, 4)):
        raise ValueError(f"boxes must have shape [N, 4] or [N, C, 4] with N, C = {n}, {c} (scores), "
                         f"got {tuple(boxes.shape)}")
    if boxes.dtype != scores.dtype:
        raise ValueError(f"boxes must have the dtype of scores ({scores.dtype}), got {boxes.dtype}")
    sthr = _check_threshold("score_threshold", score_threshold)
    ithr = _check_threshold("iou_threshold", iou_threshold)
    pre_nms_top_k = _check_int("pre_nms_top_k", pre_nms_top_k)
    max_det = _check_int("max_det", max_det)
    if pad and max_det <= 0:
        raise ValueError(f"max_det must be > 0 when pad=True, got {max_det}")
    if impl == "reference":
        from fastops.reference.nms import multiclass_nms as ref

        return ref(boxes, scores, sthr, ithr, pre_nms_top_k, max_det, bool(pad))
    if impl == "triton":
        raise ValueError("impl='triton' is not available for multiclass_nms (its work is the sequential greedy "
                         "pass); use impl='cpp'")
    out = torch.ops.fastops.multiclass_nms(boxes, scores, sthr, ithr, pre_nms_top_k, max_det, bool(pad))
    return tuple(out) if pad else tuple(out[:4])


def fast_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200, max_det: int = 100,
             score_threshold: float = 0.05, *, cross_class: bool = False,
             impl: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """YOLACT's Fast NMS (``Detect.fast_nms``; ``cross_class=True``: ``Detect.cc_fast_nms``), in one kernel.

    1. keep detections whose maximum class score is ``> score_threshold``;
    2. per class, the ``top_k`` of those by that class's score (descending, ties by lower index);
    3. per class, box j is kept when its IoU with every higher-scored box i < j of the same class is
       ``<= iou_threshold`` (suppressed boxes still suppress: the column max of the upper-triangular IoU matrix);
    4. all kept (class, box) pairs by descending score (ties: class-major then rank order), cut to ``max_det``.
    With ``cross_class=True`` each detection takes its best class (first argmax) and one IoU matrix over the
    ``top_k`` detections by that score decides; YOLACT applies no ``max_det`` there, we cut to ``max_det`` too
    (``<= 0``: no cut). ``top_k <= 0`` means no limit.

    Args:
        boxes: ``[N, 4]``; scores: ``[C, N]`` (class-major, background row removed, same dtype as boxes).

    Returns:
        ``(indices int64[M] into N, labels int64[M] (row of scores), scores[M])``.
    """
    check_impl(impl)
    check_tensor("boxes", boxes, dim=2, dtypes=FLOAT_DTYPES)
    if boxes.size(1) != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    check_tensor("scores", scores, dim=2, dtypes=FLOAT_DTYPES, device=boxes.device)
    if scores.size(1) != boxes.size(0):
        raise ValueError(f"scores must have shape [C, N] with N = {boxes.size(0)} (boxes), got {tuple(scores.shape)}")
    if scores.dtype != boxes.dtype:
        raise ValueError(f"scores must have the dtype of boxes ({boxes.dtype}), got {scores.dtype}")
    ithr = _check_threshold("iou_threshold", iou_threshold)
    sthr = _check_threshold("score_threshold", score_threshold)
    top_k = _check_int("top_k", top_k)
    max_det = _check_int("max_det", max_det)
    if impl == "reference":
        from fastops.reference.nms import fast_nms as ref

        return ref(boxes, scores, ithr, top_k, max_det, sthr, bool(cross_class))
    if _use_triton(impl, boxes):
        import fastops.triton.nms  # noqa: F401

        return tuple(torch.ops.fastops.fast_nms_triton(boxes, scores, ithr, top_k, max_det, sthr, bool(cross_class)))
    return tuple(torch.ops.fastops.fast_nms(boxes, scores, ithr, top_k, max_det, sthr, bool(cross_class)))


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3,
             method: str = "linear", *, impl: str = "auto") -> Tuple[Tensor, Tensor]:
    """Soft-NMS with mmcv's semantics (``mmcv.ops.soft_nms``), on CPU and CUDA.

    Repeatedly selects the highest-scored remaining box (ties: lower index) and decays every other remaining
    score: ``naive``: ``s = 0`` when ``iou >= iou_threshold``; ``linear``: ``s *= 1 - iou`` when
    ``iou >= iou_threshold``; ``gaussian``: ``s *= exp(-iou^2 / sigma)``. (mmcv's kernels compare with ``>=``;
    the spec's summary writes ``>``, which only differs at exact equality; we follow mmcv.) After each decay a box
    whose score is ``< min_score`` is discarded (so, as in mmcv, the first selected box is kept whatever its
    score); a decayed score that becomes NaN (an infinite score times 0) discards the box too. Thresholds are rounded to the compute type (float32, float64 for float64 input), as mmcv's float
    arguments are.

    Returns:
        ``(dets[M, 5], keep int64[M])``: ``dets`` rows ``(x1, y1, x2, y2, decayed score)`` in selection order,
        ``keep`` the original indices.
    """
    check_impl(impl)
    _check_boxes_scores(boxes, scores)
    ithr = _check_threshold("iou_threshold", iou_threshold)
    sig = _check_threshold("sigma", sigma)
    mins = _check_threshold("min_score", min_score)
    if method not in _SOFT_METHODS:
        raise ValueError(f"method must be one of {_SOFT_METHODS}, got {method!r}")
    if method == "gaussian" and not sig > 0:
        raise ValueError(f"sigma must be > 0 for method='gaussian', got {sigma}")
    if impl == "reference":
        from fastops.reference.nms import soft_nms as ref

        return ref(boxes, scores, ithr, sig, mins, method)
    if impl == "triton":
        raise ValueError("impl='triton' is not available for soft_nms (sequential algorithm); use impl='cpp'")
    return tuple(torch.ops.fastops.soft_nms(boxes, scores, ithr, sig, mins, method))


# ---- fake kernels (data-dependent output sizes) ----------------------------------------------------------------

def _dyn(n):
    return torch.library.get_ctx().new_dynamic_size()


@torch.library.register_fake("fastops::nms")
def _nms_fake(boxes, scores, iou_threshold):
    m = _dyn(boxes.size(0))
    torch._check(m <= boxes.size(0))
    return boxes.new_empty((m,), dtype=torch.int64)


@torch.library.register_fake("fastops::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    m = _dyn(boxes.size(0))
    torch._check(m <= boxes.size(0))
    return boxes.new_empty((m,), dtype=torch.int64)


@torch.library.register_fake("fastops::multiclass_nms")
def _multiclass_nms_fake(boxes, scores, score_threshold, iou_threshold, pre_nms_top_k, max_det, pad):
    m = max_det if pad else _dyn(None)
    return (boxes.new_empty((m, 4)), scores.new_empty((m,)), scores.new_empty((m,), dtype=torch.int64),
            scores.new_empty((m,), dtype=torch.int64), scores.new_empty((), dtype=torch.int64))


@torch.library.register_fake("fastops::fast_nms")
def _fast_nms_fake(boxes, scores, iou_threshold, top_k, max_det, score_threshold, cross_class):
    m = _dyn(None)
    return (boxes.new_empty((m,), dtype=torch.int64), boxes.new_empty((m,), dtype=torch.int64),
            scores.new_empty((m,)))


@torch.library.register_fake("fastops::soft_nms")
def _soft_nms_fake(boxes, scores, iou_threshold, sigma, min_score, method):
    m = _dyn(boxes.size(0))
    torch._check(m <= boxes.size(0))
    return boxes.new_empty((m, 5)), boxes.new_empty((m,), dtype=torch.int64)
