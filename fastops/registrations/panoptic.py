"""panoptic_fuse: what every backend shares. The fake kernel (the compiled op and its `_triton` twin use the
same), autocast, ONNX, and the constants mirrored from csrc/panoptic/panoptic.h.

Imports neither `fastops.ops`, `fastops.triton` nor `fastops.reference`.
"""
from __future__ import annotations

import torch

import fastops._library  # noqa: F401  (loads fastops._C: the schema must exist before registering)

# Mirrored from csrc/panoptic/panoptic.h (kVoidId, kInstFields); tests compare them with
# torch.ops.fastops._panoptic_constants().
VOID_ID = 255
INST_FIELDS = 13  # sy0, sy1, sx0, sx1, my0, my1, mx0, mx1, by0, bx0, mh, mw, ch (panoptic.h Inst)


def fake_panoptic_fuse(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size=None, void=True):
    torch._check(semantic_logits.dim() == 3, lambda: "panoptic_fuse: semantic_logits must be 3-D")
    torch._check(boxes.size(0) == mask_logits.size(0), lambda: "panoptic_fuse: N mismatch")
    if output_size is None:
        h, w = semantic_logits.shape[1], semantic_logits.shape[2]
    else:
        h, w = output_size
    return semantic_logits.new_empty((h, w), dtype=torch.int32)


torch.library.register_fake("fastops::panoptic_fuse")(fake_panoptic_fuse)
