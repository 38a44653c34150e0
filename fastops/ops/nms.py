"""Non-maximum suppression: `nms`, `batched_nms`, `multiclass_nms`, `fast_nms`, `soft_nms`.

Conventions (see docs/nms.md): boxes ``(x1, y1, x2, y2)``, area ``(x2 - x1) * (y2 - y1)``,
IoU ``inter / (area_a + area_b - inter)`` computed in float32 (float64 for float64 input; float16/bfloat16 boxes are
read as float32), ties in score broken by the lower index (stable descending sort). Compiled kernels:
``torch.ops.fastops.<name>`` (schemas in csrc/nms/nms.cpp).

Drop-in conventions (as torchvision.ops): every function scripts with ``torch.jit.script`` (scripted
``multiclass_nms`` returns a list of its 4 or 5 outputs: TorchScript has no pad-dependent tuple size); under
``torch.autocast`` (CPU or CUDA) float16/bfloat16 boxes and scores of any mix are computed in float32 (the outputs that copy boxes/scores are then float32); quantized
(quint8) boxes and scores are dequantized (torchvision's ``test_qnms`` compares with nms on the dequantized
values); input errors are :class:`NmsInputError`, both a ``ValueError`` and the ``RuntimeError`` torchvision
raises for the same input.

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

import fastops.registrations.nms as _reg
from fastops._library import (FLOAT_DTYPES, check_int, check_tensor, dispatch, plain_eager, reference_module,
                              triton_module)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class NmsInputError(ValueError, RuntimeError):
    """A bad argument to an NMS op: catchable as ValueError (fastops) and as RuntimeError (torchvision)."""


def _fail(exc: ValueError):
    raise NmsInputError(str(exc)) from None


def _tensor(name: str, t, **kw) -> None:
    try:
        check_tensor(name, t, **kw)
    except ValueError as exc:
        _fail(exc)


def _int(name: str, value, low: int = _INT64_MIN, high: int = _INT64_MAX) -> int:
    try:
        return check_int(name, value, low=low, high=high)
    except ValueError as exc:
        _fail(exc)


def _threshold(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NmsInputError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if value != value:
        raise NmsInputError(f"{name} must not be NaN")
    return value


def _fx_leaf(name: str, args):
    """Under torch.fx.symbolic_trace, record public function `name` as one call (a leaf) whatever module calls it:
    torch.fx.wrap below only covers calls made from this module (and patches the module global while tracing, so
    the original function object is taken from _PUBLIC)."""
    for a in args:
        if isinstance(a, torch.fx.Proxy):
            return a.tracer.create_proxy("call_function", _PUBLIC[name], tuple(args), {})
    return None


def _prepare(*tensors):
    """Dequantize quantized tensors; under autocast, float32 compute for float16/bfloat16 or mixed dtypes."""
    if any(isinstance(t, Tensor) and t.is_quantized for t in tensors):
        tensors = tuple(_reg.dequantize(t) if isinstance(t, Tensor) else t for t in tensors)
    if all(isinstance(t, Tensor) for t in tensors):
        tensors = _reg.autocast_inputs(*tensors)
    return tensors


def _check_boxes_scores(boxes, scores, class_major: bool = False) -> None:
    """boxes [N, 4]; scores [N] ([C, N] when class_major) of boxes' dtype, on boxes' device."""
    _tensor("boxes", boxes, dim=2, dtypes=FLOAT_DTYPES)
    if boxes.size(1) != 4:
        raise NmsInputError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    _tensor("scores", scores, dim=2 if class_major else 1, dtypes=FLOAT_DTYPES, device=boxes.device)
    if scores.size(-1) != boxes.size(0):
        raise NmsInputError(f"scores must have shape {'[C, N]' if class_major else '[N]'} with N = {boxes.size(0)} "
                            f"(boxes), got {tuple(scores.shape)}")
    if scores.dtype != boxes.dtype:
        raise NmsInputError(f"scores must have the dtype of boxes ({boxes.dtype}), got {scores.dtype}")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, impl: str = "auto") -> Tensor:
    """Greedy NMS, a drop-in for ``torchvision.ops.nms`` (same kept indices in the same order).

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)``, float32/64/16 or bfloat16 (any strides), or quint8.
        scores: ``[N]``, same dtype and device as ``boxes`` (any float mix under autocast).
        iou_threshold: a box is dropped when its IoU with a kept, higher-scored box is ``> iou_threshold``
            (IoU exactly at the threshold keeps the box).
        impl: ``"auto"``/``"cpp"`` (compiled kernel), ``"triton"`` or ``"reference"`` (torchvision).

    Returns:
        ``int64[M]`` indices of the kept boxes, by decreasing score (ties: lower index first).

    ONNX: ``NonMaxSuppression`` (center_point_box=0, one batch, one class) after a stable score sort; see
    docs/nms.md for the threshold rule.
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.nms(boxes, scores, iou_threshold)
    return _nms(boxes, scores, iou_threshold, impl)


