"""Instance mask assembly: `yolact_masks`, `yolact_mask_loss`, `paste_masks`.

Conventions are YOLACT's (dbolya/yolact postprocess, crop, sanitize_coordinates, lincomb mask loss) and
torchvision's (`roi_heads.paste_masks_in_image`) to the letter; see docs/masks.md. The compiled kernels
are `torch.ops.fastops.yolact_masks` / `yolact_mask_loss` / `paste_masks` (schemas in csrc/masks/masks.cpp);
fakes, autograd, autocast and ONNX live in fastops/registrations/masks.py.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

import fastops.registrations.masks  # noqa: F401  (fakes, autograd, autocast, ONNX of the compiled ops)
from fastops._library import FLOAT_DTYPES, check_int, check_tensor, dispatch, reference_module, triton_module

__all__ = ["yolact_masks", "yolact_mask_loss", "paste_masks", "PasteMasksTypeError", "PasteMasksIndexError",
           "PasteMasksDtypeError", "PasteMasksRuntimeError", "PasteMasksEmptyError", "PasteMasksAttributeError"]

# Largest output a call may ask for (bytes): anything above cannot be allocated anyway, and staying below 2^62
# keeps every size product in int64.
_MAX_OUTPUT_BYTES = 2 ** 62
# Largest size per output dimension and largest paste padding: far beyond any image, small enough that every
# index and size computed from them stays exact in int64 and float64.
_MAX_SIDE = 2 ** 31 - 1
_MAX_PADDING = 2 ** 20


def _check_threshold(threshold) -> Optional[float]:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ValueError(f"threshold must be a float or None, got {threshold!r}")
    return float(threshold)


def _check_output_bytes(name: str, shape, dtype: torch.dtype, value) -> None:
    if torch.compiler.is_compiling() or any(isinstance(s, torch.SymInt) for s in shape):
        return  # under torch.compile (sizes may be unbacked): the kernel's own check runs on the real sizes
    numel = 1
    for s in shape:
        numel *= int(s)
    if numel * torch.empty((), dtype=dtype).element_size() > _MAX_OUTPUT_BYTES:
        raise ValueError(f"{name} {value!r} asks for an output of {list(shape)} {dtype} elements, "
                         f"more than 2^62 bytes")


def _fx_leaf(fn, args):
    """Under torch.fx symbolic tracing (Proxy arguments) the public function becomes one leaf call node, from
    whichever module calls it (torch.fx.wrap below covers only calls through this module's globals)."""
    for a in args:
        if isinstance(a, torch.fx.Proxy):
            return a.tracer.create_proxy("call_function", fn, tuple(args), {})
    return None


def _check_side(name: str, v, low: int):
    """An output side: an int in [low, 2^31 - 1], or a SymInt under torch.compile (checked by the kernel)."""
    if isinstance(v, torch.SymInt):
        return v
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool:
        v = int(v)  # torchvision's transform passes 0-d tensors while it is traced (ONNX export)
    return check_int(name, v, low=low, high=_MAX_SIDE)


def _check_yolact_inputs(protos, coeffs, boxes) -> None:
    check_tensor("protos", protos, dim=3, dtypes=FLOAT_DTYPES)
    check_tensor("coeffs", coeffs, dim=2, dtypes=FLOAT_DTYPES, device=protos.device)
    check_tensor("boxes", boxes, dim=2, dtypes=FLOAT_DTYPES, device=protos.device)
    if coeffs.dtype != protos.dtype and not torch.is_autocast_enabled(protos.device.type):
        raise ValueError(f"coeffs must have protos' dtype ({protos.dtype}), got {coeffs.dtype}")
    if coeffs.size(1) != protos.size(2):
        raise ValueError(f"coeffs must be [N, P] with P = protos.shape[2] = {protos.size(2)}, "
                         f"got shape {tuple(coeffs.shape)}")
    if boxes.size(1) != 4 or boxes.size(0) != coeffs.size(0):
        raise ValueError(f"boxes must be [N, 4] with N = coeffs.shape[0] = {coeffs.size(0)}, "
                         f"got shape {tuple(boxes.shape)}")
    if protos.size(0) == 0 or protos.size(1) == 0:
        raise ValueError(f"protos must have a non-empty [Hp, Wp] grid, got shape {tuple(protos.shape)}")


def yolact_masks(protos: Tensor, coeffs: Tensor, boxes: Tensor, output_size: Optional[Tuple[int, int]] = None,
                 crop: bool = True, threshold: Optional[float] = 0.5, impl: str = "auto") -> Tensor:
    """YOLACT's mask postprocess as one fused kernel.

    Computes, per detection n, ``sigmoid(protos @ coeffs[n])``, zeroes it outside the detection's box padded by
    one proto pixel (YOLACT's ``crop``/``sanitize_coordinates``: kept columns ``c`` satisfy
    ``max(min(x1, x2) * Wp - 1, 0) <= c < min(max(x1, x2) * Wp + 1, Wp)``, rows likewise), resizes it bilinearly
    (``align_corners=False``) to ``output_size`` and thresholds it (``> threshold``). Only pixels whose bilinear
    taps touch the crop rectangle are computed; all others are exactly 0 (thresholded: ``0 > threshold``, so
    True everywhere outside the boxes for a negative threshold, as in the reference).

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

    NaN/inf: a box with a NaN coordinate keeps nothing (its mask is 0), infinite coordinates clamp to the proto
    grid as in YOLACT; NaN/inf in ``protos``/``coeffs`` propagate to the pixels whose taps read them (sigmoid of
    +-inf is 1/0, NaN compares False with the threshold).

    ONNX: exports (both exporters) to ``MatMul`` + ``Sigmoid``, the crop as comparisons of ``Range`` grids with
    the box bounds (``Where``), the bilinear resize as two ``MatMul`` with interpolation matrices built from
    PyTorch's ``align_corners=False`` taps (fastops/registrations/masks_onnx.py), and ``Greater``.
    """
    if torch.jit.is_scripting():
        if output_size is None:
            return torch.ops.fastops.yolact_masks(protos, coeffs, boxes, protos.size(0), protos.size(1), crop,
                                                  threshold)
        return torch.ops.fastops.yolact_masks(protos, coeffs, boxes, output_size[0], output_size[1], crop,
                                              threshold)
    return _yolact_masks(protos, coeffs, boxes, output_size, crop, threshold, impl)


def _yolact_masks(protos, coeffs, boxes, output_size, crop, threshold, impl):
    leaf = _fx_leaf(yolact_masks, (protos, coeffs, boxes, output_size, crop, threshold, impl))
    if leaf is not None:
        return leaf
    _check_yolact_inputs(protos, coeffs, boxes)
    thr = _check_threshold(threshold)
    if not isinstance(crop, bool):
        raise ValueError(f"crop must be a bool, got {crop!r}")
    if output_size is None:
        out_h, out_w = int(protos.size(0)), int(protos.size(1))
    else:
        if isinstance(output_size, (int, torch.SymInt)) or len(output_size) != 2:
            raise ValueError(f"output_size must be None or (h, w), got {output_size!r}")
        out_h = _check_side("output_size[0]", output_size[0], 1)
        out_w = _check_side("output_size[1]", output_size[1], 1)
        if isinstance(out_h, int) and isinstance(out_w, int):
            _check_output_bytes("output_size", (coeffs.size(0), out_h, out_w),
                                torch.bool if thr is not None else protos.dtype, output_size)
    return dispatch(
        "yolact_masks", impl, protos.device,
        cpp=lambda: torch.ops.fastops.yolact_masks(protos, coeffs, boxes, out_h, out_w, crop, thr),
        reference=lambda: reference_module("masks").yolact_postprocess_masks(
            protos, coeffs, boxes, None if output_size is None else (out_h, out_w), crop, thr),
        triton=lambda: triton_module("masks").yolact_masks_triton(protos, coeffs, boxes, out_h, out_w, crop, thr))


def yolact_mask_loss(protos: Tensor, coeffs: Tensor, boxes: Tensor, gt_masks: Tensor, impl: str = "auto") -> Tensor:
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

    NaN/inf: as in the reference, NaN in the inputs of a detection makes its loss NaN; a zero-width or
    zero-height box divides by zero (inf/NaN), as YOLACT's normaliser does.

    ONNX: exports (both exporters) to ``MatMul``, ``Sigmoid``, the crop comparisons, ``Log``/``Max`` (PyTorch's
    BCE clamped at -100), ``ReduceSum`` and the normaliser's arithmetic (forward only).
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.yolact_mask_loss(protos, coeffs, boxes, gt_masks.to(protos.dtype))
    return _yolact_mask_loss(protos, coeffs, boxes, gt_masks, impl)


def _yolact_mask_loss(protos, coeffs, boxes, gt_masks, impl):
    leaf = _fx_leaf(yolact_mask_loss, (protos, coeffs, boxes, gt_masks, impl))
    if leaf is not None:
        return leaf
    _check_yolact_inputs(protos, coeffs, boxes)
    check_tensor("gt_masks", gt_masks, dim=3, device=protos.device)
    if tuple(gt_masks.shape) != (coeffs.size(0), protos.size(0), protos.size(1)):
        raise ValueError(f"gt_masks must be [N, Hp, Wp] = {(coeffs.size(0), protos.size(0), protos.size(1))}, "
                         f"got shape {tuple(gt_masks.shape)}")
    if gt_masks.dtype != protos.dtype:
        if not (gt_masks.dtype.is_floating_point or gt_masks.dtype in (torch.bool, torch.uint8)):
            raise ValueError(f"gt_masks must be a float, bool or uint8 tensor, got {gt_masks.dtype}")
        gt_masks = gt_masks.to(protos.dtype)
    return dispatch(
        "yolact_mask_loss", impl, protos.device,
        cpp=lambda: torch.ops.fastops.yolact_mask_loss(protos, coeffs, boxes, gt_masks),
        reference=lambda: reference_module("masks").lincomb_mask_loss(protos, coeffs, boxes, gt_masks),
        triton=lambda: triton_module("masks").yolact_mask_loss_triton(protos, coeffs, boxes, gt_masks))


def paste_masks(masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int], padding: int = 1,
                threshold: Optional[float] = None, impl: str = "auto") -> Tensor:
    """Drop-in for torchvision's ``roi_heads.paste_masks_in_image`` that works only inside each box.

    Each ``M x M`` mask is zero-padded by ``padding``, its box scaled about the centre by ``(M + 2p) / M`` and
    truncated to int64, the padded mask resized bilinearly (``align_corners=False``) to the box size
    ``(y1 - y0 + 1, x1 - x0 + 1)`` and the part inside the image pasted into a zero plane. The resize is evaluated
    only at the visible pixels of each box (separable 1-D taps). ``fastops.patch_torchvision()`` swaps it into
    torchvision's Mask R-CNN post-processing.

    Args:
        masks: ``[N, 1, Mh, Mw]`` (torchvision) or ``[N, Mh, Mw]``, float32/64/16 or bfloat16, any strides.
        boxes: ``[N, 4]`` image-pixel ``(x1, y1, x2, y2)``, any float or integer dtype.
        image_shape: ``(H, W)``.
        padding: zero padding in mask pixels (torchvision: 1), ``0 <= padding <= 2**20``.
        threshold: ``None`` returns torchvision's float ``[N, 1, H, W]``; a float gives ``mask > threshold`` bool
            (``0 > threshold`` outside the boxes: all True there for a negative threshold).
        impl: ``"auto"``/``"cpp"``, ``"triton"`` or ``"reference"``.

    Errors: a bad argument raises a ValueError naming it that is also the exception torchvision's
    ``paste_masks_in_image`` raises for the same input (``PasteMasksIndexError`` for boxes not ``[N, 4]``,
    ``PasteMasksTypeError``, ``PasteMasksDtypeError``, ``PasteMasksRuntimeError``, ``PasteMasksEmptyError``,
    ``PasteMasksAttributeError``). Integer boxes are accepted (as float32, torchvision's arithmetic). Masks of
    zero height (``Mh = 0 < Mw``) paste the zero padding, as in torchvision: an all-zero result (``0 > threshold``
    when thresholded); with ``padding=0`` they raise ``PasteMasksRuntimeError``, and masks of zero width
    ``PasteMasksEmptyError`` (torchvision's ZeroDivisionError in the box scale ``(Mw + 2 * padding) / Mw``).

    Cost (CPU): the output is fresh zero pages and only the pages under the boxes are written. For 100 masks ->
    800 x 1216 float (389 MB) that is ~19.3k first-touch 4 KB page faults (~79 MB), about 90% of the op's CPU time
    (~48 ms of kernel time vs ~4 ms of blending, measured with getrusage); a bool output (``threshold``) touches
    4x fewer bytes (~4.9k faults, ~18 ms CPU). Transparent huge pages make it slower (whole 2 MB pages zeroed
    around each box: ~180 ms of kernel time), so the op does not ask for them.

    NaN/inf: a box with a non-finite coordinate (or one whose expanded corner is beyond 2^40 pixels) pastes
    nothing, where torchvision's int64 cast is undefined; NaN in ``masks`` propagates to the pixels that blend it.

    Autocast (CPU and CUDA): no effect, for every impl (and the compiled op's autocast kernel): the result has the
    masks' dtype (bool with a threshold) and the boxes are expanded in their own dtype, as torchvision's
    ``paste_masks_in_image`` does under autocast (``F.interpolate`` keeps the dtype). bfloat16 / float16 masks are
    resized in float32 and rounded once to their dtype.

    ONNX: exports (both exporters) to torchvision's box arithmetic (expand, int64 truncation), ``Pad``, per-box
    interpolation matrices from ``Range`` grids (torchvision's ``align_corners=False`` taps) applied as two batched
    ``MatMul``, the window test as comparisons (``Where``); ``Greater`` for a threshold
    (fastops/registrations/masks_onnx.py).
    """
    if torch.jit.is_scripting():
        m3 = masks[:, 0] if masks.dim() == 4 else masks
        return torch.ops.fastops.paste_masks(m3, boxes, image_shape[0], image_shape[1], padding, threshold)
    return _paste_masks(masks, boxes, image_shape, padding, threshold, impl)


