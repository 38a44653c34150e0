"""CornerNet's corner pooling (TopPool / BottomPool / LeftPool / RightPool) with CornerNet's own backward.

Conventions and anchors: docs/heatmaps.md. Compiled kernels: `torch.ops.fastops.corner_pool` (schema in
csrc/corner_pool/corner_pool.cpp); `impl="triton"` runs `fastops::corner_pool_triton` (fastops/triton/corner_pool.py);
`impl="reference"` the PyTorch transcription in fastops.reference.corner_pool.
"""
from __future__ import annotations

import torch
from torch import Tensor

import fastops.registrations.corner_pool as _reg
from fastops._library import FLOAT_DTYPES, check_tensor, dispatch, reference_module, triton_module
from fastops.ops._keypoints import choice, grad_path, traced_call

POOL_MODES = tuple(_reg.POOL_MODES)

torch.fx.wrap("corner_pool")


def corner_pool(x: Tensor, mode: str = "top", impl: str = "auto") -> Tensor:
    """CornerNet corner pooling: ``top`` ``out[y] = max_{y' >= y} x[y']``, ``bottom`` ``max_{y' <= y}``, ``left``
    ``max_{x' >= x}``, ``right`` ``max_{x' <= x}``.

    ``x`` ``[B, C, H, W]``; returns the same shape and dtype (contiguous). Differentiable: each gradient goes to the
    element the running max came from, on ties to the element met first in the scan (CornerNet's own backward; it
    differs from ``torch.cummax``, which picks the last).

    NaN/inf: NaN propagates along the scan as in ``torch.cummax`` and CornerNet's ``max``: from the first NaN met
    on, the output is NaN, and the gradients of those outputs go to that first NaN. +-inf are ordinary values.

    Speed: bandwidth-bound in principle; forward is one read + one write of ``x``. With a gradient to come
    (``x.requires_grad`` under grad mode, eager or torch.compile) the forward also writes a 1-bit-per-element record
    mask (``fastops::_corner_pool_masked``, 1/32 of a float32 map) and the backward reads the gradient and that mask
    and writes one gradient (2 x 8.4 MB + 0.26 MB for ``[1,128,128,128]`` float32, instead of reading the input, the
    output and the gradient: 4 x 8.4 MB); inference, tracing, TorchScript and export run ``fastops::corner_pool``
    and its own backward. Distance from one pass, 2-core dev VM, 1 thread, ``[1,128,128,128]`` float32, measured
    while the machine was busy (load ~2): a fresh 8 MB copy (``clone``) 0.9-1.1 ms; forward 2.2-2.7 ms (with the
    mask 2.5-3.4 ms); backward from the mask 1.2 ms (top) and 2.2-2.8 ms (left/right, 8x8 tile transposes); the
    left/right kernels are 2-3x from one pass (docs/heatmaps.md, "corner_pool: the autograd path keeps a record
    mask").

    ONNX (both exporters, opset >= 15): CornerNet's log-step max scan, ceil(log2(L)) rounds of Slice + Max + Concat
    along the scan axis, unrolled for the static length L of that axis (other dimensions dynamic); exact in
    onnxruntime. NaN handling there is the runtime's Max.

    Autocast: no cast. A running max is exact in float16/bfloat16 (each output is one of the inputs), so the
    output keeps ``x``'s dtype, as ``max_pool2d`` does under autocast.

    TorchScript: scripts (the scripted function runs the compiled kernel; the op's own checks apply).
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.corner_pool(x, mode)
    leaf = traced_call(corner_pool, (x,), x, mode, impl)
    if leaf is not None:
        return leaf
    return _corner_pool(x, mode, impl)


def _corner_pool(x, mode, impl):
    check_tensor("x", x, dim=4, dtypes=FLOAT_DTYPES)
    choice("mode", mode, POOL_MODES)
    return dispatch(
        "corner_pool", impl, x.device,
        cpp=lambda: _corner_pool_cpp(x, mode),
        reference=lambda: reference_module("corner_pool").corner_pool(x, mode),
        triton=lambda: triton_module("corner_pool").corner_pool_triton(x, mode))


def _corner_pool_cpp(x, mode):
    """The compiled op; when a gradient will be asked for, the variant that also returns the record mask
    (`_corner_pool_masked`: the backward reads the gradient and one bit per element instead of the gradient, the
    input and the output). Tracing and exporting keep `corner_pool` itself (its ONNX symbolic, its own autograd)."""
    if grad_path(x):
        return torch.ops.fastops._corner_pool_masked(x, mode)[0]
    return torch.ops.fastops.corner_pool(x, mode)
