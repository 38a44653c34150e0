"""Decoding keypoints from heatmaps: `heatmap_argmax` (mmpose's get_heatmap_maximum + refinements, the
stacked-hourglass parser) and `soft_argmax` (integral regression).

Conventions and anchors: docs/heatmaps.md. Compiled kernels: `torch.ops.fastops.<name>` (schemas in
csrc/decode/decode.cpp); `impl="triton"` runs `fastops::<name>_triton` (fastops/triton/decode.py);
`impl="reference"` the NumPy/PyTorch transcriptions in fastops.reference.decode.
Coordinates are (x, y) in heatmap pixels: pixel i covers [i, i + 1) and has its value at i (mmpose).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

import fastops.registrations.decode as _reg
from fastops._library import FLOAT_DTYPES, check_int, dispatch, plain_eager, reference_module, triton_module
from fastops.ops._keypoints import (MAX_SIDE, autocast_float32, check_maps, choice, finite_float, grad_path,
                                    traced_call)

REFINES = tuple(_reg.REFINES)
MAX_BLUR = _reg.MAX_BLUR
_REFINE_SET = frozenset(REFINES)
_FAST_DTYPES = frozenset(FLOAT_DTYPES)
_argmax_op = torch.ops.fastops.heatmap_argmax.default
_soft_op = torch.ops.fastops.soft_argmax.default
_probs_op = torch.ops.fastops._soft_argmax_probs.default
_probs_backward_op = torch.ops.fastops._soft_argmax_probs_backward.default
_grad_enabled = torch.is_grad_enabled
_is_tracing = torch._C._is_tracing
_is_exporting = torch.compiler.is_exporting
_below_autograd = torch._C._AutoDispatchBelowAutograd

torch.fx.wrap("heatmap_argmax")
torch.fx.wrap("soft_argmax")


def heatmap_argmax(heatmaps: Tensor, refine: str = "none", blur_kernel: int = 11,
                   impl: str = "auto") -> Tuple[Tensor, Tensor]:
    """Keypoints from heatmaps: first maximum in row-major order, then an optional sub-pixel refinement.

    Args:
        heatmaps: ``[B, K, H, W]`` (or ``[K, H, W]``).
        refine: ``"none"`` (mmpose ``get_heatmap_maximum``), ``"quarter"`` (``refine_keypoints``: +-0.25 towards the
            larger neighbour, HRNet/SimpleBaseline), ``"hourglass"`` (stacked-hourglass parser: +-0.25 with clamped
            neighbours, then +0.5), ``"dark"`` (``refine_keypoints_dark``, DARK's Taylor step on the log of the
            blurred map), ``"dark_udp"`` (``refine_keypoints_dark_udp``).
        blur_kernel: odd Gaussian kernel size in ``[1, 31]`` for the DARK blurs (OpenCV's kernel for sigma 0). Only
            a patch around each maximum is blurred (the full map only when clamping near the maximum makes
            mmpose's rescale matter).

    Returns:
        ``(coords [B, K, 2], scores [B, K])`` in the heatmaps' dtype; coords are -1 where the score is <= 0 (no
        refinement applies there; mmpose's dark_udp would read a wrapped-around index).

    NaN/inf: the first NaN of a map counts as its maximum (numpy's argmax / amax: score NaN, coordinates its pixel).
    A refined coordinate that is not finite (the refinement read a NaN or inf: a NaN maximum, a NaN neighbour, an
    infinite maximum) falls back to the integer location; mmpose would return NaN there.

    Speed (none/quarter): bandwidth-bound, one read of the maps (6.3 MB for 32x17x64x48 float32) and nothing else
    of size (one pass keeps per-lane maxima and the first block reaching them; only that block is read again). On
    the 2-core dev VM (quiet, 2026-12-02): the op 0.25 ms at 1 thread and 0.13-0.16 ms at 2, ``torch.amax`` over the
    same maps 0.24 / 0.12 ms (1.05-1.3x of one read; bench/test_bench_decode.py::test_heatmap_argmax_vs_amax).

    ONNX (both exporters, opset >= 15; every refine): ArgMax over H*W, GatherElements of the score and of the
    refinement's neighbours, Where for the -1 / offset rules; exact in onnxruntime for none / quarter / hourglass
    (a NaN map follows the runtime's ArgMax). ``dark`` / ``dark_udp``: the whole map blurred (Pad + Slice taps of
    OpenCV's kernel, row then column pass, as the kernels add them), the blurred values around the maximum
    gathered, the kernels' rescale/clamp branch as Where, Log and the Taylor step; onnxruntime within 1e-4 px of
    eager (scores exact).

    Autocast (CPU and CUDA): float16/bfloat16 maps are decoded in float32 and coords and scores are float32 (the
    maximum itself is exact in any precision, but a bfloat16 coordinate cannot hold ``x + 0.25`` beyond x = 64).

    TorchScript: scripts (the scripted function runs the compiled kernel; the op's own checks apply).
    """
    if torch.jit.is_scripting():
        if heatmaps.dim() == 3:
            c, s = torch.ops.fastops.heatmap_argmax(heatmaps.unsqueeze(0), refine, blur_kernel)
            return c[0], s[0]
        return torch.ops.fastops.heatmap_argmax(heatmaps, refine, blur_kernel)
    # Eager fast path (the per-call cost matters against one read of small maps): a plain 4-D float CPU tensor with
    # non-empty maps, valid arguments, impl auto/cpp, no autocast, no tracing or compiling: exactly the checks below
    # pass, so the compiled op is called directly. Anything else takes the general path (same errors as before).
    if (type(heatmaps) is Tensor and (impl == "auto" or impl == "cpp") and type(refine) is str
            and refine in _REFINE_SET and type(blur_kernel) is int and 1 <= blur_kernel <= MAX_BLUR
            and blur_kernel & 1 and heatmaps.dim() == 4 and heatmaps.dtype in _FAST_DTYPES
            and heatmaps.device.type == "cpu" and 0 < heatmaps.size(2) < MAX_SIDE
            and 0 < heatmaps.size(3) < MAX_SIDE and plain_eager((heatmaps,))):
        return _argmax_op(heatmaps, refine, blur_kernel)
    leaf = traced_call(heatmap_argmax, (heatmaps,), heatmaps, refine, blur_kernel, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_heatmap_argmax, heatmaps, heatmaps, refine, blur_kernel, impl)


def _heatmap_argmax(heatmaps, refine, blur_kernel, impl):
    check_maps("heatmaps", heatmaps, dims=(3, 4))
    choice("refine", refine, REFINES)
    blur_kernel = check_int("blur_kernel", blur_kernel, low=1, high=MAX_BLUR)
    if blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel must be an odd int in [1, {MAX_BLUR}], got {blur_kernel}")
    single = heatmaps.dim() == 3
    hm = heatmaps.unsqueeze(0) if single else heatmaps
    c, s = dispatch(
        "heatmap_argmax", impl, hm.device,
        cpp=lambda: torch.ops.fastops.heatmap_argmax(hm, refine, blur_kernel),
        reference=lambda: reference_module("decode").heatmap_argmax(hm, refine, blur_kernel),
        triton=lambda: triton_module("decode").heatmap_argmax_triton(hm, refine, blur_kernel))
    return (c[0], s[0]) if single else (c, s)


def soft_argmax(heatmaps: Tensor, beta: float = 1.0, normalize: bool = False, impl: str = "auto") -> Tensor:
    """Differentiable keypoints (integral regression): ``p = softmax(beta * h)`` over H*W, ``x = sum p*j``,
    ``y = sum p*i`` in pixels; ``normalize=True`` divides by W and H (mmpose's integral-regression convention).

    ``heatmaps`` ``[B, K, H, W]``; returns ``[B, K, 2]`` in its dtype (accumulated in float32, float64 stays
    float64: beta and 1/W too). Backward w.r.t. ``heatmaps``.

    NaN/inf: as ``torch.softmax``: a NaN in a map, or +inf (beta > 0) / -inf (beta < 0), makes that map's
    coordinates and gradients NaN.

    Speed: one read of the maps forward. With a gradient to come (``heatmaps.requires_grad`` under grad mode, eager
    or torch.compile) the forward also writes ``p`` (float32; kept for the backward, as torch.softmax keeps its
    output) and the backward is one read of ``p`` and one write of the gradient: forward+backward moves 4 x the maps'
    bytes (27 MB for 32x17x64x48 float32) and computes one exp per pixel; exp-bound, not bandwidth-bound: on the
    2-core dev VM (quiet, 2026-12-02), forward+backward 1.5-1.6 ms at 1 thread and 0.86-0.93 ms at 2, against
    ~2.6 ms at 1 thread for ``torch.exp`` over the same pixels (1.9 ms) plus the 4 x 6.7 MB moved at memcpy speed
    (0.75 ms): below that floor (its own exp is cheaper than torch.exp); the two ops alone take 1.3 ms at 1 thread
    (docs/heatmaps.md, "soft_argmax: the autograd path keeps the probabilities" and "Figures (small7)").

    ONNX (both exporters, opset >= 15): Softmax of beta * h over H*W, then ReduceSum against Range index grids
    (dynamic batch and map sizes); onnxruntime matches eager to ~1e-6.

    Autocast (CPU and CUDA): float16/bfloat16 maps are computed in float32 (autocast's rule for softmax) and the
    coordinates are float32; the gradient flows back in the maps' dtype.

    TorchScript: scripts (the scripted function runs the compiled kernel; the op's own checks apply).
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.soft_argmax(heatmaps, beta, normalize)
    # Eager fast path (as heatmap_argmax's): a plain 4-D float CPU tensor with non-empty maps, a finite float beta, a
    # bool normalize, impl auto/cpp, no autocast, tracing, compiling or exporting: every check below passes, so the
    # compiled ops are called directly; with a gradient to come through _SoftArgmaxProbs (the ops below autograd,
    # p saved). Anything else takes the general path (same errors as before).
    if (type(heatmaps) is Tensor and (impl == "auto" or impl == "cpp") and type(beta) is float
            and beta - beta == 0.0 and type(normalize) is bool and heatmaps.dim() == 4
            and heatmaps.dtype in _FAST_DTYPES and heatmaps.device.type == "cpu" and 0 < heatmaps.size(2) < MAX_SIDE
            and 0 < heatmaps.size(3) < MAX_SIDE and plain_eager((heatmaps,))
            and not _is_tracing()):
        if heatmaps.requires_grad and _grad_enabled() and not _is_exporting():
            return _SoftArgmaxProbs.apply(heatmaps, beta, normalize)
        return _soft_op(heatmaps, beta, normalize)
    leaf = traced_call(soft_argmax, (heatmaps,), heatmaps, beta, normalize, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_soft_argmax, heatmaps, heatmaps, beta, normalize, impl)


def _soft_argmax(heatmaps, beta, normalize, impl):
    check_maps("heatmaps", heatmaps)
    beta = finite_float("beta", beta)
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {normalize!r}")
    return dispatch(
        "soft_argmax", impl, heatmaps.device,
        cpp=lambda: _soft_argmax_cpp(heatmaps, beta, normalize),
        reference=lambda: reference_module("decode").soft_argmax(heatmaps, beta, normalize),
        triton=lambda: triton_module("decode").soft_argmax_triton(heatmaps, beta, normalize))


def _soft_argmax_cpp(heatmaps, beta, normalize):
    """The compiled op; when a gradient will be asked for, the variant that keeps the probabilities for the backward
    (`_soft_argmax_probs`: one read of p and one write instead of the softmax recomputed). Tracing and exporting
    keep `soft_argmax` itself (its ONNX symbolic, its own autograd)."""
    if grad_path(heatmaps):
        return torch.ops.fastops._soft_argmax_probs(heatmaps, beta, normalize)[0]
    return torch.ops.fastops.soft_argmax(heatmaps, beta, normalize)


class _SoftArgmaxProbs(torch.autograd.Function):
    """The eager fast path's autograd (the same ops and backward as `_soft_argmax_probs`' registered autograd,
    fastops/registrations/decode.py, without its per-call dispatch layers): the forward keeps p (float32, float64
    for float64 maps) for the backward, one read of p and one write of the gradient."""

    @staticmethod
    def forward(ctx, heatmaps, beta, normalize):
        with _below_autograd():
            coords, probs = _probs_op(heatmaps, beta, normalize)
        ctx.save_for_backward(probs, coords)
        ctx.args = (beta, normalize, heatmaps.dtype)
        return coords

    @staticmethod
    def backward(ctx, grad):
        probs, coords = ctx.saved_tensors
        beta, normalize, dtype = ctx.args
        g = _probs_backward_op(grad, probs, coords, beta, normalize)
        return (g if g.dtype == dtype else g.to(dtype)), None, None
