"""Keypoint R-CNN (roi_heatmaps_to_keypoints): what every backend shares (the fake kernel of the compiled op and
of its `_triton` twin, autocast)."""
import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)
from fastops.registrations import register_fakes, register_float32_autocast


def heatmaps_to_keypoints_fake(maps, rois):
    R, K = maps.shape[0], maps.shape[1]
    return maps.new_empty((R, K, 3), dtype=torch.float32), maps.new_empty((R, K), dtype=torch.float32)


FAKES = {"roi_heatmaps_to_keypoints": heatmaps_to_keypoints_fake}

register_fakes(FAKES)

# Autocast (CPU and CUDA): float16/bfloat16 maps and RoIs (mixed dtypes accepted) are upsampled in float32, as
# fastops.ops.keypoint_rcnn does for every impl; the outputs are float32 (as torchvision's).
AUTOCAST_FLOAT32 = ("roi_heatmaps_to_keypoints",)
register_float32_autocast(AUTOCAST_FLOAT32)


# ---- ONNX: the bicubic upsampling as gathers of 4 taps per axis, padded to the largest RoI (standard ops) ----------
# Every RoI's map is evaluated on a common [max ceil(h), max ceil(w)] grid (positions past the RoI's own size are
# -inf, so they never win the argmax and the flat first-maximum order among the RoI's own pixels is the kernel's),
# with ATen's taps, weights and evaluation order of its baseline (unfused) CPU kernel: x first (sum over the 4
# columns of every input row), then y. R stays dynamic; no Loop. Memory: R x K x max h x max w values.

ONNX_OPSET = 16  # GatherElements, Shape(start, end), Where, Range


def _cubic_axis(o, n_in, n_out, calc):
    """The 4 tap indices (int64) and weights (calc's dtype) of every output position 0..max(n_out)-1 for each RoI:
    n_in an int64 [1] input size, n_out int64 [R] output sizes; returns (idx list of [R, M], w list of [R, M],
    positions [M] int64, M as int64 [1])."""
    from fastops.registrations._onnx_ops import DOUBLE, INT64

    def c(v):
        return o.CastLike(o.const([v], torch.float64), calc)

    m = o.ReduceMax(o.Concat(n_out, o.const([1]), axis=0), keepdims=1)  # >= 1 also for R = 0
    pos = o.Range(o.const(0), o.Squeeze(m, o.const([0])), o.const(1))  # [M]
    fin = o.CastLike(n_in, calc)
    scale = o.Unsqueeze(o.Div(fin, o.CastLike(n_out, calc)), o.const([1]))  # [R, 1]
    real = o.Add(o.Mul(scale, o.Add(o.CastLike(pos, calc), c(0.5))), c(-0.5))  # [R, M], two roundings
    last = o.Sub(fin, c(1.0))
    i0 = o.Min(o.Floor(real), last)
    t = o.Min(o.Max(o.Sub(real, i0), c(0.0)), c(1.0))
    td = o.Cast(t, to=DOUBLE)
    one = o.const([1.0], torch.float64)
    t2 = o.CastLike(o.Sub(one, td), calc)  # `1.0 - t` and `x + 1.0` are double expressions in ATen
    tp1 = o.CastLike(o.Add(td, one), calc)
    t2p1 = o.CastLike(o.Add(o.Cast(t2, to=DOUBLE), one), calc)

    def cubic1(x):  # ((A + 2) x - (A + 3)) x x + 1, A = -0.75
        return o.Add(o.Mul(o.Mul(o.Sub(o.Mul(c(1.25), x), c(2.25)), x), x), c(1.0))

    def cubic2(x):  # ((A x - 5A) x + 8A) x - 4A
        return o.Add(o.Mul(o.Add(o.Mul(o.Add(o.Mul(c(-0.75), x), c(3.75)), x), c(-6.0)), x), c(3.0))

    weights = [cubic2(tp1), cubic1(t), cubic1(t2), cubic2(t2p1)]
    base = o.Cast(i0, to=INT64)
    lim = o.Sub(n_in, o.const([1]))
    idx = [o.Min(o.Max(o.Add(base, o.const([j - 1])), o.const([0])), lim) for j in range(4)]
    return idx, weights, pos, m


def _taps4(o, v, w):
    """(v0 w0 + v1 w1) + v2 w2 + v3 w3: ATen's baseline kernel order."""
    return o.Add(o.Add(o.Add(o.Mul(v[0], w[0]), o.Mul(v[1], w[1])), o.Mul(v[2], w[2])), o.Mul(v[3], w[3]))


