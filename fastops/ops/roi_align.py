"""RoIAlign: `roi_align`, `RoIAlign`, `multi_scale_roi_align`, `MultiScaleRoIAlign` (see docs/roi_align.md).

Conventions are torchvision.ops' to the letter; the compiled kernels are `torch.ops.fastops.roi_align` /
`multi_scale_roi_align` (schemas in csrc/roi_align/roi_align.cpp); fakes, autograd, autocast and ONNX live in
fastops/registrations/roi_align.py.
"""

import math
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

# (importing the registrations module registers the fakes, autograd, autocast and ONNX of the compiled ops)
from fastops.registrations.roi_align import MAX_SAMPLING_RATIO, autocast_enabled, autocast_float
from fastops._library import (FLOAT_DTYPES, check_impl, check_int, check_tensor, dispatch, reference_module,
                              triton_module)

BoxesType = Union[Tensor, Sequence[Tensor]]
_INT32_MAX = 2 ** 31 - 1


def _pair(x) -> Tuple[int, int]:
    if isinstance(x, (list, tuple)):
        if len(x) == 1:
            x = (x[0], x[0])
        if len(x) != 2:
            raise ValueError(f"output_size must be an int or a pair, got {x!r}")
    else:
        x = (x, x)
    return (check_int("output_size", x[0], low=1, high=_INT32_MAX),
            check_int("output_size", x[1], low=1, high=_INT32_MAX))


class BoxesShapeError(ValueError, AssertionError):
    """Malformed ``boxes``: a ValueError naming the argument that is also the AssertionError torchvision raises
    for the same input (``check_roi_boxes_shape``)."""


def boxes_to_rois(boxes: BoxesType, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`Tensor[K,5]` (batch index, x1, y1, x2, y2) from either that or a list of per-image `Tensor[L_i,4]`."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise BoxesShapeError(f"boxes as a Tensor must have shape [K, 5], got {tuple(boxes.shape)}")
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise BoxesShapeError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.size(1) != 4:
            what = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise BoxesShapeError(f"boxes[{i}] must have shape [L, 4], got {what}")
    if len(boxes) == 0:
        return torch.zeros(0, 5, dtype=dtype, device=device)
    cat = torch.cat(list(boxes), dim=0)
    idx = torch.cat([torch.full((b.size(0), 1), i, dtype=cat.dtype, device=cat.device) for i, b in enumerate(boxes)])
    return torch.cat([idx, cat], dim=1)


def _dequantize_boxes(boxes):
    if isinstance(boxes, Tensor):
        return boxes.dequantize() if boxes.is_quantized else boxes
    if isinstance(boxes, (list, tuple)):
        return [_dequantize_boxes(b) for b in boxes]
    return boxes


def _quantized_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, impl) -> Tensor:
    # torchvision's quantized RoIAlign: one image per batch, output quantized with the input's parameters.
    # Here: dequantize, run the float kernel, quantize the result (same values up to the rounding of one step).
    if input.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        raise ValueError(f"roi_align: quantized input must be quantized per tensor, got {input.qscheme()}")
    if input.dim() == 4 and input.size(0) != 1:
        raise RuntimeError("roi_align: Only one image per batch is allowed in roi_align when quantized tensors "
                           f"are passed (as torchvision), got a batch of {input.size(0)}")
    out = _roi_align(input.dequantize(), _dequantize_boxes(boxes), output_size, spatial_scale, sampling_ratio,
                     aligned, impl)
    return torch.quantize_per_tensor(out, input.q_scale(), input.q_zero_point(), input.dtype)


def _check_common(input: Tensor, rois: Tensor, name: str = "input") -> None:
    check_tensor(name, input, dim=4, dtypes=FLOAT_DTYPES)
    check_tensor("boxes", rois, dtypes=FLOAT_DTYPES, device=input.device)
    if rois.dtype != input.dtype:
        raise ValueError(f"boxes must have the same dtype as {name} ({input.dtype}), got {rois.dtype}")


def _check_sampling_ratio(sampling_ratio) -> int:
    # > 0: samples per bin side (the kernels loop sampling_ratio^2 times per bin); <= 0: adaptive.
    return check_int("sampling_ratio", sampling_ratio, low=-_INT32_MAX, high=MAX_SAMPLING_RATIO)


