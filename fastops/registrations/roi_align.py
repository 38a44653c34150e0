"""RoIAlign registrations shared by every backend: fake kernels, autograd (setup_context + one backward factory
per forward op, used by the compiled op and its `_triton` twin), autocast and ONNX.

Ops (schemas in csrc/roi_align/roi_align.cpp): `fastops::roi_align`, `_roi_align_backward`,
`multi_scale_roi_align`, `_multi_scale_roi_align_backward`, and the `_triton` twins registered by
fastops/triton/roi_align.py with the same fakes and autograd.
"""

from typing import Callable, List

import torch
from torch import Tensor

from fastops._library import is_channels_last  # (also loads fastops._C: the ops below must exist first)

# Mirrors kMaxGrid (csrc/roi_align/roi_align.h): the largest sampling_ratio and the cap of the adaptive grid
# (samples per bin side). tests/test_roi_align.py checks the C++ value.
MAX_SAMPLING_RATIO = 1 << 15


# ---- fake kernels (the compiled ops and their _triton twins) -------------------------------------------------

def roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(rois.dim() == 2 and rois.size(1) == 5)
    out = input.new_empty((rois.size(0), input.size(1), pooled_height, pooled_width))
    if is_channels_last(input):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                            height, width, sampling_ratio, aligned, channels_last):
    out = grad.new_empty((batch_size, channels, height, width))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def multi_scale_roi_align_fake(features, rois, spatial_scales, pooled_height, pooled_width, sampling_ratio,
                               aligned, canonical_scale, canonical_level):
    torch._check(rois.dim() == 2 and rois.size(1) == 5)
    f0 = features[0]
    out = f0.new_empty((rois.size(0), f0.size(1), pooled_height, pooled_width))
    if is_channels_last(f0):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def multi_scale_roi_align_backward_fake(grad, rois, spatial_scales, pooled_height, pooled_width, batch_size,
                                        channels, sizes, sampling_ratio, aligned, canonical_scale, canonical_level,
                                        channels_last):
    outs = []
    for i in range(len(spatial_scales)):
        g = grad.new_empty((batch_size, channels, sizes[2 * i], sizes[2 * i + 1]))
        outs.append(g.contiguous(memory_format=torch.channels_last) if channels_last[i] else g)
    return outs


# ---- autograd ------------------------------------------------------------------------------------------------

def roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = is_channels_last(input)


def roi_align_backward(backward_op) -> Callable:
    """Backward of `roi_align`-like ops that calls `backward_op` (the `_roi_align_backward[_triton]` schema)."""

    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        spatial_scale, ph, pw, sampling_ratio, aligned = ctx.args
        n, c, h, w = ctx.input_shape
        grad_input = backward_op(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned,
                                 ctx.channels_last)
        return grad_input, None, None, None, None, None, None

    return backward


def multi_scale_roi_align_setup_context(ctx, inputs, output):
    features, rois, spatial_scales, ph, pw, sampling_ratio, aligned, canonical_scale, canonical_level = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scales, ph, pw, sampling_ratio, aligned, canonical_scale, canonical_level)
    ctx.nc = (features[0].size(0), features[0].size(1))
    ctx.sizes = [s for f in features for s in (f.size(2), f.size(3))]
    ctx.channels_last = [is_channels_last(f) for f in features]


def multi_scale_roi_align_backward(backward_op) -> Callable:
    """Backward of `multi_scale_roi_align`-like ops calling `backward_op` (`_multi_scale_roi_align_backward*`)."""

    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        spatial_scales, ph, pw, sampling_ratio, aligned, canonical_scale, canonical_level = ctx.args
        grads: List[Tensor] = backward_op(grad, rois, spatial_scales, ph, pw, ctx.nc[0], ctx.nc[1], ctx.sizes,
                                          sampling_ratio, aligned, canonical_scale, canonical_level,
                                          ctx.channels_last)
        return list(grads), None, None, None, None, None, None, None, None

    return backward


# ---- registrations of the compiled ops -----------------------------------------------------------------------

torch.library.register_fake("fastops::roi_align")(roi_align_fake)
torch.library.register_fake("fastops::_roi_align_backward")(roi_align_backward_fake)
torch.library.register_fake("fastops::multi_scale_roi_align")(multi_scale_roi_align_fake)
torch.library.register_fake("fastops::_multi_scale_roi_align_backward")(multi_scale_roi_align_backward_fake)
torch.library.register_autograd("fastops::roi_align", roi_align_backward(torch.ops.fastops._roi_align_backward),
                                setup_context=roi_align_setup_context)
torch.library.register_autograd("fastops::multi_scale_roi_align",
                                multi_scale_roi_align_backward(torch.ops.fastops._multi_scale_roi_align_backward),
                                setup_context=multi_scale_roi_align_setup_context)


# ---- autocast (CPU and CUDA), torchvision's rule: compute in float32, return the features' dtype -------------

