"""DensePose (densepose_chart_to_iuv, densepose_paste_iuv, roi_point_sample): what every backend shares.

Fake kernels (the packed chart output has a data-dependent length: an unbacked size), roi_point_sample's autograd
(one setup_context, one backward factory taking the backward op) and autocast (float32 compute).
"""
import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)

MAX_BOX_SIDE = 1 << 16  # csrc/densepose/densepose.h kMaxBoxSide


def chart_to_iuv_fake(coarse, fine, u, v, boxes):
    n = torch.library.get_ctx().new_dynamic_size()
    R = fine.size(0)
    return (fine.new_empty((n,), dtype=torch.uint8), fine.new_empty((2 * n,), dtype=torch.float32),
            boxes.new_empty((R + 1,), dtype=torch.int64), boxes.new_empty((R, 4), dtype=torch.int64))


def paste_iuv_fake(coarse, fine, u, v, boxes, scores, height, width):
    return fine.new_empty((3, height, width), dtype=torch.uint8)


def point_sample_fake(maps, roi_index, points):
    return maps.new_empty((roi_index.size(0), maps.size(1)))


def point_sample_backward_fake(grad, maps, roi_index, points):
    return maps.new_empty(maps.shape)


def point_sample_setup_context(ctx, inputs, output):
    maps, roi_index, points = inputs
    ctx.save_for_backward(maps, roi_index, points)


def point_sample_backward(backward_op):
    """The autograd backward of roi_point_sample for a given backward op (the compiled one or a Triton twin):
    gradient for the maps only (indices and points are data)."""

    def backward(ctx, grad):
        maps, roi_index, points = ctx.saved_tensors
        return backward_op(grad.contiguous(), maps, roi_index, points), None, None

    return backward


FAKES = {"densepose_chart_to_iuv": chart_to_iuv_fake, "densepose_paste_iuv": paste_iuv_fake,
         "roi_point_sample": point_sample_fake, "_roi_point_sample_backward": point_sample_backward_fake}

for _name, _fake in FAKES.items():
    torch.library.register_fake(f"fastops::{_name}")(_fake)
torch.library.register_autograd("fastops::roi_point_sample",
                                point_sample_backward(torch.ops.fastops._roi_point_sample_backward),
                                setup_context=point_sample_setup_context)

# Autocast (CPU and CUDA): float16/bfloat16 inputs are computed in float32 (roi_point_sample returns float32, as
# torchvision's roi_align computes under autocast); the chart outputs are uint8 / float32 in any case.
AUTOCAST_FLOAT32 = ("densepose_chart_to_iuv", "densepose_paste_iuv", "roi_point_sample")
for _name in AUTOCAST_FLOAT32:
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"fastops::{_name}", _device, torch.float32)
