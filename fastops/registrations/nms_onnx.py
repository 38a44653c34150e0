"""ONNX export of the NMS family to standard ONNX operators (opset 18; no custom domain).

Each decomposition is written once against a tiny builder (`_Builder`) that emits nodes either through the dynamo
exporter's onnxscript tracer (`onnx_translations()`, collected by fastops/onnx.py) or through the TorchScript
exporter's graph context (symbolics registered at import, `dynamo=False`).

  nms            NonMaxSuppression (one batch, one class; center_point_box=0)
  batched_nms    Unique(idxs) -> one NMS class per category value (scores of other categories masked to -inf,
                 score_threshold -inf), then the survivors by descending score (TopK; ties: lower index)
  multiclass_nms TopK per class for pre_nms_top_k, NonMaxSuppression with score_threshold over [1, C, N] (shared
                 boxes) or [C, 1, N] with boxes [C, N, 4] (per-class boxes: one ONNX batch per class), then TopK by
                 score (ties: lower box index, then lower class) for max_det, Pad for pad=True
  fast_nms       YOLACT's own decomposition: TopK per class, IoU matrix, upper-triangular ReduceMax, TopK

Rules and differences from eager (docs/nms.md, "ONNX"): NonMaxSuppression suppresses when IoU > threshold, as
torchvision does; onnxruntime compares the float32 IoU with a float32 threshold where torchvision compares with the
double one, so the threshold is exported floored to float32 (the same outcome for every IoU). NonMaxSuppression
computes in float32 (float64 boxes are cast). onnxruntime never suppresses with a zero-area box and orders NaN
scores arbitrarily; eager (torchvision) gives zero-area boxes IoU 0 or NaN (the same unless iou_threshold < 0) and
takes NaN scores first. batched_nms drops boxes whose score is -inf or NaN (score_threshold -inf).
  soft_nms       an ONNX Loop (one selection per iteration, state: decayed scores and alive flags)
"""
from __future__ import annotations

import math

import numpy as np
import torch

_INT64_MAX = 2**63 - 1
_FLOAT, _DOUBLE, _INT64 = 1, 11, 7  # onnx.TensorProto data types
_MULTI_OUT = {"TopK": 2, "Unique": 4}


