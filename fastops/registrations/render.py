"""Rendering targets (render_gaussian_heatmaps, render_center_heatmap, gaussian_radius): what every backend shares.

Fake kernels for the compiled ops and their `_triton` twins, and the enum values mirrored from
csrc/render/render.h (tests/test_render.py compares them with the header).
"""
import math

import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)
from fastops.registrations import register_fakes, register_float32_autocast

# Mirrors of csrc/render/render.h
MODES = {"msra": 0, "udp": 1, "dark": 2}  # enum RenderMode
KERNELS = {"gaussian": 0, "cauchy": 1}  # enum RenderKernel
VARIANTS = {"centernet": 0, "cornernet": 1}  # enum RadiusVariant
MIN_SIGMA = 1e-3  # kMinSigma
MAX_SIGMA = 1e6  # kMaxSigma
MAX_SIDE = 1 << 20  # kMaxSide (csrc/keypoints_common.h)


def render_fake(keypoints, visible, height, width, sigma, mode, kernel):
    B, N, K = keypoints.shape[:3]
    return keypoints.new_empty((B, K, height, width)), keypoints.new_empty((B, N, K))


def center_fake(centers, radii, labels, num_classes, height, width):
    return centers.new_empty((centers.size(0), num_classes, height, width))


def radius_fake(heights, widths, min_overlap, variant):
    return heights.new_empty(heights.shape)


FAKES = {"render_gaussian_heatmaps": render_fake, "render_center_heatmap": center_fake,
         "gaussian_radius": radius_fake}

register_fakes(FAKES)


# ---- ONNX: closed-form arithmetic on index grids (standard ops, opset 18) -----------------------------------------
# The window arithmetic of render.h in float64 (as the kernels), the kernel values in the keypoints' accumulation
# type (float32 for float32/16, float64 for float64), the merge over instances as ReduceMax.

def _f64(o, x):
    return o.const([float(x)], torch.float64)


def _grid(o, n: int):
    """[0, 1, ..., n - 1] as float64."""
    return o.Cast(o.Range(o.const(0), o.const(n), o.const(1)), to=11)


