"""Triton RoIAlign: forward and backward, both layouts (strides), one program per (RoI, bin, channel block).

Same conventions as the C++/CUDA kernels (torchvision's). The backward scatters with atomic adds: on a GPU it
is not bitwise deterministic (the compiled CUDA backward is) and raises under
torch.use_deterministic_algorithms(True); under TRITON_INTERPRET=1 it is deterministic.
Multi-scale: levels are assigned on the device (no host sync) and one launch per level pools the RoIs of that
level.
"""
from __future__ import annotations

from typing import List

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch._prims_common import alert_not_deterministic

from fastops._library import is_channels_last
from fastops.registrations import roi_align as _reg
from fastops.triton._common import fpn_level_range, fpn_levels
from fastops.triton._registry import check_triton_device, launch, register_fake, triton_custom_op

MAX_GRID = tl.constexpr(float(_reg.MAX_SAMPLING_RATIO))


@triton.jit
def _tap(y, size):
    # torchvision/Caffe2 bilinear rule along one axis: (valid, lo, hi, w_lo, w_hi)
    valid = (y >= -1.0) & (y <= size) & (size > 0)  # (an empty axis has no pixel to read)
    y = tl.maximum(y, 0.0)
    lo = tl.minimum(y, size - 1.0).to(tl.int32)  # bounded before the cast: NaN/inf never index
    at_end = lo >= size - 1
    lo = tl.where(at_end, size - 1, lo)
    hi = tl.where(at_end, size - 1, lo + 1)
    y = tl.where(at_end, lo.to(y.dtype), y)
    frac = y - lo.to(y.dtype)
    hi = tl.where(frac == 0.0, lo, hi)  # NaN/inf rule: read only the pixels given a non-zero weight
    return valid, lo, hi, 1.0 - frac, frac


@triton.jit
def _sample_range(start, p, bin_size, grid, size):
    # Samples i of bin p with coordinate start + p * bin + (i + 0.5) * bin / grid inside [-1, size] lie in
    # [i0, i1): the others contribute 0, so the loops skip them (a huge box has few samples on the map). The
    # bounds are widened by a sample each side (rounding); every sample is still tested by _tap.
    base = start + p * bin_size
    t0 = (-1.0 - base) * grid / bin_size - 0.5
    t1 = (size - base) * grid / bin_size - 0.5
    lo = tl.minimum(t0, t1)
    hi = tl.maximum(t0, t1)
    ok = (bin_size != 0.0) & (lo == lo) & (hi == hi)
    lo = tl.minimum(tl.maximum(tl.floor(lo) - 1.0, 0.0), grid * 1.0)
    hi = tl.minimum(tl.maximum(tl.ceil(hi) + 2.0, 0.0), grid * 1.0)
    i0 = tl.where(ok, lo.to(tl.int32), 0)
    i1 = tl.where(ok, hi.to(tl.int32), grid)
    return i0, i1


@triton.jit
def _roi_geometry(rois, k, spatial_scale, PH, PW, sampling_ratio, N, ALIGNED: tl.constexpr,
                  ACC: tl.constexpr):
    bidx = tl.load(rois + k * 5).to(ACC)
    x1 = tl.load(rois + k * 5 + 1).to(ACC)
    y1 = tl.load(rois + k * 5 + 2).to(ACC)
    x2 = tl.load(rois + k * 5 + 3).to(ACC)
    y2 = tl.load(rois + k * 5 + 4).to(ACC)
    offset = 0.5 if ALIGNED else 0.0
    start_w = x1 * spatial_scale - offset
    start_h = y1 * spatial_scale - offset
    roi_w = x2 * spatial_scale - offset - start_w
    roi_h = y2 * spatial_scale - offset - start_h
    if not ALIGNED:
        roi_w = tl.maximum(roi_w, 1.0)
        roi_h = tl.maximum(roi_h, 1.0)
    bin_h = roi_h / PH
    bin_w = roi_w / PW
    ok = (bidx >= 0) & (bidx < N) & (roi_h == roi_h) & (roi_w == roi_w) & (roi_h < 1e30) & (roi_w < 1e30) \
        & (start_h == start_h) & (start_w == start_w) & (tl.abs(start_h) < 1e30) & (tl.abs(start_w) < 1e30)
    # adaptive grid ceil(roi / pooled) capped at MAX_GRID (kMaxGrid in roi_align.h), bounded before the cast
    gh = tl.where(sampling_ratio > 0, sampling_ratio,
                  tl.ceil(tl.minimum(tl.maximum(roi_h / PH, 0.0), MAX_GRID)).to(tl.int32))
    gw = tl.where(sampling_ratio > 0, sampling_ratio,
                  tl.ceil(tl.minimum(tl.maximum(roi_w / PW, 0.0), MAX_GRID)).to(tl.int32))
    gh = tl.where(ok, gh, 0)
    gw = tl.where(ok, gw, 0)
    b = tl.where(ok, bidx, 0.0).to(tl.int64)
    return b, start_h, start_w, bin_h, bin_w, gh, gw