def _nms(boxes, scores, iou_threshold, impl):
    leaf = _fx_leaf("nms", (boxes, scores, iou_threshold, impl))
    if leaf is not None:
        return leaf
    boxes, scores = _prepare(boxes, scores)
    _check_boxes_scores(boxes, scores)
    thr = _threshold("iou_threshold", iou_threshold)
    return dispatch("nms", impl, boxes.device,
                    cpp=lambda: torch.ops.fastops.nms(boxes, scores, thr),
                    reference=lambda: reference_module("nms").nms(boxes, scores, thr),
                    triton=lambda: triton_module("nms").nms_triton(boxes, scores, thr))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, impl: str = "auto") -> Tensor:
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
        Empty ``boxes`` return an empty int64 tensor whatever the other arguments (torchvision's shortcut).

    ONNX: ``NonMaxSuppression`` with one class per category value (the class dimension), then a stable sort of
    the survivors by score.
    """
    if torch.jit.is_scripting():
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        return torch.ops.fastops.batched_nms(boxes, scores, idxs, iou_threshold)
    return _batched_nms(boxes, scores, idxs, iou_threshold, impl)


_FAST_BOX_DTYPES = frozenset(FLOAT_DTYPES)
_FAST_IDX_DTYPES = frozenset((torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8))
_batched_nms_op = torch.ops.fastops.batched_nms.default


def _batched_nms(boxes, scores, idxs, iou_threshold, impl):
    # Eager fast path (the per-call checks cost ~15 us against a ~1 ms kernel at 20k boxes): plain CPU tensors with
    # exactly the shapes, dtypes and threshold the checks below accept, impl auto/cpp, no autocast, tracing or
    # compiling: the compiled op directly. Anything else takes the general path (same errors as before).
    if (type(boxes) is Tensor and type(scores) is Tensor and type(idxs) is Tensor
            and (impl == "auto" or impl == "cpp") and type(iou_threshold) is float
            and iou_threshold == iou_threshold and boxes.dim() == 2 and boxes.size(1) == 4
            and scores.dim() == 1 and idxs.dim() == 1 and boxes.dtype in _FAST_BOX_DTYPES
            and scores.dtype == boxes.dtype and idxs.dtype in _FAST_IDX_DTYPES
            and boxes.device.type == "cpu" and scores.device.type == "cpu" and idxs.device.type == "cpu"
            and scores.size(0) == boxes.size(0) and idxs.size(0) == boxes.size(0)
            and plain_eager((boxes, scores, idxs))):
        return _batched_nms_op(boxes, scores, idxs, iou_threshold)
    leaf = _fx_leaf("batched_nms", (boxes, scores, idxs, iou_threshold, impl))
    if leaf is not None:
        return leaf
    if (scores is None or idxs is None) and isinstance(boxes, Tensor) and boxes.numel() == 0:
        # torchvision's documented empty shortcut (it returns before looking at scores/idxs); with real scores and
        # idxs the kernel handles empty input itself, so torch.compile never guards on a data-dependent size here.
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes, scores = _prepare(boxes, scores)
    _check_boxes_scores(boxes, scores)
    _tensor("idxs", idxs, dim=1, device=boxes.device)
    if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
        raise NmsInputError(f"idxs must be an integer tensor, got {idxs.dtype}")
    if idxs.size(0) != boxes.size(0):
        raise NmsInputError(f"idxs must have shape [N] with N = {boxes.size(0)} (boxes), got {tuple(idxs.shape)}")
    thr = _threshold("iou_threshold", iou_threshold)
    return dispatch("batched_nms", impl, boxes.device,
                    cpp=lambda: torch.ops.fastops.batched_nms(boxes, scores, idxs, thr),
                    reference=lambda: reference_module("nms").batched_nms(boxes, scores, idxs, thr),
                    triton=lambda: triton_module("nms").batched_nms_triton(boxes, scores, idxs, thr))


def multiclass_nms(boxes: Tensor, scores: Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5,
                   pre_nms_top_k: int = -1, max_det: int = 100, pad: bool = False, impl: str = "auto"):
    """Detection post-processing in one op: score threshold, per-class top-k, per-class NMS, ``max_det`` cut.

    Args:
        boxes: ``[N, 4]`` (shared by all classes) or ``[N, C, 4]`` (one box per class).
        scores: ``[N, C]`` class scores (same dtype as ``boxes``).
        score_threshold: class c's candidates are the boxes with ``scores[:, c] > score_threshold`` (compared in
            the scores' dtype, like ``scores > t`` in PyTorch).
        iou_threshold: per-class greedy NMS, as :func:`nms` (IoU exactly at the threshold keeps the box).
        pre_nms_top_k: when > 0, at most that many highest-scored candidates per class enter NMS.
        max_det: the survivors of all classes, sorted by score (ties: lower box index, then lower class), are cut
            to ``max_det`` (``<= 0``: no cut; ``pad=True`` needs ``0 < max_det < 2^31``).
        pad: return exactly ``max_det`` rows (padding: box 0, score 0, label -1, index -1) and ``num_valid``.

    Returns:
        ``(boxes[M, 4], scores[M], labels int64[M], indices int64[M])``, ``indices`` pointing into N; with
        ``pad=True`` M is ``max_det`` and a fifth output ``num_valid`` (int64 scalar tensor) is appended.
        Scripted (``torch.jit.script``), the outputs come as a ``List[Tensor]`` of the same 4 or 5 tensors
        (TorchScript has no tuple whose size depends on an argument): ``b, s, l, i = multiclass_nms(...)`` and
        indexing work unchanged; the scripted path calls the fixed five-output op ``torch.ops.fastops.
        multiclass_nms`` and keeps the first four when ``pad`` is False.

    ONNX: ``NonMaxSuppression`` over the ``[1, C, N]`` score matrix (its class dimension and score threshold),
    then ``TopK`` by score for ``max_det``.
    """
    if torch.jit.is_scripting():
        out = torch.ops.fastops.multiclass_nms(boxes, scores, score_threshold, iou_threshold, pre_nms_top_k,
                                               max_det, pad)
        return [out[0], out[1], out[2], out[3], out[4]] if pad else [out[0], out[1], out[2], out[3]]
    leaf = _fx_leaf("multiclass_nms", (boxes, scores, score_threshold, iou_threshold, pre_nms_top_k, max_det, pad, impl))
    if leaf is not None:
        return leaf
    return _multiclass_nms(boxes, scores, score_threshold, iou_threshold, pre_nms_top_k, max_det, pad, impl)


def _multiclass_nms(boxes, scores, score_threshold, iou_threshold, pre_nms_top_k, max_det, pad, impl):
    boxes, scores = _prepare(boxes, scores)
    _tensor("scores", scores, dim=2, dtypes=FLOAT_DTYPES)
    _tensor("boxes", boxes, dim=(2, 3), dtypes=FLOAT_DTYPES, device=scores.device)
    n, c = scores.shape
    if tuple(boxes.shape) not in ((n, 4), (n, c, 4)):
        raise NmsInputError(f"boxes must have shape [N, 4] or [N, C, 4] with N, C = {n}, {c} (scores), "
                            f"got {tuple(boxes.shape)}")
    if boxes.dtype != scores.dtype:
        raise NmsInputError(f"boxes must have the dtype of scores ({scores.dtype}), got {boxes.dtype}")
    sthr = _threshold("score_threshold", score_threshold)
    ithr = _threshold("iou_threshold", iou_threshold)
    pre_nms_top_k = _int("pre_nms_top_k", pre_nms_top_k)
    # pad=True allocates max_det rows; otherwise any int64 max_det past the detections is "no cut" (every impl
    # cuts with min(total, max_det), so it is range-checked here and not clamped)
    max_det = _int("max_det", max_det, high=2**31 - 1 if pad else _INT64_MAX)
    if pad and max_det <= 0:
        raise NmsInputError(f"max_det must be > 0 when pad=True, got {max_det}")
    pad = bool(pad)
    out = dispatch("multiclass_nms", impl, boxes.device,
                   cpp=lambda: tuple(torch.ops.fastops.multiclass_nms(boxes, scores, sthr, ithr, pre_nms_top_k,
                                                                      max_det, pad)),
                   reference=lambda: reference_module("nms").multiclass_nms(boxes, scores, sthr, ithr,
                                                                           pre_nms_top_k, max_det, pad))
    return tuple(out) if pad else tuple(out[:4])


def fast_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200, max_det: int = 100,
             score_threshold: float = 0.05, cross_class: bool = False,
             impl: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """YOLACT's Fast NMS (``Detect.fast_nms``; ``cross_class=True``: ``Detect.cc_fast_nms``), in one kernel.

    1. keep detections whose maximum class score is ``> score_threshold``;
    2. per class, the ``top_k`` of those by that class's score (descending, ties by lower index);
    3. per class, box j is kept when its IoU with every higher-scored box i < j of the same class is
       ``<= iou_threshold`` (suppressed boxes still suppress: the column max of the upper-triangular IoU matrix;
       IoU exactly at the threshold keeps the box, as in :func:`nms`);
    4. all kept (class, box) pairs by descending score (ties: class-major then rank order), cut to ``max_det``.
    With ``cross_class=True`` each detection takes its best class (first argmax) and one IoU matrix over the
    ``top_k`` detections by that score decides; YOLACT applies no ``max_det`` there, we cut to ``max_det`` too
    (``<= 0``: no cut). ``top_k <= 0`` means no limit.

    Args:
        boxes: ``[N, 4]``; scores: ``[C, N]`` (class-major, background row removed, same dtype as boxes).

    Returns:
        ``(indices int64[M] into N, labels int64[M] (row of scores), scores[M])``.

    ONNX: the same decomposition as YOLACT's code (``TopK`` per class, IoU matrix, upper-triangular ``ReduceMax``,
    ``TopK`` over the kept pairs).
    """
    if torch.jit.is_scripting():
        r = torch.ops.fastops.fast_nms(boxes, scores, iou_threshold, top_k, max_det, score_threshold, cross_class)
        return r[0], r[1], r[2]
    return _fast_nms(boxes, scores, iou_threshold, top_k, max_det, score_threshold, cross_class, impl)


def _fast_nms(boxes, scores, iou_threshold, top_k, max_det, score_threshold, cross_class, impl):
    leaf = _fx_leaf("fast_nms", (boxes, scores, iou_threshold, top_k, max_det, score_threshold, cross_class, impl))
    if leaf is not None:
        return leaf
    boxes, scores = _prepare(boxes, scores)
    _check_boxes_scores(boxes, scores, class_major=True)
    ithr = _threshold("iou_threshold", iou_threshold)
    sthr = _threshold("score_threshold", score_threshold)
    top_k = _int("top_k", top_k)
    max_det = _int("max_det", max_det)
    cc = bool(cross_class)
    args = (boxes, scores, ithr, top_k, max_det, sthr, cc)
    return tuple(dispatch("fast_nms", impl, boxes.device,
                          cpp=lambda: torch.ops.fastops.fast_nms(*args),
                          reference=lambda: reference_module("nms").fast_nms(*args),
                          triton=lambda: triton_module("nms").fast_nms_triton(*args)))


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3,
             method: str = "linear", impl: str = "auto") -> Tuple[Tensor, Tensor]:
    """Soft-NMS with mmcv's semantics (``mmcv.ops.soft_nms``), on CPU and CUDA.

    Repeatedly selects the highest-scored remaining box (ties: lower index) and decays every other remaining
    score: ``naive``: ``s = 0`` when ``iou >= iou_threshold``; ``linear``: ``s *= 1 - iou`` when
    ``iou >= iou_threshold``; ``gaussian``: ``s *= exp(-iou^2 / sigma)``. (mmcv's kernels compare with ``>=``;
    the spec's summary writes ``>``, which only differs at exact equality; we follow mmcv.) After each decay a box
    whose score is ``< min_score`` is discarded (so, as in mmcv, the first selected box is kept whatever its
    score); a decayed score that becomes NaN (an infinite score times 0) discards the box too. Thresholds are
    rounded to the compute type (float32, float64 for float64 input), as mmcv's float arguments are.

    Returns:
        ``(dets[M, 5], keep int64[M])``: ``dets`` rows ``(x1, y1, x2, y2, decayed score)`` in selection order,
        ``keep`` the original indices.

    ONNX: an ONNX ``Loop`` over the selections (ArgMax, IoU against the rest, decay, compaction by mask).
    """
    if torch.jit.is_scripting():
        r = torch.ops.fastops.soft_nms(boxes, scores, iou_threshold, sigma, min_score, method)
        return r[0], r[1]
    return _soft_nms(boxes, scores, iou_threshold, sigma, min_score, method, impl)


def _soft_nms(boxes, scores, iou_threshold, sigma, min_score, method, impl):
    leaf = _fx_leaf("soft_nms", (boxes, scores, iou_threshold, sigma, min_score, method, impl))
    if leaf is not None:
        return leaf
    boxes, scores = _prepare(boxes, scores)
    _check_boxes_scores(boxes, scores)
    ithr = _threshold("iou_threshold", iou_threshold)
    sig = _threshold("sigma", sigma)
    mins = _threshold("min_score", min_score)
    if method not in _reg.SOFT_METHODS:
        raise NmsInputError(f"method must be one of {tuple(_reg.SOFT_METHODS)}, got {method!r}")
    if method == "gaussian" and not sig > 0:
        raise NmsInputError(f"sigma must be > 0 for method='gaussian', got {sigma}")
    args = (boxes, scores, ithr, sig, mins, method)
    return tuple(dispatch("soft_nms", impl, boxes.device,
                          cpp=lambda: torch.ops.fastops.soft_nms(*args),
                          reference=lambda: reference_module("nms").soft_nms(*args)))


_PUBLIC = {"nms": nms, "batched_nms": batched_nms, "multiclass_nms": multiclass_nms, "fast_nms": fast_nms,
           "soft_nms": soft_nms}
for _fn in _PUBLIC:
    torch.fx.wrap(_fn)