# Bad input to paste_masks raises a ValueError naming the argument that is also the exception torchvision's
# paste_masks_in_image raises for the same input, so code catching either keeps working after the swap.
class PasteMasksTypeError(ValueError, TypeError):
    """image_shape not a pair of ints, padding not an int, boxes not a Tensor (TypeError in torchvision)."""


class PasteMasksIndexError(ValueError, IndexError):
    """boxes not ``[N, 4]`` (torchvision indexes ``boxes[:, 3]``: IndexError)."""


class PasteMasksDtypeError(ValueError, NotImplementedError):
    """masks not floating point, boxes bool or complex (torchvision's interpolate / subtraction:
    NotImplementedError, a RuntimeError)."""


class PasteMasksRuntimeError(ValueError, RuntimeError):
    """masks of the wrong rank, a negative image side, masks of zero height with ``padding=0`` (RuntimeError in
    torchvision)."""


class PasteMasksEmptyError(ValueError, ZeroDivisionError):
    """masks of zero width (torchvision divides by the mask width: ZeroDivisionError)."""


class PasteMasksAttributeError(ValueError, AttributeError):
    """masks not a Tensor (torchvision reads ``masks.shape``: AttributeError)."""


def _paste_inputs(masks, boxes, image_shape, padding):
    """Checked (masks [N, M, M] view, float boxes, H, W, padding) for paste_masks."""
    if not isinstance(masks, Tensor):
        raise PasteMasksAttributeError(f"masks must be a Tensor, got {type(masks).__name__}")
    if masks.dim() not in (3, 4):
        raise PasteMasksRuntimeError(f"masks must be [N, 1, M, M] or [N, M, M], got shape {tuple(masks.shape)}")
    if masks.dtype not in FLOAT_DTYPES:
        raise PasteMasksDtypeError(f"masks must have dtype in {[str(d) for d in FLOAT_DTYPES]}, got {masks.dtype}")
    if not isinstance(boxes, Tensor):
        raise PasteMasksTypeError(f"boxes must be a Tensor, got {type(boxes).__name__}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise PasteMasksDtypeError(f"boxes must be a real number tensor, got {boxes.dtype}")
    if not boxes.is_floating_point():
        boxes = boxes.float()  # torchvision's box arithmetic on integer boxes is float32
    if boxes.device != masks.device:
        raise PasteMasksRuntimeError(f"boxes must be on {masks.device} like masks, got {boxes.device}")
    if masks.dim() == 4:
        if masks.size(1) != 1:
            raise PasteMasksRuntimeError(f"masks must be [N, 1, M, M] or [N, M, M], got shape {tuple(masks.shape)}")
        m3 = masks[:, 0]
    else:
        m3 = masks
    if m3.size(2) == 0:
        raise PasteMasksEmptyError(f"masks must have a non-zero width, got shape {tuple(masks.shape)}")
    if boxes.dim() != 2 or boxes.size(1) != 4 or boxes.size(0) != masks.size(0):
        raise PasteMasksIndexError(f"boxes must be [N, 4] with N = masks.shape[0] = {masks.size(0)}, "
                                   f"got shape {tuple(boxes.shape)}")
    if not isinstance(image_shape, (tuple, list, torch.Size)):
        raise PasteMasksTypeError(f"image_shape must be (H, W), got {image_shape!r}")
    if len(image_shape) != 2:
        raise ValueError(f"image_shape must be (H, W), got {image_shape!r}")  # torchvision: ValueError too
    sides = []
    for i in range(2):
        v = image_shape[i]
        if isinstance(v, bool) or isinstance(v, float) or (isinstance(v, Tensor) and v.is_floating_point()):
            raise PasteMasksTypeError(f"image_shape[{i}] must be an int, got {v!r}")
        if isinstance(v, int) and v < 0:
            raise PasteMasksRuntimeError(f"image_shape[{i}] must be >= 0, got {v}")
        sides.append(_check_side(f"image_shape[{i}]", v, 0))
    if isinstance(padding, bool) or isinstance(padding, float):
        raise PasteMasksTypeError(f"padding must be an int, got {padding!r}")
    padding = check_int("padding", padding, low=0, high=_MAX_PADDING)
    if m3.size(1) == 0 and padding == 0:  # torchvision's interpolate of an empty plane: RuntimeError
        raise PasteMasksRuntimeError(f"masks of zero height need padding > 0, got shape {tuple(masks.shape)}")
    return m3, boxes, sides[0], sides[1], padding


def _paste_masks(masks, boxes, image_shape, padding, threshold, impl):
    leaf = _fx_leaf(paste_masks, (masks, boxes, image_shape, padding, threshold, impl))
    if leaf is not None:
        return leaf
    if isinstance(masks, Tensor) and masks.device.type in ("cpu", "cuda") and \
            torch.is_autocast_enabled(masks.device.type):
        # autocast leaves paste_masks alone (registrations/masks.py, paste_masks_autocast): every impl runs as
        # without autocast and returns the masks' dtype, as torchvision's paste_masks_in_image
        with torch.autocast(masks.device.type, enabled=False):
            return _paste_masks(masks, boxes, image_shape, padding, threshold, impl)
    m3, boxes, H, W, padding = _paste_inputs(masks, boxes, image_shape, padding)
    thr = _check_threshold(threshold)
    if isinstance(H, int) and isinstance(W, int):
        _check_output_bytes("image_shape", (masks.size(0), 1, H, W),
                            torch.bool if thr is not None else masks.dtype, image_shape)
    return dispatch(
        "paste_masks", impl, masks.device,
        cpp=lambda: torch.ops.fastops.paste_masks(m3, boxes, H, W, padding, thr),
        reference=lambda: reference_module("masks").paste_masks_in_image(m3, boxes, (H, W), padding, thr),
        triton=lambda: triton_module("masks").paste_masks_triton(m3, boxes, H, W, padding, thr))


torch.fx.wrap("yolact_masks")
torch.fx.wrap("yolact_mask_loss")
torch.fx.wrap("paste_masks")
