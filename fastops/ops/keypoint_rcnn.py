"""Keypoint R-CNN: `roi_heatmaps_to_keypoints` (torchvision's ``heatmaps_to_keypoints`` in one op).

Conventions and anchors: docs/keypoint_rcnn.md. Compiled kernel: `torch.ops.fastops.roi_heatmaps_to_keypoints`
(schema in csrc/keypoint_rcnn/keypoint_rcnn.cpp); `impl="triton"` runs `fastops::roi_heatmaps_to_keypoints_triton`
(fastops/triton/keypoint_rcnn.py); `impl="reference"` the PyTorch transcription in fastops.reference.keypoint_rcnn.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

import fastops.registrations.keypoint_rcnn  # noqa: F401  (fake kernels, autocast)
from fastops._library import FLOAT_DTYPES, check_tensor, dispatch, reference_module, triton_module
from fastops.ops._keypoints import autocast_float32, traced_call

torch.fx.wrap("roi_heatmaps_to_keypoints")


def roi_heatmaps_to_keypoints(maps: Tensor, rois: Tensor, impl: str = "auto") -> Tuple[Tensor, Tensor]:
    """torchvision's ``roi_heads.heatmaps_to_keypoints`` in one op, without materialising the upsampled maps.

    ``maps [R, K, H, W]`` (Keypoint R-CNN's heatmap logits), ``rois [R, 4]`` ``(x1, y1, x2, y2)`` boxes in image
    coordinates. Each RoI's maps are resized bicubically (A = -0.75, ``align_corners=False``, clamped taps) to
    ``ceil(max(w, 1)) x ceil(max(h, 1))``; the first maximum of each keypoint's resized map (torch.argmax order)
    at ``(x_int, y_int)`` gives ``x = (x_int + 0.5) * w / ceil(w) + x1`` (and y alike), ``v = 1``, and its value
    the score. Returns ``(keypoints [R, K, 3], scores [R, K])``, float32, bit for bit torchvision's on the CPU
    (docs/keypoint_rcnn.md says how; on CUDA, the arithmetic of torchvision's CPU path).

    dtypes: float32 / float64 maps and RoIs are used as they are (mixed accepted); float16 / bfloat16 ones are
    computed in float32 (torchvision would resize in half precision; fastops does not).

    NaN/inf: a NaN in a resized map wins its argmax (as torch.argmax: the first NaN), score NaN; +-inf map values
    propagate as in torchvision. RoIs must be finite (ValueError, as torchvision's ``int(nan)``) and at most
    65536 px a side; empty or inverted RoIs are 1 x 1 px (torchvision's clamp).

    ONNX (both exporters, opset 16, R dynamic): the bicubic taps as ``GatherElements`` per axis, ATen's weights,
    every RoI's map on one grid padded to the largest ``ceil(h) x ceil(w)`` (-inf outside its own size), ``ArgMax``
    (first maximum), the coordinates as above; no Loop. Memory ``R x K x max h x max w`` values. onnxruntime sums
    in ATen's unfused (baseline) order: scores within a few ulp of eager's, keypoints equal unless two upsampled
    values are within those ulp (docs/keypoint_rcnn.md).

    Autocast (CPU and CUDA): computed in float32, outputs float32.

    TorchScript: scripts (the scripted function runs the compiled kernel; the op's own checks apply).
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.roi_heatmaps_to_keypoints(maps, rois)
    leaf = traced_call(roi_heatmaps_to_keypoints, (maps, rois), maps, rois, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_roi_heatmaps_to_keypoints, maps, maps, rois, impl)


def _f32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _roi_heatmaps_to_keypoints(maps, rois, impl):
    check_tensor("maps", maps, dim=4, dtypes=FLOAT_DTYPES)
    check_tensor("rois", rois, dim=2, dtypes=FLOAT_DTYPES, device=maps.device)
    R, K, H, W = maps.shape
    if rois.size(1) != 4:
        raise ValueError(f"rois must be [R, 4], got shape {tuple(rois.shape)}")
    if rois.size(0) != R:
        raise ValueError(f"rois must have one box per map: maps has {R} RoIs, rois {rois.size(0)}")
    if R * K > 0 and (H == 0 or W == 0):
        raise ValueError(f"maps must have non-empty H and W, got shape {tuple(maps.shape)}")
    maps, rois = _f32(maps), _f32(rois)
    return dispatch(
        "roi_heatmaps_to_keypoints", impl, maps.device,
        cpp=lambda: torch.ops.fastops.roi_heatmaps_to_keypoints(maps, rois),
        reference=lambda: reference_module("keypoint_rcnn").heatmaps_to_keypoints(maps, rois),
        triton=lambda: triton_module("keypoint_rcnn").roi_heatmaps_to_keypoints_triton(maps, rois))
