"""Peaks (heatmap_peaks, centernet_decode): what every backend shares (fake kernels for the compiled ops and their
`_triton` twins)."""
import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)
from fastops.registrations import register_fakes, register_float32_autocast


def k_eff(heatmaps, k):
    """Number of peaks returned: min(k, C*H*W)."""
    return torch.sym_min(k, heatmaps.size(1) * heatmaps.size(2) * heatmaps.size(3))


def peaks_fake(heatmaps, k, kernel):
    ke = k_eff(heatmaps, k)
    lo = heatmaps.new_empty((heatmaps.size(0), ke), dtype=torch.int64)
    return heatmaps.new_empty((heatmaps.size(0), ke)), lo, torch.empty_like(lo), torch.empty_like(lo)


def decode_fake(heat, wh, reg, k):
    return heat.new_empty((heat.size(0), k_eff(heat, k), 6))


FAKES = {"heatmap_peaks": peaks_fake, "centernet_decode": decode_fake}

register_fakes(FAKES)

# Autocast (CPU and CUDA): centernet_decode computes in float32 from float16/bfloat16 (mixed dtypes accepted) and
# returns float32 boxes. heatmap_peaks has no autocast kernel on purpose: selecting peaks compares the map's own
# values, exact in any precision, so it keeps the map's dtype (as max_pool2d and topk do under autocast).
AUTOCAST_FLOAT32 = ("centernet_decode",)
register_float32_autocast(AUTOCAST_FLOAT32)


# ---- ONNX: MaxPool + TopK + Gather (standard ops, opset 18) ---------------------------------------------------------

def peaks_graph(o, heat, k: int, kernel: int):
    """heatmap_peaks as ONNX ops: MaxPool (stride 1, -inf padding) marks the peaks, Where keeps their scores (0
    elsewhere), TopK over C*H*W (ONNX orders equal values by the lower index, as fastops). Returns (scores, flat
    index, H*W, W). A NaN pixel follows the runtime's MaxPool."""
    h = o.Shape(heat, start=2, end=3)
    w = o.Shape(heat, start=3, end=4)
    hw = o.Mul(h, w)
    chw = o.Mul(o.Shape(heat, start=1, end=2), hw)
    pad = (kernel - 1) // 2
    hmax = o.MaxPool(heat, kernel_shape=[kernel, kernel], pads=[pad, pad, pad, pad], strides=[1, 1])
    if isinstance(hmax, tuple):  # onnxscript returns (Y, Indices)
        hmax = hmax[0]
    scores = o.Where(o.Equal(hmax, heat), heat, o.CastLike(o.const([0.0], torch.float32), heat))
    flat = o.Reshape(scores, o.const([0, -1]))
    ke = o.Min(o.const([k]), chw)
    top, idx = o.TopK(flat, ke, axis=-1, largest=1, sorted=1, _outputs=2)
    return top, idx, hw, w


def _peaks_outputs(o, heat, k, kernel):
    top, idx, hw, w = peaks_graph(o, heat, k, kernel)
    pix = o.Mod(idx, hw)
    return top, o.Div(idx, hw), o.Div(pix, w), o.Mod(pix, w)


def decode_graph(o, heat, wh, reg, k: int):
    """centernet_decode as ONNX ops: the 3x3 peaks above, then wh / reg gathered at the peaks (GatherElements on
    [B, 2, H*W]) and the boxes."""
    top, idx, hw, w = peaks_graph(o, heat, k, 3)
    pix = o.Mod(idx, hw)
    ys = o.CastLike(o.Div(pix, w), heat)
    xs = o.CastLike(o.Mod(pix, w), heat)
    labels = o.CastLike(o.Div(idx, hw), heat)
    ind = o.Expand(o.Unsqueeze(pix, o.const([1])),
                   o.Concat(o.Shape(wh, start=0, end=2), o.Shape(pix, start=1, end=2), axis=0))

    def gather2(t):
        g = o.GatherElements(o.Reshape(t, o.const([0, 2, -1])), ind, axis=2)
        return o.Gather(g, o.const(0), axis=1), o.Gather(g, o.const(1), axis=1)

    bw, bh = gather2(wh)
    if reg is None:
        half = o.CastLike(o.const([0.5], torch.float32), heat)
        cx, cy = o.Add(xs, half), o.Add(ys, half)
    else:
        rx, ry = gather2(reg)
        cx, cy = o.Add(xs, rx), o.Add(ys, ry)
    two = o.CastLike(o.const([2.0], torch.float32), heat)
    hw_, hh_ = o.Div(bw, two), o.Div(bh, two)
    last = o.const([-1])
    cols = [o.Sub(cx, hw_), o.Sub(cy, hh_), o.Add(cx, hw_), o.Add(cy, hh_), top, labels]
    return o.Concat(*[o.Unsqueeze(c, last) for c in cols], axis=-1)


def _peaks_symbolic(g, heat, k, kernel):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    return _peaks_outputs(TorchScriptOps(g), heat, int(sh._maybe_get_const(k, "i")),
                          int(sh._maybe_get_const(kernel, "i")))


def _decode_symbolic(g, heat, wh, reg, k):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    return decode_graph(TorchScriptOps(g), heat, wh, None if sh._is_none(reg) else reg, int(sh._maybe_get_const(k, "i")))


torch.onnx.register_custom_op_symbolic("fastops::heatmap_peaks", _peaks_symbolic, 15)
torch.onnx.register_custom_op_symbolic("fastops::centernet_decode", _decode_symbolic, 15)


def onnx_translations():
    """{op: translation} for the dynamo exporter (collected by fastops.onnx.translations())."""
    from typing import Optional

    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat

    from fastops.registrations._onnx_ops import OnnxscriptOps

    def heatmap_peaks(heatmaps: TFloat, k: int, kernel: int):
        return _peaks_outputs(OnnxscriptOps(), heatmaps, k, kernel)

    def centernet_decode(heat: TFloat, wh: TFloat, reg: Optional[TFloat], k: int) -> TFloat:
        return decode_graph(OnnxscriptOps(), heat, wh, reg, k)

    return {torch.ops.fastops.heatmap_peaks.default: heatmap_peaks,
            torch.ops.fastops.centernet_decode.default: centernet_decode}