def floor_to_float32(t: float) -> float:
    """Largest float32 <= t: `float32 iou > it` <=> `iou > t` in double (torchvision's comparison)."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf), dtype=np.float32)
    return float(f)


class _Builder:
    """`b.Op(*inputs, attr=value)` emits ONNX node Op; `b.f32(x)` / `b.i64(x)` are typed constants."""

    def __init__(self, emit, const):
        self._emit, self._const = emit, const

    def __getattr__(self, name):
        if not name[:1].isupper():
            raise AttributeError(name)
        return lambda *args, **attrs: self._emit(name, args, attrs, _MULTI_OUT.get(name, 1))

    def f32(self, x):
        return self._const(np.asarray(x, dtype=np.float32))

    def f64(self, x):
        return self._const(np.asarray(x, dtype=np.float64))

    def i64(self, x):
        return self._const(np.asarray(x, dtype=np.int64))


def _dynamo_builder():
    from onnxscript import ir
    from onnxscript import opset18 as op

    def emit(name, args, attrs, n_out):
        return getattr(op, name)(*args, **attrs)

    return _Builder(emit, lambda a: op.Constant(value=ir.tensor(a)))


def _ts_builder(g):
    def emit(name, args, attrs, n_out):
        kw = {}
        for k, v in attrs.items():
            suffix = "f" if isinstance(v, float) else "s" if isinstance(v, str) else "i"
            kw[f"{k}_{suffix}"] = v
        return g.op(name, *args, outputs=n_out, **kw)

    return _Builder(emit, lambda a: g.op("Constant", value_t=torch.from_numpy(a.copy())))


# ---- decompositions ----------------------------------------------------------------------------------------------

def _len(b, x):
    """Shape(x)[0] as a 1-D int64 tensor of one element."""
    return b.Slice(b.Shape(x), b.i64([0]), b.i64([1]))


def _desc_order(b, values, k=None):
    """Positions of `values` by descending value, ties by lower position (TopK), the first k (all when None)."""
    return b.TopK(values, k if k is not None else _len(b, values), axis=0, largest=1, sorted=1)[1]


def _ascending_unique(b, idx, size):
    """The distinct int64 values of `idx` (all < size) in ascending order: scatter flags, NonZero."""
    flags = b.ScatterElements(b.ConstantOfShape(size), idx, b.Expand(b.f32([1.0]), b.Shape(idx)), axis=0)
    return b.Reshape(b.NonZero(flags), b.i64([-1]))


def nms_graph(b, boxes, scores, iou_threshold):
    bx = b.Unsqueeze(b.Cast(boxes, to=_FLOAT), b.i64([0]))
    sc = b.Unsqueeze(b.Cast(scores, to=_FLOAT), b.i64([0, 1]))
    sel = b.NonMaxSuppression(bx, sc, b.i64([_INT64_MAX]), b.f32([floor_to_float32(iou_threshold)]),
                              center_point_box=0)
    return b.Reshape(b.Slice(sel, b.i64([2]), b.i64([3]), b.i64([1])), b.i64([-1]))


def batched_nms_graph(b, boxes, scores, idxs, iou_threshold):
    cats, _, inv, _ = b.Unique(b.Cast(idxs, to=_INT64), sorted=1)
    ncls = _len(b, cats)
    cls = b.Range(b.i64(0), b.Squeeze(ncls, b.i64([0])), b.i64(1))
    s = b.Cast(scores, to=_FLOAT)
    mine = b.Equal(b.Unsqueeze(cls, b.i64([1])), b.Unsqueeze(inv, b.i64([0])))           # [C, N]
    masked = b.Where(mine, b.Unsqueeze(s, b.i64([0])), b.f32(-math.inf))
    bx = b.Unsqueeze(b.Cast(boxes, to=_FLOAT), b.i64([0]))
    sel = b.NonMaxSuppression(bx, b.Unsqueeze(masked, b.i64([0])), b.i64([_INT64_MAX]),
                              b.f32([floor_to_float32(iou_threshold)]), b.f32([-math.inf]), center_point_box=0)
    kept = b.Reshape(b.Slice(sel, b.i64([2]), b.i64([3]), b.i64([1])), b.i64([-1]))
    asc = _ascending_unique(b, kept, _len(b, s))
    return b.Gather(asc, _desc_order(b, b.Gather(s, asc)))


def multiclass_nms_graph(b, boxes, scores, score_threshold, iou_threshold, pre_nms_top_k, max_det, pad, per_class):
    s = b.Cast(scores, to=_FLOAT)                                      # [N, C]
    st = b.Transpose(s, perm=[1, 0])                                   # [C, N]
    shape = b.Shape(s)
    n = b.Slice(shape, b.i64([0]), b.i64([1]))
    c = b.Slice(shape, b.i64([1]), b.i64([2]))
    if pre_nms_top_k > 0:  # per class, the pre_nms_top_k highest (ties: lower index) stay candidates
        k = b.Min(n, b.i64([pre_nms_top_k]))
        top = b.TopK(st, k, axis=1, largest=1, sorted=1)[1]
        flag = b.ScatterElements(b.ConstantOfShape(b.Shape(st)), top, b.Expand(b.f32([1.0]), b.Shape(top)), axis=1)
        st = b.Where(b.Cast(flag, to=9), st, b.f32(-math.inf))
    thr = b.f32([floor_to_float32(iou_threshold)])
    # `score > score_threshold` in float32, as eager compares in the scores' dtype
    sthr = b.f32([float(np.float32(score_threshold))])
    if per_class:  # one ONNX batch per class: boxes [C, N, 4], scores [C, 1, N]
        bx = b.Transpose(b.Cast(boxes, to=_FLOAT), perm=[1, 0, 2])
        sel = b.NonMaxSuppression(bx, b.Unsqueeze(st, b.i64([1])), b.i64([_INT64_MAX]), thr, sthr,
                                  center_point_box=0)
        cls_col = b.Slice(sel, b.i64([0]), b.i64([1]), b.i64([1]))
    else:
        bx = b.Unsqueeze(b.Cast(boxes, to=_FLOAT), b.i64([0]))
        sel = b.NonMaxSuppression(bx, b.Unsqueeze(st, b.i64([0])), b.i64([_INT64_MAX]), thr, sthr,
                                  center_point_box=0)
        cls_col = b.Slice(sel, b.i64([1]), b.i64([2]), b.i64([1]))
    box_col = b.Slice(sel, b.i64([2]), b.i64([3]), b.i64([1]))
    key = b.Reshape(b.Add(b.Mul(box_col, c), cls_col), b.i64([-1]))     # flat (box, class) position
    asc = _ascending_unique(b, key, b.Mul(n, c))
    flat_scores = b.Reshape(scores, b.i64([-1]))
    total = _len(b, asc)
    m = b.Min(total, b.i64([max_det])) if max_det > 0 else total
    keys = b.Gather(asc, _desc_order(b, b.Gather(b.Reshape(s, b.i64([-1])), asc), m))
    i, lab = b.Div(keys, c), b.Mod(keys, c)
    if per_class:
        out_boxes = b.Gather(b.Reshape(boxes, b.i64([-1, 4])), keys, axis=0)
    else:
        out_boxes = b.Gather(boxes, i, axis=0)
    outs = [out_boxes, b.Gather(flat_scores, keys), lab, i]
    if not pad:
        return tuple(outs)
    rest = b.Sub(b.i64([max_det]), m)
    zero = b.i64([0])
    outs[0] = b.Pad(outs[0], b.Concat(zero, zero, rest, zero, axis=0))
    outs[1] = b.Pad(outs[1], b.Concat(zero, rest, axis=0))
    outs[2] = b.Pad(outs[2], b.Concat(zero, rest, axis=0), b.i64(-1))
    outs[3] = b.Pad(outs[3], b.Concat(zero, rest, axis=0), b.i64(-1))
    return tuple(outs) + (b.Squeeze(m, b.i64([0])),)


def _iou_matrix(b, bx):
    """YOLACT's jaccard(bx, bx) for [..., k, 4] in the same operation order: [..., k, k]."""
    def col(j):
        return b.Squeeze(b.Slice(bx, b.i64([j]), b.i64([j + 1]), b.i64([-1])), b.i64([-1]))
    x1, y1, x2, y2 = col(0), col(1), col(2), col(3)

    def rows(t):
        return b.Unsqueeze(t, b.i64([-1]))

    def cols(t):
        return b.Unsqueeze(t, b.i64([-2]))
    zero = b.CastLike(b.f32(0.0), bx)
    w = b.Max(b.Sub(b.Min(rows(x2), cols(x2)), b.Max(rows(x1), cols(x1))), zero)
    h = b.Max(b.Sub(b.Min(rows(y2), cols(y2)), b.Max(rows(y1), cols(y1))), zero)
    inter = b.Mul(w, h)
    area = b.Mul(b.Sub(x2, x1), b.Sub(y2, y1))
    return b.Div(inter, b.Sub(b.Add(rows(area), cols(area)), inter))


