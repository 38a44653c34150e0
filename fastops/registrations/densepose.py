"""DensePose (densepose_chart_to_iuv, densepose_paste_iuv, roi_point_sample): what every backend shares.

Fake kernels (the packed chart output has a data-dependent length: an unbacked size), roi_point_sample's autograd
(one setup_context, one backward factory taking the backward op) and autocast (float32 compute).
"""
import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)

MAX_BOX_SIDE = 1 << 16  # csrc/densepose/densepose.h kMaxBoxSide


def chart_to_iuv_fake(coarse, fine, u, v, boxes):
    n = torch.library.get_ctx().new_dynamic_size()
    R = fine.size(0)
    return (fine.new_empty((n,), dtype=torch.uint8), fine.new_empty((2 * n,), dtype=torch.float32),
            boxes.new_empty((R + 1,), dtype=torch.int64), boxes.new_empty((R, 4), dtype=torch.int64))


def paste_iuv_fake(coarse, fine, u, v, boxes, scores, height, width):
    return fine.new_empty((3, height, width), dtype=torch.uint8)


def point_sample_fake(maps, roi_index, points):
    return maps.new_empty((roi_index.size(0), maps.size(1)))


def point_sample_backward_fake(grad, maps, roi_index, points):
    return maps.new_empty(maps.shape)


def point_sample_setup_context(ctx, inputs, output):
    maps, roi_index, points = inputs
    ctx.save_for_backward(maps, roi_index, points)


def point_sample_backward(backward_op):
    """The autograd backward of roi_point_sample for a given backward op (the compiled one or a Triton twin):
    gradient for the maps only (indices and points are data)."""

    def backward(ctx, grad):
        maps, roi_index, points = ctx.saved_tensors
        return backward_op(grad.contiguous(), maps, roi_index, points), None, None

    return backward


FAKES = {"densepose_chart_to_iuv": chart_to_iuv_fake, "densepose_paste_iuv": paste_iuv_fake,
         "roi_point_sample": point_sample_fake, "_roi_point_sample_backward": point_sample_backward_fake}

for _name, _fake in FAKES.items():
    torch.library.register_fake(f"fastops::{_name}")(_fake)
torch.library.register_autograd("fastops::roi_point_sample",
                                point_sample_backward(torch.ops.fastops._roi_point_sample_backward),
                                setup_context=point_sample_setup_context)

# Autocast (CPU and CUDA): float16/bfloat16 inputs are computed in float32 (roi_point_sample returns float32, as
# torchvision's roi_align computes under autocast); the chart outputs are uint8 / float32 in any case.
AUTOCAST_FLOAT32 = ("densepose_chart_to_iuv", "densepose_paste_iuv", "roi_point_sample")
for _name in AUTOCAST_FLOAT32:
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"fastops::{_name}", _device, torch.float32)


# ---- ONNX: roi_point_sample as GatherND of the 4 taps (standard ops, opset 18) --------------------------------------
# The chart ops (densepose_chart_to_iuv, densepose_paste_iuv) have no decomposition: both exporters stop with a
# RuntimeError naming the reason (docs/densepose.md, "ONNX").

ONNX_OPSET = 18


def point_sample_graph(o, maps, roi_index, points):
    """maps [R, C, Sh, Sw] sampled at points [P, 2] of RoIs roi_index [P] -> [P, C]: detectron2's taps (lo = floor
    clamped to [0, S - 1], hi = lo + 1 clamped, weight min(hi, g) - lo), weights and sums in the kernels' order;
    float16/bfloat16 maps round every product and partial sum to their dtype, as the kernels do."""
    from fastops.registrations._onnx_ops import INT64, compute

    calc = compute(o, maps)
    same = calc is maps

    def rnd(x):  # (A)(T)x: a no-op for float32 / float64 maps
        return x if same else o.CastLike(o.CastLike(x, maps), calc)

    def c(v):
        return o.CastLike(o.const([float(v)], torch.float32), calc)

    def axis(k, size):
        g = o.CastLike(o.CastLike(o.Gather(points, o.const(k), axis=1), maps), calc)  # [P]
        top = o.Sub(o.CastLike(size, calc), c(1.0))
        lo = o.Max(o.Min(o.Floor(g), top), c(0.0))
        hi = o.Min(o.Add(lo, c(1.0)), top)
        return o.Cast(lo, to=INT64), o.Cast(hi, to=INT64), o.Sub(o.Min(hi, g), lo)

    xl, xh, wx = axis(0, o.Shape(maps, start=3, end=4))
    yl, yh, wy = axis(1, o.Shape(maps, start=2, end=3))
    one = c(1.0)
    ax = o.const([1])
    weights = [rnd(o.Mul(o.Sub(one, wx), o.Sub(one, wy))), rnd(o.Mul(wx, o.Sub(one, wy))),
               rnd(o.Mul(o.Sub(one, wx), wy)), rnd(o.Mul(wx, wy))]
    z = o.Transpose(maps, perm=[0, 2, 3, 1])  # [R, Sh, Sw, C]
    r = o.Unsqueeze(roi_index, ax)

    def tap(y, x, w):
        at = o.Concat(r, o.Unsqueeze(y, ax), o.Unsqueeze(x, ax), axis=1)  # [P, 3]
        return rnd(o.Mul(o.CastLike(o.GatherND(z, at), calc), o.Unsqueeze(w, ax)))

    s = tap(yl, xl, weights[0])
    s = rnd(o.Add(s, tap(yl, xh, weights[1])))
    s = rnd(o.Add(s, tap(yh, xl, weights[2])))
    return o.CastLike(o.Add(s, tap(yh, xh, weights[3])), maps)


def _no_onnx(name):
    def fail(*args, **kwargs):
        raise RuntimeError(
            f"fastops.{name} cannot be exported to ONNX: no decomposition is registered (the per-box resize and "
            f"argmax of the chart have data-dependent sizes; docs/densepose.md, 'ONNX'). Export the network up to the "
            f"chart outputs and run fastops.{name} (or detectron2's post-processing) on them outside the model.")

    return fail


def _point_sample_symbolic(g, maps, roi_index, points):
    from fastops.registrations._onnx_ops import TorchScriptOps

    return point_sample_graph(TorchScriptOps(g), maps, roi_index, points)


torch.onnx.register_custom_op_symbolic("fastops::roi_point_sample", _point_sample_symbolic, ONNX_OPSET)
for _name in ("densepose_chart_to_iuv", "densepose_paste_iuv"):
    torch.onnx.register_custom_op_symbolic(f"fastops::{_name}", _no_onnx(_name), ONNX_OPSET)


def onnx_translations():
    """{op: translation} for the dynamo exporter (collected by fastops.onnx.translations())."""
    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat, TInt

    from fastops.registrations._onnx_ops import OnnxscriptOps

    def roi_point_sample(maps: TFloat, roi_index: TInt, points: TFloat) -> TFloat:
        return point_sample_graph(OnnxscriptOps(), maps, roi_index, points)

    ops = torch.ops.fastops
    return {ops.roi_point_sample.default: roi_point_sample,
            ops.densepose_chart_to_iuv.default: _no_onnx("densepose_chart_to_iuv"),
            ops.densepose_paste_iuv.default: _no_onnx("densepose_paste_iuv")}