def render_graph(o, keypoints, visible, height: int, width: int, sigma: float, mode: str, kernel: str):
    """render_gaussian_heatmaps: keypoints [B, N, K, 2] (visible [B, N, K] or None) -> (heatmaps [B, K, H, W],
    weights [B, N, K]). Per keypoint and axis a masked 1-D factor (Gaussian) or squared distance (Cauchy) on a
    Range grid, their outer product, ReduceMax over the instances."""
    from fastops.registrations._onnx_ops import DOUBLE, compute, is_finite, trunc

    calc = compute(o, keypoints)
    kx = o.Gather(calc, o.const(0), axis=3)  # [B, N, K]
    ky = o.Gather(calc, o.const(1), axis=3)
    fin = o.And(is_finite(o, kx), is_finite(o, ky))
    zero_c = o.CastLike(o.const([0.0], torch.float32), calc)
    kx, ky = o.Where(fin, kx, zero_c), o.Where(fin, ky, zero_c)  # no NaN reaches the masked arithmetic
    kxd, kyd = o.Cast(kx, to=DOUBLE), o.Cast(ky, to=DOUBLE)
    radius = 3.0 * sigma
    H, W = _f64(o, height), _f64(o, width)
    zero = _f64(o, 0.0)
    if mode == "dark":
        left, top = o.Sub(kxd, _f64(o, radius)), o.Sub(kyd, _f64(o, radius))
        right, bottom = o.Add(kxd, _f64(o, radius + 1.0)), o.Add(kyd, _f64(o, radius + 1.0))
        miss = o.Or(o.Or(o.GreaterOrEqual(left, W), o.GreaterOrEqual(top, H)),
                    o.Or(o.Less(right, zero), o.Less(bottom, zero)))
        ok = o.And(fin, o.Not(miss))
        cx, cy = kxd, kyd
        x0 = y0 = o.Sub(kxd, kxd)  # 0 in the keypoints' shape [B, N, K] (kx is finite here)
        x1, y1 = o.Add(x0, W), o.Add(y0, H)
    else:
        half = o.CastLike(o.const([0.5], torch.float32), calc)
        hx, hy = o.Cast(o.Add(kx, half), to=DOUBLE), o.Cast(o.Add(ky, half), to=DOUBLE)  # kp + 0.5 in its precision
        far = o.Or(o.Greater(o.Abs(hx), _f64(o, 1e9)), o.Greater(o.Abs(hy), _f64(o, 1e9)))
        mux, muy = trunc(o, hx), trunc(o, hy)
        left, top = trunc(o, o.Sub(mux, _f64(o, radius))), trunc(o, o.Sub(muy, _f64(o, radius)))
        right = trunc(o, o.Add(mux, _f64(o, radius + 1.0)))
        bottom = trunc(o, o.Add(muy, _f64(o, radius + 1.0)))
        miss = o.Or(o.Or(o.GreaterOrEqual(left, W), o.GreaterOrEqual(top, H)),
                    o.Or(o.Less(right, zero), o.Less(bottom, zero)))
        c0 = _f64(o, math.floor((2.0 * radius + 1.0) / 2.0))
        cx, cy = o.Add(left, c0), o.Add(top, c0)
        if mode == "udp":
            cx, cy = o.Add(cx, o.Sub(kxd, mux)), o.Add(cy, o.Sub(kyd, muy))
        x0, y0 = o.Max(left, zero), o.Max(top, zero)
        x1, y1 = o.Min(right, W), o.Min(bottom, H)
        ok = o.And(o.And(fin, o.Not(o.Or(far, miss))), o.And(o.Greater(x1, x0), o.Greater(y1, y0)))
    drawn = ok
    one_c = o.CastLike(o.const([1.0], torch.float32), calc)
    vis = one_c
    if visible is not None:
        vis = compute(o, visible)
        drawn = o.And(drawn, o.GreaterOrEqual(vis, o.CastLike(o.const([0.5], torch.float32), vis)))
    weights = o.CastLike(o.Where(drawn, vis, zero_c), keypoints)

    last = o.const([-1])

    def axis(c, lo, hi, n, extra_mask):
        """[B, N, K, n]: distance to the centre (float64) and the in-window mask of one axis."""
        g = _grid(o, n)
        d = o.Sub(g, o.Unsqueeze(c, last))
        inside = o.And(o.GreaterOrEqual(g, o.Unsqueeze(lo, last)), o.Less(g, o.Unsqueeze(hi, last)))
        if extra_mask is not None:
            inside = o.And(inside, o.Unsqueeze(extra_mask, last))
        return d, inside

    dx, mx = axis(cx, x0, x1, width, None)
    dy, my = axis(cy, y0, y1, height, drawn)
    zero_a = o.CastLike(o.const([0.0], torch.float32), calc)
    pad_n = o.const([0, 0, 0, 0, 0, 1, 0, 0])  # one all-zero instance: the max over N >= 0 instances is >= 0
    if kernel == "gaussian":
        f = o.CastLike(o.const([1.0 / (2.0 * sigma * sigma)], torch.float64), calc)

        def factor(d, m):
            dc = o.CastLike(d, calc)
            v = o.Exp(o.Mul(o.Neg(o.Mul(dc, dc)), f))
            return o.Pad(o.Where(m, v, zero_a), pad_n)

        gx, gy = factor(dx, mx), factor(dy, my)  # [B, N + 1, K, W], [B, N + 1, K, H]
        vals = o.Mul(o.Unsqueeze(gy, last), o.Unsqueeze(gx, o.const([-2])))
    else:
        sig = o.CastLike(o.const([sigma], torch.float64), calc)
        d2x = o.CastLike(o.Mul(dx, dx), calc)
        d2y = o.CastLike(o.Mul(dy, dy), calc)
        s = o.Add(o.Add(o.Unsqueeze(d2y, last), o.Unsqueeze(d2x, o.const([-2]))), o.Mul(sig, sig))
        v = o.Div(sig, o.Mul(s, o.Sqrt(s)))
        m = o.And(o.Unsqueeze(my, last), o.Unsqueeze(mx, o.const([-2])))
        vals = o.Pad(o.Where(m, v, zero_a), o.const([0, 0, 0, 0, 0, 0, 1, 0, 0, 0]))
    heatmaps = o.ReduceMax(vals, o.const([1]), keepdims=0)
    return o.CastLike(heatmaps, keypoints), weights


