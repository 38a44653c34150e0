"""RoIAlign: `roi_align`, `RoIAlign`, `multi_scale_roi_align`, `MultiScaleRoIAlign`.

Conventions are torchvision.ops' to the letter (see docs/roi_align.md); the compiled kernels are
`torch.ops.fastops.roi_align` / `multi_scale_roi_align` (schemas in csrc/roi_align/roi_align_cpu.cpp).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from fastops._library import FLOAT_DTYPES, check_impl, check_tensor, cuda_compiled

BoxesType = Union[Tensor, Sequence[Tensor]]


def _pair(x) -> Tuple[int, int]:
    if isinstance(x, (list, tuple)):
        if len(x) == 1:
            return int(x[0]), int(x[0])
        if len(x) != 2:
            raise ValueError(f"output_size must be an int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


def boxes_to_rois(boxes: BoxesType, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`Tensor[K,5]` (batch index, x1, y1, x2, y2) from either that or a list of per-image `Tensor[L_i,4]`."""
    if isinstance(boxes, Tensor):
        check_tensor("boxes", boxes, dim=2)
        if boxes.size(1) != 5:
            raise ValueError(f"boxes as a Tensor must have shape [K, 5], got {tuple(boxes.shape)}")
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise ValueError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    for i, b in enumerate(boxes):
        check_tensor(f"boxes[{i}]", b, dim=2)
        if b.size(1) != 4:
            raise ValueError(f"boxes[{i}] must have shape [L, 4], got {tuple(b.shape)}")
    if len(boxes) == 0:
        return torch.zeros(0, 5, dtype=dtype, device=device)
    cat = torch.cat([b for b in boxes], dim=0)
    idx = torch.cat([torch.full((b.size(0), 1), i, dtype=cat.dtype, device=cat.device) for i, b in enumerate(boxes)])
    return torch.cat([idx, cat], dim=1)


def _check_common(input: Tensor, rois: Tensor, name: str = "input") -> None:
    check_tensor(name, input, dim=4, dtypes=FLOAT_DTYPES)
    check_tensor("boxes", rois, dtypes=FLOAT_DTYPES, device=input.device)
    if rois.dtype != input.dtype:
        raise ValueError(f"boxes must have the same dtype as {name} ({input.dtype}), got {rois.dtype}")


def _check_sampling(sampling_ratio: int, pooled: Tuple[int, int]) -> None:
    if pooled[0] <= 0 or pooled[1] <= 0:
        raise ValueError(f"output_size must be positive, got {pooled}")
    if not isinstance(sampling_ratio, int):
        raise ValueError(f"sampling_ratio must be an int, got {sampling_ratio!r}")


def roi_align(
    input: Tensor,
    boxes: BoxesType,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    impl: str = "auto",
) -> Tensor:
    """RoIAlign (Mask R-CNN), a drop-in for ``torchvision.ops.roi_align``.

    Args:
        input: ``[N, C, H, W]`` features (contiguous or channels_last; read in place), float32/64/16 or bfloat16.
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or a list of ``Tensor[L_i, 4]`` (one per
            image), in input-image coordinates, same dtype and device as ``input``.
        output_size: ``int`` or ``(ph, pw)``.
        spatial_scale: maps box coordinates to feature coordinates (e.g. 1/4 for P2).
        sampling_ratio: samples per bin side; ``<= 0`` is adaptive, ``ceil(roi_size / output_size)`` per RoI.
        aligned: shift boxes by -0.5 pixel (Detectron2's pixel model); ``False`` is torchvision's default.
        impl: ``"auto"``/``"cpp"`` (compiled kernel), ``"triton"`` or ``"reference"`` (plain PyTorch).

    Returns:
        ``[K, C, ph, pw]`` in the input's dtype (channels_last when the input is). float16/bfloat16 are computed
        in float32. Differentiable w.r.t. ``input`` (deterministic backward); boxes get no gradient.
    """
    check_impl(impl)
    ph, pw = _pair(output_size)
    _check_sampling(sampling_ratio, (ph, pw))
    check_tensor("input", input, dim=4, dtypes=FLOAT_DTYPES)
    rois = boxes_to_rois(boxes, input.dtype, input.device)
    _check_common(input, rois)
    if impl == "reference":
        from fastops.reference.roi_align import roi_align as ref

        return ref(input, rois, (ph, pw), spatial_scale, sampling_ratio, aligned)
    if impl == "triton" or (impl == "auto" and input.is_cuda and not cuda_compiled()):
        import fastops.triton.roi_align  # noqa: F401  (registers fastops::roi_align_triton)

        return torch.ops.fastops.roi_align_triton(input, rois, float(spatial_scale), ph, pw, sampling_ratio, aligned)
    return torch.ops.fastops.roi_align(input, rois, float(spatial_scale), ph, pw, sampling_ratio, aligned)


def _is_channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and t.size(1) > 1 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous()


# ---- fake kernels and autograd for the compiled ops ----------------------------------------------------------

