"""flow_warp: what every backend shares. Fake kernels (the compiled op and its `_triton` twin use the same),
setup_context and one backward factory, autocast, ONNX, and the option strings the C++ op accepts.

Imports neither `fastops.ops`, `fastops.triton` nor `fastops.reference`.
"""
from __future__ import annotations

from typing import Callable

import torch

import fastops._library  # noqa: F401  (loads fastops._C: the schemas must exist before registering)

# The strings csrc/flow_warp/flow_warp.cpp `parse_options` accepts (tests/test_flow_warp.py checks the C++ side).
PADDING_MODES = ("zeros", "border")
UNITS = ("pixel", "normalized")
FLOW_LAYOUTS = ("B2HW", "BHW2")  # Python-side only: the op always takes [B, 2, H, W] (BHW2 is passed as a view)


def fake_forward(input, flow, padding_mode="zeros", align_corners=True, units="pixel", return_mask=False):
    torch._check(input.dim() == 4, lambda: "flow_warp: input must be 4-D")
    torch._check(flow.dim() == 4 and flow.size(1) == 2, lambda: "flow_warp: flow must be [B, 2, H, W]")
    out = torch.empty_like(input, memory_format=torch.preserve_format)
    if return_mask:
        mask = input.new_empty((input.size(0), 1, input.size(2), input.size(3)))
    else:
        mask = input.new_empty((0,))
    return out, mask


def fake_backward(grad_output, input, flow, padding_mode, align_corners, units, input_requires_grad,
                  flow_requires_grad):
    gi = torch.empty_like(input, memory_format=torch.preserve_format) if input_requires_grad \
        else input.new_empty((0,))
    gf = torch.empty_like(flow, memory_format=torch.preserve_format) if flow_requires_grad \
        else flow.new_empty((0,))
    return gi, gf


def setup_context(ctx, inputs, output):
    input, flow, padding_mode, align_corners, units, return_mask = inputs
    ctx.args = (padding_mode, align_corners, units)
    ctx.save_for_backward(input, flow)
    ctx.mark_non_differentiable(output[1])


def make_backward(backward_op: Callable):
    """The autograd backward of a flow_warp op whose gradients `backward_op` computes (same schema as
    `fastops::_flow_warp_backward`). Each gradient is computed only when required."""

    def backward(ctx, grad_out, grad_mask):
        input, flow = ctx.saved_tensors
        need_input, need_flow = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        padding_mode, align_corners, units = ctx.args
        # grad_out is read through its strides (expanded or channels_last gradients need no copy).
        gi, gf = backward_op(grad_out, input, flow, padding_mode, align_corners, units, need_input, need_flow)
        return (gi if need_input else None), (gf if need_flow else None), None, None, None, None

    return backward


torch.library.register_fake("fastops::flow_warp")(fake_forward)
torch.library.register_fake("fastops::_flow_warp_backward")(fake_backward)
torch.library.register_autograd("fastops::flow_warp", make_backward(torch.ops.fastops._flow_warp_backward),
                                setup_context=setup_context)


# ---- autocast (CPU and CUDA): torchvision's rule for roi_align — compute in float32 (mixed feature/flow dtypes
# accepted), return the features' dtype.

def autocast_forward(input, flow, padding_mode="zeros", align_corners=True, units="pixel", return_mask=False):
    with torch.autocast(input.device.type, enabled=False):
        out, mask = torch.ops.fastops.flow_warp(input.float(), flow.float(), padding_mode, align_corners, units,
                                                return_mask)
    return out.to(input.dtype), mask.to(input.dtype)


_lib = torch.library.Library("fastops", "IMPL")
for _key in ("AutocastCPU", "AutocastCUDA"):
    _lib.impl("flow_warp", autocast_forward, _key)


# ---- ONNX: GridSample (opset 16). Every convention maps to GridSample(align_corners=0) on the grid whose
# unnormalised position is exactly the op's `ix = a * x + b * u + c` (flow_warp.h make_axis):
#   gx = (2 * ix + 1) / W - 1  <=>  GridSample's ix = ((gx + 1) * W - 1) / 2
# so W = 1 / H = 1 need no special case; a non-finite flow value gives 0 (Where), as the op.
ONNX_OPSET = 16


def _axis_coeffs(size, align_corners: bool, units: str, k):
    """(a, b, c) of flow_warp.h make_axis for a dynamic `size` (float scalar tensor-like); `k` builds ops."""
    one = k.const(1.0)
    d = k.call("Max", k.call("Sub", size, one), one)
    if units == "pixel":
        if align_corners:
            return one, one, k.const(0.0)
        s = k.call("Div", size, d)
        return s, s, k.const(-0.5)
    if align_corners:
        return one, k.call("Div", k.call("Sub", size, one), k.const(2.0)), k.const(0.0)
    return k.call("Div", size, d), k.call("Div", size, k.const(2.0)), k.const(-0.5)


