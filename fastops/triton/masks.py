"""Triton kernels for instance mask assembly: `fastops::yolact_masks_triton`, `fastops::yolact_mask_loss_triton`
(+ `_yolact_mask_loss_backward_triton`), `fastops::paste_masks_triton`.

The per-detection geometry (YOLACT crop rectangles, torchvision's truncated boxes) comes from
fastops/registrations/masks.py (a few small torch ops on `[N, 4]` tensors, in the boxes' dtype exactly as the
originals do); the kernels then do the per-pixel
work: for yolact_masks a tiled dot product of the bilinear taps' prototype vectors with the coefficients
(`[BLOCK, P]` tiles) fused with sigmoid, crop, blend and threshold.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.registrations import masks as reg
from fastops.triton._registry import launch, triton_custom_op

_BLOCK = 256  # paste_masks: one output pixel per lane
_TILE = 64  # pixels per [TILE, P] prototype tile (yolact_masks, loss forward, grad_coeffs): no spills on sm_90
_TILE_BWD = 32  # pixels per program in grad_protos ([TILE, P] accumulator)
_TILE_MASKS = 32  # output pixels per yolact_masks program (4 taps x [TILE, P] tiles live at once)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pb(P: int) -> int:
    return max(triton.next_power_of_2(max(int(P), 1)), 2)


# ---- kernels --------------------------------------------------------------------------------------------------

@triton.jit
def _taps(dst, in_size, out_size, ACC: tl.constexpr):
    zf = dst.to(ACC) * 0.0  # sizes may arrive as constexpr (Triton specialises 1): promote through a tensor
    scale = (zf + in_size) / (zf + out_size)
    real = scale * (dst.to(ACC) + 0.5) - 0.5
    real = tl.maximum(real, 0.0)
    i0 = tl.minimum(real.to(tl.int64), in_size - 1)  # real >= 0: truncation is floor
    lam = tl.minimum(tl.maximum(real - i0.to(ACC), 0.0), 1.0)
    i1 = i0 + (i0 < in_size - 1).to(tl.int64)
    return i0, i1, 1.0 - lam, lam


@triton.jit
def _store_mask(dst, v, valid, thr, THRESH: tl.constexpr):
    # thresholded: v > thr (bool output); otherwise v in the output's dtype
    if THRESH:
        tl.store(dst, v > thr, mask=valid)
    else:
        tl.store(dst, v.to(dst.dtype.element_ty), mask=valid)


@triton.jit
def _pixel_block(h, w, BLOCK: tl.constexpr):
    # This program's block of the [h, w] output of detection program_id(1): the detection, the flat offsets, which
    # are in the image, their rows and columns, and the block's first and last in-image flat offset.
    first = tl.program_id(0).to(tl.int64) * BLOCK
    offs = first + tl.arange(0, BLOCK)
    last = tl.minimum(first + BLOCK - 1, h * w - 1)
    return tl.program_id(1).to(tl.int64), offs, offs < h * w, offs // w, offs % w, first, last


@triton.jit
def _crop(crops, n):
    # YOLACT crop rectangle of detection n (registrations/masks.py yolact_crops): x0, x1, y0, y1
    return tl.load(crops + 4 * n), tl.load(crops + 4 * n + 1), tl.load(crops + 4 * n + 2), tl.load(crops + 4 * n + 3)


@triton.jit
def _coeffs(cf, n, cs0, cs1, P, ACC: tl.constexpr, PB: tl.constexpr):
    """Detection n's P mask coefficients as a [PB] vector (0 past P), with the lane indices and their mask."""
    pidx = tl.arange(0, PB)
    pm = pidx < P
    return pidx, pm, tl.load(cf + n * cs0 + pidx * cs1, mask=pm, other=0.0).to(ACC)


