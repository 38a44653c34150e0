"""panoptic_fuse: UPSNet's test-time panoptic head fused into one op, straight to an int32 id map.

The compiled kernel is `torch.ops.fastops.panoptic_fuse` (schema in csrc/panoptic/panoptic.cpp); fake, autocast
and ONNX in fastops/registrations/panoptic.py; the conventions in docs/flow_panoptic.md.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from fastops import _library
from fastops._library import FLOAT_DTYPES, check_int, check_tensor
from fastops.registrations import panoptic as _registrations  # noqa: F401  (fake kernel, autocast, ONNX)

_MAX_SIZE = 2 ** 31 - 1


def panoptic_fuse(semantic_logits: Tensor, mask_logits: Tensor, boxes: Tensor, labels: Tensor, num_stuff: int,
                  output_size: Optional[List[int]] = None, void: bool = True, impl: str = "auto") -> Tensor:
    """UPSNet panoptic fusion (inference): semantic + instance logits -> panoptic id map ``[H, W]`` int32.

    Args:
        semantic_logits: ``[S + T, h, w]`` semantic head logits, stuff channels first (``S = num_stuff``), then
            the ``T`` thing classes; float32/64/16 or bfloat16 (computed in float32).
        mask_logits: ``[N, M, M]`` (or ``[N, 1, M, M]``) per-instance mask logits (the detected class's channel),
            same dtype as ``semantic_logits``.
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)`` in output pixels (inclusive corners as UPSNet: size ``x2 - x1 + 1``).
        labels: ``[N]`` int64/int32 detector labels ``k`` in ``1..T`` (channel ``S + k - 1``).
        num_stuff: ``S``.
        output_size: ``(H, W)``: upsample the semantic logits bilinearly (align_corners=False) on the fly, as
            UPSNet's ``fcn_output``; default: the semantic logits' size.
        void: add UPSNet's void channel ``max_k X[S+k] - max_i seg_i`` (ids 255).
        impl: ``"auto"``/``"cpp"``, ``"triton"`` or ``"reference"`` (the UPSNet transcription).

    Returns:
        ``[H, W]`` int32: ``0..S-1`` stuff class, ``S + i`` instance ``i``, ``255`` void. Per instance the logit
        is ``X[S + k_i - 1] + resized mask logits`` inside its box and ``0`` outside; argmax ties go to the lower
        channel. Never builds the ``[S + N + 1, H, W]`` logit tensor.

    NaN/inf: as the reference's ``torch.argmax`` over the panoptic logits: a NaN logit beats every number and the
    first NaN channel wins (a NaN thing logit makes the void logit NaN, as ``torch.max``); ``+-inf`` are ordinary
    values, and the on-the-fly upsampling follows PyTorch's bilinear resize (``0 * inf = NaN`` at a zero-weight
    tap; bit for bit at power-of-two scales, within a few ulps at others, see docs/flow_panoptic.md). Box
    coordinates are bounded to ``+-2^40`` first (a larger box is clipped by the map anyway). Labels outside
    ``1..T`` and non-finite boxes raise ``RuntimeError`` on the CPU (and in the reference); the CUDA and Triton
    kernels do not sync to check them: such an instance gets no semantic term, a NaN box is empty.

    ONNX (both exporters, opset 18): UPSNet's own formulation, built in the graph: the semantic logits upsampled
    with the kernels' bilinear taps (Gather + lerp), per instance its semantic channel inside the seg region plus
    its mask logits resized to the truncated box (per-instance taps, GatherElements), the void channel (ReduceMax),
    ``ArgMax`` (first index on ties), ``Where`` for 255; memory ``O((S + N) * H * W)``. Dynamic N and semantic
    size; ``output_size`` is static. Ids equal eager's in onnxruntime (NaN logits and an ``output_size`` equal to
    the logits' size with ``+-inf`` logits follow ONNX's arithmetic instead: 0 * inf).
    """
    if torch.jit.is_scripting():
        if mask_logits.dim() == 4:
            mask_logits = mask_logits[:, 0]
        return torch.ops.fastops.panoptic_fuse(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size,
                                               void)
    if torch.overrides.has_torch_function((semantic_logits, mask_logits, boxes, labels)):  # torch.fx Proxies
        return torch.overrides.handle_torch_function(
            _PUBLIC, (semantic_logits, mask_logits, boxes, labels), semantic_logits, mask_logits, boxes,
            labels, num_stuff, output_size, void, impl)
    return _panoptic_fuse(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size, void, impl)


def _panoptic_fuse(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size, void, impl):
    _library.check_impl(impl)
    check_tensor("semantic_logits", semantic_logits, dim=3, dtypes=FLOAT_DTYPES)
    dev = semantic_logits.device
    check_tensor("mask_logits", mask_logits, dim=(3, 4), dtypes=FLOAT_DTYPES, device=dev)
    if mask_logits.dim() == 4:
        if mask_logits.shape[1] != 1:
            raise ValueError(f"mask_logits must be [N, M, M] or [N, 1, M, M], got {tuple(mask_logits.shape)}")
        mask_logits = mask_logits[:, 0]
    if torch.is_autocast_enabled(dev.type) and mask_logits.dtype != semantic_logits.dtype:
        # Autocast: the logits in float32 (the kernels compute in float32; the ids do not depend on the cast).
        semantic_logits, mask_logits = semantic_logits.float(), mask_logits.float()
    check_tensor("boxes", boxes, dim=2, dtypes=FLOAT_DTYPES, device=dev)
    check_tensor("labels", labels, dim=1, dtypes=(torch.int64, torch.int32), device=dev)
    if mask_logits.dtype != semantic_logits.dtype:
        raise ValueError(f"mask_logits must have the same dtype as semantic_logits ({semantic_logits.dtype}), "
                         f"got {mask_logits.dtype}")
    n = mask_logits.shape[0]
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] with N = {n} (mask_logits), got {tuple(boxes.shape)}")
    if not torch.compiler.is_compiling():
        if boxes.shape[0] != n:
            raise ValueError(f"boxes must have shape [N, 4] with N = {n} (mask_logits), got {tuple(boxes.shape)}")
        if labels.shape[0] != n:
            raise ValueError(f"labels must have shape [N] with N = {n} (mask_logits), got {tuple(labels.shape)}")
    else:  # N may be a data-dependent size (a boolean-mask selection): a deferred runtime assert
        torch._check(boxes.shape[0] == n, lambda: "panoptic_fuse: boxes must have shape [N, 4] like mask_logits")
        torch._check(labels.shape[0] == n, lambda: "panoptic_fuse: labels must have shape [N] like mask_logits")
    if (mask_logits.shape[1] == 0 or mask_logits.shape[2] == 0) and n > 0:
        raise ValueError(f"mask_logits must have a non-empty M x M map, got {tuple(mask_logits.shape)}")
    num_stuff = check_int("num_stuff", num_stuff, low=0, high=semantic_logits.shape[0])
    if not isinstance(void, bool):
        raise ValueError(f"void must be a bool, got {void!r}")
    if output_size is not None:
        if isinstance(output_size, torch.Size):
            output_size = list(output_size)
        if not isinstance(output_size, (list, tuple)) or len(output_size) != 2:
            raise ValueError(f"output_size must be (H, W), got {output_size!r}")
        # a traced model (the TorchScript ONNX exporter) passes sizes as 0-d integer tensors: taken as their value
        output_size = [int(v) if isinstance(v, Tensor) and v.dim() == 0 and not v.is_floating_point()
                       and v.dtype != torch.bool else v for v in output_size]
        output_size = [check_int(f"output_size[{k}]", v, low=0, high=_MAX_SIZE) for k, v in enumerate(output_size)]
        if min(output_size) > 0 and min(semantic_logits.shape[1:]) == 0:
            raise ValueError("semantic_logits must be non-empty to upsample them to output_size")
    if semantic_logits.shape[0] == 0:
        raise ValueError("semantic_logits must have at least one channel")
    if not void and num_stuff == 0 and n == 0:
        raise ValueError("nothing to fuse: num_stuff is 0, there are no instances and void is False")
    args = (semantic_logits, mask_logits, boxes, labels, num_stuff, output_size, void)

    def triton():
        _library.triton_module("panoptic")
        return torch.ops.fastops.panoptic_fuse_triton(*args)

    return _library.dispatch(
        "panoptic_fuse", impl, dev,
        cpp=lambda: torch.ops.fastops.panoptic_fuse(*args),
        reference=lambda: _library.reference_module("panoptic").panoptic_fuse(*args),
        triton=triton)


_PUBLIC = panoptic_fuse  # the leaf that torch.fx records (fx.wrap patches the global name while tracing)
torch.fx.wrap("panoptic_fuse")