def _above_diagonal_max(b, iou):
    """Column max of the strictly upper triangle (row i < column j), 0 elsewhere, NaN kept: [..., k]."""
    shape = b.Shape(iou)
    kk = b.Slice(shape, b.i64([-1]), b.i64([_INT64_MAX]))
    r = b.Range(b.i64(0), b.Squeeze(kk, b.i64([0])), b.i64(1))
    upper = b.Less(b.Unsqueeze(r, b.i64([1])), b.Unsqueeze(r, b.i64([0])))   # [k, k]: i < j
    return b.ReduceMax(b.Where(upper, iou, b.CastLike(b.f32(0.0), iou)), b.i64([-2]), keepdims=0)


def fast_nms_graph(b, boxes, scores, iou_threshold, top_k, max_det, score_threshold, cross_class, compute):
    bx = b.Cast(boxes, to=compute)
    conf = b.ReduceMax(scores, b.i64([0]), keepdims=0)                              # [N]
    det = b.Reshape(b.NonZero(b.Greater(conf, b.CastLike(b.f32(score_threshold), scores))), b.i64([-1]))
    sc = b.Cast(b.Gather(scores, det, axis=1), to=compute)                          # [C, P]
    bxp = b.Gather(bx, det, axis=0)                                                 # [P, 4]
    p = _len(b, det)
    k = b.Min(p, b.i64([top_k])) if top_k > 0 else p
    thr = b.f64(iou_threshold) if compute == _DOUBLE else b.f32(iou_threshold)  # YOLACT: in the IoU's dtype
    if cross_class:
        s = b.ReduceMax(sc, b.i64([0]), keepdims=0)                                 # [P]
        classes = b.ArgMax(sc, axis=0, keepdims=0, select_last_index=0)
        order = b.TopK(s, k, axis=0, largest=1, sorted=1)[1]
        iou = _iou_matrix(b, b.Unsqueeze(b.Gather(bxp, order, axis=0), b.i64([0])))
        keep = b.LessOrEqual(b.Squeeze(_above_diagonal_max(b, iou), b.i64([0])), thr)
        sel = b.Compress(order, keep, axis=0)
        if max_det > 0:
            sel = b.Slice(sel, b.i64([0]), b.i64([max_det]), b.i64([0]))
        lab = b.Gather(classes, sel)
        d = b.Gather(det, sel)
    else:
        top = b.TopK(sc, k, axis=1, largest=1, sorted=1)[1]                          # [C, k]
        iou = _iou_matrix(b, b.Gather(bxp, top, axis=0))                               # [C, k, 4] -> [C, k, k]
        keep = b.Reshape(b.LessOrEqual(_above_diagonal_max(b, iou), thr), b.i64([-1]))
        c = b.Slice(b.Shape(sc), b.i64([0]), b.i64([1]))
        lab_all = b.Reshape(b.Expand(b.Unsqueeze(b.Range(b.i64(0), b.Squeeze(c, b.i64([0])), b.i64(1)),
                                                 b.i64([1])), b.Shape(top)), b.i64([-1]))
        ks = b.Compress(b.Reshape(b.GatherElements(sc, top, axis=1), b.i64([-1])), keep, axis=0)
        kpos = b.Compress(b.Reshape(top, b.i64([-1])), keep, axis=0)
        klab = b.Compress(lab_all, keep, axis=0)
        total = _len(b, ks)
        m = b.Min(total, b.i64([max_det])) if max_det > 0 else total
        o = _desc_order(b, ks, m)
        lab, d = b.Gather(klab, o), b.Gather(det, b.Gather(kpos, o))
    out_scores = b.GatherND(scores, b.Concat(b.Unsqueeze(lab, b.i64([1])), b.Unsqueeze(d, b.i64([1])), axis=1))
    return d, lab, out_scores