@triton.jit
def _tap_prob(pr, sY, sX, sP, yy, xx, m, pidx, pm, c, ACC: tl.constexpr):
    # [BLOCK, PB] prototype vectors of the taps (masked to in-crop taps) dotted with the coefficients
    ptrs = pr + yy[:, None] * sY + xx[:, None] * sX + pidx[None, :] * sP
    v = tl.load(ptrs, mask=m[:, None] & pm[None, :], other=0.0).to(ACC)
    s = tl.sum(v * c[None, :], axis=1)
    p = 1.0 / (1.0 + tl.exp(-s))
    return tl.where(m, p, 0.0)


@triton.jit
def _yolact_masks_kernel(pr, sY, sX, sP, cf, cs0, cs1, crops, Hp, Wp, P, out_h, out_w, thr, out,
                         THRESH: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, PB: tl.constexpr):
    n, offs, valid, i, j, first, last = _pixel_block(out_h, out_w, BLOCK)
    cx0, cx1, cy0, cy1 = _crop(crops, n)
    dst = out + n * out_h * out_w + offs
    # skip tiles whose rows' taps miss the crop rows (taps are monotone in i): they are all zero
    lo0, lo1, _, _ = _taps(first // out_w, Hp, out_h, ACC)
    hi0, hi1, _, _ = _taps(last // out_w, Hp, out_h, ACC)
    touched = (hi1 >= cy0) & (lo0 < cy1) & (cx1 > cx0)
    if touched:
        y0, y1, wy0, wy1 = _taps(i, Hp, out_h, ACC)
        x0, x1, wx0, wx1 = _taps(j, Wp, out_w, ACC)
        y0in = valid & (y0 >= cy0) & (y0 < cy1)
        y1in = valid & (y1 >= cy0) & (y1 < cy1)
        x0in = (x0 >= cx0) & (x0 < cx1)
        x1in = (x1 >= cx0) & (x1 < cx1)
        pidx, pm, c = _coeffs(cf, n, cs0, cs1, P, ACC, PB)
        a00 = _tap_prob(pr, sY, sX, sP, y0, x0, y0in & x0in, pidx, pm, c, ACC)
        a10 = _tap_prob(pr, sY, sX, sP, y1, x0, y1in & x0in, pidx, pm, c, ACC)
        a01 = _tap_prob(pr, sY, sX, sP, y0, x1, y0in & x1in, pidx, pm, c, ACC)
        a11 = _tap_prob(pr, sY, sX, sP, y1, x1, y1in & x1in, pidx, pm, c, ACC)
        t0 = a00 * wy0 + a10 * wy1
        t1 = a01 * wy0 + a11 * wy1
        v = t0 * wx0 + t1 * wx1
        _store_mask(dst, v, valid, thr, THRESH)
    else:  # the value there is 0 (thresholded: `0 > thr`, True for a negative threshold)
        _store_mask(dst, tl.zeros([BLOCK], dtype=ACC), valid, thr, THRESH)


@triton.jit
def _paste_kernel(masks, m0, m1, m2, Mh, Mw, padding, geo, H, W, thr, out,
                  THRESH: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    n, offs, valid, y, x, first, last = _pixel_block(H, W, BLOCK)
    gx0 = tl.load(geo + 8 * n)
    gy0 = tl.load(geo + 8 * n + 1)
    bw = tl.load(geo + 8 * n + 2)
    bh = tl.load(geo + 8 * n + 3)
    xa = tl.load(geo + 8 * n + 4)
    xb = tl.load(geo + 8 * n + 5)
    ya = tl.load(geo + 8 * n + 6)
    yb = tl.load(geo + 8 * n + 7)
    inside = valid & (x >= xa) & (x < xb) & (y >= ya) & (y < yb)
    dst = out + n * H * W + offs
    touched = (last // W >= ya) & (first // W < yb) & (xb > xa)
    if touched:
        Ph = Mh + 2 * padding
        Pw = Mw + 2 * padding
        r0, r1, wy0, wy1 = _taps(y - gy0, Ph, bh, ACC)
        c0, c1, wx0, wx1 = _taps(x - gx0, Pw, bw, ACC)
        r0 = r0 - padding
        r1 = r1 - padding
        c0 = c0 - padding
        c1 = c1 - padding
        base = masks + n * m0
        r0ok = inside & (r0 >= 0) & (r0 < Mh)
        r1ok = inside & (r1 >= 0) & (r1 < Mh)
        c0ok = (c0 >= 0) & (c0 < Mw)
        c1ok = (c1 >= 0) & (c1 < Mw)
        a00 = tl.load(base + r0 * m1 + c0 * m2, mask=r0ok & c0ok, other=0.0).to(ACC)
        a10 = tl.load(base + r1 * m1 + c0 * m2, mask=r1ok & c0ok, other=0.0).to(ACC)
        a01 = tl.load(base + r0 * m1 + c1 * m2, mask=r0ok & c1ok, other=0.0).to(ACC)
        a11 = tl.load(base + r1 * m1 + c1 * m2, mask=r1ok & c1ok, other=0.0).to(ACC)
        v = (a00 * wy0 + a10 * wy1) * wx0 + (a01 * wy0 + a11 * wy1) * wx1
        v = tl.where(inside, v, 0.0)
        _store_mask(dst, v, valid, thr, THRESH)
    else:  # the value there is 0 (thresholded: `0 > thr`, True for a negative threshold)
        _store_mask(dst, tl.zeros([BLOCK], dtype=ACC), valid, thr, THRESH)


@triton.jit
def _bce(p, t):
    lp = tl.maximum(tl.log(p), -100.0)
    lq = tl.maximum(tl.log(1.0 - p), -100.0)
    return -(t * lp + (1.0 - t) * lq)


@triton.jit
def _mask_loss_fwd_kernel(pr, sY, sX, sP, cf, cs0, cs1, gt, g0, g1, g2, crops, dims, Hp, Wp, P, loss,
                          ACC: tl.constexpr, BLOCK: tl.constexpr, PB: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cx0, cx1, cy0, cy1 = _crop(crops, n)
    pidx, pm, c = _coeffs(cf, n, cs0, cs1, P, ACC, PB)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, Hp * Wp, BLOCK):
        k = start + tl.arange(0, BLOCK)
        ok = k < Hp * Wp
        y = k // Wp
        x = k % Wp
        t = tl.load(gt + n * g0 + y * g1 + x * g2, mask=ok, other=0.0).to(ACC)
        inc = ok & (y >= cy0) & (y < cy1) & (x >= cx0) & (x < cx1)
        p = _tap_prob(pr, sY, sX, sP, y, x, inc, pidx, pm, c, ACC)
        acc += tl.where(inc, _bce(p, t), 100.0 * t)
    total = tl.sum(acc, axis=0)
    dw = tl.load(dims + 2 * n).to(ACC)
    dh = tl.load(dims + 2 * n + 1).to(ACC)
    tl.store(loss + n, (total / dw / dh * (Hp * Wp)).to(loss.dtype.element_ty))


@triton.jit
def _dlogit(p, t, Gn):
    s = (1.0 - p) * p
    return Gn * ((p - t) / tl.maximum(s, 1e-12) * (1.0 - p) * p)


@triton.jit
def _mask_loss_bwd_coeffs_kernel(grad, gs, pr, sY, sX, sP, cf, cs0, cs1, gt, g0, g1, g2, crops, dims, Hp, Wp, P,
                                 gcoeffs, ACC: tl.constexpr, BLOCK: tl.constexpr, PB: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cx0, cx1, cy0, cy1 = _crop(crops, n)
    cx0, cx1, cy0, cy1 = cx0.to(tl.int64), cx1.to(tl.int64), cy0.to(tl.int64), cy1.to(tl.int64)
    cw = tl.maximum(cx1 - cx0, 0)
    ch = tl.maximum(cy1 - cy0, 0)
    Gn = tl.load(grad + n * gs).to(ACC) / tl.load(dims + 2 * n).to(ACC) / tl.load(dims + 2 * n + 1).to(ACC) \
        * (Hp * Wp)
    pidx, pm, c = _coeffs(cf, n, cs0, cs1, P, ACC, PB)
    acc = tl.zeros([PB], dtype=ACC)
    for start in range(0, cw * ch, BLOCK):
        k = start + tl.arange(0, BLOCK)
        ok = k < cw * ch
        y = cy0 + k // tl.maximum(cw, 1)
        x = cx0 + k % tl.maximum(cw, 1)
        t = tl.load(gt + n * g0 + y * g1 + x * g2, mask=ok, other=0.0).to(ACC)
        ptrs = pr + y[:, None] * sY + x[:, None] * sX + pidx[None, :] * sP
        v = tl.load(ptrs, mask=ok[:, None] & pm[None, :], other=0.0).to(ACC)
        p = 1.0 / (1.0 + tl.exp(-tl.sum(v * c[None, :], axis=1)))
        d = tl.where(ok, _dlogit(p, t, Gn), 0.0)
        acc += tl.sum(d[:, None] * v, axis=0)
    tl.store(gcoeffs + n * P + pidx, acc.to(gcoeffs.dtype.element_ty), mask=pm)


@triton.jit
def _mask_loss_bwd_protos_kernel(grad, gs, pr, sY, sX, sP, cf, cs0, cs1, gt, g0, g1, g2, crops, dims, N, Hp, Wp,
                                 P, gprotos, ACC: tl.constexpr, BLOCK: tl.constexpr, PB: tl.constexpr):
    pid = tl.program_id(0)
    k = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = k < Hp * Wp
    y = k // Wp
    x = k % Wp
    pidx = tl.arange(0, PB)
    pm = pidx < P
    v = tl.load(pr + y[:, None] * sY + x[:, None] * sX + pidx[None, :] * sP, mask=ok[:, None] & pm[None, :],
                other=0.0).to(ACC)
    acc = tl.zeros([BLOCK, PB], dtype=ACC)
    for n in range(0, N):
        cx0, cx1, cy0, cy1 = _crop(crops, n)
        inc = ok & (y >= cy0) & (y < cy1) & (x >= cx0) & (x < cx1)
        Gn = tl.load(grad + n * gs).to(ACC) / tl.load(dims + 2 * n).to(ACC) / tl.load(dims + 2 * n + 1).to(ACC) \
            * (Hp * Wp)
        c = tl.load(cf + n * cs0 + pidx * cs1, mask=pm, other=0.0).to(ACC)
        t = tl.load(gt + n * g0 + y * g1 + x * g2, mask=inc, other=0.0).to(ACC)
        p = 1.0 / (1.0 + tl.exp(-tl.sum(v * c[None, :], axis=1)))
        d = tl.where(inc, _dlogit(p, t, Gn), 0.0)
        acc += d[:, None] * c[None, :]
    tl.store(gprotos + k[:, None] * P + pidx[None, :], acc.to(gprotos.dtype.element_ty),
             mask=ok[:, None] & pm[None, :])


# ---- ops ------------------------------------------------------------------------------------------------------

@triton_custom_op("fastops::yolact_masks_triton", fake=reg.yolact_masks_fake)
def yolact_masks_triton(protos: Tensor, coeffs: Tensor, boxes: Tensor, out_h: int, out_w: int, crop: bool,
                        threshold: Optional[float]) -> Tensor:
    N = coeffs.size(0)
    Hp, Wp, P = protos.shape
    thresh = threshold is not None
    out = torch.empty((N, out_h, out_w), dtype=torch.bool if thresh else protos.dtype, device=protos.device)
    if out.numel() == 0:
        return out
    crops = reg.yolact_crops(boxes, Hp, Wp, crop)
    grid = (triton.cdiv(out_h * out_w, _TILE_MASKS), N)
    launch(_yolact_masks_kernel)[grid](
        protos, protos.stride(0), protos.stride(1), protos.stride(2), coeffs, coeffs.stride(0), coeffs.stride(1),
        crops, Hp, Wp, P, out_h, out_w, float(threshold) if thresh else 0.0, out,
        THRESH=thresh, ACC=_acc(protos.dtype), BLOCK=_TILE_MASKS, PB=_pb(P))
    return out


@triton_custom_op("fastops::paste_masks_triton", fake=reg.paste_masks_fake)
def paste_masks_triton(masks: Tensor, boxes: Tensor, image_h: int, image_w: int, padding: int,
                       threshold: Optional[float]) -> Tensor:
    N, Mh, Mw = masks.shape
    thresh = threshold is not None
    out = torch.empty((N, 1, image_h, image_w), dtype=torch.bool if thresh else masks.dtype, device=masks.device)
    if out.numel() == 0:
        return out
    geo = reg.paste_geometry(boxes, Mw, padding, image_h, image_w)
    grid = (triton.cdiv(image_h * image_w, _BLOCK), N)
    launch(_paste_kernel)[grid](
        masks, masks.stride(0), masks.stride(1), masks.stride(2), Mh, Mw, padding, geo, image_h, image_w,
        float(threshold) if thresh else 0.0, out, THRESH=thresh, ACC=_acc(masks.dtype), BLOCK=_BLOCK)
    return out


@triton_custom_op("fastops::yolact_mask_loss_triton", fake=reg.yolact_mask_loss_fake)
def yolact_mask_loss_triton(protos: Tensor, coeffs: Tensor, boxes: Tensor, gt_masks: Tensor) -> Tensor:
    N = coeffs.size(0)
    Hp, Wp, P = protos.shape
    loss = torch.empty((N,), dtype=protos.dtype, device=protos.device)
    if N == 0:
        return loss
    crops = reg.yolact_crops(boxes, Hp, Wp, True)
    dims = reg.loss_box_dims(boxes, Hp, Wp)
    launch(_mask_loss_fwd_kernel)[(N,)](
        protos, protos.stride(0), protos.stride(1), protos.stride(2), coeffs, coeffs.stride(0), coeffs.stride(1),
        gt_masks, gt_masks.stride(0), gt_masks.stride(1), gt_masks.stride(2), crops, dims, Hp, Wp, P, loss,
        ACC=_acc(protos.dtype), BLOCK=_TILE, PB=_pb(P))
    return loss


@triton_custom_op("fastops::_yolact_mask_loss_backward_triton", fake=reg.yolact_mask_loss_backward_fake)
def _yolact_mask_loss_backward_triton(grad: Tensor, protos: Tensor, coeffs: Tensor, boxes: Tensor,
                                      gt_masks: Tensor) -> tuple[Tensor, Tensor]:
    N = coeffs.size(0)
    Hp, Wp, P = protos.shape
    gprotos = torch.zeros((Hp, Wp, P), dtype=protos.dtype, device=protos.device)
    gcoeffs = torch.zeros((N, P), dtype=protos.dtype, device=protos.device)
    if N == 0 or P == 0:
        return gprotos, gcoeffs
    grad = grad.to(protos.dtype)
    crops = reg.yolact_crops(boxes, Hp, Wp, True)
    dims = reg.loss_box_dims(boxes, Hp, Wp)
    acc = _acc(protos.dtype)
    args = (protos, protos.stride(0), protos.stride(1), protos.stride(2), coeffs, coeffs.stride(0), coeffs.stride(1),
            gt_masks, gt_masks.stride(0), gt_masks.stride(1), gt_masks.stride(2), crops, dims)
    launch(_mask_loss_bwd_coeffs_kernel)[(N,)](grad, grad.stride(0), *args, Hp, Wp, P, gcoeffs,
                                               ACC=acc, BLOCK=_TILE, PB=_pb(P))
    launch(_mask_loss_bwd_protos_kernel)[(triton.cdiv(Hp * Wp, _TILE_BWD),)](
        grad, grad.stride(0), *args, N, Hp, Wp, P, gprotos, ACC=acc, BLOCK=_TILE_BWD, PB=_pb(P))
    return gprotos, gcoeffs


yolact_mask_loss_triton.register_autograd(
    reg.make_loss_backward(torch.ops.fastops._yolact_mask_loss_backward_triton),
    setup_context=reg.loss_setup_context)