def build_onnx(k, input, flow, padding_mode: str, align_corners: bool, units: str, return_mask: bool):
    """The exported graph, written once against a small op-builder `k` (TorchScript `g.op` or onnxscript)."""
    shape = k.call("Shape", flow)
    h_i = k.call("Gather", shape, k.const_i([2]), axis=0)
    w_i = k.call("Gather", shape, k.const_i([3]), axis=0)
    h = k.call("Cast", h_i, to=1)
    w = k.call("Cast", w_i, to=1)
    zero_i, one_i = k.const_i([0]), k.const_i([1])
    xs = k.call("Cast", k.call("Range", k.const_i(0, scalar=True), k.call("Squeeze", w_i), k.const_i(1, scalar=True)),
                to=1)
    ys = k.call("Cast", k.call("Range", k.const_i(0, scalar=True), k.call("Squeeze", h_i), k.const_i(1, scalar=True)),
                to=1)
    xs = k.call("Unsqueeze", xs, k.const_i([0, 1]))   # [1, 1, W]
    ys = k.call("Unsqueeze", ys, k.const_i([0, 2]))   # [1, H, 1]
    f32 = k.call("Cast", flow, to=1)
    u = k.call("Squeeze", k.call("Slice", f32, zero_i, one_i, one_i), one_i)                   # [B, H, W]
    v = k.call("Squeeze", k.call("Slice", f32, one_i, k.const_i([2]), one_i), one_i)
    ax, bx, cx = _axis_coeffs(w, align_corners, units, k)
    ay, by, cy = _axis_coeffs(h, align_corners, units, k)
    ix = k.call("Add", k.call("Add", k.call("Mul", ax, xs), k.call("Mul", bx, u)), cx)
    iy = k.call("Add", k.call("Add", k.call("Mul", ay, ys), k.call("Mul", by, v)), cy)
    two, one = k.const(2.0), k.const(1.0)
    gx = k.call("Sub", k.call("Div", k.call("Add", k.call("Mul", two, ix), one), w), one)
    gy = k.call("Sub", k.call("Div", k.call("Add", k.call("Mul", two, iy), one), h), one)
    finite = k.call("Not", k.call("Or", k.call("Or", k.call("IsNaN", u), k.call("IsInf", u)),
                                  k.call("Or", k.call("IsNaN", v), k.call("IsInf", v))))
    zero = k.const(0.0)
    gx = k.call("Where", finite, gx, zero)
    gy = k.call("Where", finite, gy, zero)
    grid = k.call("Concat", k.call("Unsqueeze", gx, k.const_i([3])), k.call("Unsqueeze", gy, k.const_i([3])), axis=3)
    x32 = k.call("Cast", input, to=1)
    out = k.call("GridSample", x32, grid, mode="bilinear", padding_mode=padding_mode, align_corners=0)
    fin4 = k.call("Unsqueeze", finite, one_i)
    out = k.call("Where", fin4, out, zero)
    out = k.call("CastLike", out, input)
    if not return_mask:
        return out, k.call("CastLike", k.const_empty(), input)
    # mask: per axis floor(p) in [0, size) and (p integral or floor(p) + 1 < size), unclamped position, finite.
    def valid(p, size):
        p0 = k.call("Floor", p)
        ok = k.call("And", k.call("GreaterOrEqual", p0, zero), k.call("Less", p0, size))
        return k.call("And", ok, k.call("Or", k.call("Equal", p, p0), k.call("Less", k.call("Add", p0, one), size)))
    m = k.call("And", k.call("And", valid(ix, w), valid(iy, h)), finite)
    return out, k.call("CastLike", k.call("Unsqueeze", m, one_i), input)


class _TorchScriptBuilder:
    def __init__(self, g):
        self.g = g

    def const(self, v):
        return self.g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32))

    def const_i(self, v, scalar=False):
        return self.g.op("Constant", value_t=torch.tensor(v, dtype=torch.int64))

    def const_empty(self):
        return self.g.op("Constant", value_t=torch.zeros(0, dtype=torch.float32))

    def call(self, name, *args, **attrs):
        kw = {}
        for key, val in attrs.items():
            kw[key + ("_s" if isinstance(val, str) else "_i")] = val
        return self.g.op(name, *args, **kw)


def _symbolic(g, input, flow, padding_mode, align_corners, units, return_mask):
    from torch.onnx import symbolic_helper as sh

    out, mask = build_onnx(_TorchScriptBuilder(g), input, flow, sh._maybe_get_const(padding_mode, "s"),
                           bool(sh._maybe_get_const(align_corners, "b")), sh._maybe_get_const(units, "s"),
                           bool(sh._maybe_get_const(return_mask, "b")))
    return out, mask


torch.onnx.register_custom_op_symbolic("fastops::flow_warp", _symbolic, ONNX_OPSET)


def onnx_translations():
    """{torch.ops.fastops.flow_warp.default: onnxscript function} for the dynamo exporter."""
    import numpy as np
    from onnxscript import opset18 as op
    from onnxscript import ir

    class _ScriptBuilder:
        def const(self, v):
            return op.Constant(value=ir.tensor(np.array(v, dtype=np.float32)))

        def const_i(self, v, scalar=False):
            return op.Constant(value=ir.tensor(np.array(v, dtype=np.int64)))

        def const_empty(self):
            return op.Constant(value=ir.tensor(np.zeros(0, dtype=np.float32)))

        def call(self, name, *args, **attrs):
            return getattr(op, name)(*args, **attrs)

    def flow_warp_onnx(input, flow, padding_mode: str = "zeros", align_corners: bool = True, units: str = "pixel",
                       return_mask: bool = False):
        return build_onnx(_ScriptBuilder(), input, flow, padding_mode, bool(align_corners), units, bool(return_mask))

    return {torch.ops.fastops.flow_warp.default: flow_warp_onnx}
