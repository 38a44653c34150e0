"""Decoding keypoints (heatmap_argmax, soft_argmax): what every backend shares.

Fake kernels for the compiled ops and their `_triton` twins, soft_argmax's autograd (one setup_context, one
backward factory taking the backward op), the refinement enum mirrored from csrc/decode/decode.h, and OpenCV's
Gaussian kernel as the C++ header computes it (tests/test_decode.py compares both with their sources).
"""
import math
from typing import List

import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)
from fastops.registrations import register_fakes, register_float32_autocast

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


def _probs_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def soft_argmax_probs_fake(heatmaps, beta, normalize):
    return (heatmaps.new_empty((heatmaps.size(0), heatmaps.size(1), 2)),
            heatmaps.new_empty(heatmaps.shape, dtype=_probs_dtype(heatmaps.dtype)))


def soft_argmax_probs_backward_fake(grad, probs, coords, beta, normalize):
    return probs.new_empty(probs.shape)


def soft_argmax_probs_setup_context(ctx, inputs, output):
    """The autograd path of fastops.soft_argmax (`_soft_argmax_probs`): the forward's probabilities are saved, so
    the backward is one read of p and one write (no softmax recomputed). p is internal: not differentiable."""
    heatmaps, beta, normalize = inputs
    coords, probs = output
    ctx.mark_non_differentiable(probs)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(probs, coords)
    ctx.args = (beta, normalize, heatmaps.dtype)


def soft_argmax_probs_backward(ctx, grad, _grad_probs):
    probs, coords = ctx.saved_tensors
    beta, normalize, dtype = ctx.args
    if grad is None:
        return None, None, None
    return torch.ops.fastops._soft_argmax_probs_backward(grad, probs, coords, beta, normalize).to(dtype), None, None


FAKES = {"heatmap_argmax": argmax_fake, "soft_argmax": soft_argmax_fake,
         "_soft_argmax_backward": soft_argmax_backward_fake, "_soft_argmax_probs": soft_argmax_probs_fake,
         "_soft_argmax_probs_backward": soft_argmax_probs_backward_fake}

register_fakes(FAKES)
torch.library.register_autograd("fastops::soft_argmax", soft_argmax_backward(torch.ops.fastops._soft_argmax_backward),
                                setup_context=soft_argmax_setup_context)
torch.library.register_autograd("fastops::_soft_argmax_probs", soft_argmax_probs_backward,
                                setup_context=soft_argmax_probs_setup_context)

# Autocast (CPU and CUDA): float16/bfloat16 maps are decoded in float32, outputs float32 (softmax is float32
# under autocast; a bfloat16 coordinate cannot hold a quarter-pixel refinement); fastops.ops.decode does the same
# for every impl (_keypoints.autocast_float32).
AUTOCAST_FLOAT32 = ("heatmap_argmax", "soft_argmax", "_soft_argmax_probs")
register_float32_autocast(AUTOCAST_FLOAT32)


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


def _blur(o, maps, ksize: int):
    """OpenCV's separable Gaussian blur of [B, K, H, W] maps with zeros outside (decode.h blur_at): a row pass then
    a column pass, each a sum of shifted copies (Pad + Slice) in the kernel's tap order, as the C++ loop adds them
    (Conv would do, but onnxruntime's CPU Conv has no float64)."""
    taps = opencv_gaussian_kernel(ksize)
    r = ksize // 2
    out = maps
    for axis in (3, 2):
        pads = [0, 0, 0, 0, 0, 0, 0, 0]
        pads[axis], pads[axis + 4] = r, r
        padded = o.Pad(out, o.const(pads))
        acc = None
        for j, t in enumerate(taps):
            end = j - 2 * r if j < 2 * r else 2 ** 62
            shifted = o.Slice(padded, o.const([j]), o.const([end]), o.const([axis]))
            term = o.Mul(o.CastLike(o.const([t], torch.float64), maps), shifted)
            acc = term if acc is None else o.Add(acc, term)
        out = acc
    return out


