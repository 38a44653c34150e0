"""Triton kernels of corner pooling (forward scan and CornerNet's backward), registered as
`fastops::corner_pool_triton` / `fastops::_corner_pool_backward_triton` (see _registry.py). Same conventions as
csrc/corner_pool/corner_pool.h (NaN propagates from the first NaN of a scan; ties go to the first met).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.registrations import corner_pool as _reg
from fastops.triton._keypoints import acc_type
from fastops.triton._registry import check_triton_device, launch, register_fake, triton_custom_op


# ---- corner pooling ----------------------------------------------------------------------------------------------

@triton.jit
def _lanes_geometry(H, W, MODE: tl.constexpr, BLOCK: tl.constexpr):
    """This program's BLOCK scan lines: columns of plane program_id(0) for a vertical scan (top/bottom), rows for a
    horizontal one. Returns each lane's first element, the step along the line, the line's length and the lane
    mask."""
    plane = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if MODE < 2:
        return plane * H * W + offs, W, H, offs < W
    else:
        return plane * H * W + offs * W, 1, W, offs < H


@triton.jit
def _corner_pool_kernel(x, out, H, W, MODE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # Values are compared in ACC (float32 for float16/bfloat16: the round trip is exact, so the result is the
    # input's own values). Triton's interpreter (3.8) stores bfloat16 as raw uint16 and compares those bits
    # (`create_fcmpOGT` is np.greater on the uint16 array: -0.89 > -1.29 is False, -0.02 > 0.37 is True), so a
    # bfloat16 compare gave wrong maxima under TRITON_INTERPRET=1; tests/test_corner_pool.py has the reproducer.
    REV: tl.constexpr = (MODE == 0) | (MODE == 2)
    base, step, length, lane_ok = _lanes_geometry(H, W, MODE, BLOCK)
    if REV:
        pos = base + (length - 1) * step
        d = -step
    else:
        pos = base
        d = step
    mx = tl.load(x + pos, mask=lane_ok, other=0.0).to(ACC)
    tl.store(out + pos, mx.to(out.dtype.element_ty), mask=lane_ok)
    for t in range(1, length):
        pos += d
        v = tl.load(x + pos, mask=lane_ok, other=0.0).to(ACC)
        mx = tl.where((v > mx) | ((v != v) & (mx == mx)), v, mx)  # NaN propagates from the first NaN
        tl.store(out + pos, mx.to(out.dtype.element_ty), mask=lane_ok)


@triton.jit
def _corner_pool_bwd_kernel(grad, x, out, gin, H, W, MODE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    REV: tl.constexpr = (MODE == 0) | (MODE == 2)
    base, step, length, lane_ok = _lanes_geometry(H, W, MODE, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    # walk against the scan: scan position t = length-1 .. 0
    for j in range(0, length):
        t = length - 1 - j
        if REV:
            pos = base + (length - 1 - t) * step
            prev = pos + step
        else:
            pos = base + t * step
            prev = pos - step
        acc += tl.load(grad + pos, mask=lane_ok, other=0.0).to(ACC)
        v = tl.load(x + pos, mask=lane_ok, other=0.0).to(ACC)
        pm = lane_ok & (t > 0)
        pv = tl.load(out + prev, mask=pm, other=0.0).to(ACC)
        rec = (t == 0) | (v > pv) | ((v != v) & (pv == pv))
        tl.store(gin + pos, tl.where(rec, acc, 0.0).to(gin.dtype.element_ty), mask=lane_ok)
        acc = tl.where(rec, 0.0, acc)


def _lanes(x: Tensor, mode: str) -> Tuple[int, int]:
    n = x.size(3) if mode in ("top", "bottom") else x.size(2)
    blk = max(16, min(128, triton.next_power_of_2(max(n, 1))))
    return n, blk


@triton_custom_op("fastops::corner_pool_triton", mutates_args=())
def corner_pool_triton(input: Tensor, mode: str) -> Tensor:
    check_triton_device(input)
    x = input.contiguous()
    out = torch.empty_like(x)
    if x.numel() > 0:
        n, blk = _lanes(x, mode)
        launch(_corner_pool_kernel)[(x.size(0) * x.size(1), triton.cdiv(n, blk))](
            x, out, x.size(2), x.size(3), MODE=_reg.POOL_MODES[mode], ACC=acc_type(x.dtype), BLOCK=blk)
    return out


@triton_custom_op("fastops::_corner_pool_backward_triton", mutates_args=())
def corner_pool_backward_triton(grad: Tensor, input: Tensor, output: Tensor, mode: str) -> Tensor:
    x = input.contiguous()
    gin = torch.empty_like(x)
    if x.numel() > 0:
        n, blk = _lanes(x, mode)
        launch(_corner_pool_bwd_kernel)[(x.size(0) * x.size(1), triton.cdiv(n, blk))](
            grad.to(x.dtype).contiguous(), x, output.contiguous(), gin, x.size(2), x.size(3),
            MODE=_reg.POOL_MODES[mode], ACC=acc_type(x.dtype), BLOCK=blk)
    return gin


for _name, _op in (("corner_pool", corner_pool_triton), ("_corner_pool_backward", corner_pool_backward_triton)):
    register_fake(_op, _reg.FAKES[_name])
corner_pool_triton.register_autograd(_reg.corner_pool_backward(torch.ops.fastops._corner_pool_backward_triton),
                                     setup_context=_reg.corner_pool_setup_context)