@torch.library.register_fake("fastops::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(rois.size(1) == 5)
    out = input.new_empty((rois.size(0), input.size(1), pooled_height, pooled_width))
    if _is_channels_last(input):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@torch.library.register_fake("fastops::_roi_align_backward")
def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                             height, width, sampling_ratio, aligned, channels_last):
    out = grad.new_empty((batch_size, channels, height, width))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = _is_channels_last(input)


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, aligned = ctx.args
    n, c, h, w = ctx.input_shape
    grad_input = torch.ops.fastops._roi_align_backward(
        grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned, ctx.channels_last)
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd("fastops::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context)


class RoIAlign(nn.Module):
    """``nn.Module`` form of :func:`roi_align` (same constructor as ``torchvision.ops.RoIAlign``)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False,
                 *, impl: str = "auto"):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.impl = check_impl(impl)

    def forward(self, input: Tensor, rois: BoxesType) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned,
                         impl=self.impl)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


# ---- multi-scale (FPN) ----------------------------------------------------------------------------------------

def multi_scale_roi_align(
    features: Sequence[Tensor],
    boxes: BoxesType,
    output_size,
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: int = 224,
    canonical_level: int = 4,
    *,
    impl: str = "auto",
) -> Tensor:
    """RoIAlign over FPN levels in one op: each RoI is pooled from the level FPN eq. 1 assigns it.

    Level (torchvision's LevelMapper): ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)``
    clamped to ``[k_min, k_max]`` with ``k_min = -log2(spatial_scales[0])``, ``k_max = -log2(spatial_scales[-1])``;
    ``area`` from the unscaled box. ``features[l]`` is ``[N, C, H_l, W_l]``; all levels share N, C, dtype, device.
    Returns ``[K, C, ph, pw]``; differentiable w.r.t. every level.
    """
    check_impl(impl)
    ph, pw = _pair(output_size)
    _check_sampling(sampling_ratio, (ph, pw))
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
    _check_common(f0, rois, "features[0]")
    scales = [float(s) for s in spatial_scales]
    for s in scales:
        if not (s > 0 and math.isfinite(s)):
            raise ValueError(f"spatial_scales must be positive and finite, got {spatial_scales}")
    if impl == "reference":
        from fastops.reference.roi_align import multi_scale_roi_align as ref

        return ref(list(features), rois, (ph, pw), scales, sampling_ratio, aligned, canonical_scale,
                   canonical_level)
    if impl == "triton" or (impl == "auto" and f0.is_cuda and not cuda_compiled()):
        import fastops.triton.roi_align  # noqa: F401

        return torch.ops.fastops.multi_scale_roi_align_triton(list(features), rois, scales, ph, pw, sampling_ratio,
                                                              aligned, canonical_scale, canonical_level)
    return torch.ops.fastops.multi_scale_roi_align(list(features), rois, scales, ph, pw, sampling_ratio, aligned,
                                                   canonical_scale, canonical_level)


@torch.library.register_fake("fastops::multi_scale_roi_align")
def _msra_fake(features, rois, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned,
               canonical_scale, canonical_level):
    f0 = features[0]
    out = f0.new_empty((rois.size(0), f0.size(1), pooled_height, pooled_width))
    if _is_channels_last(f0):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@torch.library.register_fake("fastops::_multi_scale_roi_align_backward")
def _msra_backward_fake(grad, rois, spatial_scales, pooled_height, pooled_width, batch_size, channels, sizes,
                        sampling_ratio, aligned, canonical_scale, canonical_level, channels_last):
    outs = []
    for i in range(len(spatial_scales)):
        g = grad.new_empty((batch_size, channels, sizes[2 * i], sizes[2 * i + 1]))
        outs.append(g.contiguous(memory_format=torch.channels_last) if channels_last[i] else g)
    return outs


def _msra_setup_context(ctx, inputs, output):
    features, rois, spatial_scales, ph, pw, sampling_ratio, aligned, canonical_scale, canonical_level = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scales, ph, pw)
    ctx.args2 = (sampling_ratio, aligned, canonical_scale, canonical_level)
    ctx.nc = (features[0].size(0), features[0].size(1))
    ctx.sizes = [s for f in features for s in (f.size(2), f.size(3))]
    ctx.channels_last = [_is_channels_last(f) for f in features]


def _msra_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scales, ph, pw = ctx.args
    sampling_ratio, aligned, canonical_scale, canonical_level = ctx.args2
    grads = torch.ops.fastops._multi_scale_roi_align_backward(
        grad, rois, spatial_scales, ph, pw, ctx.nc[0], ctx.nc[1], ctx.sizes, sampling_ratio, aligned,
        canonical_scale, canonical_level, ctx.channels_last)
    return list(grads), None, None, None, None, None, None, None, None


torch.library.register_autograd("fastops::multi_scale_roi_align", _msra_backward, setup_context=_msra_setup_context)


def _infer_scale(feature: Tensor, original_size: List[int]) -> float:
    # torchvision's rule: the power of two nearest to feature size / image size (height decides).
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2.0 ** float(round(math.log2(approx)))


class MultiScaleRoIAlign(nn.Module):
    """Drop-in for ``torchvision.ops.MultiScaleRoIAlign`` that pools every FPN level in one op.

    Same constructor and ``forward(x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[(h, w)])``;
    scales are inferred from feature and image sizes as torchvision does. ``aligned`` is extra (default False,
    as torchvision, which has no such argument).
    """

    def __init__(self, featmap_names: List[str], output_size, sampling_ratio: int, *, canonical_scale: int = 224,
                 canonical_level: int = 4, aligned: bool = False, impl: str = "auto"):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.impl = check_impl(impl)
        self.scales: Optional[List[float]] = None

    def forward(self, x: dict, boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if len(features) == 0:
            raise ValueError(f"none of featmap_names {self.featmap_names} is in the feature dict {list(x)}")
        max_h = max(s[0] for s in image_shapes)
        max_w = max(s[1] for s in image_shapes)
        scales = [_infer_scale(f, [max_h, max_w]) for f in features]
        self.scales = scales
        if len(features) == 1:
            return roi_align(features[0], boxes, self.output_size, scales[0], self.sampling_ratio, self.aligned,
                             impl=self.impl)
        return multi_scale_roi_align(features, boxes, self.output_size, scales, self.sampling_ratio, self.aligned,
                                     self.canonical_scale, self.canonical_level, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")
