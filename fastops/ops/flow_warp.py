"""flow_warp: backward warping of features by a dense optical flow (FlowNet2, RAFT, VPSNet, YolactEdge).

The compiled kernels are `torch.ops.fastops.flow_warp` / `_flow_warp_backward` (schemas in
csrc/flow_warp/flow_warp_cpu.cpp); see docs/flow_panoptic.md for the conventions.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastops._library import FLOAT_DTYPES, check_impl, check_tensor, cuda_compiled

PADDING_MODES = ("zeros", "border")
UNITS = ("pixel", "normalized")
FLOW_LAYOUTS = ("B2HW", "BHW2")


def flow_warp(
    input: Tensor,
    flow: Tensor,
    *,
    padding_mode: str = "zeros",
    align_corners: bool = True,
    units: str = "pixel",
    flow_layout: str = "B2HW",
    return_mask: bool = False,
    impl: str = "auto",
):
    """Backward-warp ``input`` by ``flow``: ``out[b, :, y, x] = input[b, :, y + v, x + u]`` (bilinear).

    Args:
        input: ``[B, C, H, W]`` features (contiguous, channels_last or strided; read in place),
            float32/64/16 or bfloat16.
        flow: ``[B, 2, H, W]`` (``flow_layout="B2HW"``) or ``[B, H, W, 2]`` (``"BHW2"``), channel 0 = u
            (horizontal), 1 = v (vertical); same dtype and device as ``input``.
        padding_mode: ``"zeros"`` (taps outside the map contribute 0) or ``"border"`` (the position is clamped
            to the map; the flow gradient is 0 where it was clamped, as in PyTorch).
        align_corners, units: the sampling convention.

            * ``units="pixel", align_corners=True``: ``ix = x + u`` exactly (FlowNet2 Resample2d, RAFT); zero or
              integer flows copy exactly.
            * ``units="pixel", align_corners=False``: ``ix = (x + u) * W / (W - 1) - 0.5``, i.e. the recipe
              ``grid_sample(input, 2 * (base + flow) / (W - 1, H - 1) - 1, align_corners=False)`` (VPSNet, mmflow).
            * ``units="normalized"``: ``flow`` is in grid units, ``grid = base_normalized + flow`` then
              grid_sample's ``align_corners`` rule (YolactEdge: pass ``flow / 8``).

            ``W - 1`` (``H - 1``) is taken as 1 when the size is 1.
        return_mask: also return ``mask[B, 1, H, W]`` (input dtype): 1 where every tap with non-zero weight of the
            unclamped position lies inside the map (NaN/inf flow: 0).
        impl: ``"auto"``/``"cpp"`` (compiled kernel), ``"triton"`` or ``"reference"`` (the grid_sample recipe).

    Returns:
        ``out[B, C, H, W]`` in the input's dtype and memory format (channels_last stays channels_last), and
        ``mask`` when ``return_mask``. NaN/inf flow gives 0 there. Differentiable w.r.t. ``input`` (deterministic)
        and ``flow``; each gradient is computed only when required.
    """
    check_impl(impl)
    check_tensor("input", input, dim=4, dtypes=FLOAT_DTYPES)
    check_tensor("flow", flow, dim=4, dtypes=FLOAT_DTYPES, device=input.device)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    if flow_layout not in FLOW_LAYOUTS:
        raise ValueError(f"flow_layout must be one of {FLOW_LAYOUTS}, got {flow_layout!r}")
    if flow.dtype != input.dtype:
        raise ValueError(f"flow must have the same dtype as input ({input.dtype}), got {flow.dtype}")
    f = flow if flow_layout == "B2HW" else flow.permute(0, 3, 1, 2)
    b, _, h, w = input.shape
    if f.shape[1] != 2 or f.shape[0] != b or f.shape[2] != h or f.shape[3] != w:
        want = f"[{b}, 2, {h}, {w}]" if flow_layout == "B2HW" else f"[{b}, {h}, {w}, 2]"
        raise ValueError(f"flow must have shape {want} (flow_layout={flow_layout!r}) to match input "
                         f"{tuple(input.shape)}, got {tuple(flow.shape)}")
    align_corners = bool(align_corners)
    if impl == "reference":
        from fastops.reference.flow_warp import flow_warp as ref

        return ref(input, f, padding_mode, align_corners, units, return_mask)
    if impl == "triton" or (impl == "auto" and input.is_cuda and not cuda_compiled()):
        import fastops.triton.flow_warp  # noqa: F401  (registers fastops::flow_warp_triton)

        out, mask = torch.ops.fastops.flow_warp_triton(input, f, padding_mode, align_corners, units, return_mask)
    else:
        out, mask = torch.ops.fastops.flow_warp(input, f, padding_mode, align_corners, units, return_mask)
    return (out, mask) if return_mask else out


# ---- fake kernels and autograd for the compiled op -------------------------------------------------------------

@torch.library.register_fake("fastops::flow_warp")
def _flow_warp_fake(input, flow, padding_mode="zeros", align_corners=True, units="pixel", return_mask=False):
    torch._check(flow.dim() == 4 and flow.size(1) == 2)
    out = torch.empty_like(input, memory_format=torch.preserve_format)
    if return_mask:
        mask = input.new_empty((input.size(0), 1, input.size(2), input.size(3)))
    else:
        mask = input.new_empty((0,))
    return out, mask


@torch.library.register_fake("fastops::_flow_warp_backward")
def _flow_warp_backward_fake(grad_output, input, flow, padding_mode, align_corners, units, input_requires_grad,
                             flow_requires_grad):
    gi = torch.empty_like(input, memory_format=torch.preserve_format) if input_requires_grad \
        else input.new_empty((0,))
    gf = torch.empty_like(flow, memory_format=torch.preserve_format) if flow_requires_grad \
        else flow.new_empty((0,))
    return gi, gf


def _setup_context(ctx, inputs, output):
    input, flow, padding_mode, align_corners, units, return_mask = inputs
    ctx.args = (padding_mode, align_corners, units)
    ctx.save_for_backward(input, flow)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_out, grad_mask):
    input, flow = ctx.saved_tensors
    need_input, need_flow = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    padding_mode, align_corners, units = ctx.args
    # grad_out is read through its strides (expanded or channels_last gradients need no copy).
    gi, gf = torch.ops.fastops._flow_warp_backward(grad_out, input, flow, padding_mode, align_corners, units,
                                                   need_input, need_flow)
    return (gi if need_input else None), (gf if need_flow else None), None, None, None, None


torch.library.register_autograd("fastops::flow_warp", _backward, setup_context=_setup_context)
