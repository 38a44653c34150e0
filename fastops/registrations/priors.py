"""Prior-box family (prior_nms, match_priors): what every backend shares.

Fake kernels (data-dependent output sizes of the unpadded ``prior_nms`` as unbacked symbols), autocast (float16 /
bfloat16 inputs computed in float32) and the match modes mirrored from csrc/priors/priors.h (tests/test_priors.py
compares them with ``torch.ops.fastops._priors_constants()``). No op of the family has a gradient: both produce
targets / detections (the network's outputs are detached by the callers).
"""
import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)

MODES = {"ssd": 0, "yolact": 1}  # kModeSsd, kModeYolact


def prior_nms_fake(loc, scores, landms, priors, var0, var1, scale_x, scale_y, score_threshold, iou_threshold,
                   pre_nms_top_k, max_det, pad, plus_one):
    B, nl = loc.size(0), landms.size(2)
    counts = loc.new_empty((B,), dtype=torch.int64)
    if pad:
        return loc.new_empty((B, max_det, 4)), loc.new_empty((B, max_det)), loc.new_empty((B, max_det, nl)), counts
    m = torch.library.get_ctx().new_dynamic_size()
    return loc.new_empty((m, 4)), loc.new_empty((m,)), loc.new_empty((m, nl)), counts


def match_priors_fake(gt_boxes, gt_labels, gt_landms, counts, priors, pos_threshold, neg_threshold, var0, var1,
                      mode, hard_threshold):
    B, P, nl = gt_boxes.size(0), priors.size(0), gt_landms.size(2)
    return (gt_boxes.new_empty((B, P, 4)), gt_labels.new_empty((B, P)), gt_boxes.new_empty((B, P, nl)),
            gt_boxes.new_empty((B, P)), gt_labels.new_empty((B, P)))


FAKES = {"prior_nms": prior_nms_fake, "match_priors": match_priors_fake}
for _name, _fake in FAKES.items():
    torch.library.register_fake(f"fastops::{_name}")(_fake)

# Autocast (CPU and CUDA): float16/bfloat16 boxes are decoded / matched in float32 and the outputs are float32
# (a bfloat16 pixel coordinate is off by up to 2 px at 640; fastops.ops.priors does the same for every impl).
for _name in FAKES:
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"fastops::{_name}", _device, torch.float32)


# ---- ONNX: prior_nms as decode arithmetic + TopK + NonMaxSuppression (standard ops, opset 18) ----------------------
# match_priors (training targets) has no ONNX export: its symbolic / translation raise a clear error.

ONNX_OPSET = 18
_INT64_MAX = 2**63 - 1


