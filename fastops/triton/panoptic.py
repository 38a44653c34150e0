"""Triton panoptic_fuse: one program per block of output pixels, channels visited in order (stuff argmax, thing
max for void, then each instance where its regions cover the pixel), semantic logits upsampled on the fly.

Same conventions as the C++/CUDA kernels (csrc/panoptic/panoptic.h). The instance regions (UPSNet's box
rasterisation) are computed on the device with tensor ops (no host sync); labels outside 1..T are not checked
here (as in the CUDA kernel, such an instance gets no semantic term, like UPSNet's label 0).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.registrations import panoptic as _reg
from fastops.triton._registry import check_triton_device, launch, register_fake, triton_custom_op


def instance_regions(boxes: Tensor, labels: Tensor, num_stuff: int, num_things: int, H: int, W: int) -> Tensor:
    """`[N, 13]` int64 regions of panoptic.h's make_inst, computed with tensor ops on the boxes' device."""
    lim = 2.0 ** 40
    b = boxes.to(torch.float64)
    nan = torch.isnan(b).any(dim=1)
    b = torch.nan_to_num(b, nan=-lim, posinf=lim, neginf=-lim).clamp(-lim, lim)
    x1, y1, x2, y2 = b.unbind(1)
    bx0, by0, bx2, by2 = x1.trunc().long(), y1.trunc().long(), x2.trunc().long(), y2.trunc().long()
    rx2, ry2 = torch.round(x2).long(), torch.round(y2).long()  # half to even
    sx0, sx1 = bx0.clamp(0, W), (rx2 + 1).clamp(0, W)
    sy0, sy1 = by0.clamp(0, H), (ry2 + 1).clamp(0, H)
    mx0, mx1 = bx0.clamp(0, W), (bx2 + 1).clamp(0, W)
    my0, my1 = by0.clamp(0, H), (by2 + 1).clamp(0, H)
    mw, mh = (bx2 - bx0 + 1).clamp(min=1), (by2 - by0 + 1).clamp(min=1)
    lab = labels.long()
    ch = torch.where((lab >= 1) & (lab <= num_things), num_stuff + lab - 1, torch.full_like(lab, -1))
    sy1 = torch.where(nan, sy0, sy1)
    my1 = torch.where(nan, my0, my1)
    return torch.stack([sy0, sy1, sx0, sx1, my0, my1, mx0, mx1, by0, bx0, mh, mw, ch], dim=1).contiguous()


@triton.jit
def _lerp(dst, in_size, out_size, ACC: tl.constexpr):
    # PyTorch's half-pixel (align_corners=False) linear resize index/weights; identity when the sizes match.
    d = tl.minimum(tl.maximum(dst, 0), out_size - 1)
    scale = tl.cast(in_size, ACC) / tl.cast(out_size, ACC)  # tl.cast: a size of 1 is a constexpr on a GPU
    src = tl.maximum(scale * (d.to(ACC) + 0.5) - 0.5, 0.0)
    i0 = tl.minimum(tl.floor(src).to(tl.int64), in_size - 1)
    l1 = tl.minimum(tl.maximum(src - i0.to(ACC), 0.0), 1.0)
    i1 = i0 + tl.where(i0 < in_size - 1, 1, 0)
    same = in_size == out_size
    i0 = tl.where(same, d, i0)
    i1 = tl.where(same, d, i1)
    l1 = tl.where(same, 0.0, l1)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _beats(v, best):
    # panoptic.h beats(): the reference's argmax, where NaN beats every number and the first NaN stays.
    return (v > best) | ((v != v) & (best == best))


@triton.jit
def _nanmax(a, b):
    # panoptic.h nanmax(): torch.max propagates NaN.
    return tl.where((b > a) | (b != b), b, a)


@triton.jit
def _sem(X, c, cS, hS, wS, yi0, yi1, yl0, yl1, xi0, xi1, xl0, xl1, pmask, ACC: tl.constexpr, UP: tl.constexpr):
    p = X + c * cS
    if not UP:  # no upsampling: the logit itself (no 0 * inf = NaN from a zero-weight term)
        return tl.load(p + yi0 * hS + xi0 * wS, mask=pmask, other=0.0).to(ACC)
    a = tl.load(p + yi0 * hS + xi0 * wS, mask=pmask, other=0.0).to(ACC)
    b = tl.load(p + yi0 * hS + xi1 * wS, mask=pmask, other=0.0).to(ACC)
    d = tl.load(p + yi1 * hS + xi0 * wS, mask=pmask, other=0.0).to(ACC)
    e = tl.load(p + yi1 * hS + xi1 * wS, mask=pmask, other=0.0).to(ACC)
    return yl0 * (xl0 * a + xl1 * b) + yl1 * (xl0 * d + xl1 * e)


@triton.jit
def _fuse_kernel(X, M, insts, out, C, h, w, cS, hS, wS, MH, MW, mN, mHs, mWs, N, S, H, W,
                 NFIELDS: tl.constexpr, VOID_ID: tl.constexpr, UP: tl.constexpr, VOID: tl.constexpr,
                 ACC: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pmask = offs < H * W
    y = offs // W
    x = offs % W
    yi0, yi1, yl0, yl1 = _lerp(y, h, H, ACC)
    xi0, xi1, xl0, xl1 = _lerp(x, w, W, ACC)
    best = tl.full([BLOCK], float("-inf"), ACC)
    arg = tl.zeros([BLOCK], dtype=tl.int32)
    for c in range(0, S):
        v = _sem(X, c, cS, hS, wS, yi0, yi1, yl0, yl1, xi0, xi1, xl0, xl1, pmask, ACC, UP)
        gt = _beats(v, best)
        best = tl.where(gt, v, best)
        arg = tl.where(gt, c, arg)
    tmax = tl.full([BLOCK], float("-inf"), ACC)
    smax = tl.full([BLOCK], float("-inf"), ACC)
    if N == 0:
        smax = tl.full([BLOCK], -10.0, ACC)
    if VOID:
        for c in range(S, C):
            v = _sem(X, c, cS, hS, wS, yi0, yi1, yl0, yl1, xi0, xi1, xl0, xl1, pmask, ACC, UP)
            tmax = _nanmax(tmax, v)
    for i in range(0, N):
        r = insts + i * NFIELDS
        sy0 = tl.load(r + 0)
        sy1 = tl.load(r + 1)
        sx0 = tl.load(r + 2)
        sx1 = tl.load(r + 3)
        my0 = tl.load(r + 4)
        my1 = tl.load(r + 5)
        mx0 = tl.load(r + 6)
        mx1 = tl.load(r + 7)
        by0 = tl.load(r + 8)
        bx0 = tl.load(r + 9)
        mh = tl.load(r + 10)
        mw = tl.load(r + 11)
        ch = tl.load(r + 12)
        in_seg = (y >= sy0) & (y < sy1) & (x >= sx0) & (x < sx1) & pmask & (ch >= 0)
        in_mask = (y >= my0) & (y < my1) & (x >= mx0) & (x < mx1) & pmask
        chc = tl.maximum(ch, 0)
        seg = _sem(X, chc, cS, hS, wS, yi0, yi1, yl0, yl1, xi0, xi1, xl0, xl1, in_seg, ACC, UP)
        seg = tl.where(in_seg, seg, 0.0)
        myi0, myi1, myl0, myl1 = _lerp(y - by0, MH, mh, ACC)
        mxi0, mxi1, mxl0, mxl1 = _lerp(x - bx0, MW, mw, ACC)
        mp = M + i * mN
        a = tl.load(mp + myi0 * mHs + mxi0 * mWs, mask=in_mask, other=0.0).to(ACC)
        d = tl.load(mp + myi1 * mHs + mxi0 * mWs, mask=in_mask, other=0.0).to(ACC)
        b = tl.load(mp + myi0 * mHs + mxi1 * mWs, mask=in_mask, other=0.0).to(ACC)
        e = tl.load(mp + myi1 * mHs + mxi1 * mWs, mask=in_mask, other=0.0).to(ACC)
        mval = mxl0 * (myl0 * a + myl1 * d) + mxl1 * (myl0 * b + myl1 * e)
        v = seg + tl.where(in_mask, mval, 0.0)
        smax = _nanmax(smax, seg)
        gt = _beats(v, best)
        best = tl.where(gt, v, best)
        arg = tl.where(gt, S + i, arg)
    if VOID:
        arg = tl.where(_beats(tmax - smax, best), VOID_ID, arg)
    tl.store(out + offs, arg, mask=pmask)


@triton_custom_op("fastops::panoptic_fuse_triton", mutates_args=())
def panoptic_fuse_triton(semantic_logits: Tensor, mask_logits: Tensor, boxes: Tensor, labels: Tensor,
                         num_stuff: int, output_size: Optional[List[int]] = None, void: bool = True) -> Tensor:
    check_triton_device(semantic_logits, "semantic_logits")
    C, h, w = semantic_logits.shape
    H, W = (h, w) if output_size is None else (int(output_size[0]), int(output_size[1]))
    out = torch.empty((H, W), dtype=torch.int32, device=semantic_logits.device)
    N = mask_logits.shape[0]
    if H * W == 0:
        return out
    if void and num_stuff == 0 and N == 0:
        return out.fill_(_reg.VOID_ID)  # the void logit is the only channel (255 even where it is -inf)
    insts = instance_regions(boxes, labels, num_stuff, C - num_stuff, H, W)
    if N == 0:
        insts = torch.zeros((1, _reg.INST_FIELDS), dtype=torch.int64, device=semantic_logits.device)
        mask_logits = semantic_logits.new_zeros((1, 1, 1))
    acc = tl.float64 if semantic_logits.dtype == torch.float64 else tl.float32
    BLOCK = 128
    grid = (triton.cdiv(H * W, BLOCK),)
    launch(_fuse_kernel)[grid](semantic_logits, mask_logits, insts, out, C, h, w, *semantic_logits.stride(),
                               mask_logits.shape[1], mask_logits.shape[2], *mask_logits.stride(), N, num_stuff, H, W,
                               NFIELDS=_reg.INST_FIELDS, VOID_ID=_reg.VOID_ID, UP=(h, w) != (H, W),
                               VOID=bool(void), ACC=acc,
                               BLOCK=BLOCK)
    return out


register_fake(panoptic_fuse_triton, _reg.fake_panoptic_fuse)
