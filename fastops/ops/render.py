"""Rendering keypoint targets: `render_gaussian_heatmaps` (mmpose's MSRA / UDP / DARK encoders),
`render_center_heatmap` (CenterNet's draw_umich_gaussian) and `gaussian_radius` (CenterNet / CornerNet).

Conventions and anchors: docs/heatmaps.md. Compiled kernels: `torch.ops.fastops.<name>` (schemas in
csrc/render/render.cpp); `impl="triton"` runs `fastops::<name>_triton` (fastops/triton/render.py);
`impl="reference"` the NumPy transcriptions in fastops.reference.render.
Coordinates are (x, y) in heatmap pixels: pixel i covers [i, i + 1) and has its value at i (mmpose).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.jit.annotations import BroadcastingList2

import fastops.registrations.render as _reg
from fastops._library import FLOAT_DTYPES, check_int, check_tensor, dispatch, reference_module, triton_module
from fastops.ops._keypoints import autocast_float32, choice, finite_float, size2, traced_call

RENDER_MODES = tuple(_reg.MODES)
RENDER_KERNELS = tuple(_reg.KERNELS)
RADIUS_VARIANTS = tuple(_reg.VARIANTS)

torch.fx.wrap("render_gaussian_heatmaps")
torch.fx.wrap("render_center_heatmap")
torch.fx.wrap("gaussian_radius")


def render_gaussian_heatmaps(
    keypoints: Tensor,
    heatmap_size: Tuple[int, int] = (64, 48),
    sigma: float = 2.0,
    visible: Optional[Tensor] = None,
    mode: str = "msra",
    kernel: str = "gaussian",
    impl: str = "auto",
) -> Tuple[Tensor, Tensor]:
    """Render keypoint heatmap targets (mmpose's MSRAHeatmap / UDPHeatmap / MSRAHeatmap(unbiased) encoders) on the
    keypoints' device, fast enough to run inside the training step.

    Args:
        keypoints: ``[B, K, 2]``, or ``[B, N, K, 2]`` for N instances per image (merged with an element-wise max),
            ``(x, y)`` in heatmap pixels. float32/64/16 or bfloat16.
        heatmap_size: ``(H, W)`` (or, in eager code, an int for square maps), each in ``[0, 2**20)``.
        sigma: Gaussian sigma in heatmap pixels, in ``[1e-3, 1e6)``.
        visible: ``[B, K]`` / ``[B, N, K]``; a keypoint is drawn when its visibility is ``>= 0.5`` (exactly 0.5 is
            drawn) and gets that visibility as weight; below 0.5 (or NaN) it is not drawn and gets weight 0.
            ``None``: all visible.
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

    NaN/inf: a keypoint with a NaN or infinite coordinate is not drawn (weight 0); the heatmaps are always finite.

    Speed: bandwidth-bound on the output (one write of ``B*K*H*W`` values, e.g. 6.3 MB for 32x17x64x48 float32); the
    CPU kernel writes each pixel once (no zero-fill pass), so it is one write from the floor.

    ONNX (both exporters, opset 18): closed-form arithmetic on ``Range`` grids: the window rules above in float64
    (``Floor``/``Ceil`` for the truncations, ``Where`` for the tests), per keypoint and axis a masked ``Exp`` factor
    (Cauchy: squared distances, ``Sqrt``), their outer product and ``ReduceMax`` over the instances. Eager vs
    onnxruntime: weights exact, heatmaps within 1e-6 absolute in float32 (the CPU kernel's fast exp).

    Autocast (CPU and CUDA): float16/bfloat16 keypoints and visibilities are rendered in float32 and the outputs
    are float32 (the targets of a loss that autocast computes in float32); float32/float64 are unchanged.

    TorchScript: scripts (the scripted function runs the compiled kernel; the op's own checks apply).
    """
    if torch.jit.is_scripting():
        single = keypoints.dim() == 3
        vis: Optional[Tensor] = None
        if visible is not None:
            vis = visible.to(keypoints.dtype)
            vis = vis.unsqueeze(1) if single else vis
        hm, wt = torch.ops.fastops.render_gaussian_heatmaps(keypoints.unsqueeze(1) if single else keypoints, vis,
                                                            heatmap_size[0], heatmap_size[1], sigma, mode, kernel)
        return hm, (wt.squeeze(1) if single else wt)
    leaf = traced_call(render_gaussian_heatmaps, (keypoints, visible), keypoints, heatmap_size, sigma, visible, mode,
                       kernel, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_render_gaussian_heatmaps, keypoints, keypoints, heatmap_size, sigma, visible, mode,
                            kernel, impl)


def _render_gaussian_heatmaps(keypoints, heatmap_size, sigma, visible, mode, kernel, impl):
    check_tensor("keypoints", keypoints, dim=(3, 4), dtypes=FLOAT_DTYPES)
    if keypoints.size(-1) != 2:
        raise ValueError(f"keypoints must end in a dimension of size 2 (x, y), got shape {tuple(keypoints.shape)}")
    H, W = size2(heatmap_size)
    sigma = finite_float("sigma", sigma, f"a number in [{_reg.MIN_SIGMA}, {_reg.MAX_SIGMA})")
    if not _reg.MIN_SIGMA <= sigma < _reg.MAX_SIGMA:
        raise ValueError(f"sigma must be in [{_reg.MIN_SIGMA}, {_reg.MAX_SIGMA}), got {sigma}")
    choice("mode", mode, RENDER_MODES)
    choice("kernel", kernel, RENDER_KERNELS)
    single = keypoints.dim() == 3
    if visible is not None:
        check_tensor("visible", visible, device=keypoints.device)
        if tuple(visible.shape) != tuple(keypoints.shape[:-1]):
            raise ValueError(f"visible must have shape {tuple(keypoints.shape[:-1])} (keypoints without the last "
                             f"dimension), got {tuple(visible.shape)}")
        if visible.is_complex():
            raise ValueError("visible must be real")
    kp4 = keypoints.unsqueeze(1) if single else keypoints
    vis3 = None
    if visible is not None:
        vis3 = visible.to(keypoints.dtype)
        vis3 = vis3.unsqueeze(1) if single else vis3

    def compiled(op):
        hm, wt = op(kp4, vis3, H, W, sigma, mode, kernel)
        return hm, (wt.squeeze(1) if single else wt)

    return dispatch(
        "render_gaussian_heatmaps", impl, keypoints.device,
        cpp=lambda: compiled(torch.ops.fastops.render_gaussian_heatmaps),
        reference=lambda: reference_module("render").render_gaussian_heatmaps(keypoints, (H, W), sigma, visible,
                                                                               mode, kernel),
        triton=lambda: compiled(triton_module("render").render_gaussian_heatmaps_triton))


def render_center_heatmap(
    centers: Tensor,
    radii: Tensor,
    labels: Tensor,
    num_classes: int,
    heatmap_size: BroadcastingList2[int],
    impl: str = "auto",
) -> Tensor:
    """CenterNet's ``draw_umich_gaussian`` for a batch of objects, merged with max into class channels.

    Args:
        centers: ``[B, N, 2]`` object centres ``(x, y)`` in heatmap pixels (integer centre ``trunc(center)``).
        radii: ``[B, N]`` radii (integer, or float truncated to int; negative counts as 0; float radii above
            ``2**40`` count as ``2**40``), e.g. from :func:`gaussian_radius`. Float radii must be finite.
        labels: ``[B, N]`` integer class of each object in ``[0, num_classes)``; ``< 0`` marks padding.
        num_classes: number of output channels C, in ``[0, 2**31)``.
        heatmap_size: ``(H, W)``, each in ``[0, 2**20)``.

    Returns:
        ``[B, C, H, W]`` in the centres' dtype: ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, ``sigma = (2r + 1) / 6``, for
        ``|dx|, |dy| <= r``, clipped to the map.

    NaN/inf: an object with a non-finite centre is not drawn. Any finite centre is safe (no integer overflow).

    Speed: bandwidth-bound on the output (one write of ``B*C*H*W`` values).

    ONNX (both exporters, opset 18): per object the Gaussian on ``Range`` grids in float64 (``Exp``, the
    ``DBL_EPSILON`` cut as ``Where``), merged into the class planes with ``ScatterElements(reduction="max")``;
    memory ``B*N*H*W`` float64. Eager vs onnxruntime: within 1e-7.

    Autocast (CPU and CUDA): float16/bfloat16 centres are read as float32 and the heatmap is float32.

    TorchScript: scripts (the scripted function runs the compiled kernel; the op's own checks apply).
    """
    if torch.jit.is_scripting():
        r = radii.clamp(-1, 2**40).to(torch.int64) if radii.is_floating_point() else radii.to(torch.int64)
        return torch.ops.fastops.render_center_heatmap(centers, r, labels.to(torch.int64), num_classes,
                                                       heatmap_size[0], heatmap_size[1])
    leaf = traced_call(render_center_heatmap, (centers, radii, labels), centers, radii, labels, num_classes,
                       heatmap_size, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_render_center_heatmap, centers, centers, radii, labels, num_classes, heatmap_size,
                            impl)


def _render_center_heatmap(centers, radii, labels, num_classes, heatmap_size, impl):
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
    if radii.is_complex() or radii.dtype == torch.bool:
        raise ValueError(f"radii must be a real tensor, got {radii.dtype}")
    num_classes = check_int("num_classes", num_classes, low=0, high=2**31 - 1)
    H, W = size2(heatmap_size)
    # data-dependent checks (a sync on CUDA); under torch.compile the kernel's own check raises instead
    if not torch.compiler.is_compiling():
        if radii.is_floating_point() and radii.numel() > 0 and not bool(torch.isfinite(radii).all()):
            raise ValueError("radii must be finite")
        if labels.numel() > 0 and int(labels.max()) >= num_classes:
            raise ValueError(f"labels must be < num_classes ({num_classes}), got {int(labels.max())}")

    def compiled(op):
        r = radii.clamp(-1, 2**40).to(torch.int64) if radii.is_floating_point() else radii.to(torch.int64)
        return op(centers, r, labels.to(torch.int64), num_classes, H, W)

    return dispatch(
        "render_center_heatmap", impl, centers.device,
        cpp=lambda: compiled(torch.ops.fastops.render_center_heatmap),
        reference=lambda: reference_module("render").render_center_heatmap(centers, radii, labels, num_classes,
                                                                            (H, W)),
        triton=lambda: compiled(triton_module("render").render_center_heatmap_triton))


def gaussian_radius(heights: Tensor, widths: Tensor, min_overlap: float = 0.7, variant: str = "centernet",
                    impl: str = "auto") -> Tensor:
    """Gaussian radius for box sizes so that corners within it keep IoU >= ``min_overlap`` (CenterNet/CornerNet).

    ``variant="centernet"``: CenterNet's formula as published (quadratic roots divided by 2, not 2a; see
    xingyizhou/CenterNet#273); ``variant="cornernet"``: princeton-vl/CornerNet's corrected roots. Both are used in
    practice (CenterNet-trained models expect the former). ``heights``/``widths`` broadcast; computed in float64,
    returned in their (floating) dtype, unrounded (CenterNet applies ``max(0, int(r))``).

    NaN/inf: follows the formula (Python's ``min`` of the three roots: a NaN first root wins, later ones do not).

    ONNX (both exporters, opset 18): the three roots in float64 (``Sqrt``, ``Div``) and the ``min`` rule as
    ``Where(Less)``; within 1e-6 of eager.

    Autocast (CPU and CUDA): float16/bfloat16 sizes give a float32 radius (computed in float64 as always).

    TorchScript: scripts with tensor ``heights`` / ``widths`` (numbers and lists are eager-mode conveniences).
    """
    if torch.jit.is_scripting():
        dtype = heights.dtype if heights.is_floating_point() else torch.float32
        hs, ws = torch.broadcast_tensors(heights.to(dtype), widths.to(dtype))
        return torch.ops.fastops.gaussian_radius(hs.contiguous(), ws.contiguous(), min_overlap, variant)
    leaf = traced_call(gaussian_radius, (heights, widths), heights, widths, min_overlap, variant, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_gaussian_radius, heights, heights, widths, min_overlap, variant, impl)


def _gaussian_radius(heights, widths, min_overlap, variant, impl):
    choice("variant", variant, RADIUS_VARIANTS)
    if not isinstance(heights, Tensor):
        heights = torch.as_tensor(heights, dtype=torch.float32)
    if not isinstance(widths, Tensor):
        widths = torch.as_tensor(widths, dtype=torch.float32, device=heights.device)
    check_tensor("widths", widths, device=heights.device)
    min_overlap = finite_float("min_overlap", min_overlap, "a number in (0, 1)")
    if not 0 < min_overlap < 1:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
    if heights.is_complex() or widths.is_complex():
        raise ValueError("heights and widths must be real")
    dtype = heights.dtype if heights.dtype in FLOAT_DTYPES else torch.float32
    try:
        h, w = torch.broadcast_tensors(heights.to(dtype), widths.to(dtype))
    except RuntimeError as e:
        raise ValueError(f"heights {tuple(heights.shape)} and widths {tuple(widths.shape)} must broadcast: {e}") \
            from None
    return dispatch(
        "gaussian_radius", impl, h.device,
        cpp=lambda: torch.ops.fastops.gaussian_radius(h.contiguous(), w.contiguous(), min_overlap, variant),
        reference=lambda: reference_module("render").gaussian_radius(h, w, min_overlap, variant),
        triton=lambda: triton_module("render").gaussian_radius_triton(h.contiguous(), w.contiguous(), min_overlap,
                                                                      variant))