def prior_nms_graph(o, loc, scores, landms, priors, v0: float, v1: float, sx: float, sy: float, score_threshold: float,
                    iou_threshold: float, top_k: int, max_det: int, pad: bool, plus_one: bool):
    """detect.py for a batch: every prior decoded (the kernels' formulas and order, in loc's dtype), `score >
    threshold` (scores' dtype), TopK per image (ties: lower prior index), non-finite boxes dropped, one
    NonMaxSuppression over the batch (ONNX batch = image) on (x1, y1, x2 + 1, y2 + 1) with the candidates' rank as
    their score (so its order is TopK's), max_det per image as its max_output_boxes_per_class; survivors sorted
    by (image, rank), then padded with ScatterND for pad=True."""
    from fastops.registrations._onnx_ops import FLOAT, INT64, is_finite
    from fastops.registrations.nms_onnx import floor_to_float32

    def c(v):
        return o.CastLike(o.const([float(v)], torch.float64), loc)

    def i64(v):
        return o.const([int(v)])

    def col(t, k, axis):
        return o.Gather(t, o.const(k), axis=axis)

    B, P = o.Shape(loc, start=0, end=1), o.Shape(loc, start=1, end=2)
    NL = o.Shape(landms, start=2, end=3)
    pcx, pcy, pw, ph = (col(priors, k, 1) for k in range(4))  # [P]
    cx = o.Add(pcx, o.Mul(o.Mul(col(loc, 0, 2), c(v0)), pw))  # [B, P]
    cy = o.Add(pcy, o.Mul(o.Mul(col(loc, 1, 2), c(v0)), ph))
    w = o.Mul(pw, o.Exp(o.Mul(col(loc, 2, 2), c(v1))))
    h = o.Mul(ph, o.Exp(o.Mul(col(loc, 3, 2), c(v1))))
    x1, y1 = o.Sub(cx, o.Div(w, c(2.0))), o.Sub(cy, o.Div(h, c(2.0)))
    last = o.const([2])
    cols = [o.Mul(x1, c(sx)), o.Mul(y1, c(sy)), o.Mul(o.Add(w, x1), c(sx)), o.Mul(o.Add(h, y1), c(sy))]
    boxes = o.Concat(*[o.Unsqueeze(v, last) for v in cols], axis=2)  # [B, P, 4]
    # landmarks: channel j is x (j even) or y of a point: (p_c + l * v0 * p_wh) * s
    parity = o.Mod(o.Range(o.const(0), o.Squeeze(NL, o.const([0])), o.const(1)), o.const(2))  # [2L]
    pc, pwh = o.Gather(priors, parity, axis=1), o.Gather(priors, o.Add(parity, o.const(2)), axis=1)  # [P, 2L]
    s = o.Where(o.Equal(parity, o.const(0)), c(sx), c(sy))
    lms = o.Mul(o.Add(pc, o.Mul(o.Mul(landms, c(v0)), pwh)), s)  # [B, P, 2L]
    # candidates: threshold, top-k, finite boxes
    neg_inf = o.CastLike(o.const([float("-inf")], torch.float64), scores)
    thr = o.CastLike(o.const([float(score_threshold)], torch.float64), scores)
    masked = o.Where(o.Greater(scores, thr), scores, neg_inf)
    k = P if top_k <= 0 else o.Min(P, i64(top_k))
    topv, topi = o.TopK(masked, k, axis=1, largest=1, sorted=1, _outputs=2)  # [B, k]
    cand = o.GatherElements(boxes, o.Expand(o.Unsqueeze(topi, last), o.Concat(B, k, i64(4), axis=0)), axis=1)
    fin = o.Equal(o.ReduceSum(o.Cast(is_finite(o, cand), to=INT64), last, keepdims=0), i64(4))
    valid = o.And(o.Greater(topv, neg_inf), fin)  # [B, k]
    kk = o.Squeeze(k, o.const([0]))
    rank = o.Cast(o.Sub(k, o.Range(o.const(0), kk, o.const(1))), to=FLOAT)  # k, k - 1, ..., 1: TopK's order
    nms_scores = o.Unsqueeze(o.Where(valid, rank, o.const([-1.0], torch.float32)), o.const([1]))  # [B, 1, k]
    if plus_one:
        cand = o.Add(cand, o.CastLike(o.const([0.0, 0.0, 1.0, 1.0], torch.float64), cand))
    nms_boxes = o.Cast(o.Where(o.Unsqueeze(valid, last), cand, c(0.0)), to=FLOAT)
    sel = o.NonMaxSuppression(nms_boxes, nms_scores, i64(max_det if max_det > 0 else _INT64_MAX),
                              o.const([floor_to_float32(iou_threshold)], torch.float32),
                              o.const([0.0], torch.float32), center_point_box=0)  # [S, 3]: (image, 0, rank)
    key = o.Reshape(o.Add(o.Mul(o.Slice(sel, i64(0), i64(1), i64(1)), k), o.Slice(sel, i64(2), i64(3), i64(1))),
                    o.const([-1]))
    flags = o.ScatterElements(o.Expand(o.const([0.0], torch.float32), o.Mul(B, k)), key,
                              o.Expand(o.const([1.0], torch.float32), o.Shape(key)), axis=0)
    keys = o.Reshape(o.NonZero(flags), o.const([-1]))  # ascending: by image, then by rank
    img = o.Div(keys, k)
    prior = o.Gather(o.Reshape(topi, o.const([-1])), keys)
    at = o.Concat(o.Unsqueeze(img, o.const([1])), o.Unsqueeze(prior, o.const([1])), axis=1)  # [M, 2]
    out = [o.GatherND(boxes, at), o.GatherND(scores, at), o.GatherND(lms, at)]  # no Reshape: 2L may be 0
    images = o.Range(o.const(0), o.Squeeze(B, o.const([0])), o.const(1))
    counts = o.ReduceSum(o.Cast(o.Equal(o.Unsqueeze(images, o.const([1])), o.Unsqueeze(img, o.const([0]))),
                                to=INT64), o.const([1]), keepdims=0)  # [B]
    if not pad:
        return out[0], out[1], out[2], counts
    starts = o.CumSum(counts, o.const(0), exclusive=1)
    m = o.Squeeze(o.Shape(keys), o.const([0]))
    within = o.Sub(o.Range(o.const(0), m, o.const(1)), o.Gather(starts, img))  # position in the image
    to = o.Concat(o.Unsqueeze(img, o.const([1])), o.Unsqueeze(within, o.const([1])), axis=1)  # [M, 2]
    zero = c(0.0)
    rows = o.Concat(B, i64(max_det), axis=0)
    return (o.ScatterND(o.Expand(zero, o.Concat(rows, i64(4), axis=0)), to, out[0]),
            o.ScatterND(o.Expand(zero, rows), to, out[1]),
            o.ScatterND(o.Expand(zero, o.Concat(rows, NL, axis=0)), to, out[2]), counts)


