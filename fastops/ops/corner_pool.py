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

    Speed: bandwidth-bound; forward is one read + one write of ``x``, backward reads ``x``, the output and the
    gradient and writes one gradient (the CPU kernels make exactly these passes). Distance from that floor on the
    2-core dev VM, ``[1,128,128,128]`` float32, 1 thread: a copy (one read + one write) takes ~0.5 ms; forward
    bottom ~0.7 ms (1.4x), left/right ~1.5-2.2 ms (3-4x: the 8x8 transposes of the scan along rows), top ~1.8-2.5
    ms (descending rows); backward 1.3-4 ms (three reads + one write).

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