@torch.fx.wrap
def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    impl: str = "auto",
) -> Tensor:
    """RoIAlign (Mask R-CNN), a drop-in for ``torchvision.ops.roi_align``.

    Args:
        input: ``[N, C, H, W]`` features (contiguous or channels_last; read in place), float32/64/16 or bfloat16.
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or a list of ``Tensor[L_i, 4]`` (one per
            image), in input-image coordinates, same dtype and device as ``input`` (under autocast: any float
            dtypes, computed in float32 as torchvision does).
        output_size: ``int`` or ``(ph, pw)``.
        spatial_scale: maps box coordinates to feature coordinates (e.g. 1/4 for P2); positive and finite.
        sampling_ratio: samples per bin side, at most 32768; ``<= 0`` is adaptive, ``ceil(roi_size /
            output_size)`` per RoI (capped at 32768).
        aligned: shift boxes by -0.5 pixel (Detectron2's pixel model); ``False`` is torchvision's default.
        impl: ``"auto"``/``"cpp"`` (compiled kernel), ``"triton"`` or ``"reference"`` (plain PyTorch). A scripted
            (TorchScript) call always runs the compiled kernel.

    Returns:
        ``[K, C, ph, pw]`` in the input's dtype (channels_last when the input is). float16/bfloat16 are computed
        in float32. Differentiable w.r.t. ``input`` (deterministic backward); boxes get no gradient.

    NaN/inf: a bin reads, for each of its samples on the map, the pixels the sample gives a non-zero bilinear
    weight; NaN/inf there make the bin NaN/inf (torchvision also reads the zero-weight neighbour of a sample that
    lies exactly on a pixel row or column). An empty map (H or W = 0) gives zeros. Non-finite boxes or batch
    indices outside ``[0, N)`` raise RuntimeError on the CPU; the CUDA and Triton kernels (no host sync) pool
    nothing for them (zeros).

    ONNX: exports to ``RoiAlign`` (opset 16, mode "avg"; ``coordinate_transformation_mode`` "half_pixel" for
    ``aligned=True``, "output_half_pixel" otherwise; adaptive sampling as ``sampling_ratio=0``).
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.roi_align(input, _script_rois(boxes), spatial_scale, output_size[0],
                                           output_size[1], sampling_ratio, aligned)
    return _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, impl)


def _script_rois(boxes: Union[Tensor, List[Tensor]]) -> Tensor:
    # boxes_to_rois for TorchScript (no argument checks there: the op's host checks apply).
    if isinstance(boxes, Tensor):
        return boxes
    parts: List[Tensor] = []
    for i, b in enumerate(boxes):
        parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    return torch.cat(parts, dim=0)


def _check_scale(name: str, value) -> float:
    if torch.compiler.is_compiling():  # (may be symbolic under dynamic shapes; the op's host checks apply)
        return value
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, impl) -> Tensor:
    check_impl(impl)
    if isinstance(input, Tensor) and input.is_quantized:
        return _quantized_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, impl)
    ph, pw = _pair(output_size)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    check_tensor("input", input, dim=4, dtypes=FLOAT_DTYPES)
    rois = boxes_to_rois(boxes, input.dtype, input.device)
    out_dtype = input.dtype
    if autocast_enabled(input.device):  # torchvision's rule: float32 compute, features' dtype out
        input, rois = autocast_float(input), autocast_float(rois)
    _check_common(input, rois)
    scale = _check_scale("spatial_scale", spatial_scale)
    aligned = bool(aligned)
    out = dispatch(
        "roi_align", impl, input.device,
        cpp=lambda: torch.ops.fastops.roi_align(input, rois, scale, ph, pw, sampling_ratio, aligned),
        reference=lambda: reference_module("roi_align").roi_align(input, rois, (ph, pw), scale, sampling_ratio,
                                                                  aligned),
        triton=lambda: triton_module("roi_align").roi_align_triton(input, rois, scale, ph, pw, sampling_ratio, aligned))
    return out.to(out_dtype)


class RoIAlign(nn.Module):
    """``nn.Module`` form of :func:`roi_align` (same constructor as ``torchvision.ops.RoIAlign``); TorchScript,
    torch.fx (``roi_align`` stays a leaf call) and ONNX as the function."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False, impl: str = "auto"):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.impl = check_impl(impl)

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned,
                         self.impl)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


# ---- multi-scale (FPN) ----------------------------------------------------------------------------------------