def soft_nms_graph(b, boxes, scores, iou_threshold, sigma, min_score, method, compute, loop):
    """mmcv soft-NMS as an ONNX Loop: each iteration takes the highest alive score (ArgMax: ties lower index),
    decays the others by their IoU with it and drops those below min_score; scan outputs are the selections.
    `loop(M, cond, states, body, n_scan)` builds the Loop node with the exporter's own subgraph machinery."""
    cf = b.f64 if compute == _DOUBLE else b.f32
    bx = b.Cast(boxes, to=compute)
    s0 = b.Cast(scores, to=compute)
    alive0 = b.Not(b.IsNaN(s0))                                             # NaN scores are dropped up front
    area = b.Mul(b.Sub(_col(b, bx, 2), _col(b, bx, 0)), b.Sub(_col(b, bx, 3), _col(b, bx, 1)))
    n = _len(b, s0)
    cond0 = b.Greater(b.ReduceSum(b.Cast(alive0, to=_INT64), b.i64([0]), keepdims=0), b.i64(0))

    def body(bb, it, cond, s, alive, bxs, ar):
        cfb = bb.f64 if compute == _DOUBLE else bb.f32
        j = bb.ArgMax(bb.Where(alive, s, cfb(-math.inf)), axis=0, keepdims=1, select_last_index=0)   # [1]
        sj = bb.Gather(s, j)
        bj = bb.Gather(bxs, j, axis=0)                                                                   # [1, 4]
        aj = bb.Gather(ar, j)
        zero = cfb(0.0)
        w = bb.Max(zero, bb.Sub(bb.Min(_col(bb, bj, 2), _col(bb, bxs, 2)), bb.Max(_col(bb, bj, 0), _col(bb, bxs, 0))))
        h = bb.Max(zero, bb.Sub(bb.Min(_col(bb, bj, 3), _col(bb, bxs, 3)), bb.Max(_col(bb, bj, 1), _col(bb, bxs, 1))))
        inter = bb.Mul(w, h)
        o = bb.Div(inter, bb.Sub(bb.Add(aj, ar), inter))
        o = bb.Where(bb.IsNaN(o), zero, o)                                  # NaN IoU: no interaction
        one = cfb(1.0)
        hit = bb.GreaterOrEqual(o, cfb(iou_threshold))
        if method == "naive":
            wt = bb.Where(hit, zero, one)
        elif method == "linear":
            wt = bb.Where(hit, bb.Sub(one, o), one)
        else:
            wt = bb.Exp(bb.Div(bb.Neg(bb.Mul(o, o)), cfb(sigma)))
        ns = bb.Mul(s, wt)
        n_b = bb.Shape(s)
        others = bb.Not(bb.Equal(bb.Range(bb.i64(0), bb.Squeeze(n_b, bb.i64([0])), bb.i64(1)), j))
        alive2 = bb.And(bb.And(alive, others), bb.GreaterOrEqual(ns, cfb(min_score)))  # NaN (inf * 0) drops
        cond2 = bb.Greater(bb.ReduceSum(bb.Cast(alive2, to=_INT64), bb.i64([0]), keepdims=0), bb.i64(0))
        return cond2, ns, alive2, bxs, ar, j, sj

    outs = loop(b.Squeeze(n, b.i64([0])), cond0, [s0, alive0, bx, area], body, 2)
    keep = b.Reshape(outs[4], b.i64([-1]))
    dscore = b.CastLike(b.Reshape(outs[5], b.i64([-1, 1])), boxes)
    dets = b.Concat(b.Gather(boxes, keep, axis=0), dscore, axis=1)
    return dets, keep


