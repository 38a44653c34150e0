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