def _gather_flat(o, flat_blur, x, y, w, n_px):
    """The blurred values at flat indices y * W + x ([B, K, n]), indices clipped into the map."""
    last = o.Sub(n_px, o.const([1]))
    idx = o.Clip(o.Add(o.Mul(y, w), x), o.const(0), o.Squeeze(last, o.const([0])))
    return o.GatherElements(flat_blur, idx, axis=2)


def _refine_dark(o, flat, h, w, x, y, score, blur_kernel: int, udp: bool):
    """decode.h refine_dark / refine_dark_udp on the integer maxima x, y ([B, K, 1] int64, -1 where the score is
    <= 0): the blurred values around the maximum, the rescale-and-clamp branch only when a value is clamped (as
    the kernels), log, the Taylor step. Returns the offsets (dx, dy) to subtract ([B, K, 1], 0 where none)."""
    from fastops.registrations._onnx_ops import DOUBLE

    calc = flat
    blur = o.Reshape(_blur(o, o.Reshape(flat, o.Concat(o.Shape(flat, start=0, end=2), h, w, axis=0)), blur_kernel),
                     o.const([0, 0, -1]))
    n_px = o.Mul(h, w)
    one, two = o.const([1]), o.const([2])
    zero_i = o.const([0])

    def c(v):
        return o.CastLike(o.const([v], torch.float64), calc)

    if udp:
        xm, xp = o.Max(o.Sub(x, one), zero_i), o.Min(o.Add(x, one), o.Sub(w, one))
        ym, yp = o.Max(o.Sub(y, one), zero_i), o.Min(o.Add(y, one), o.Sub(h, one))
        px = o.Concat(x, xp, x, xp, xm, xm, x, axis=2)
        py = o.Concat(y, y, yp, yp, ym, y, ym, axis=2)
        valid = o.GreaterOrEqual(x, zero_i)
        lo, hi = c(1e-3), c(50.0)
    else:
        ox, oy = [0, 1, -1, 0, 0, 2, -2, 0, 0, 1, 1, -1, -1], [0, 0, 0, 1, -1, 0, 0, 2, -2, 1, -1, 1, -1]
        px = o.Add(x, o.const([[ox]]))
        py = o.Add(y, o.const([[oy]]))
        valid = o.And(o.And(o.Less(one, x), o.Less(x, o.Sub(w, two))), o.And(o.Less(one, y), o.Less(y, o.Sub(h, two))))
        lo = c(1e-10)
    v = _gather_flat(o, blur, px, py, w, n_px)
    low = o.Not(o.GreaterOrEqual(v, lo))
    clamped = o.Greater(o.ReduceSum(o.Cast(low, to=7), o.const([2]), keepdims=1), o.const([0]))
    if udp:
        clamped = o.Or(clamped, o.Not(o.LessOrEqual(score, hi)))
    s = o.Div(score, o.ReduceMax(blur, o.const([2]), keepdims=1))
    t = o.Mul(v, s)
    if udp:
        t = o.Where(o.Less(t, lo), lo, o.Where(o.Greater(t, hi), hi, t))
    else:
        t = o.Where(o.Or(o.Greater(t, lo), o.IsNaN(t)), t, lo)
    lv = o.Log(o.Where(clamped, t, v))

    def at(i):
        return o.Slice(lv, o.const([i]), o.const([i + 1]), o.const([2]))

    half = c(0.5)
    if udp:
        i_, ix1, iy1, ix1y1, ix1_y1_, ix1_, iy1_ = (at(i) for i in range(7))

        def d(t):
            return o.Cast(t, to=DOUBLE)

        def k(v_):
            return o.const([v_], torch.float64)

        eps = k(1.1920928955078125e-07)
        dx = o.Mul(k(0.5), d(o.Sub(ix1, ix1_)))
        dy = o.Mul(k(0.5), d(o.Sub(iy1, iy1_)))
        dxx = o.Add(d(o.Add(o.Sub(ix1, o.Mul(c(2.0), i_)), ix1_)), eps)
        dyy = o.Add(d(o.Add(o.Sub(iy1, o.Mul(c(2.0), i_)), iy1_)), eps)
        acc = ix1y1
        for sign, t_ in ((-1, ix1), (-1, iy1), (1, i_), (1, i_), (-1, ix1_), (-1, iy1_), (1, ix1_y1_)):
            acc = o.Add(acc, t_) if sign > 0 else o.Sub(acc, t_)
        dxy = o.Mul(k(0.5), d(acc))
        zero = k(0.0)
    else:
        v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12 = (at(i) for i in range(13))
        q = c(0.25)
        dx = o.Mul(half, o.Sub(v1, v2))
        dy = o.Mul(half, o.Sub(v3, v4))
        dxx = o.Mul(q, o.Add(o.Sub(v5, o.Mul(c(2.0), v0)), v6))
        dxy = o.Mul(q, o.Add(o.Sub(o.Sub(v9, v10), v11), v12))
        dyy = o.Mul(q, o.Add(o.Sub(v7, o.Mul(c(2.0), v0)), v8))
        zero = c(0.0)
    det = o.Sub(o.Mul(dxx, dyy), o.Mul(dxy, dxy))
    apply = o.And(valid, o.Not(o.Equal(det, zero)))
    safe = o.Where(apply, det, o.Add(zero, o.CastLike(o.const([1.0], torch.float32), det)))
    ox_ = o.Div(o.Sub(o.Mul(dyy, dx), o.Mul(dxy, dy)), safe)
    oy_ = o.Div(o.Sub(o.Mul(dxx, dy), o.Mul(dxy, dx)), safe)
    ox_ = o.CastLike(o.Where(apply, ox_, o.CastLike(zero, ox_)), calc)
    oy_ = o.CastLike(o.Where(apply, oy_, o.CastLike(zero, oy_)), calc)
    return ox_, oy_