def heatmaps_to_keypoints_graph(o, maps, rois):
    """roi_heatmaps_to_keypoints as ONNX ops: maps [R, K, H, W] (float32/64), rois [R, 4] -> (keypoints [R, K, 3],
    scores [R, K]) float32."""
    from fastops.registrations._onnx_ops import FLOAT, INT64

    def col(k):
        return o.Gather(rois, o.const(k), axis=1)  # [R]

    one = o.CastLike(o.const([1.0], torch.float32), rois)
    w = o.Max(o.Sub(col(2), col(0)), one)
    h = o.Max(o.Sub(col(3), col(1)), one)
    wc, hc = o.Ceil(w), o.Ceil(h)
    rw, rh = o.Cast(wc, to=INT64), o.Cast(hc, to=INT64)
    H, W = o.Shape(maps, start=2, end=3), o.Shape(maps, start=3, end=4)
    ix, wx, px, mw = _cubic_axis(o, W, rw, maps)
    iy, wy, py, mh = _cubic_axis(o, H, rh, maps)
    lead = o.Shape(maps, start=0, end=3)  # [R, K, H]
    # x: rows [R, K, H, MW]
    xshape = o.Concat(lead, mw, axis=0)
    xv = [o.GatherElements(maps, o.Expand(o.Unsqueeze(i, o.const([1, 2])), xshape), axis=3) for i in ix]
    rows = _taps4(o, xv, [o.Unsqueeze(v, o.const([1, 2])) for v in wx])
    # y: [R, K, MH, MW]
    yshape = o.Concat(o.Shape(maps, start=0, end=2), mh, mw, axis=0)
    yv = [o.GatherElements(rows, o.Expand(o.Unsqueeze(i, o.const([1, 3])), yshape), axis=2) for i in iy]
    up = _taps4(o, yv, [o.Unsqueeze(v, o.const([1, 3])) for v in wy])
    inside = o.And(o.Unsqueeze(o.Less(o.Unsqueeze(py, o.const([0])), o.Unsqueeze(rh, o.const([1]))), o.const([1, 3])),
                   o.Unsqueeze(o.Less(o.Unsqueeze(px, o.const([0])), o.Unsqueeze(rw, o.const([1]))), o.const([1, 2])))
    up = o.Where(inside, up, o.CastLike(o.const([float("-inf")], torch.float32), up))
    flat = o.Reshape(up, o.Concat(o.Shape(maps, start=0, end=2), o.Mul(mh, mw), axis=0))  # no -1: R may be 0
    pos = o.ArgMax(flat, axis=2, keepdims=1, select_last_index=0)  # [R, K, 1]: the first maximum
    scores = o.Cast(o.Squeeze(o.GatherElements(flat, pos, axis=2), o.const([2])), to=FLOAT)
    pos = o.Squeeze(pos, o.const([2]))
    xi, yi = o.Mod(pos, mw), o.Div(pos, mw)
    half = o.const([0.5], torch.float32)

    def coord(d, side, ceil_side, off):  # (d + 0.5) * (side / ceil(side)) + offset, float32
        corr = o.Unsqueeze(o.Cast(o.Div(side, ceil_side), to=FLOAT), o.const([1]))
        return o.Add(o.Mul(o.Add(o.Cast(d, to=FLOAT), half), corr), o.Unsqueeze(o.Cast(off, to=FLOAT), o.const([1])))

    x = coord(xi, w, wc, col(0))
    y = coord(yi, h, hc, col(1))
    ones = o.Expand(o.const([1.0], torch.float32), o.Shape(x))
    last = o.const([2])
    kps = o.Concat(o.Unsqueeze(x, last), o.Unsqueeze(y, last), o.Unsqueeze(ones, last), axis=2)
    return kps, scores


def _heatmaps_symbolic(g, maps, rois):
    from fastops.registrations._onnx_ops import TorchScriptOps

    return heatmaps_to_keypoints_graph(TorchScriptOps(g), maps, rois)


torch.onnx.register_custom_op_symbolic("fastops::roi_heatmaps_to_keypoints", _heatmaps_symbolic, ONNX_OPSET)


def onnx_translations():
    """{op: translation} for the dynamo exporter (collected by fastops.onnx.translations())."""
    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat

    from fastops.registrations._onnx_ops import OnnxscriptOps

    def roi_heatmaps_to_keypoints(maps: TFloat, rois: TFloat):
        return heatmaps_to_keypoints_graph(OnnxscriptOps(), maps, rois)

    return {torch.ops.fastops.roi_heatmaps_to_keypoints.default: roi_heatmaps_to_keypoints}
