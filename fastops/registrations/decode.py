"""Decoding keypoints (heatmap_argmax, soft_argmax): what every backend shares.

Fake kernels for the compiled ops and their `_triton` twins, soft_argmax's autograd (one setup_context, one
backward factory taking the backward op), the refinement enum mirrored from csrc/decode/decode.h, and OpenCV's
Gaussian kernel as the C++ header computes it (tests/test_decode.py compares both with their sources).
"""
import math
from typing import List

import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)

# Mirrors of csrc/decode/decode.h
REFINES = {"none": 0, "quarter": 1, "hourglass": 2, "dark": 3, "dark_udp": 4}  # enum Refine
MAX_BLUR = 31  # kMaxBlur

_SMALL_KERNELS = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
                  7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}


def opencv_gaussian_kernel(ksize: int) -> List[float]:
    """OpenCV getGaussianKernel(ksize, 0) for float images (decode.h's opencv_gauss_kernel, in double): the fixed
    tables up to 7 taps, then exp(-x^2 / (2 sigma^2)) normalised, sigma = 0.3 ((ksize - 1) / 2 - 1) + 0.8."""
    if ksize in _SMALL_KERNELS:
        return list(_SMALL_KERNELS[ksize])
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    scale = -0.5 / (sigma * sigma)
    t = [math.exp(scale * (i - (ksize - 1) * 0.5) ** 2) for i in range(ksize)]
    s = 0.0
    for v in t:  # the C++ sums in this order
        s += v
    return [v / s for v in t]


def argmax_fake(heatmaps, refine, blur_kernel):
    B, K = heatmaps.shape[:2]
    return heatmaps.new_empty((B, K, 2)), heatmaps.new_empty((B, K))


def soft_argmax_fake(heatmaps, beta, normalize):
    return heatmaps.new_empty((heatmaps.size(0), heatmaps.size(1), 2))


def soft_argmax_backward_fake(grad, heatmaps, coords, beta, normalize):
    return heatmaps.new_empty(heatmaps.shape)


def soft_argmax_setup_context(ctx, inputs, output):
    heatmaps, beta, normalize = inputs
    ctx.save_for_backward(heatmaps, output)
    ctx.args = (beta, normalize)


def soft_argmax_backward(backward_op):
    """The autograd backward of soft_argmax for a given backward op (the compiled one or its Triton twin)."""

    def backward(ctx, grad):
        heatmaps, coords = ctx.saved_tensors
        beta, normalize = ctx.args
        return backward_op(grad, heatmaps, coords, beta, normalize), None, None

    return backward


FAKES = {"heatmap_argmax": argmax_fake, "soft_argmax": soft_argmax_fake,
         "_soft_argmax_backward": soft_argmax_backward_fake}

for _name, _fake in FAKES.items():
    torch.library.register_fake(f"fastops::{_name}")(_fake)
torch.library.register_autograd("fastops::soft_argmax", soft_argmax_backward(torch.ops.fastops._soft_argmax_backward),
                                setup_context=soft_argmax_setup_context)

# Autocast (CPU and CUDA): float16/bfloat16 maps are decoded in float32, outputs float32 (softmax is float32
# under autocast; a bfloat16 coordinate cannot hold a quarter-pixel refinement); fastops.ops.decode does the same
# for every impl (_keypoints.autocast_float32).
AUTOCAST_FLOAT32 = ("heatmap_argmax", "soft_argmax")
for _name in AUTOCAST_FLOAT32:
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"fastops::{_name}", _device, torch.float32)


# ---- ONNX: Softmax + reductions (standard ops, opset 18) ------------------------------------------------------------

def soft_argmax_graph(o, heatmaps, beta: float, normalize: bool):
    """soft_argmax as ONNX ops (o: fastops.registrations._onnx_ops adapter): Softmax over H*W of beta * h, then the
    expected column and row index (divided by W and H when normalize)."""
    shape = o.Shape(heatmaps)
    h = o.Shape(heatmaps, start=2, end=3)
    w = o.Shape(heatmaps, start=3, end=4)
    flat = o.Reshape(heatmaps, o.const([0, 0, -1]))
    p = o.Softmax(o.Mul(flat, o.CastLike(o.const([beta], torch.float32), flat)), axis=-1)
    p4 = o.Reshape(p, shape)
    zero, one, axis0 = o.const(0), o.const(1), o.const([0])
    xs = o.CastLike(o.Range(zero, o.Squeeze(w, axis0), one), heatmaps)
    ys = o.CastLike(o.Range(zero, o.Squeeze(h, axis0), one), heatmaps)
    last = o.const([-1])
    x = o.ReduceSum(o.Mul(o.ReduceSum(p4, o.const([2]), keepdims=0), xs), last, keepdims=0)
    y = o.ReduceSum(o.Mul(o.ReduceSum(p4, o.const([3]), keepdims=0), ys), last, keepdims=0)
    if normalize:
        x = o.Div(x, o.CastLike(w, x))
        y = o.Div(y, o.CastLike(h, y))
    return o.Concat(o.Unsqueeze(x, last), o.Unsqueeze(y, last), axis=-1)