def argmax_graph(o, heatmaps, refine: str, blur_kernel: int = 11):
    """heatmap_argmax as ONNX ops: ArgMax over H*W (first maximum), the score gathered there, x = i % W, y = i // W
    (-1 where the score is <= 0), then the refinement: neighbour reads as GatherElements on clipped flat indices
    (quarter, hourglass), or the blurred map (Pad + Slice taps) and DARK's Taylor step (dark, dark_udp). A NaN map
    follows the runtime's ArgMax (fastops picks the first NaN)."""
    from fastops.registrations._onnx_ops import compute

    heatmaps = compute(o, heatmaps)  # the kernels' accumulation type (float16/bfloat16 -> float32)
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
    elif refine in ("dark", "dark_udp"):
        ox, oy = _refine_dark(o, flat, h, w, x, y, score, blur_kernel, refine == "dark_udp")
        kx, ky = o.Sub(kx, ox), o.Sub(ky, oy)
    # the NaN/inf rule: a refined coordinate that is not finite falls back to the integer location
    kx = o.Where(o.Or(o.IsNaN(kx), o.IsInf(kx)), o.CastLike(x, heatmaps), kx)
    ky = o.Where(o.Or(o.IsNaN(ky), o.IsInf(ky)), o.CastLike(y, heatmaps), ky)
    return o.Concat(kx, ky, axis=-1), o.Squeeze(score, o.const([-1]))


def _argmax_symbolic(g, heatmaps, refine, blur_kernel):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    o = TorchScriptOps(g)
    coords, score = argmax_graph(o, heatmaps, sh._maybe_get_const(refine, "s"),
                                 int(sh._maybe_get_const(blur_kernel, "i")))
    return o.CastLike(coords, heatmaps), o.CastLike(score, heatmaps)


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
        o = OnnxscriptOps()
        coords, score = argmax_graph(o, heatmaps, refine, blur_kernel)
        return o.CastLike(coords, heatmaps), o.CastLike(score, heatmaps)

    return {torch.ops.fastops.soft_argmax.default: soft_argmax,
            torch.ops.fastops.heatmap_argmax.default: heatmap_argmax}