@torch.fx.wrap
def multi_scale_roi_align(
    features: List[Tensor],
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scales: List[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: int = 224,
    canonical_level: int = 4,
    impl: str = "auto",
) -> Tensor:
    """RoIAlign over FPN levels in one op: each RoI is pooled from the level FPN eq. 1 assigns it.

    Level (torchvision's LevelMapper): ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)``
    clamped to ``[k_min, k_max]`` with ``k_min = -log2(spatial_scales[0])``, ``k_max = -log2(spatial_scales[-1])``;
    ``area`` from the unscaled box; RoI of level ``k`` is pooled from ``features[k - k_min]``, and stays 0 when
    there is no such map (non-consecutive scales, as torchvision) or no level (negative area).
    ``features[l]`` is ``[N, C, H_l, W_l]``; all levels share N, C, dtype, device. Returns ``[K, C, ph, pw]``;
    differentiable w.r.t. every level. Other arguments, NaN/inf rule: as :func:`roi_align`.

    ONNX: exports to the FPN level assignment in standard ops, one ``RoiAlign`` per level on the RoIs gathered for
    it, and a ``ScatterND`` back into RoI order (as torchvision's exported pooler).
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.multi_scale_roi_align(features, _script_rois(boxes), spatial_scales,
                                                       output_size[0], output_size[1], sampling_ratio, aligned,
                                                       canonical_scale, canonical_level)
    return _multi_scale_roi_align(features, boxes, output_size, spatial_scales, sampling_ratio, aligned,
                                  canonical_scale, canonical_level, impl)


def _multi_scale_roi_align(features, boxes, output_size, spatial_scales, sampling_ratio, aligned, canonical_scale,
                           canonical_level, impl) -> Tensor:
    check_impl(impl)
    ph, pw = _pair(output_size)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    canonical_scale = check_int("canonical_scale", canonical_scale, low=1, high=_INT32_MAX)
    canonical_level = check_int("canonical_level", canonical_level, low=-_INT32_MAX, high=_INT32_MAX)
    if not isinstance(features, (list, tuple)) or len(features) == 0:
        raise ValueError("features must be a non-empty list of [N, C, H, W] tensors")
    if len(spatial_scales) != len(features):
        raise ValueError(f"spatial_scales must have one entry per level ({len(features)}), got {len(spatial_scales)}")
    f0 = features[0]
    for i, f in enumerate(features):
        check_tensor(f"features[{i}]", f, dim=4, dtypes=FLOAT_DTYPES, device=f0.device)
        if f.dtype != f0.dtype or f.shape[:2] != f0.shape[:2]:
            raise ValueError(f"features[{i}] must share batch, channels and dtype with features[0] "
                             f"({tuple(f0.shape[:2])}, {f0.dtype}), got {tuple(f.shape[:2])}, {f.dtype}")
    rois = boxes_to_rois(boxes, f0.dtype, f0.device)
    feats = list(features)
    out_dtype = f0.dtype
    if autocast_enabled(f0.device):  # torchvision's rule: float32 compute, features' dtype out
        feats, rois = [autocast_float(f) for f in feats], autocast_float(rois)
    _check_common(feats[0], rois, "features[0]")
    scales = [_check_scale("spatial_scales", s) for s in spatial_scales]
    aligned = bool(aligned)
    out = dispatch(
        "multi_scale_roi_align", impl, f0.device,
        cpp=lambda: torch.ops.fastops.multi_scale_roi_align(feats, rois, scales, ph, pw, sampling_ratio, aligned,
                                                            canonical_scale, canonical_level),
        reference=lambda: reference_module("roi_align").multi_scale_roi_align(
            feats, rois, (ph, pw), scales, sampling_ratio, aligned, canonical_scale, canonical_level),
        triton=lambda: triton_module("roi_align").multi_scale_roi_align_triton(
            feats, rois, scales, ph, pw, sampling_ratio, aligned, canonical_scale, canonical_level))
    return out.to(out_dtype)


def _infer_scale(feature: Tensor, original_size: List[int]) -> float:
    # torchvision's rule: the power of two nearest to feature size / image size (height decides).
    approx = float(feature.shape[-2]) / float(original_size[0])
    if torch.jit.is_scripting():  # (TorchScript has no math.log2)
        return 2.0 ** float(torch.tensor(approx).log2().round())
    # a Python float even under torch.compile(dynamic=True): int() specialises the (guarded) level
    return 2.0 ** int(round(math.log2(approx)))


@torch.fx.wrap
def _multi_scale_forward(x: Dict[str, Tensor], featmap_names: List[str], boxes: List[Tensor],
                         image_shapes: List[Tuple[int, int]], output_size: List[int], sampling_ratio: int,
                         aligned: bool, canonical_scale: int, canonical_level: int, impl: str) -> Tensor:
    # (a function of its own: torch.fx keeps it as one leaf call, as torchvision does with its pooler)
    features: List[Tensor] = []
    for k, v in x.items():
        if k in featmap_names:
            features.append(v)
    if len(features) == 0:
        raise ValueError("none of featmap_names is in the feature dict")
    max_h = 0
    max_w = 0
    for shape in image_shapes:
        max_h = max(max_h, shape[0])
        max_w = max(max_w, shape[1])
    scales: List[float] = []
    for f in features:
        scales.append(_infer_scale(f, [max_h, max_w]))
    if len(features) == 1:
        return roi_align(features[0], boxes, output_size, scales[0], sampling_ratio, aligned, impl)
    return multi_scale_roi_align(features, boxes, output_size, scales, sampling_ratio, aligned, canonical_scale,
                                 canonical_level, impl)


class MultiScaleRoIAlign(nn.Module):
    """Drop-in for ``torchvision.ops.MultiScaleRoIAlign`` that pools every FPN level in one op.

    Same constructor and ``forward(x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[(h, w)])``;
    scales are inferred from feature and image sizes as torchvision does. ``aligned`` is extra (default False,
    as torchvision, which has no such argument). Scripts with TorchScript; under torch.fx the pooling is one
    leaf call.
    """

    def __init__(self, featmap_names: List[str], output_size: BroadcastingList2[int], sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4, aligned: bool = False, impl: str = "auto"):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = list(featmap_names)
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.impl = check_impl(impl)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        return _multi_scale_forward(x, self.featmap_names, boxes, image_shapes, list(self.output_size),
                                    self.sampling_ratio, self.aligned, self.canonical_scale, self.canonical_level,
                                    self.impl)

    def extra_repr(self) -> str:
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")