@triton.jit
def _bin_program(rois, levels, this_level, N, C, spatial_scale, sampling_ratio, PH, PW, ALIGNED: tl.constexpr,
                 HAS_LEVELS: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    # This program's (RoI, bin, channel block) and the RoI's geometry; `mine` is False for RoIs of other levels
    # (their grid is emptied so they sample nothing).
    pid = tl.program_id(0)
    q = pid % PW
    p = (pid // PW) % PH
    k = pid // (PW * PH)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b, start_h, start_w, bin_h, bin_w, gh, gw = _roi_geometry(rois, k, spatial_scale, PH, PW, sampling_ratio, N,
                                                               ALIGNED, ACC)
    if HAS_LEVELS:
        mine = tl.load(levels + k) == this_level
        gh = tl.where(mine, gh, 0)
    else:
        mine = gh == gh
    return k, p, q, offs_c, offs_c < C, mine, b, start_h, start_w, bin_h, bin_w, gh, gw


@triton.jit
def _roi_align_kernel(feat, rois, pooled, levels, this_level, N, C, H, W, sN, sC, sH, sW, pK, pC, pH, pW,
                      spatial_scale, sampling_ratio, PH, PW, ALIGNED: tl.constexpr, HAS_LEVELS: tl.constexpr,
                      ACC: tl.constexpr, BLOCK_C: tl.constexpr, BACKWARD: tl.constexpr):
    # Forward: `feat` is the feature map, `pooled` the output; each bin averages its samples' bilinear taps.
    # Backward: `pooled` is the output's gradient, `feat` the input's gradient (zeroed), into which each sample
    # scatters its share. One kernel for both (BACKWARD is a constexpr: each compiles to its own code), so the
    # sample loop is written once.
    k, p, q, offs_c, cmask, mine, b, start_h, start_w, bin_h, bin_w, gh, gw = _bin_program(
        rois, levels, this_level, N, C, spatial_scale, sampling_ratio, PH, PW, ALIGNED, HAS_LEVELS, ACC, BLOCK_C)
    if BACKWARD:
        g = tl.load(pooled + k * pK + offs_c * pC + p * pH + q * pW, mask=cmask, other=0.0).to(ACC) \
            / tl.maximum(gh * gw, 1)
    else:
        acc = tl.zeros([BLOCK_C], dtype=ACC)
    base = feat + b * sN + offs_c * sC
    iy0, iy1 = _sample_range(start_h, p, bin_h, gh, H)
    ix0, ix1 = _sample_range(start_w, q, bin_w, gw, W)
    for iy in range(iy0, iy1):
        y = start_h + p * bin_h + (iy + 0.5) * bin_h / gh
        vy, y0, y1, wy0, wy1 = _tap(y, H)
        for ix in range(ix0, ix1):
            x = start_w + q * bin_w + (ix + 0.5) * bin_w / gw
            vx, x0, x1, wx0, wx1 = _tap(x, W)
            m = tl.where(vy & vx, cmask, False)  # (scalar & block masks trip the CPU interpreter)
            if BACKWARD:
                tl.atomic_add(base + y0 * sH + x0 * sW, (g * wy0 * wx0).to(feat.dtype.element_ty), mask=m)
                tl.atomic_add(base + y0 * sH + x1 * sW, (g * wy0 * wx1).to(feat.dtype.element_ty), mask=m)
                tl.atomic_add(base + y1 * sH + x0 * sW, (g * wy1 * wx0).to(feat.dtype.element_ty), mask=m)
                tl.atomic_add(base + y1 * sH + x1 * sW, (g * wy1 * wx1).to(feat.dtype.element_ty), mask=m)
            else:
                v00 = tl.load(base + y0 * sH + x0 * sW, mask=m, other=0.0).to(ACC)
                v01 = tl.load(base + y0 * sH + x1 * sW, mask=m, other=0.0).to(ACC)
                v10 = tl.load(base + y1 * sH + x0 * sW, mask=m, other=0.0).to(ACC)
                v11 = tl.load(base + y1 * sH + x1 * sW, mask=m, other=0.0).to(ACC)
                acc += wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)
    if not BACKWARD:
        res = acc / tl.maximum(gh * gw, 1)
        tl.store(pooled + k * pK + offs_c * pC + p * pH + q * pW, res.to(pooled.dtype.element_ty),
                 mask=tl.where(mine, cmask, False))


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_c(c: int) -> int:
    return max(16, min(64, triton.next_power_of_2(max(c, 1))))