def _col(b, t, k):
    """Column k of [..., 4] as [...]."""
    return b.Squeeze(b.Slice(t, b.i64([k]), b.i64([k + 1]), b.i64([-1])), b.i64([-1]))


# ---- registration -------------------------------------------------------------------------------------------------

def _compute_type(v) -> int:
    """ONNX type of the IoU arithmetic: float64 for float64 boxes, else float32 (as eager)."""
    dtype = getattr(v, "dtype", None)  # onnxscript value (dynamo exporter)
    if dtype is not None:
        return _DOUBLE if int(dtype) == _DOUBLE else _FLOAT
    try:
        return _DOUBLE if v.type().scalarType() == "Double" else _FLOAT  # TorchScript value
    except RuntimeError:
        return _FLOAT


def onnx_translations():
    """{torch.ops.fastops.<op>.default: function} for the dynamo exporter (custom_translation_table)."""
    from onnxscript import FLOAT, INT64  # noqa: F401  (annotations: tensors are inputs, Python types attributes)

    def nms(boxes, scores, iou_threshold: float):
        return nms_graph(_dynamo_builder(), boxes, scores, iou_threshold)

    def batched_nms(boxes, scores, idxs, iou_threshold: float):
        return batched_nms_graph(_dynamo_builder(), boxes, scores, idxs, iou_threshold)

    def multiclass_nms(boxes, scores, score_threshold: float, iou_threshold: float, pre_nms_top_k: int,
                       max_det: int, pad: bool):
        per_class = len(boxes.shape) == 3
        out = multiclass_nms_graph(_dynamo_builder(), boxes, scores, score_threshold, iou_threshold, pre_nms_top_k,
                                   max_det, pad, per_class)
        if not pad:  # the op always has five outputs; num_valid = M
            b = _dynamo_builder()
            out = out + (b.Squeeze(_len(b, out[3]), b.i64([0])),)
        return out

    def fast_nms(boxes, scores, iou_threshold: float, top_k: int, max_det: int, score_threshold: float,
                 cross_class: bool):
        return fast_nms_graph(_dynamo_builder(), boxes, scores, iou_threshold, top_k, max_det, score_threshold,
                              cross_class, _compute_type(boxes))

    def soft_nms(boxes, scores, iou_threshold: float, sigma: float, min_score: float, method: str):
        return soft_nms_graph(_dynamo_builder(), boxes, scores, iou_threshold, sigma, min_score, method,
                              _compute_type(boxes), _dynamo_loop)

    ops = torch.ops.fastops
    return {ops.nms.default: nms, ops.batched_nms.default: batched_nms, ops.multiclass_nms.default: multiclass_nms,
            ops.fast_nms.default: fast_nms, ops.soft_nms.default: soft_nms}