def center_graph(o, centers, radii, labels, num_classes: int, height: int, width: int):
    """render_center_heatmap: per object draw_umich_gaussian on Range grids (float64, as the kernels), values below
    DBL_EPSILON zeroed, merged into the class planes with ScatterElements(reduction="max")."""
    from fastops.registrations._onnx_ops import DOUBLE, is_finite, trunc

    hw = height * width
    shape = o.Concat(o.Shape(centers, start=0, end=1), o.const([num_classes, height, width]), axis=0)
    if num_classes == 0 or hw == 0:
        return o.CastLike(o.ConstantOfShape(shape), centers)
    c = o.Cast(centers, to=DOUBLE)
    fx, fy = o.Gather(c, o.const(0), axis=2), o.Gather(c, o.const(1), axis=2)  # [B, N]
    fin = o.And(is_finite(o, fx), is_finite(o, fy))
    zero = _f64(o, 0.0)
    x, y = trunc(o, o.Where(fin, fx, zero)), trunc(o, o.Where(fin, fy, zero))
    r = o.Max(o.Cast(radii, to=DOUBLE), zero)
    H, W = _f64(o, height), _f64(o, width)
    miss = o.Or(o.Or(o.GreaterOrEqual(o.Sub(x, r), W), o.Less(o.Add(x, r), zero)),
                o.Or(o.GreaterOrEqual(o.Sub(y, r), H), o.Less(o.Add(y, r), zero)))
    ok = o.And(o.And(fin, o.Not(miss)), o.GreaterOrEqual(labels, o.const([0])))
    last, last2 = o.const([-1]), o.const([-2])
    dx = o.Unsqueeze(o.Sub(_grid(o, width), o.Unsqueeze(x, last)), last2)  # [B, N, 1, W]
    dy = o.Unsqueeze(o.Sub(_grid(o, height), o.Unsqueeze(y, last)), last)  # [B, N, H, 1]
    r4 = o.Unsqueeze(r, o.const([2, 3]))
    inside = o.And(o.LessOrEqual(o.Abs(dx), r4), o.LessOrEqual(o.Abs(dy), r4))
    inside = o.And(inside, o.Unsqueeze(ok, o.const([2, 3])))
    sigma = o.Div(o.Add(o.Mul(_f64(o, 2.0), r4), _f64(o, 1.0)), _f64(o, 6.0))
    v = o.Exp(o.Div(o.Neg(o.Add(o.Mul(dx, dx), o.Mul(dy, dy))), o.Mul(o.Mul(_f64(o, 2.0), sigma), sigma)))
    v = o.Where(o.And(inside, o.GreaterOrEqual(v, _f64(o, 2.220446049250313e-16))), v, zero)  # [B, N, H, W]
    upd = o.Reshape(v, o.const([0, 0, -1]))
    idx = o.Expand(o.Unsqueeze(o.Where(ok, labels, o.const([0])), last), o.Shape(upd))
    planes = o.Cast(o.ConstantOfShape(o.Concat(o.Shape(centers, start=0, end=1), o.const([num_classes, hw]),
                                               axis=0)), to=DOUBLE)
    out = o.ScatterElements(planes, idx, upd, axis=1, reduction="max")
    return o.CastLike(o.Reshape(out, shape), centers)


