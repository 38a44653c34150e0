"""Heatmaps and keypoints: rendering targets and decoding keypoints (see docs/heatmaps.md).

Public functions: `render_gaussian_heatmaps`, `render_center_heatmap`, `gaussian_radius`, `heatmap_argmax`,
`soft_argmax`, `heatmap_peaks`, `centernet_decode`, `corner_pool`. The compiled kernels are
`torch.ops.fastops.<name>` (schemas in csrc/heatmaps/heatmaps_cpu.cpp); `impl="triton"` runs
`torch.ops.fastops.<name>_triton` where a Triton kernel exists, `impl="reference"` the plain NumPy/PyTorch
transcriptions in fastops.reference.heatmaps (mmpose codecs, stacked-hourglass parser, CenterNet, CornerNet).

Coordinates are (x, y) in heatmap pixels: pixel i covers [i, i + 1) and has its value at i (mmpose).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from fastops._library import FLOAT_DTYPES, check_impl, check_tensor, cuda_compiled

RENDER_MODES = ("msra", "udp", "dark")
RENDER_KERNELS = ("gaussian", "cauchy")
REFINES = ("none", "quarter", "hourglass", "dark", "dark_udp")
POOL_MODES = ("top", "bottom", "left", "right")
RADIUS_VARIANTS = ("centernet", "cornernet")
MAX_BLUR = 31

# ops with a Triton kernel (fastops/triton/heatmaps.py)
_TRITON_OPS = ("render_gaussian_heatmaps", "render_center_heatmap", "gaussian_radius", "heatmap_argmax",
               "soft_argmax", "heatmap_peaks", "centernet_decode", "corner_pool")


def _use_triton(impl: str, t: Tensor, op: str) -> bool:
    if impl == "triton":
        if op not in _TRITON_OPS:
            raise ValueError(f"impl='triton' is not available for {op}; use 'auto', 'cpp' or 'reference'")
        from fastops.triton._registry import check_triton_device

        check_triton_device(t, "input")
        import fastops.triton.heatmaps  # noqa: F401  (registers fastops::<op>_triton)

        return True
    if impl == "auto" and t.is_cuda and not cuda_compiled():
        if op not in _TRITON_OPS:
            raise RuntimeError(f"{op}: this build of fastops has no CUDA kernels and no Triton kernel for {op}")
        import fastops.triton.heatmaps  # noqa: F401

        return True
    return False


def _size2(heatmap_size, name="heatmap_size") -> Tuple[int, int]:
    if isinstance(heatmap_size, int) and not isinstance(heatmap_size, bool):
        h = w = heatmap_size
    elif isinstance(heatmap_size, (tuple, list, torch.Size)) and len(heatmap_size) == 2:
        h, w = heatmap_size
    else:
        raise ValueError(f"{name} must be an int or a pair (H, W), got {heatmap_size!r}")
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold ints, got {heatmap_size!r}") from None
    if h < 0 or w < 0 or h >= 1 << 20 or w >= 1 << 20:
        raise ValueError(f"{name} must be non-negative and < 2**20, got {(h, w)}")
    return h, w


def _choice(name, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


# ---- rendering ---------------------------------------------------------------------------------------------------

def render_gaussian_heatmaps(
    keypoints: Tensor,
    heatmap_size: Union[int, Sequence[int]] = (64, 48),
    sigma: float = 2.0,
    visible: Optional[Tensor] = None,
    *,
    mode: str = "msra",
    kernel: str = "gaussian",
    impl: str = "auto",
) -> Tuple[Tensor, Tensor]:
    """Render keypoint heatmap targets (mmpose's MSRAHeatmap / UDPHeatmap / MSRAHeatmap(unbiased) encoders) on the
    keypoints' device, fast enough to run inside the training step.

    Args:
        keypoints: ``[B, K, 2]``, or ``[B, N, K, 2]`` for N instances per image (merged with an element-wise max),
            ``(x, y)`` in heatmap pixels. float32/64/16 or bfloat16.
        heatmap_size: ``(H, W)`` (or an int for square maps).
        sigma: Gaussian sigma in heatmap pixels (> 0).
        visible: ``[B, K]`` / ``[B, N, K]``; entries < 0.5 are not drawn and get weight 0. ``None``: all visible.
        mode: ``"msra"`` integer centre ``trunc(kp + 0.5)`` in a ``2*3sigma+1`` window (HRNet/SimpleBaseline);
            ``"udp"`` the same window, Gaussian at the sub-pixel keypoint; ``"dark"`` sub-pixel Gaussian over the
            whole map. Windows and centres follow mmpose's arithmetic exactly (for a non-integer ``3*sigma`` and a
            window clipped at the top/left border, mmpose's patch centre, hence ours, is one pixel off ``mu``).
        kernel: ``"gaussian"`` or ``"cauchy"`` (``sigma / (d^2 + sigma^2)^1.5``, same windows).
        impl: ``"auto"``/``"cpp"``, ``"triton"`` or ``"reference"`` (mmpose's per-sample NumPy loop).

    Returns:
        ``(heatmaps [B, K, H, W], weights [B, K] or [B, N, K])`` in the keypoints' dtype. Weights are the
        visibility (1 without ``visible``) where the keypoint was drawn, 0 where invisible, non-finite or outside
        the map (mmpose's rule for the window test).
    """
    check_impl(impl)
    check_tensor("keypoints", keypoints, dim=(3, 4), dtypes=FLOAT_DTYPES)
    if keypoints.size(-1) != 2:
        raise ValueError(f"keypoints must end in a dimension of size 2 (x, y), got shape {tuple(keypoints.shape)}")
    H, W = _size2(heatmap_size)
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}") from None
    if not (sigma > 0 and math.isfinite(sigma) and sigma < 1e6):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    _choice("mode", mode, RENDER_MODES)
    _choice("kernel", kernel, RENDER_KERNELS)
    single = keypoints.dim() == 3
    if visible is not None:
        check_tensor("visible", visible, device=keypoints.device)
        if tuple(visible.shape) != tuple(keypoints.shape[:-1]):
            raise ValueError(f"visible must have shape {tuple(keypoints.shape[:-1])} (keypoints without the last "
                             f"dimension), got {tuple(visible.shape)}")
        if visible.is_complex():
            raise ValueError("visible must be real")
    if impl == "reference":
        from fastops.reference.heatmaps import render_gaussian_heatmaps as ref

        return ref(keypoints, (H, W), sigma, visible, mode, kernel)
    kp4 = keypoints.unsqueeze(1) if single else keypoints
    vis3 = None
    if visible is not None:
        vis3 = visible.to(keypoints.dtype)
        vis3 = vis3.unsqueeze(1) if single else vis3
    if _use_triton(impl, keypoints, "render_gaussian_heatmaps"):
        hm, wt = torch.ops.fastops.render_gaussian_heatmaps_triton(kp4, vis3, H, W, sigma, mode, kernel)
    else:
        hm, wt = torch.ops.fastops.render_gaussian_heatmaps(kp4, vis3, H, W, sigma, mode, kernel)
    return hm, (wt.squeeze(1) if single else wt)


def render_center_heatmap(
    centers: Tensor,
    radii: Tensor,
    labels: Tensor,
    num_classes: int,
    heatmap_size: Union[int, Sequence[int]],
    *,
    impl: str = "auto",
) -> Tensor:
    """CenterNet's ``draw_umich_gaussian`` for a batch of objects, merged with max into class channels.

    Args:
        centers: ``[B, N, 2]`` object centres ``(x, y)`` in heatmap pixels (integer centre ``trunc(center)``).
        radii: ``[B, N]`` radii (integer or float; truncated to int, negative counts as 0), e.g. from
            :func:`gaussian_radius`.
        labels: ``[B, N]`` integer class of each object in ``[0, num_classes)``; ``< 0`` marks padding.
        num_classes: number of output channels C.
        heatmap_size: ``(H, W)``.

    Returns:
        ``[B, C, H, W]`` in the centres' dtype: ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, ``sigma = (2r + 1) / 6``, for
        ``|dx|, |dy| <= r``, clipped to the map.
    """
    check_impl(impl)
    check_tensor("centers", centers, dim=3, dtypes=FLOAT_DTYPES)
    if centers.size(2) != 2:
        raise ValueError(f"centers must be [B, N, 2], got shape {tuple(centers.shape)}")
    B, N = centers.shape[:2]
    check_tensor("radii", radii, device=centers.device)
    check_tensor("labels", labels, device=centers.device)
    if tuple(radii.shape) != (B, N):
        raise ValueError(f"radii must be [B, N] = {(B, N)}, got {tuple(radii.shape)}")
    if tuple(labels.shape) != (B, N):
        raise ValueError(f"labels must be [B, N] = {(B, N)}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
    H, W = _size2(heatmap_size)
    if impl == "reference":
        from fastops.reference.heatmaps import render_center_heatmap as ref

        return ref(centers, radii, labels, num_classes, (H, W))
    r = radii.to(torch.int64) if radii.dtype != torch.int64 else radii
    if _use_triton(impl, centers, "render_center_heatmap"):
        return torch.ops.fastops.render_center_heatmap_triton(centers, r, labels.to(torch.int64), num_classes, H, W)
    return torch.ops.fastops.render_center_heatmap(centers, r, labels.to(torch.int64), num_classes, H, W)


def gaussian_radius(heights, widths, min_overlap: float = 0.7, *, variant: str = "centernet",
                    impl: str = "auto") -> Tensor:
    """Gaussian radius for box sizes so that corners within it keep IoU >= ``min_overlap`` (CenterNet/CornerNet).

    ``variant="centernet"``: CenterNet's formula as published (quadratic roots divided by 2, not 2a; see
    xingyizhou/CenterNet#273); ``variant="cornernet"``: princeton-vl/CornerNet's corrected roots. Both are used in
    practice (CenterNet-trained models expect the former). ``heights``/``widths`` broadcast; computed in float64,
    returned in their (floating) dtype, unrounded (CenterNet applies ``max(0, int(r))``).
    """
    check_impl(impl)
    _choice("variant", variant, RADIUS_VARIANTS)
    if not isinstance(heights, Tensor):
        heights = torch.as_tensor(heights, dtype=torch.float32)
    if not isinstance(widths, Tensor):
        widths = torch.as_tensor(widths, dtype=torch.float32, device=heights.device)
    check_tensor("widths", widths, device=heights.device)
    try:
        min_overlap = float(min_overlap)
    except (TypeError, ValueError):
        raise ValueError(f"min_overlap must be a number in (0, 1), got {min_overlap!r}") from None
    if not 0 < min_overlap < 1:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
    dtype = heights.dtype if heights.dtype in FLOAT_DTYPES else torch.float32
    if heights.is_complex() or widths.is_complex():
        raise ValueError("heights and widths must be real")
    try:
        h, w = torch.broadcast_tensors(heights.to(dtype), widths.to(dtype))
    except RuntimeError as e:
        raise ValueError(f"heights {tuple(heights.shape)} and widths {tuple(widths.shape)} must broadcast: {e}") \
            from None
    if impl == "reference":
        from fastops.reference.heatmaps import gaussian_radius as ref

        return ref(h, w, min_overlap, variant)
    if _use_triton(impl, h, "gaussian_radius"):
        return torch.ops.fastops.gaussian_radius_triton(h.contiguous(), w.contiguous(), min_overlap, variant)
    return torch.ops.fastops.gaussian_radius(h.contiguous(), w.contiguous(), min_overlap, variant)


# ---- decoding ----------------------------------------------------------------------------------------------------

def _check_maps(name, t, *, allow3=False):
    check_tensor(name, t, dim=(3, 4) if allow3 else 4, dtypes=FLOAT_DTYPES)
    if t.dim() == 4 and t.size(0) * t.size(1) > 0 and (t.size(2) == 0 or t.size(3) == 0):
        raise ValueError(f"{name} must have non-empty H and W, got shape {tuple(t.shape)}")


def heatmap_argmax(heatmaps: Tensor, *, refine: str = "none", blur_kernel: int = 11,
                   impl: str = "auto") -> Tuple[Tensor, Tensor]:
    """Keypoints from heatmaps: first maximum in row-major order, then an optional sub-pixel refinement.

    Args:
        heatmaps: ``[B, K, H, W]`` (or ``[K, H, W]``).
        refine: ``"none"`` (mmpose ``get_heatmap_maximum``), ``"quarter"`` (``refine_keypoints``: +-0.25 towards the
            larger neighbour, HRNet/SimpleBaseline), ``"hourglass"`` (stacked-hourglass parser: +-0.25 with clamped
            neighbours, then +0.5), ``"dark"`` (``refine_keypoints_dark``, DARK's Taylor step on the log of the
            blurred map), ``"dark_udp"`` (``refine_keypoints_dark_udp``).
        blur_kernel: odd Gaussian kernel size for the DARK blurs (OpenCV's kernel for sigma 0), at most 31. Only a
            patch around each maximum is blurred (the full map only when clamping near the maximum makes mmpose's
            rescale matter).

    Returns:
        ``(coords [B, K, 2], scores [B, K])`` in the heatmaps' dtype; coords are -1 where the score is <= 0 (no
        refinement applies there; mmpose's dark_udp would read a wrapped-around index).
    """
    check_impl(impl)
    _check_maps("heatmaps", heatmaps, allow3=True)
    _choice("refine", refine, REFINES)
    if not isinstance(blur_kernel, int) or blur_kernel < 1 or blur_kernel % 2 == 0 or blur_kernel > MAX_BLUR:
        raise ValueError(f"blur_kernel must be an odd int in [1, {MAX_BLUR}], got {blur_kernel!r}")
    single = heatmaps.dim() == 3
    hm = heatmaps.unsqueeze(0) if single else heatmaps
    if hm.size(0) * hm.size(1) > 0 and (hm.size(2) == 0 or hm.size(3) == 0):
        raise ValueError(f"heatmaps must have non-empty H and W, got shape {tuple(heatmaps.shape)}")
    if impl == "reference":
        from fastops.reference.heatmaps import heatmap_argmax as ref

        c, s = ref(hm, refine, blur_kernel)
    elif _use_triton(impl, hm, "heatmap_argmax"):
        c, s = torch.ops.fastops.heatmap_argmax_triton(hm, refine, blur_kernel)
    else:
        c, s = torch.ops.fastops.heatmap_argmax(hm, refine, blur_kernel)
    return (c[0], s[0]) if single else (c, s)


def soft_argmax(heatmaps: Tensor, beta: float = 1.0, *, normalize: bool = False, impl: str = "auto") -> Tensor:
    """Differentiable keypoints (integral regression): ``p = softmax(beta * h)`` over H*W, ``x = sum p*j``,
    ``y = sum p*i`` in pixels; ``normalize=True`` divides by W and H (mmpose's integral-regression convention).

    ``heatmaps`` ``[B, K, H, W]``; returns ``[B, K, 2]`` in its dtype (accumulated in float32, float64 stays
    float64). Backward w.r.t. ``heatmaps``.
    """
    check_impl(impl)
    _check_maps("heatmaps", heatmaps)
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a finite number, got {beta!r}") from None
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {normalize!r}")
    if impl == "reference":
        from fastops.reference.heatmaps import soft_argmax as ref

        return ref(heatmaps, beta, normalize)
    if _use_triton(impl, heatmaps, "soft_argmax"):
        return torch.ops.fastops.soft_argmax_triton(heatmaps, beta, normalize)
    return torch.ops.fastops.soft_argmax(heatmaps, beta, normalize)


def heatmap_peaks(heatmaps: Tensor, k: int = 100, kernel: int = 3, *,
                  impl: str = "auto") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """CenterNet ``_nms`` + ``_topk`` in one pass: the k best scores of ``heat * keep`` (``keep``: the pixel equals
    the max of its ``kernel x kernel`` neighbourhood, outside the map never wins), over all classes and positions,
    descending, ties to the lower flat index ``(c, y, x)``.

    As in CenterNet, non-peaks count with score 0 (so with fewer than k positive peaks, zeros fill the tail). A NaN
    pixel is never a peak and makes its neighbourhood non-peaks (max_pool2d propagates NaN); it scores 0.

    Returns ``(scores [B, k'], labels [B, k'], ys [B, k'], xs [B, k'])``, ``k' = min(k, C*H*W)``; scores in the
    heatmaps' dtype, the others int64.
    """
    check_impl(impl)
    _check_maps("heatmaps", heatmaps)
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd int, got {kernel!r}")
    if impl == "reference":
        from fastops.reference.heatmaps import heatmap_peaks as ref

        return ref(heatmaps, k, kernel)
    if _use_triton(impl, heatmaps, "heatmap_peaks"):
        return torch.ops.fastops.heatmap_peaks_triton(heatmaps, k, kernel)
    return torch.ops.fastops.heatmap_peaks(heatmaps, k, kernel)


def centernet_decode(heat: Tensor, wh: Tensor, reg: Optional[Tensor] = None, k: int = 100, *,
                     impl: str = "auto") -> Tensor:
    """CenterNet ``ctdet_decode`` in one op: 3x3 peaks and top-k as :func:`heatmap_peaks`, then ``x += reg_x``,
    ``y += reg_y`` (+0.5 each when ``reg`` is None) and boxes ``[x - w/2, y - h/2, x + w/2, y + h/2]``.

    ``heat`` ``[B, C, H, W]`` (already through sigmoid), ``wh`` and ``reg`` ``[B, 2, H, W]`` read in place (any
    strides; no permute copy). Returns ``[B, k', 6]`` rows ``(x1, y1, x2, y2, score, label)`` in heat's dtype,
    ``k' = min(k, C*H*W)``.
    """
    check_impl(impl)
    _check_maps("heat", heat)
    B, C, H, W = heat.shape
    check_tensor("wh", wh, dim=4, dtypes=(heat.dtype,), device=heat.device)
    if tuple(wh.shape) != (B, 2, H, W):
        raise ValueError(f"wh must be [B, 2, H, W] = {(B, 2, H, W)}, got {tuple(wh.shape)}")
    if reg is not None:
        check_tensor("reg", reg, dim=4, dtypes=(heat.dtype,), device=heat.device)
        if tuple(reg.shape) != (B, 2, H, W):
            raise ValueError(f"reg must be [B, 2, H, W] = {(B, 2, H, W)}, got {tuple(reg.shape)}")
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if impl == "reference":
        from fastops.reference.heatmaps import centernet_decode as ref

        return ref(heat, wh, reg, k)
    if _use_triton(impl, heat, "centernet_decode"):
        return torch.ops.fastops.centernet_decode_triton(heat, wh, reg, k)
    return torch.ops.fastops.centernet_decode(heat, wh, reg, k)


def corner_pool(x: Tensor, mode: str = "top", *, impl: str = "auto") -> Tensor:
    """CornerNet corner pooling: ``top`` ``out[y] = max_{y' >= y} x[y']``, ``bottom`` ``max_{y' <= y}``, ``left``
    ``max_{x' >= x}``, ``right`` ``max_{x' <= x}``.

    ``x`` ``[B, C, H, W]``; returns the same shape and dtype (contiguous). Differentiable: each gradient goes to the
    element the running max came from, on ties to the element met first in the scan (CornerNet's own backward; it
    differs from ``torch.cummax``, which picks the last). NaN: the scan keeps its running max (no propagation).
    """
    check_impl(impl)
    check_tensor("x", x, dim=4, dtypes=FLOAT_DTYPES)
    _choice("mode", mode, POOL_MODES)
    if impl == "reference":
        from fastops.reference.heatmaps import corner_pool as ref

        return ref(x, mode)
    if _use_triton(impl, x, "corner_pool"):
        return torch.ops.fastops.corner_pool_triton(x, mode)
    return torch.ops.fastops.corner_pool(x, mode)


# ---- fake kernels and autograd for the compiled ops -----------------------------------------------------------------

@torch.library.register_fake("fastops::render_gaussian_heatmaps")
def _render_fake(keypoints, visible, height, width, sigma, mode, kernel):
    B, N, K = keypoints.shape[:3]
    return keypoints.new_empty((B, K, height, width)), keypoints.new_empty((B, N, K))


@torch.library.register_fake("fastops::render_center_heatmap")
def _center_fake(centers, radii, labels, num_classes, height, width):
    return centers.new_empty((centers.size(0), num_classes, height, width))


@torch.library.register_fake("fastops::gaussian_radius")
def _radius_fake(heights, widths, min_overlap, variant):
    return heights.new_empty(heights.shape)


@torch.library.register_fake("fastops::heatmap_argmax")
def _argmax_fake(heatmaps, refine, blur_kernel):
    B, K = heatmaps.shape[:2]
    return heatmaps.new_empty((B, K, 2)), heatmaps.new_empty((B, K))


@torch.library.register_fake("fastops::soft_argmax")
def _soft_argmax_fake(heatmaps, beta, normalize):
    return heatmaps.new_empty((heatmaps.size(0), heatmaps.size(1), 2))


@torch.library.register_fake("fastops::_soft_argmax_backward")
def _soft_argmax_backward_fake(grad, heatmaps, coords, beta, normalize):
    return heatmaps.new_empty(heatmaps.shape)


def _soft_argmax_setup_context(ctx, inputs, output):
    heatmaps, beta, normalize = inputs
    ctx.save_for_backward(heatmaps, output)
    ctx.args = (beta, normalize)


def _soft_argmax_backward(ctx, grad):
    heatmaps, coords = ctx.saved_tensors
    beta, normalize = ctx.args
    return torch.ops.fastops._soft_argmax_backward(grad, heatmaps, coords, beta, normalize), None, None


torch.library.register_autograd("fastops::soft_argmax", _soft_argmax_backward,
                                setup_context=_soft_argmax_setup_context)


def _k_eff(t, k):
    return torch.sym_min(k, t.size(1) * t.size(2) * t.size(3))


@torch.library.register_fake("fastops::heatmap_peaks")
def _peaks_fake(heatmaps, k, kernel):
    ke = _k_eff(heatmaps, k)
    B = heatmaps.size(0)
    lo = heatmaps.new_empty((B, ke), dtype=torch.int64)
    return heatmaps.new_empty((B, ke)), lo, torch.empty_like(lo), torch.empty_like(lo)


@torch.library.register_fake("fastops::centernet_decode")
def _decode_fake(heat, wh, reg, k):
    return heat.new_empty((heat.size(0), _k_eff(heat, k), 6))


@torch.library.register_fake("fastops::corner_pool")
def _corner_pool_fake(input, mode):
    return input.new_empty(input.shape)


@torch.library.register_fake("fastops::_corner_pool_backward")
def _corner_pool_backward_fake(grad, input, output, mode):
    return input.new_empty(input.shape)


def _corner_pool_setup_context(ctx, inputs, output):
    x, mode = inputs
    ctx.save_for_backward(x, output)
    ctx.mode = mode


def _corner_pool_backward(ctx, grad):
    x, out = ctx.saved_tensors
    return torch.ops.fastops._corner_pool_backward(grad, x, out, ctx.mode), None


torch.library.register_autograd("fastops::corner_pool", _corner_pool_backward,
                                setup_context=_corner_pool_setup_context)