def argmax_graph(o, heatmaps, refine: str):
    """heatmap_argmax (refine none / quarter / hourglass) as ONNX ops: ArgMax over H*W (first maximum), the score
    gathered there, x = i % W, y = i // W (-1 where the score is <= 0), then the refinement's neighbour reads as
    GatherElements on clipped flat indices. A NaN map follows the runtime's ArgMax (fastops picks the first NaN)."""
    if refine not in ("none", "quarter", "hourglass"):
        raise RuntimeError(f"fastops.heatmap_argmax(refine={refine!r}) has no ONNX export (only none, quarter, "
                           f"hourglass)")
    i64 = o.const(0)
    h = o.Shape(heatmaps, start=2, end=3)
    w = o.Shape(heatmaps, start=3, end=4)
    flat = o.Reshape(heatmaps, o.const([0, 0, -1]))
    idx = o.ArgMax(flat, axis=-1, keepdims=1)
    score = o.GatherElements(flat, idx, axis=2)
    zero = o.CastLike(o.const([0.0], torch.float32), heatmaps)
    pos = o.Greater(score, zero)
    minus1 = o.const([-1])
    x = o.Where(pos, o.Mod(idx, w), minus1)
    y = o.Where(pos, o.Div(idx, w), minus1)
    kx, ky = o.CastLike(x, heatmaps), o.CastLike(y, heatmaps)
    one = o.const([1])
    last = o.Sub(o.Mul(h, w), one)
    del i64

    def at(yy, xx):
        return o.GatherElements(flat, o.Clip(o.Add(o.Mul(yy, w), xx), o.const(0), o.Squeeze(last, o.const([0]))),
                                axis=2)

    quarter = o.CastLike(o.const([0.25], torch.float32), heatmaps)
    if refine == "quarter":
        zero_i = o.const([0])
        okx = o.And(o.And(o.Less(one, x), o.Less(x, o.Sub(w, one))), o.And(o.Less(zero_i, y), o.Less(y, h)))
        oky = o.And(o.And(o.Less(one, y), o.Less(y, o.Sub(h, one))), o.And(o.Less(zero_i, x), o.Less(x, w)))
        dx = o.Where(okx, o.Sub(at(y, o.Add(x, one)), at(y, o.Sub(x, one))), zero)
        dy = o.Where(oky, o.Sub(at(o.Add(y, one), x), at(o.Sub(y, one), x)), zero)
        kx = o.Add(kx, o.Mul(o.Sign(dx), quarter))
        ky = o.Add(ky, o.Mul(o.Sign(dy), quarter))
    elif refine == "hourglass":
        zero_i = o.const([0])
        right = at(y, o.Min(o.Add(x, one), o.Sub(w, one)))
        left = at(y, o.Max(o.Sub(x, one), zero_i))
        down = at(o.Min(o.Add(y, one), o.Sub(h, one)), x)
        up = at(o.Max(o.Sub(y, one), zero_i), x)
        half = o.CastLike(o.const([0.5], torch.float32), heatmaps)
        mq = o.Neg(quarter)
        kx = o.Where(pos, o.Add(o.Add(kx, o.Where(o.Greater(right, left), quarter, mq)), half), kx)
        ky = o.Where(pos, o.Add(o.Add(ky, o.Where(o.Greater(down, up), quarter, mq)), half), ky)
    # the NaN/inf rule: a refined coordinate that is not finite falls back to the integer location
    kx = o.Where(o.Or(o.IsNaN(kx), o.IsInf(kx)), o.CastLike(x, heatmaps), kx)
    ky = o.Where(o.Or(o.IsNaN(ky), o.IsInf(ky)), o.CastLike(y, heatmaps), ky)
    return o.Concat(kx, ky, axis=-1), o.Squeeze(score, o.const([-1]))


def _argmax_symbolic(g, heatmaps, refine, blur_kernel):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    return argmax_graph(TorchScriptOps(g), heatmaps, sh._maybe_get_const(refine, "s"))


torch.onnx.register_custom_op_symbolic("fastops::heatmap_argmax", _argmax_symbolic, 15)


def _soft_argmax_symbolic(g, heatmaps, beta, normalize):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    return soft_argmax_graph(TorchScriptOps(g), heatmaps, float(sh._maybe_get_const(beta, "f")),
                             bool(sh._maybe_get_const(normalize, "b")))


torch.onnx.register_custom_op_symbolic("fastops::soft_argmax", _soft_argmax_symbolic, 15)


def onnx_translations():
    """{op: translation} for the dynamo exporter (collected by fastops.onnx.translations())."""
    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat

    from fastops.registrations._onnx_ops import OnnxscriptOps

    def soft_argmax(heatmaps: TFloat, beta: float, normalize: bool) -> TFloat:
        return soft_argmax_graph(OnnxscriptOps(), heatmaps, beta, normalize)

    def heatmap_argmax(heatmaps: TFloat, refine: str, blur_kernel: int):
        return argmax_graph(OnnxscriptOps(), heatmaps, refine)

    return {torch.ops.fastops.soft_argmax.default: soft_argmax,
            torch.ops.fastops.heatmap_argmax.default: heatmap_argmax}