def radius_graph(o, heights, widths, min_overlap: float, variant: str):
    """gaussian_radius: the three roots in float64 (render.h gaussian_radius_one), Python's min (NaN wins only in
    the first position) as Where(Less)."""
    from fastops.registrations._onnx_ops import DOUBLE

    h, w = o.Cast(heights, to=DOUBLE), o.Cast(widths, to=DOUBLE)
    ov = min_overlap

    def k(v):
        return _f64(o, v)

    hw_sum, area = o.Add(h, w), o.Mul(w, h)
    b1 = hw_sum
    c1 = o.Div(o.Mul(area, k(1 - ov)), k(1 + ov))
    sq1 = o.Sqrt(o.Sub(o.Mul(b1, b1), o.Mul(k(4.0), c1)))
    b2 = o.Mul(k(2.0), hw_sum)
    c2 = o.Mul(o.Mul(k(1 - ov), w), h)
    sq2 = o.Sqrt(o.Sub(o.Mul(b2, b2), o.Mul(k(16.0), c2)))
    a3 = 4 * ov
    b3 = o.Mul(k(-2 * ov), hw_sum)
    c3 = o.Mul(o.Mul(k(ov - 1), w), h)
    sq3 = o.Sqrt(o.Sub(o.Mul(b3, b3), o.Mul(o.Mul(k(4.0), k(a3)), c3)))
    if variant == "centernet":
        r1 = o.Div(o.Add(b1, sq1), k(2.0))
        r2 = o.Div(o.Add(b2, sq2), k(2.0))
        r3 = o.Div(o.Add(b3, sq3), k(2.0))
    else:
        r1 = o.Div(o.Sub(b1, sq1), k(2.0))
        r2 = o.Div(o.Sub(b2, sq2), k(8.0))
        r3 = o.Div(o.Add(b3, sq3), k(2 * a3))
    m = r1
    m = o.Where(o.Less(r2, m), r2, m)
    m = o.Where(o.Less(r3, m), r3, m)
    return o.CastLike(m, heights)


def _render_symbolic(g, keypoints, visible, height, width, sigma, mode, kernel):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    return render_graph(TorchScriptOps(g), keypoints, None if sh._is_none(visible) else visible,
                        int(sh._maybe_get_const(height, "i")), int(sh._maybe_get_const(width, "i")),
                        float(sh._maybe_get_const(sigma, "f")), sh._maybe_get_const(mode, "s"),
                        sh._maybe_get_const(kernel, "s"))


def _center_symbolic(g, centers, radii, labels, num_classes, height, width):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    return center_graph(TorchScriptOps(g), centers, radii, labels, int(sh._maybe_get_const(num_classes, "i")),
                        int(sh._maybe_get_const(height, "i")), int(sh._maybe_get_const(width, "i")))


def _radius_symbolic(g, heights, widths, min_overlap, variant):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    return radius_graph(TorchScriptOps(g), heights, widths, float(sh._maybe_get_const(min_overlap, "f")),
                        sh._maybe_get_const(variant, "s"))


ONNX_OPSET = 18  # ScatterElements(reduction="max"), ReduceMax with an axes input
for _name, _fn in (("render_gaussian_heatmaps", _render_symbolic), ("render_center_heatmap", _center_symbolic),
                   ("gaussian_radius", _radius_symbolic)):
    torch.onnx.register_custom_op_symbolic(f"fastops::{_name}", _fn, ONNX_OPSET)


def onnx_translations():
    """{op: translation} for the dynamo exporter (collected by fastops.onnx.translations())."""
    from typing import Optional

    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat, TInt

    from fastops.registrations._onnx_ops import OnnxscriptOps

    def render_gaussian_heatmaps(keypoints: TFloat, visible: Optional[TFloat], height: int, width: int, sigma: float,
                                 mode: str, kernel: str):
        return render_graph(OnnxscriptOps(), keypoints, visible, height, width, sigma, mode, kernel)

    def render_center_heatmap(centers: TFloat, radii: TInt, labels: TInt, num_classes: int, height: int,
                              width: int) -> TFloat:
        return center_graph(OnnxscriptOps(), centers, radii, labels, num_classes, height, width)

    def gaussian_radius(heights: TFloat, widths: TFloat, min_overlap: float, variant: str) -> TFloat:
        return radius_graph(OnnxscriptOps(), heights, widths, min_overlap, variant)

    ops = torch.ops.fastops
    return {ops.render_gaussian_heatmaps.default: render_gaussian_heatmaps,
            ops.render_center_heatmap.default: render_center_heatmap,
            ops.gaussian_radius.default: gaussian_radius}

# Autocast (CPU and CUDA): float16/bfloat16 inputs are cast to float32 and the outputs are float32 (targets for a
# loss autocast computes in float32); fastops.ops.render does the same for every impl (_keypoints.autocast_float32).
AUTOCAST_FLOAT32 = tuple(FAKES)
register_float32_autocast(AUTOCAST_FLOAT32)
