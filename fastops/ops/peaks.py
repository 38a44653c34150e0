"""Peaks: `heatmap_peaks` (CenterNet's _nms + _topk in one pass) and `centernet_decode` (ctdet_decode).

Conventions and anchors: docs/heatmaps.md. Compiled kernels: `torch.ops.fastops.<name>` (schemas in
csrc/peaks/peaks.cpp); `impl="triton"` runs `fastops::<name>_triton` (fastops/triton/peaks.py);
`impl="reference"` the PyTorch transcriptions in fastops.reference.peaks.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

import fastops.registrations.peaks  # noqa: F401  (fake kernels)
from fastops._library import check_int, check_tensor, dispatch, reference_module, triton_module
from fastops.ops._keypoints import autocast_float32, check_maps, traced_call

MAX_K = 2**62

torch.fx.wrap("heatmap_peaks")
torch.fx.wrap("centernet_decode")


def heatmap_peaks(heatmaps: Tensor, k: int = 100, kernel: int = 3,
                  impl: str = "auto") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """CenterNet ``_nms`` + ``_topk`` in one pass: the k best scores of ``heat * keep`` (``keep``: the pixel equals
    the max of its ``kernel x kernel`` neighbourhood, outside the map never wins), over all classes and positions,
    descending, ties to the lower flat index ``(c, y, x)``.

    ``k`` in ``[0, 2**62]``; ``kernel`` odd in ``[1, 2**62]`` (a window wider than the map sees the whole map).
    As in CenterNet, non-peaks count with score 0 (so with fewer than k positive peaks, zeros fill the tail).

    NaN/inf: a NaN pixel is never a peak and makes its neighbourhood non-peaks (max_pool2d propagates NaN); it
    scores 0. +inf and -inf peaks keep their value (CenterNet's ``heat * keep`` would turn an infinite non-peak
    into NaN; here non-peaks always score 0).

    Returns ``(scores [B, k'], labels [B, k'], ys [B, k'], xs [B, k'])``, ``k' = min(k, C*H*W)``; scores in the
    heatmaps' dtype, the others int64.

    ONNX (both exporters, opset >= 15): MaxPool (stride 1) + Equal + Where for the peaks, TopK over C*H*W (ONNX
    orders equal values by lower index, as here), Div/Mod for labels, ys, xs; exact in onnxruntime (NaN pixels
    follow the runtime's MaxPool).

    Autocast: no cast. Comparisons and top-k on the map's own values are exact in float16/bfloat16 (float32
    compute would select the same peaks with the same scores), so the scores keep the heatmaps' dtype, as
    ``max_pool2d`` and ``topk`` do under autocast.

    TorchScript: scripts (the scripted function runs the compiled kernel; the op's own checks apply).
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.heatmap_peaks(heatmaps, k, kernel)
    leaf = traced_call(heatmap_peaks, (heatmaps,), heatmaps, k, kernel, impl)
    if leaf is not None:
        return leaf
    return _heatmap_peaks(heatmaps, k, kernel, impl)


def _heatmap_peaks(heatmaps, k, kernel, impl):
    check_maps("heatmaps", heatmaps)
    k = check_int("k", k, low=0, high=MAX_K)
    kernel = check_int("kernel", kernel, low=1, high=MAX_K)
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd int, got {kernel}")
    return dispatch(
        "heatmap_peaks", impl, heatmaps.device,
        cpp=lambda: torch.ops.fastops.heatmap_peaks(heatmaps, k, kernel),
        reference=lambda: reference_module("peaks").heatmap_peaks(heatmaps, k, kernel),
        triton=lambda: triton_module("peaks").heatmap_peaks_triton(heatmaps, k, kernel))


def centernet_decode(heat: Tensor, wh: Tensor, reg: Optional[Tensor] = None, k: int = 100,
                     impl: str = "auto") -> Tensor:
    """CenterNet ``ctdet_decode`` in one op: 3x3 peaks and top-k as :func:`heatmap_peaks`, then ``x += reg_x``,
    ``y += reg_y`` (+0.5 each when ``reg`` is None) and boxes ``[x - w/2, y - h/2, x + w/2, y + h/2]``.

    ``heat`` ``[B, C, H, W]`` (already through sigmoid), ``wh`` and ``reg`` ``[B, 2, H, W]`` read in place (any
    strides; no permute copy). Returns ``[B, k', 6]`` rows ``(x1, y1, x2, y2, score, label)`` in heat's dtype,
    ``k' = min(k, C*H*W)``, ``k`` in ``[0, 2**62]``.

    NaN/inf: peaks as :func:`heatmap_peaks`; NaN/inf in ``wh``/``reg`` flow into the boxes of the peaks that read
    them.

    ONNX (both exporters, opset >= 15): the peaks of :func:`heatmap_peaks`, then GatherElements of wh / reg on
    ``[B, 2, H*W]`` and the box arithmetic; onnxruntime matches eager to ~1e-6.

    Autocast (CPU and CUDA): float16/bfloat16 inputs (mixed dtypes accepted) are decoded in float32 and the
    boxes are float32 (a bfloat16 box corner cannot hold ``x + 0.5`` beyond x = 128).

    TorchScript: scripts (the scripted function runs the compiled kernel; the op's own checks apply).
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.centernet_decode(heat, wh, reg, k)
    leaf = traced_call(centernet_decode, (heat, wh, reg), heat, wh, reg, k, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_centernet_decode, heat, heat, wh, reg, k, impl)


def _centernet_decode(heat, wh, reg, k, impl):
    check_maps("heat", heat)
    B, C, H, W = heat.shape
    check_tensor("wh", wh, dim=4, dtypes=(heat.dtype,), device=heat.device)
    if tuple(wh.shape) != (B, 2, H, W):
        raise ValueError(f"wh must be [B, 2, H, W] = {(B, 2, H, W)}, got {tuple(wh.shape)}")
    if reg is not None:
        check_tensor("reg", reg, dim=4, dtypes=(heat.dtype,), device=heat.device)
        if tuple(reg.shape) != (B, 2, H, W):
            raise ValueError(f"reg must be [B, 2, H, W] = {(B, 2, H, W)}, got {tuple(reg.shape)}")
    k = check_int("k", k, low=0, high=MAX_K)
    return dispatch(
        "centernet_decode", impl, heat.device,
        cpp=lambda: torch.ops.fastops.centernet_decode(heat, wh, reg, k),
        reference=lambda: reference_module("peaks").centernet_decode(heat, wh, reg, k),
        triton=lambda: triton_module("peaks").centernet_decode_triton(heat, wh, reg, k))