def _dynamo_loop(m, cond, states, body, n_scan):
    """An ONNX Loop node in the dynamo exporter's graph: the body is an onnx_ir graph built with a tape (states
    are loop-carried, so the body captures nothing from the outer graph)."""
    import onnx
    from onnxscript import ir
    from onnxscript._internal import evaluator

    tape = ir.tape.Tape()

    def emit(name, args, attrs, n_out):
        if n_out == 1:
            return tape.op(name, list(args), attrs or None)
        return tape.op_multi_out(name, list(args), attrs or None, num_outputs=n_out)

    bb = _Builder(emit, lambda a: tape.op("Constant", [], {"value": ir.tensor(a)}))
    it = ir.Value(name="soft_nms_iter", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    c = ir.Value(name="soft_nms_cond", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
    ins = [ir.Value(name=f"soft_nms_state{k}", type=v.type, shape=v.shape) for k, v in enumerate(states)]
    outs = body(bb, it, c, *ins)
    for k, (v, ref) in enumerate(zip(outs, [c] + ins)):
        v.type, v.shape, v.name = ref.type, ref.shape, f"soft_nms_out{k}"
    for k, v in enumerate(outs[1 + len(ins):]):
        v.name = f"soft_nms_scan{k}"
    outs[-2].type = ir.TensorType(ir.DataType.INT64)
    outs[-1].type = ins[0].type
    graph = ir.Graph([it, c, *ins], list(outs), nodes=tape.nodes, opset_imports={"": 18}, name="soft_nms_body")
    sig = ir.schemas.OpSignature.from_op_schema(onnx.defs.get_schema("Loop", 18))
    return evaluator.default()._call_op(sig, {"M": m, "cond": cond, "v_initial": list(states)}, {"body": graph},
                                        len(states) + n_scan)


def _register_torchscript_symbolics(opset: int = 18) -> None:
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    @parse_args("v", "v", "f")
    def nms(g, boxes, scores, iou_threshold):
        return nms_graph(_ts_builder(g), boxes, scores, iou_threshold)

    @parse_args("v", "v", "v", "f")
    def batched_nms(g, boxes, scores, idxs, iou_threshold):
        return batched_nms_graph(_ts_builder(g), boxes, scores, idxs, iou_threshold)

    @parse_args("v", "v", "f", "f", "i", "i", "b")
    def multiclass_nms(g, boxes, scores, score_threshold, iou_threshold, pre_nms_top_k, max_det, pad):
        b = _ts_builder(g)
        per_class = boxes.type().dim() == 3
        out = multiclass_nms_graph(b, boxes, scores, score_threshold, iou_threshold, pre_nms_top_k, max_det, pad,
                                   per_class)
        if not pad:
            out = out + (b.Squeeze(_len(b, out[3]), b.i64([0])),)
        return out

    @parse_args("v", "v", "f", "i", "i", "f", "b")
    def fast_nms(g, boxes, scores, iou_threshold, top_k, max_det, score_threshold, cross_class):
        return fast_nms_graph(_ts_builder(g), boxes, scores, iou_threshold, top_k, max_det, score_threshold,
                              cross_class, _compute_type(boxes))

    @parse_args("v", "v", "f", "f", "f", "s")
    def soft_nms(g, boxes, scores, iou_threshold, sigma, min_score, method):
        from torch.onnx._internal.torchscript_exporter import jit_utils, utils

        def loop(m, cond, states, body, n_scan):
            outs, (ctx,), _ = jit_utils.add_op_with_blocks(g, "Loop", m, cond, *states,
                                                           outputs=len(states) + n_scan, n_blocks=1)
            blk = ctx.block
            ins = [utils._add_input_to_block(blk) for _ in range(2 + len(states))]
            for v in body(_ts_builder(ctx), *ins):
                utils._add_output_to_block(blk, v)
            return outs

        return soft_nms_graph(_ts_builder(g), boxes, scores, iou_threshold, sigma, min_score, method,
                              _compute_type(boxes), loop)

    for name, fn in (("nms", nms), ("batched_nms", batched_nms), ("multiclass_nms", multiclass_nms),
                     ("fast_nms", fast_nms), ("soft_nms", soft_nms)):
        register_custom_op_symbolic(f"fastops::{name}", fn, opset)


_register_torchscript_symbolics()
