"""Instance mask assembly: `yolact_masks`, `yolact_mask_loss`, `paste_masks`.

Conventions are YOLACT's (dbolya/yolact postprocess, crop, sanitize_coordinates, lincomb mask loss) and
torchvision's (`roi_heads.paste_masks_in_image`) to the letter; see docs/masks.md. The compiled kernels
are `torch.ops.fastops.yolact_masks` / `yolact_mask_loss` / `paste_masks` (schemas in csrc/masks/masks_cpu.cpp).
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from fastops._library import FLOAT_DTYPES, check_impl, check_tensor, cuda_compiled

__all__ = ["yolact_masks", "yolact_mask_loss", "paste_masks"]


def _use_triton(impl: str, t: Tensor) -> bool:
    return impl == "triton" or (impl == "auto" and t.is_cuda and not cuda_compiled())


def _check_threshold(threshold) -> Optional[float]:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ValueError(f"threshold must be a float or None, got {threshold!r}")
    return float(threshold)


def _check_yolact_inputs(protos, coeffs, boxes, fn: str) -> None:
    check_tensor("protos", protos, dim=3, dtypes=FLOAT_DTYPES)
    check_tensor("coeffs", coeffs, dim=2, dtypes=FLOAT_DTYPES, device=protos.device)
    check_tensor("boxes", boxes, dim=2, dtypes=FLOAT_DTYPES, device=protos.device)
    if coeffs.dtype != protos.dtype:
        raise ValueError(f"coeffs must have protos' dtype ({protos.dtype}), got {coeffs.dtype}")
    if coeffs.size(1) != protos.size(2):
        raise ValueError(f"coeffs must be [N, P] with P = protos.shape[2] = {protos.size(2)}, "
                         f"got shape {tuple(coeffs.shape)}")
    if boxes.size(1) != 4 or boxes.size(0) != coeffs.size(0):
        raise ValueError(f"boxes must be [N, 4] with N = coeffs.shape[0] = {coeffs.size(0)}, "
                         f"got shape {tuple(boxes.shape)}")
    if protos.size(0) == 0 or protos.size(1) == 0:
        raise ValueError(f"protos must have a non-empty [Hp, Wp] grid, got shape {tuple(protos.shape)}")


def yolact_masks(
    protos: Tensor,
    coeffs: Tensor,
    boxes: Tensor,
    output_size: Optional[Sequence[int]] = None,
    *,
    crop: bool = True,
    threshold: Optional[float] = 0.5,
    impl: str = "auto",
) -> Tensor:
    """YOLACT's mask postprocess as one fused kernel.

    Computes, per detection n, ``sigmoid(protos @ coeffs[n])``, zeroes it outside the detection's box padded by
    one proto pixel (YOLACT's ``crop``/``sanitize_coordinates``: kept columns ``c`` satisfy
    ``max(min(x1, x2) * Wp - 1, 0) <= c < min(max(x1, x2) * Wp + 1, Wp)``, rows likewise), resizes it bilinearly
    (``align_corners=False``) to ``output_size`` and thresholds it (``> threshold``). Only pixels whose bilinear
    taps touch the crop rectangle are computed; all others are exactly 0 / False.

    Args:
        protos: ``[Hp, Wp, P]`` prototypes (any strides), float32/64/16 or bfloat16.
        coeffs: ``[N, P]`` mask coefficients, same dtype as ``protos``.
        boxes: ``[N, 4]`` relative ``(x1, y1, x2, y2)`` in [0, 1] (any float dtype; x1 > x2 is allowed).
        output_size: ``(h, w)`` of the image; ``None`` keeps proto resolution ``(Hp, Wp)``.
        crop: apply YOLACT's crop (``crop_masks``); ``False`` computes every pixel.
        threshold: ``mask > threshold`` gives a bool output; ``None`` returns probabilities in protos' dtype.
        impl: ``"auto"``/``"cpp"`` (compiled kernel), ``"triton"`` or ``"reference"`` (plain PyTorch).

    Returns:
        ``[N, h, w]`` bool (with ``threshold``) or float in protos' dtype (float16/bfloat16 computed in float32).
        On the CPU, outputs over 1 MB are fresh anonymous-mmap zero pages the kernel never touches outside the
        boxes (no memset; untouched pages cost no memory until written).
    """
    check_impl(impl)
    _check_yolact_inputs(protos, coeffs, boxes, "yolact_masks")
    thr = _check_threshold(threshold)
    if not isinstance(crop, bool):
        raise ValueError(f"crop must be a bool, got {crop!r}")
    if output_size is None:
        out_h, out_w = int(protos.size(0)), int(protos.size(1))
    else:
        if isinstance(output_size, int) or len(output_size) != 2:
            raise ValueError(f"output_size must be None or (h, w), got {output_size!r}")
        out_h, out_w = output_size
        for v in (out_h, out_w):
            if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)) or (isinstance(v, int) and v <= 0):
                raise ValueError(f"output_size must be two positive ints, got {output_size!r}")
    if impl == "reference":
        from fastops.reference.masks import yolact_postprocess_masks

        return yolact_postprocess_masks(protos, coeffs, boxes, None if output_size is None else (out_h, out_w),
                                        crop, thr)
    if _use_triton(impl, protos):
        from fastops.triton._registry import check_triton_device
        import fastops.triton.masks  # noqa: F401  (registers fastops::yolact_masks_triton)

        check_triton_device(protos, "protos")
        return torch.ops.fastops.yolact_masks_triton(protos, coeffs, boxes, out_h, out_w, crop, thr)
    return torch.ops.fastops.yolact_masks(protos, coeffs, boxes, out_h, out_w, crop, thr)


def yolact_mask_loss(protos: Tensor, coeffs: Tensor, boxes: Tensor, gt_masks: Tensor, *,
                     impl: str = "auto") -> Tensor:
    """YOLACT's lincomb mask loss per detection, fused (training config: sigmoid, ``mask_proto_crop=True``,
    ``mask_proto_normalize_emulate_roi_pooling=True``).

    ``p = sigmoid(protos @ coeffs[n])`` cropped by ``boxes[n]`` exactly as :func:`yolact_masks` crops;
    ``loss[n] = sum(BCE(clamp(p, 0, 1), gt_masks[n])) / (box_w * Wp) / (box_h * Hp) * (Wp * Hp)`` with
    ``box_w = x2 - x1``, ``box_h = y2 - y1`` (YOLACT's ``center_size``). Outside the crop ``p`` is 0, so a pixel
    there contributes PyTorch's clamped ``BCE(0, t) = 100 * t`` (zero where the ground truth is zero, which
    YOLACT's padded gt boxes guarantee in practice).

    Args:
        protos: ``[Hp, Wp, P]``; coeffs: ``[N, P]`` (same dtype); boxes: ``[N, 4]`` relative matched gt boxes;
        gt_masks: ``[N, Hp, Wp]`` ground truth at proto resolution (converted to protos' dtype if it differs).
        impl: ``"auto"``/``"cpp"``, ``"triton"`` or ``"reference"``.

    Returns:
        ``[N]`` in protos' dtype. Differentiable w.r.t. ``protos`` and ``coeffs`` (deterministic backward that
        recomputes the logits inside each crop instead of saving an ``[Hp, Wp, N]`` tensor); sum it for YOLACT's
        ``loss_m`` of one image.
    """
    check_impl(impl)
    _check_yolact_inputs(protos, coeffs, boxes, "yolact_mask_loss")
    check_tensor("gt_masks", gt_masks, dim=3, device=protos.device)
    if tuple(gt_masks.shape) != (coeffs.size(0), protos.size(0), protos.size(1)):
        raise ValueError(f"gt_masks must be [N, Hp, Wp] = {(coeffs.size(0), protos.size(0), protos.size(1))}, "
                         f"got shape {tuple(gt_masks.shape)}")
    if gt_masks.dtype != protos.dtype:
        if not (gt_masks.dtype.is_floating_point or gt_masks.dtype in (torch.bool, torch.uint8)):
            raise ValueError(f"gt_masks must be a float, bool or uint8 tensor, got {gt_masks.dtype}")
        gt_masks = gt_masks.to(protos.dtype)
    if impl == "reference":
        from fastops.reference.masks import lincomb_mask_loss

        return lincomb_mask_loss(protos, coeffs, boxes, gt_masks)
    if _use_triton(impl, protos):
        from fastops.triton._registry import check_triton_device
        import fastops.triton.masks  # noqa: F401

        check_triton_device(protos, "protos")
        return torch.ops.fastops.yolact_mask_loss_triton(protos, coeffs, boxes, gt_masks)
    return torch.ops.fastops.yolact_mask_loss(protos, coeffs, boxes, gt_masks)


def paste_masks(masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int], padding: int = 1,
                threshold: Optional[float] = None, *, impl: str = "auto") -> Tensor:
    """Drop-in for torchvision's ``roi_heads.paste_masks_in_image`` that works only inside each box.

    Each ``M x M`` mask is zero-padded by ``padding``, its box scaled about the centre by ``(M + 2p) / M`` and
    truncated to int64, the padded mask resized bilinearly (``align_corners=False``) to the box size
    ``(y1 - y0 + 1, x1 - x0 + 1)`` and the part inside the image pasted into a zero plane. The resize is evaluated
    only at the visible pixels of each box (separable 1-D taps). ``fastops.patch_torchvision()`` swaps it into
    torchvision's Mask R-CNN post-processing.

    Args:
        masks: ``[N, 1, Mh, Mw]`` (torchvision) or ``[N, Mh, Mw]``, float32/64/16 or bfloat16, any strides.
        boxes: ``[N, 4]`` image-pixel ``(x1, y1, x2, y2)``, any float dtype. Non-finite boxes paste nothing.
        image_shape: ``(H, W)``.
        padding: zero padding in mask pixels (torchvision: 1).
        threshold: ``None`` returns torchvision's float ``[N, 1, H, W]``; a float gives ``mask > threshold`` bool.
        impl: ``"auto"``/``"cpp"``, ``"triton"`` or ``"reference"``.
    """
    check_impl(impl)
    check_tensor("masks", masks, dim=(3, 4), dtypes=FLOAT_DTYPES)
    check_tensor("boxes", boxes, dim=2, dtypes=FLOAT_DTYPES, device=masks.device)
    if masks.dim() == 4:
        if masks.size(1) != 1:
            raise ValueError(f"masks must be [N, 1, M, M] or [N, M, M], got shape {tuple(masks.shape)}")
        m3 = masks[:, 0]
    else:
        m3 = masks
    if m3.size(1) == 0 or m3.size(2) == 0:
        raise ValueError(f"masks must have non-empty mask planes, got shape {tuple(masks.shape)}")
    if boxes.size(1) != 4 or boxes.size(0) != masks.size(0):
        raise ValueError(f"boxes must be [N, 4] with N = masks.shape[0] = {masks.size(0)}, "
                         f"got shape {tuple(boxes.shape)}")
    if not isinstance(image_shape, (tuple, list, torch.Size)) or len(image_shape) != 2:
        raise ValueError(f"image_shape must be (H, W), got {image_shape!r}")
    H, W = int(image_shape[0]), int(image_shape[1])
    if H < 0 or W < 0:
        raise ValueError(f"image_shape must be non-negative, got {image_shape!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    thr = _check_threshold(threshold)
    if impl == "reference":
        from fastops.reference.masks import paste_masks_in_image

        return paste_masks_in_image(m3, boxes, (H, W), padding, thr)
    if _use_triton(impl, masks):
        from fastops.triton._registry import check_triton_device
        import fastops.triton.masks  # noqa: F401

        check_triton_device(masks, "masks")
        return torch.ops.fastops.paste_masks_triton(m3, boxes, H, W, padding, thr)
    return torch.ops.fastops.paste_masks(m3, boxes, H, W, padding, thr)


# ---- fake kernels and autograd for the compiled ops ----------------------------------------------------------

@torch.library.register_fake("fastops::yolact_masks")
def _yolact_masks_fake(protos, coeffs, boxes, out_h, out_w, crop, threshold):
    dtype = torch.bool if threshold is not None else protos.dtype
    return protos.new_empty((coeffs.size(0), out_h, out_w), dtype=dtype)


@torch.library.register_fake("fastops::yolact_mask_loss")
def _yolact_mask_loss_fake(protos, coeffs, boxes, gt_masks):
    return protos.new_empty((coeffs.size(0),))


@torch.library.register_fake("fastops::_yolact_mask_loss_backward")
def _yolact_mask_loss_backward_fake(grad, protos, coeffs, boxes, gt_masks):
    return protos.new_empty(tuple(protos.shape)), protos.new_empty((coeffs.size(0), coeffs.size(1)))


@torch.library.register_fake("fastops::paste_masks")
def _paste_masks_fake(masks, boxes, image_h, image_w, padding, threshold):
    dtype = torch.bool if threshold is not None else masks.dtype
    return masks.new_empty((masks.size(0), 1, image_h, image_w), dtype=dtype)


def _loss_setup_context(ctx, inputs, output):
    protos, coeffs, boxes, gt_masks = inputs
    ctx.save_for_backward(protos, coeffs, boxes, gt_masks)


def _loss_backward(ctx, grad):
    protos, coeffs, boxes, gt_masks = ctx.saved_tensors
    gp, gc = torch.ops.fastops._yolact_mask_loss_backward(grad, protos, coeffs, boxes, gt_masks)
    return gp, gc, None, None


torch.library.register_autograd("fastops::yolact_mask_loss", _loss_backward, setup_context=_loss_setup_context)