_AUTOCAST_LIB = torch.library.Library("fastops", "IMPL")
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def autocast_float(t: Tensor) -> Tensor:
    """What at::autocast::cached_cast(kFloat, t) does: half/bfloat16 become float32; float32/float64 stay."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def autocast_enabled(device: torch.device) -> bool:
    return device.type in _AUTOCAST_KEYS and torch.is_autocast_enabled(device.type)


def _register_autocast(op_name: str, device_type: str) -> None:
    op = getattr(torch.ops.fastops, op_name).default

    def kernel(_keyset, first, rois, *args):
        with torch.autocast(device_type=device_type, enabled=False):
            if isinstance(first, (list, tuple)):  # multi-scale: features is a list
                out = op([autocast_float(f) for f in first], autocast_float(rois), *args)
                return out.to(first[0].dtype)
            return op(autocast_float(first), autocast_float(rois), *args).to(first.dtype)

    _AUTOCAST_LIB.impl(op_name, kernel, _AUTOCAST_KEYS[device_type], with_keyset=True)


for _name in ("roi_align", "multi_scale_roi_align"):
    for _device in ("cpu", "cuda"):
        _register_autocast(_name, _device)


# ---- ONNX: roi_align -> RoiAlign (opset 16); multi_scale_roi_align -> level assignment + RoiAlign per level ----
# Both exporters build the same graph. RoiAlign takes the boxes [K, 4] and int64 batch indices [K] separately;
# coordinate_transformation_mode "half_pixel" is aligned=True, "output_half_pixel" aligned=False (which also
# forces roi sizes >= 1, as torchvision); sampling_ratio <= 0 (adaptive) is 0; mode "avg".

ONNX_OPSET = 16


def _onnx_roi_attrs(spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
                    aligned: bool) -> dict:
    return dict(coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel", mode="avg",
                output_height=int(pooled_height), output_width=int(pooled_width),
                sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=float(spatial_scale))


def _fpn_k_range(spatial_scales) -> tuple:
    # k = -log2(scale) of the first and last level (same rule as fpn_level_range in roi_align.h)
    import math

    return int(round(-math.log2(spatial_scales[0]))), int(round(-math.log2(spatial_scales[-1])))


class _TorchScriptGraph:
    """The few ONNX building blocks the symbolics need, on a TorchScript-exporter graph context `g`."""

    def __init__(self, g):
        self.g = g

    def const(self, values, dtype=torch.int64):
        return self.g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

    def columns(self, rois, start, end):
        return self.g.op("Slice", rois, self.const([start]), self.const([end]), self.const([1]))

    def batch_indices(self, rois):
        col = self.g.op("Squeeze", self.columns(rois, 0, 1), self.const([1]))
        return self.g.op("Cast", col, to_i=7)  # INT64

    def roi_align(self, feature, rois, attrs):
        a = {"coordinate_transformation_mode_s": attrs["coordinate_transformation_mode"], "mode_s": attrs["mode"],
             "output_height_i": attrs["output_height"], "output_width_i": attrs["output_width"],
             "sampling_ratio_i": attrs["sampling_ratio"], "spatial_scale_f": attrs["spatial_scale"]}
        return self.g.op("RoiAlign", feature, self.columns(rois, 1, 5), self.batch_indices(rois), **a)


def _symbolic_roi_align(g, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    from torch.onnx.symbolic_helper import _get_const

    attrs = _onnx_roi_attrs(_get_const(spatial_scale, "f", "spatial_scale"),
                            _get_const(pooled_height, "i", "pooled_height"),
                            _get_const(pooled_width, "i", "pooled_width"),
                            _get_const(sampling_ratio, "i", "sampling_ratio"), _get_const(aligned, "b", "aligned"))
    return _TorchScriptGraph(g).roi_align(input, rois, attrs)


def _symbolic_multi_scale_roi_align(g, features, rois, spatial_scales, pooled_height, pooled_width, sampling_ratio,
                                    aligned, canonical_scale, canonical_level):
    from torch.onnx.symbolic_helper import _get_const, _unpack_list

    feats = _unpack_list(features)
    scales = _get_const(spatial_scales, "fs", "spatial_scales")
    ph, pw = _get_const(pooled_height, "i", "pooled_height"), _get_const(pooled_width, "i", "pooled_width")
    sr, al = _get_const(sampling_ratio, "i", "sampling_ratio"), _get_const(aligned, "b", "aligned")
    cs, cl = _get_const(canonical_scale, "i", "canonical_scale"), _get_const(canonical_level, "i", "canonical_level")
    G = _TorchScriptGraph(g)
    if len(feats) == 1:
        return G.roi_align(feats[0], rois, _onnx_roi_attrs(scales[0], ph, pw, sr, al))
    # FPN eq. 1 on the unscaled boxes, in float32 (the kernels' accumulation type; float64 boxes stay float64)
    is_double = rois.type().dtype() == torch.float64 if hasattr(rois.type(), "dtype") else False
    ft = torch.float64 if is_double else torch.float32
    box = g.op("Cast", G.columns(rois, 1, 5), to_i=11 if is_double else 1)
    w = g.op("Sub", g.op("Slice", box, G.const([2]), G.const([3]), G.const([1])),
             g.op("Slice", box, G.const([0]), G.const([1]), G.const([1])))
    h = g.op("Sub", g.op("Slice", box, G.const([3]), G.const([4]), G.const([1])),
             g.op("Slice", box, G.const([1]), G.const([2]), G.const([1])))
    size = g.op("Sqrt", g.op("Mul", w, h))
    log2 = g.op("Div", g.op("Log", g.op("Div", size, G.const(float(cs), ft))), G.const(0.6931471805599453, ft))
    k = g.op("Floor", g.op("Add", g.op("Add", G.const(float(cl), ft), log2), G.const(1e-6, ft)))
    k_min, k_max = _fpn_k_range(scales)
    k = g.op("Sub", g.op("Clip", k, G.const(float(k_min), ft), G.const(float(k_max), ft)), G.const(float(k_min), ft))
    k = g.op("Where", g.op("IsNaN", k), G.const(-1.0, ft), k)  # negative area: no level
    level = g.op("Cast", g.op("Squeeze", k, G.const([1])), to_i=7)
    shape = g.op("Concat", g.op("Slice", g.op("Shape", rois), G.const([0]), G.const([1])),
                 g.op("Slice", g.op("Shape", feats[0]), G.const([1]), G.const([2])), G.const([ph, pw]), axis_i=0)
    out = g.op("Expand", g.op("CastLike", G.const(0.0, torch.float32), feats[0]), shape)
    for lvl, (feat, scale) in enumerate(zip(feats, scales)):
        idx = g.op("Squeeze", g.op("NonZero", g.op("Equal", level, G.const(lvl))), G.const([0]))
        pooled = G.roi_align(feat, g.op("Gather", rois, idx, axis_i=0), _onnx_roi_attrs(scale, ph, pw, sr, al))
        out = g.op("ScatterND", out, g.op("Unsqueeze", idx, G.const([1])), pooled)
    return out


def _register_torchscript_symbolics() -> None:
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("fastops::roi_align", _symbolic_roi_align, ONNX_OPSET)
    register_custom_op_symbolic("fastops::multi_scale_roi_align", _symbolic_multi_scale_roi_align, ONNX_OPSET)


_register_torchscript_symbolics()


def onnx_translations() -> dict:
    """The dynamo exporter's table for this family (collected by fastops.onnx.translations())."""
    from onnxscript import opset18 as op

    def batch_and_boxes(rois):
        batch = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=7)  # INT64
        return batch, op.Slice(rois, [1], [5], [1])

    def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
                  aligned: bool):
        batch, boxes = batch_and_boxes(rois)
        return op.RoiAlign(input, boxes, batch,
                           **_onnx_roi_attrs(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned))

    def multi_scale_roi_align(features, rois, spatial_scales: list, pooled_height: int, pooled_width: int,
                              sampling_ratio: int, aligned: bool, canonical_scale: int, canonical_level: int):
        feats = list(features)
        if len(feats) == 1:
            return roi_align(feats[0], rois, spatial_scales[0], pooled_height, pooled_width, sampling_ratio, aligned)
        dtype = getattr(rois, "dtype", None)  # float64 boxes keep float64, others float32 (the kernels' rule)
        box = op.Cast(op.Slice(rois, [1], [5], [1]), to=11 if str(dtype).upper().endswith("DOUBLE") else 1)

        def c(v):
            return op.CastLike(op.Constant(value_float=float(v)), box)

        w = op.Sub(op.Slice(box, [2], [3], [1]), op.Slice(box, [0], [1], [1]))
        h = op.Sub(op.Slice(box, [3], [4], [1]), op.Slice(box, [1], [2], [1]))
        log2 = op.Div(op.Log(op.Div(op.Sqrt(op.Mul(w, h)), c(canonical_scale))), c(0.6931471805599453))
        k = op.Floor(op.Add(op.Add(c(canonical_level), log2), c(1e-6)))
        k_min, k_max = _fpn_k_range(spatial_scales)
        k = op.Sub(op.Clip(k, c(k_min), c(k_max)), c(k_min))
        k = op.Where(op.IsNaN(k), c(-1.0), k)  # negative area: no level
        level = op.Cast(op.Squeeze(k, [1]), to=7)
        shape = op.Concat(op.Slice(op.Shape(rois), [0], [1]), op.Slice(op.Shape(feats[0]), [1], [2]),
                          op.Constant(value_ints=[int(pooled_height), int(pooled_width)]), axis=0)
        out = op.Expand(op.CastLike(op.Constant(value_float=0.0), feats[0]), shape)
        for lvl, (feat, scale) in enumerate(zip(feats, spatial_scales)):
            idx = op.Squeeze(op.NonZero(op.Equal(level, op.Constant(value_int=lvl))), [0])
            rois_l = op.Gather(rois, idx, axis=0)
            batch, boxes = batch_and_boxes(rois_l)
            pooled = op.RoiAlign(feat, boxes, batch, **_onnx_roi_attrs(scale, pooled_height, pooled_width,
                                                                       sampling_ratio, aligned))
            out = op.ScatterND(out, op.Unsqueeze(idx, [1]), pooled)
        return out

    return {torch.ops.fastops.roi_align.default: roi_align,
            torch.ops.fastops.multi_scale_roi_align.default: multi_scale_roi_align}
