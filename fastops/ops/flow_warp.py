"""flow_warp: backward warping of features by a dense optical flow (FlowNet2, RAFT, VPSNet, YolactEdge).

The compiled kernels are `torch.ops.fastops.flow_warp` / `_flow_warp_backward` (schemas in
csrc/flow_warp/flow_warp.cpp); fakes, autograd, autocast and ONNX in fastops/registrations/flow_warp.py; the
conventions in docs/flow_panoptic.md.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor

from fastops import _library
from fastops._library import FLOAT_DTYPES, check_tensor
from fastops.registrations.flow_warp import FLOW_LAYOUTS, PADDING_MODES, UNITS


def flow_warp(input: Tensor, flow: Tensor, padding_mode: str = "zeros", align_corners: bool = True,
              units: str = "pixel", flow_layout: str = "B2HW", return_mask: bool = False,
              impl: str = "auto") -> Union[Tensor, Tuple[Tensor, Tensor]]:
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
        flow_layout: ``"B2HW"`` or ``"BHW2"`` (read in place through the strides, no copy).
        return_mask: also return ``mask[B, 1, H, W]`` (input dtype): 1 where every tap with non-zero weight of the
            unclamped position lies inside the map (NaN/inf flow: 0).
        impl: ``"auto"``/``"cpp"`` (compiled kernel), ``"triton"`` or ``"reference"`` (the grid_sample recipe).

    Returns:
        ``out[B, C, H, W]`` in the input's dtype and memory format (channels_last stays channels_last), and
        ``mask`` when ``return_mask``. Differentiable w.r.t. ``input`` (deterministic on CPU, and on CUDA in
        deterministic mode) and ``flow``; each gradient is computed only when required.

    NaN/inf: a non-finite flow value (or a position past the map in ``"zeros"`` mode) gives output 0, mask 0 and
    zero gradients at that pixel. NaN/inf in ``input`` reach every output pixel whose four bilinear taps inside
    the map include them, even at weight 0 (as ``grid_sample``: ``0 * inf = NaN``); taps outside the map are never
    read, so a sample entirely outside the map is exactly 0.

    Speed (CPU): a gather, bandwidth-bound in principle; the forward is 2-2.5x one read + one write of the map
    (``copy_`` into an existing tensor). Quiet 2-core VM, float32 NCHW, pixel flow of a few pixels, median of 21:
    ``[2,256,96,160]`` (31.5 MB) 5.0 ms against a copy's 2.5 ms at 1 thread, 2.8 against 1.2 ms at 2;
    ``[1,128,256,448]`` (58.7 MB) 15.1 against 8.1 ms at 1 thread, 7.3 against 3.0 ms at 2 (what is left is the
    four taps' arithmetic per channel; the output is a reused block, docs/README.md "CPU memory").

    ONNX: exports to ``GridSample`` (see fastops/registrations/flow_warp.py).
    """
    if torch.jit.is_scripting():
        f = flow if flow_layout == "B2HW" else flow.permute(0, 3, 1, 2)
        out, mask = torch.ops.fastops.flow_warp(input, f, padding_mode, align_corners, units, return_mask)
        if return_mask:
            return out, mask
        return out
    if torch.overrides.has_torch_function((input, flow)):  # torch.fx Proxies (a leaf call), tensor subclasses
        return torch.overrides.handle_torch_function(
            _PUBLIC, (input, flow), input, flow, padding_mode, align_corners, units, flow_layout, return_mask,
            impl)
    return _flow_warp(input, flow, padding_mode, align_corners, units, flow_layout, return_mask, impl)


def _flow_warp(input, flow, padding_mode, align_corners, units, flow_layout, return_mask, impl):
    _library.check_impl(impl)
    check_tensor("input", input, dim=4, dtypes=FLOAT_DTYPES)
    check_tensor("flow", flow, dim=4, dtypes=FLOAT_DTYPES, device=input.device)
    if torch.is_autocast_enabled(input.device.type) and input.dtype != torch.float64:
        # Autocast (torchvision's roi_align rule): compute in float32, mixed dtypes accepted, result in the
        # features' dtype (every impl; the compiled op also has an autocast kernel in registrations/flow_warp.py).
        with torch.autocast(input.device.type, enabled=False):
            res = _flow_warp(input.float(), flow.float(), padding_mode, align_corners, units, flow_layout,
                             return_mask, impl)
        return (res[0].to(input.dtype), res[1].to(input.dtype)) if return_mask else res.to(input.dtype)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    if flow_layout not in FLOW_LAYOUTS:
        raise ValueError(f"flow_layout must be one of {FLOW_LAYOUTS}, got {flow_layout!r}")
    if not isinstance(align_corners, bool):
        raise ValueError(f"align_corners must be a bool, got {align_corners!r}")
    if not isinstance(return_mask, bool):
        raise ValueError(f"return_mask must be a bool, got {return_mask!r}")
    if flow.dtype != input.dtype:
        raise ValueError(f"flow must have the same dtype as input ({input.dtype}), got {flow.dtype}")
    f = flow if flow_layout == "B2HW" else flow.permute(0, 3, 1, 2)
    b, _, h, w = input.shape
    if f.shape[1] != 2 or f.shape[0] != b or f.shape[2] != h or f.shape[3] != w:
        want = f"[{b}, 2, {h}, {w}]" if flow_layout == "B2HW" else f"[{b}, {h}, {w}, 2]"
        raise ValueError(f"flow must have shape {want} (flow_layout={flow_layout!r}) to match input "
                         f"{tuple(input.shape)}, got {tuple(flow.shape)}")
    args = (input, f, padding_mode, align_corners, units, return_mask)

    def triton():
        _library.triton_module("flow_warp")
        return torch.ops.fastops.flow_warp_triton(*args)

    out, mask = _library.dispatch(
        "flow_warp", impl, input.device,
        cpp=lambda: torch.ops.fastops.flow_warp(*args),
        reference=lambda: _library.reference_module("flow_warp").flow_warp(*args),
        triton=triton)
    return (out, mask) if return_mask else out


_PUBLIC = flow_warp  # the leaf that torch.fx records (fx.wrap patches the global name while tracing)
torch.fx.wrap("flow_warp")
