"""panoptic_fuse: UPSNet's test-time panoptic head fused into one op, straight to an int32 id map.

The compiled kernel is `torch.ops.fastops.panoptic_fuse` (schema in csrc/panoptic/panoptic_cpu.cpp); see
docs/flow_panoptic.md for the conventions.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from fastops._library import FLOAT_DTYPES, check_impl, check_tensor, cuda_compiled


def panoptic_fuse(
    semantic_logits: Tensor,
    mask_logits: Tensor,
    boxes: Tensor,
    labels: Tensor,
    *,
    num_stuff: int,
    output_size: Optional[Sequence[int]] = None,
    void: bool = True,
    impl: str = "auto",
) -> Tensor:
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
    check_impl(impl)
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
    if not isinstance(num_stuff, int) or not 0 <= num_stuff <= semantic_logits.shape[0]:
        raise ValueError(f"num_stuff must be an int in [0, {semantic_logits.shape[0]}] (the semantic channels), "
                         f"got {num_stuff!r}")
    if output_size is not None:
        output_size = [int(v) for v in output_size]
        if len(output_size) != 2 or min(output_size) < 0:
            raise ValueError(f"output_size must be (H, W) with non-negative sizes, got {output_size}")
        if min(output_size) > 0 and min(semantic_logits.shape[1:]) == 0:
            raise ValueError("semantic_logits must be non-empty to upsample them to output_size")
    if semantic_logits.shape[0] == 0:
        raise ValueError("semantic_logits must have at least one channel")
    if num_stuff == 0 and n == 0 and not void:
        raise ValueError("nothing to fuse: num_stuff is 0, there are no instances and void is False")
    if impl == "reference":
        from fastops.reference.panoptic import panoptic_fuse as ref

        return ref(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size, bool(void))
    if impl == "triton" or (impl == "auto" and semantic_logits.is_cuda and not cuda_compiled()):
        import fastops.triton.panoptic  # noqa: F401  (registers fastops::panoptic_fuse_triton)

        return torch.ops.fastops.panoptic_fuse_triton(semantic_logits, mask_logits, boxes, labels, num_stuff,
                                                      output_size, bool(void))
    return torch.ops.fastops.panoptic_fuse(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size,
                                           bool(void))


@torch.library.register_fake("fastops::panoptic_fuse")
def _panoptic_fuse_fake(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size=None, void=True):
    torch._check(boxes.size(0) == mask_logits.size(0))
    if output_size is None:
        h, w = semantic_logits.shape[1], semantic_logits.shape[2]
    else:
        h, w = output_size
    return semantic_logits.new_empty((h, w), dtype=torch.int32)
