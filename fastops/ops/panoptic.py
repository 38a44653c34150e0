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
    """
    if torch.jit.is_scripting():
        if mask_logits.dim() == 4:
            mask_logits = mask_logits[:, 0]
        return torch.ops.fastops.panoptic_fuse(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size,
                                               void)
    if torch.overrides.has_torch_function((semantic_logits, mask_logits, boxes, labels)):  # torch.fx Proxies
        return torch.overrides.handle_torch_function(
            panoptic_fuse, (semantic_logits, mask_logits, boxes, labels), semantic_logits, mask_logits, boxes,
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
    check_tensor("boxes", boxes, dim=2, dtypes=FLOAT_DTYPES, device=dev)
    check_tensor("labels", labels, dim=1, dtypes=(torch.int64, torch.int32), device=dev)
    if mask_logits.dtype != semantic_logits.dtype:
        raise ValueError(f"mask_logits must have the same dtype as semantic_logits ({semantic_logits.dtype}), "
                         f"got {mask_logits.dtype}")
    n = mask_logits.shape[0]
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes must have shape [N, 4] with N = {n} (mask_logits), got {tuple(boxes.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"labels must have shape [N] with N = {n} (mask_logits), got {tuple(labels.shape)}")
    if n > 0 and (mask_logits.shape[1] == 0 or mask_logits.shape[2] == 0):
        raise ValueError(f"mask_logits must have a non-empty M x M map, got {tuple(mask_logits.shape)}")
    num_stuff = check_int("num_stuff", num_stuff, low=0, high=semantic_logits.shape[0])
    if not isinstance(void, bool):
        raise ValueError(f"void must be a bool, got {void!r}")
    if output_size is not None:
        if isinstance(output_size, torch.Size):
            output_size = list(output_size)
        if not isinstance(output_size, (list, tuple)) or len(output_size) != 2:
            raise ValueError(f"output_size must be (H, W), got {output_size!r}")
        output_size = [check_int(f"output_size[{k}]", v, low=0, high=_MAX_SIZE) for k, v in enumerate(output_size)]
        if min(output_size) > 0 and min(semantic_logits.shape[1:]) == 0:
            raise ValueError("semantic_logits must be non-empty to upsample them to output_size")
    if semantic_logits.shape[0] == 0:
        raise ValueError("semantic_logits must have at least one channel")
    if num_stuff == 0 and n == 0 and not void:
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


torch.fx.wrap("panoptic_fuse")