def _warps(block_c: int) -> int:
    # one warp per 32 channels of the block: 4 warps on a 16-channel block only replicate lanes (and the float64
    # channels_last forward spilled on sm_90 with them)
    return max(1, block_c // 32)


def _levels(rois: Tensor, scales: List[float], canonical_scale: int, canonical_level: int) -> Tensor:
    k_min, k_max = fpn_level_range(scales)
    return fpn_levels(rois, k_min, k_max, canonical_scale, canonical_level)


def _forward(features: List[Tensor], rois: Tensor, scales: List[float], ph: int, pw: int, sampling_ratio: int,
             aligned: bool, levels) -> Tensor:
    f0 = features[0]
    K, C = rois.size(0), f0.size(1)
    fmt = torch.channels_last if is_channels_last(f0) else torch.contiguous_format
    out = torch.zeros((K, C, ph, pw), dtype=f0.dtype, device=f0.device).contiguous(memory_format=fmt)
    if K == 0 or C == 0:
        return out
    rois = rois.contiguous()
    block = _block_c(C)
    grid = (K * ph * pw, triton.cdiv(C, block))
    for lvl, (feat, scale) in enumerate(zip(features, scales)):
        launch(_roi_align_kernel)[grid](
            feat, rois, out, levels if levels is not None else rois, lvl, f0.size(0), C, feat.size(2), feat.size(3),
            *feat.stride(), *out.stride(), float(scale), int(sampling_ratio), ph, pw, ALIGNED=bool(aligned),
            HAS_LEVELS=levels is not None, ACC=_acc(f0.dtype), BLOCK_C=block, BACKWARD=False,
            num_warps=_warps(block))
    return out


def check_deterministic(grad: Tensor, op: str) -> None:
    """The backward scatters with tl.atomic_add: on a GPU the summation order varies, so it obeys
    torch.use_deterministic_algorithms like PyTorch's own atomic kernels (RuntimeError, or a warning with
    warn_only=True). Under TRITON_INTERPRET=1 on CPU tensors the atomics run in program order (deterministic)."""
    if grad.device.type != "cpu":
        alert_not_deterministic(f"{op} (impl='triton' backward, atomic adds; the compiled CUDA kernel, impl='cpp', "
                                f"is deterministic)")


def _backward(grad: Tensor, rois: Tensor, scales: List[float], ph: int, pw: int, n: int, c: int, sizes: List[int],
              sampling_ratio: int, aligned: bool, channels_last: List[bool], levels) -> List[Tensor]:
    acc_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    outs = []
    rois = rois.contiguous()
    K = rois.size(0)
    block = _block_c(c)
    grid = (K * ph * pw, triton.cdiv(c, block))
    for lvl, scale in enumerate(scales):
        fmt = torch.channels_last if channels_last[lvl] else torch.contiguous_format
        gin = torch.zeros((n, c, sizes[2 * lvl], sizes[2 * lvl + 1]), dtype=acc_dtype, device=grad.device)
        gin = gin.contiguous(memory_format=fmt)
        if K > 0 and c > 0:
            launch(_roi_align_kernel)[grid](
                gin, rois, grad, levels if levels is not None else rois, lvl, n, c, gin.size(2), gin.size(3),
                *gin.stride(), *grad.stride(), float(scale), int(sampling_ratio), ph, pw, ALIGNED=bool(aligned),
                HAS_LEVELS=levels is not None, ACC=_acc(grad.dtype), BLOCK_C=block, BACKWARD=True,
                num_warps=_warps(block))
        outs.append(gin.to(grad.dtype))
    return outs


@triton_custom_op("fastops::roi_align_triton", mutates_args=())
def roi_align_triton(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int,
                     sampling_ratio: int, aligned: bool) -> Tensor:
    check_triton_device(input)
    return _forward([input], rois, [spatial_scale], pooled_height, pooled_width, sampling_ratio, aligned, None)


@triton_custom_op("fastops::_roi_align_backward_triton", mutates_args=())
def roi_align_backward_triton(grad: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                              pooled_width: int, batch_size: int, channels: int, height: int, width: int,
                              sampling_ratio: int, aligned: bool, channels_last: bool) -> Tensor:
    check_deterministic(grad, "fastops::_roi_align_backward_triton")
    return _backward(grad, rois, [spatial_scale], pooled_height, pooled_width, batch_size, channels,
                     [height, width], sampling_ratio, aligned, [channels_last], None)[0]


@triton_custom_op("fastops::multi_scale_roi_align_triton", mutates_args=())
def multi_scale_roi_align_triton(features: List[Tensor], rois: Tensor, spatial_scales: List[float],
                                 pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool,
                                 canonical_scale: int, canonical_level: int) -> Tensor:
    check_triton_device(features[0])
    levels = _levels(rois, spatial_scales, canonical_scale, canonical_level) if len(features) > 1 else None
    return _forward(list(features), rois, list(spatial_scales), pooled_height, pooled_width, sampling_ratio,
                    aligned, levels)


@triton_custom_op("fastops::_multi_scale_roi_align_backward_triton", mutates_args=())
def multi_scale_roi_align_backward_triton(grad: Tensor, rois: Tensor, spatial_scales: List[float],
                                          pooled_height: int, pooled_width: int, batch_size: int, channels: int,
                                          sizes: List[int], sampling_ratio: int, aligned: bool, canonical_scale: int,
                                          canonical_level: int, channels_last: List[bool]) -> List[Tensor]:
    check_deterministic(grad, "fastops::_multi_scale_roi_align_backward_triton")
    levels = _levels(rois, spatial_scales, canonical_scale, canonical_level) if len(spatial_scales) > 1 else None
    return _backward(grad, rois, list(spatial_scales), pooled_height, pooled_width, batch_size, channels,
                     list(sizes), sampling_ratio, aligned, list(channels_last), levels)


# ---- fakes and autograd: the same as the compiled ops' (fastops/registrations/roi_align.py) ----------------

register_fake(roi_align_triton, _reg.roi_align_fake)
register_fake(roi_align_backward_triton, _reg.roi_align_backward_fake)
register_fake(multi_scale_roi_align_triton, _reg.multi_scale_roi_align_fake)
register_fake(multi_scale_roi_align_backward_triton, _reg.multi_scale_roi_align_backward_fake)
roi_align_triton.register_autograd(_reg.roi_align_backward(torch.ops.fastops._roi_align_backward_triton),
                                   setup_context=_reg.roi_align_setup_context)
multi_scale_roi_align_triton.register_autograd(
    _reg.multi_scale_roi_align_backward(torch.ops.fastops._multi_scale_roi_align_backward_triton),
    setup_context=_reg.multi_scale_roi_align_setup_context)