def _prior_nms_symbolic(g, loc, scores, landms, priors, var0, var1, scale_x, scale_y, score_threshold, iou_threshold,
                        pre_nms_top_k, max_det, pad, plus_one):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    f = [float(sh._maybe_get_const(v, "f")) for v in (var0, var1, scale_x, scale_y, score_threshold, iou_threshold)]
    n = [int(sh._maybe_get_const(v, "i")) for v in (pre_nms_top_k, max_det)]
    b = [bool(sh._maybe_get_const(v, "b")) for v in (pad, plus_one)]
    return prior_nms_graph(TorchScriptOps(g), loc, scores, landms, priors, *f, *n, *b)


def _no_onnx(name, why):
    def fail(*args, **kwargs):
        raise RuntimeError(f"fastops.{name} cannot be exported to ONNX: {why}")

    return fail


_MATCH_NO_ONNX = ("it computes training targets (the MultiBox loss's matching), not part of an inference graph; "
                  "call it outside the exported model (docs/priors.md)")
torch.onnx.register_custom_op_symbolic("fastops::prior_nms", _prior_nms_symbolic, ONNX_OPSET)
torch.onnx.register_custom_op_symbolic("fastops::match_priors", _no_onnx("match_priors", _MATCH_NO_ONNX), ONNX_OPSET)


def onnx_translations():
    """{op: translation} for the dynamo exporter (collected by fastops.onnx.translations())."""
    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat

    from fastops.registrations._onnx_ops import OnnxscriptOps

    def prior_nms(loc: TFloat, scores: TFloat, landms: TFloat, priors: TFloat, var0: float, var1: float,
                  scale_x: float, scale_y: float, score_threshold: float, iou_threshold: float, pre_nms_top_k: int,
                  max_det: int, pad: bool, plus_one: bool):
        return prior_nms_graph(OnnxscriptOps(), loc, scores, landms, priors, var0, var1, scale_x, scale_y,
                               score_threshold, iou_threshold, pre_nms_top_k, max_det, pad, plus_one)

    return {torch.ops.fastops.prior_nms.default: prior_nms,
            torch.ops.fastops.match_priors.default: _no_onnx("match_priors", _MATCH_NO_ONNX)}
