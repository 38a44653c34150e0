"""Triton kernels of the prior-box family (csrc/priors/priors.h conventions), registered as
``fastops::prior_nms_triton`` and ``fastops::match_priors_triton`` (see _registry.py; the fakes are the compiled
ops' ones, from fastops/registrations/priors.py).

prior_nms: a threshold kernel (``score > threshold`` in the scores' dtype, candidates counted per image), one
stable descending ``torch.sort`` per batch (ties: lower prior index), a decode kernel for the top-k candidates only
(boxes, landmarks, finite flag), then the NMS family's Triton op per image. match_priors: best gt per prior
(program per block of priors), best prior per gt (program per gt row, torch.max's first-maximum/NaN rule), the
forcing loop (program per image, in registers: its result does not depend on thread scheduling), encode.
Every formula in the original's operation order, in the boxes' dtype, without FMA contraction
(``enable_fp_fusion=False``) and with IEEE division (``div_rn`` in float32): results equal the C++ kernels'
except ``exp`` / ``log`` (on a GPU ``tl.exp``/``tl.log`` in float32 are the fast approximations: a few ulp).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

import fastops.registrations.priors as _reg
from fastops.triton._registry import check_triton_device, launch, register_fake, triton_custom_op
from fastops.triton.nms import nms_triton

BLOCK = 128  # priors per program


@triton.jit
def _div(a, b, IS_F64: tl.constexpr):
    if IS_F64:
        return a / b  # fp64 division is IEEE-rounded
    else:
        return tl.math.div_rn(a, b)  # fp32 `/` may be approximate on a GPU


# ---- prior_nms ----------------------------------------------------------------------------------------------------

@triton.jit
def _threshold_kernel(scores, key, count, thr_ptr, P, BLOCK_: tl.constexpr):
    """key = score where score > thr (NaN never passes), else -inf; count[b] += the image's candidates."""
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_ + tl.arange(0, BLOCK_)
    m = p < P
    s = tl.load(scores + b * P + p, mask=m, other=0.0)
    ok = (s > tl.load(thr_ptr)) & m
    tl.store(key + b * P + p, tl.where(ok, s, float("-inf")), mask=m)
    tl.atomic_add(count + b, tl.sum(ok.to(tl.int32), axis=0))  # an integer sum: order-independent


@triton.jit
def _decode_kernel(loc, lm, pri, scores, order, count, prm, boxes, lms, sc, ok, P, K, NL, BLOCK_: tl.constexpr,
                   NLB: tl.constexpr):
    """Rows r < min(count[b], K) of image b: decode prior order[b, r] (decode + decode_landm, scaled to pixels);
    ok = the row is a candidate and its box is finite."""
    b = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BLOCK_ + tl.arange(0, BLOCK_)
    rm = r < K
    valid = r < tl.minimum(tl.load(count + b), K)
    p = tl.load(order + b * K + r, mask=valid, other=0)
    v0 = tl.load(prm + 0)
    v1 = tl.load(prm + 1)
    sx = tl.load(prm + 2)
    sy = tl.load(prm + 3)
    pcx = tl.load(pri + p * 4 + 0, mask=valid, other=0.0)
    pcy = tl.load(pri + p * 4 + 1, mask=valid, other=0.0)
    pw = tl.load(pri + p * 4 + 2, mask=valid, other=0.0)
    ph = tl.load(pri + p * 4 + 3, mask=valid, other=0.0)
    lb = loc + (b * P + p) * 4
    l0 = tl.load(lb + 0, mask=valid, other=0.0)
    l1 = tl.load(lb + 1, mask=valid, other=0.0)
    l2 = tl.load(lb + 2, mask=valid, other=0.0)
    l3 = tl.load(lb + 3, mask=valid, other=0.0)
    cx = pcx + l0 * v0 * pw
    cy = pcy + l1 * v0 * ph
    w = pw * tl.exp(l2 * v1)
    h = ph * tl.exp(l3 * v1)
    x1 = cx - w * 0.5  # = w / 2 exactly
    y1 = cy - h * 0.5
    o0 = x1 * sx
    o1 = y1 * sy
    o2 = (w + x1) * sx
    o3 = (h + y1) * sy
    row = b * K + r
    tl.store(boxes + row * 4 + 0, o0, mask=rm)
    tl.store(boxes + row * 4 + 1, o1, mask=rm)
    tl.store(boxes + row * 4 + 2, o2, mask=rm)
    tl.store(boxes + row * 4 + 3, o3, mask=rm)
    fin = (o0 - o0 == 0) & (o1 - o1 == 0) & (o2 - o2 == 0) & (o3 - o3 == 0)  # False for NaN and +-inf
    tl.store(ok + row, (valid & fin).to(tl.int8), mask=rm)
    tl.store(sc + row, tl.load(scores + b * P + p, mask=valid, other=0.0), mask=rm)
    q = tl.arange(0, NLB)[None, :]
    qm = rm[:, None] & (q < NL)
    even = (q % 2) == 0
    pc = tl.where(even, pcx[:, None], pcy[:, None])
    pwh = tl.where(even, pw[:, None], ph[:, None])
    s = tl.where(even, sx, sy)
    lv = tl.load(lm + (b * P + p)[:, None] * NL + q, mask=valid[:, None] & (q < NL), other=0.0)
    tl.store(lms + row[:, None] * NL + q, (pc + lv * v0 * pwh) * s, mask=qm)


@triton_custom_op("fastops::prior_nms_triton", mutates_args=())
def prior_nms_triton(loc: Tensor, scores: Tensor, landms: Tensor, priors: Tensor, var0: float, var1: float,
                     scale_x: float, scale_y: float, score_threshold: float, iou_threshold: float,
                     pre_nms_top_k: int, max_det: int, pad: bool, plus_one: bool) -> Tuple[Tensor, Tensor, Tensor,
                                                                                            Tensor]:
    check_triton_device(loc, "loc")
    loc, scores, landms, pri = (t.contiguous() for t in (loc, scores, landms, priors))
    B, P, NL = loc.size(0), loc.size(1), landms.size(2)
    dev, dt = loc.device, loc.dtype
    K = min(P, pre_nms_top_k) if pre_nms_top_k > 0 else P
    boxes = torch.empty((B, K, 4), dtype=dt, device=dev)
    lms = torch.empty((B, K, NL), dtype=dt, device=dev)
    sc = torch.empty((B, K), dtype=dt, device=dev)
    ok = torch.zeros((B, K), dtype=torch.int8, device=dev)
    if B * K > 0:
        key = torch.empty_like(scores)
        count = torch.zeros((B,), dtype=torch.int32, device=dev)
        launch(_threshold_kernel)[(B, triton.cdiv(P, BLOCK))](
            scores, key, count, torch.tensor([score_threshold], dtype=dt, device=dev), P, BLOCK_=BLOCK)
        order = torch.sort(key, dim=1, stable=True, descending=True)[1][:, :K].contiguous()
        prm = torch.tensor([var0, var1, scale_x, scale_y], dtype=dt, device=dev)
        launch(_decode_kernel)[(B, triton.cdiv(K, BLOCK))](
            loc, landms, pri, scores, order, count, prm, boxes, lms, sc, ok, P, K, NL, BLOCK_=BLOCK,
            NLB=max(2, triton.next_power_of_2(max(NL, 1))), enable_fp_fusion=False)
    one = torch.tensor([0.0, 0.0, 1.0, 1.0] if plus_one else [0.0] * 4, dtype=dt, device=dev)
    ob, os_, ol, counts = [], [], [], []
    for b in range(B):
        sel = torch.nonzero(ok[b]).view(-1)  # candidates in descending score order, finite boxes only
        bx, s, lb = boxes[b].index_select(0, sel), sc[b].index_select(0, sel), lms[b].index_select(0, sel)
        keep = nms_triton(bx + one, s, iou_threshold)
        if max_det > 0:
            keep = keep[:max_det]
        ob.append(bx.index_select(0, keep))
        os_.append(s.index_select(0, keep))
        ol.append(lb.index_select(0, keep))
        counts.append(keep.size(0))
    cnt = torch.tensor(counts, dtype=torch.int64, device=dev)
    if not pad:
        if B == 0:
            return loc.new_empty((0, 4)), loc.new_empty((0,)), loc.new_empty((0, NL)), cnt
        return torch.cat(ob), torch.cat(os_), torch.cat(ol), cnt
    pb, ps, pl = (loc.new_zeros((B, max_det, 4)), loc.new_zeros((B, max_det)), loc.new_zeros((B, max_det, NL)))
    for b in range(B):
        n = counts[b]
        pb[b, :n], ps[b, :n], pl[b, :n] = ob[b], os_[b], ol[b]
    return pb, ps, pl, cnt


# ---- match_priors -------------------------------------------------------------------------------------------------

@triton.jit
def _iou(gx1, gy1, gx2, gy2, pcx, pcy, pw, ph, IS_F64: tl.constexpr):
    """IoU of a point-form gt with a centre-size prior: nms::iou(gt, point_form(prior)) in its operation order."""
    px1 = pcx - pw * 0.5
    py1 = pcy - ph * 0.5
    px2 = pcx + pw * 0.5
    py2 = pcy + ph * 0.5
    ga = (gx2 - gx1) * (gy2 - gy1)
    pa = (px2 - px1) * (py2 - py1)
    w = tl.maximum(tl.minimum(gx2, px2) - tl.maximum(gx1, px1), 0.0)
    h = tl.maximum(tl.minimum(gy2, py2) - tl.maximum(gy1, py1), 0.0)
    inter = w * h
    return _div(inter, (ga + pa) - inter, IS_F64)


@triton.jit
def _first_max(v, idx, BIG: tl.constexpr):
    """torch.max's (value, first index) of a block: a NaN wins (the first NaN), else the largest, first index."""
    isnan = v != v
    anynan = tl.max(isnan.to(tl.int32), axis=0) > 0
    m = tl.max(tl.where(isnan, float("-inf"), v), axis=0)
    hit = tl.where(anynan, isnan, v == m)
    i = tl.min(tl.where(hit, idx, BIG), axis=0)
    return tl.sum(tl.where(idx == i, v, 0.0), axis=0), i  # the one lane at i: its value (NaN stays NaN)


@triton.jit
def _lane_update(bv, bi, v, i):
    """Lane-wise running first maximum (strict wins in increasing index order; NaN beats numbers)."""
    w = (v > bv) | ((v != v) & (bv == bv))
    return tl.where(w, v, bv), tl.where(w, i, bi)


@triton.jit
def _row_best_prior(gt_row, pri, P, rem, rem_n, GB: tl.constexpr, BLOCK_: tl.constexpr, IS_F64: tl.constexpr,
                    HAS_REM: tl.constexpr):
    """First maximum over the priors of gt row's IoUs; priors listed in rem[:rem_n] (YOLACT's consumed columns)
    read -1."""
    gx1 = tl.load(gt_row + 0)
    gy1 = tl.load(gt_row + 1)
    gx2 = tl.load(gt_row + 2)
    gy2 = tl.load(gt_row + 3)
    offs = tl.arange(0, BLOCK_)
    bv = tl.full([BLOCK_], float("-inf"), gx1.dtype)
    bi = tl.full([BLOCK_], 2147483647, tl.int32)
    for p0 in range(0, P, BLOCK_):
        p = p0 + offs
        m = p < P
        v = _iou(gx1, gy1, gx2, gy2, tl.load(pri + p * 4 + 0, mask=m, other=0.0),
                 tl.load(pri + p * 4 + 1, mask=m, other=0.0), tl.load(pri + p * 4 + 2, mask=m, other=0.0),
                 tl.load(pri + p * 4 + 3, mask=m, other=0.0), IS_F64)
        if HAS_REM:
            g = tl.arange(0, GB)
            gone = tl.max(((p[:, None] == rem[None, :]) & (g[None, :] < rem_n)).to(tl.int32), axis=1) > 0
            v = tl.where(gone, -1.0, v)
        v = tl.where(m, v, float("-inf"))
        bv, bi = _lane_update(bv, bi, v, tl.where(m, p, 2147483647))
    return _first_max(bv, bi, 2147483647)


@triton.jit
def _best_gt_kernel(gt, counts, pri, bt, bi, G, P, BLOCK_: tl.constexpr, IS_F64: tl.constexpr):
    """Each prior's best gt (torch.max over the gts: strict wins in gt order, NaN rule); 0 / 0 without gt."""
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_ + tl.arange(0, BLOCK_)
    m = p < P
    pcx = tl.load(pri + p * 4 + 0, mask=m, other=0.0)
    pcy = tl.load(pri + p * 4 + 1, mask=m, other=0.0)
    pw = tl.load(pri + p * 4 + 2, mask=m, other=0.0)
    ph = tl.load(pri + p * 4 + 3, mask=m, other=0.0)
    n = tl.load(counts + b).to(tl.int32)  # the loop index stays int32, like arg
    best = tl.zeros([BLOCK_], pcx.dtype)
    arg = tl.zeros([BLOCK_], tl.int32)
    for j in range(0, n):
        g = gt + (b * G + j) * 4
        v = _iou(tl.load(g + 0), tl.load(g + 1), tl.load(g + 2), tl.load(g + 3), pcx, pcy, pw, ph, IS_F64)
        w = (j == 0) | (v > best) | ((v != v) & (best == best))
        best = tl.where(w, v, best)
        arg = tl.where(w, j, arg)
    tl.store(bt + b * P + p, best, mask=m)
    tl.store(bi + b * P + p, arg, mask=m)


@triton.jit
def _best_prior_kernel(gt, counts, pri, rmax, ridx, G, P, BLOCK_: tl.constexpr, IS_F64: tl.constexpr):
    """Each gt row's best prior (torch.max over the priors), rows < count only."""
    row = tl.program_id(0).to(tl.int64)
    if row % G < tl.load(counts + row // G):
        v, i = _row_best_prior(gt + row * 4, pri, P, tl.zeros([2], tl.int32), 0, 2, BLOCK_, IS_F64, False)
        tl.store(rmax + row, v)
        tl.store(ridx + row, i)


@triton.jit
def _force_kernel(gt, counts, pri, rmax, ridx, bt, bi, valid, hard_ptr, G, P, MODE: tl.constexpr,
                  HAS_HARD: tl.constexpr, GB: tl.constexpr, BLOCK_: tl.constexpr, IS_F64: tl.constexpr):
    """The forcing loop of one image, in the original's order, on register copies of the row maxima; the forced
    (prior, gt) pairs are stored at the end, a prior forced twice keeping the later gt."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(counts + b)
    g = tl.arange(0, GB)
    gm = g < n
    rm = tl.load(rmax + b * G + g, mask=gm, other=0.0)
    ri = tl.load(ridx + b * G + g, mask=gm, other=0)
    fi = ri  # forced prior of step t (SSD: of gt t)
    fj = g  # gt of step t
    fv = gm  # step t sets overlap 2
    anyv = tl.full([], 0, tl.int32)  # a tensor on every side of the branches below
    if (n > 0) & (P > 0):
        if MODE == 0:
            if HAS_HARD:
                fv = gm & (rm >= tl.load(hard_ptr))
            anyv = tl.max(fv.to(tl.int32), axis=0)
        else:
            gone = g >= n
            for t in range(0, n):
                _, j = _first_max(tl.where(gm, rm, float("-inf")), g, GB)
                i = tl.sum(tl.where(g == j, ri, 0), axis=0)
                fi = tl.where(g == t, i, fi)
                fj = tl.where(g == t, j, fj)
                rm = tl.where(g == j, -1.0, rm)
                ri = tl.where(g == j, 0, ri)
                gone = gone | (g == j)
                for r in range(0, n):
                    live = tl.sum(tl.where((g == r) & ~gone & (ri == i), 1, 0), axis=0)
                    if live > 0:
                        v, a = _row_best_prior(gt + (b * G + r) * 4, pri, P, fi, t + 1, GB, BLOCK_, IS_F64, True)
                        rm = tl.where(g == r, v, rm)
                        ri = tl.where(g == r, a, ri)
            anyv = tl.full([], 1, tl.int32)
        # a later step forcing the same prior wins
        later = tl.max(((fi[:, None] == fi[None, :]) & (g[None, :] > g[:, None]) & gm[None, :]).to(tl.int32),
                       axis=1) > 0
        if anyv > 0:
            tl.store(bi + b * P + fi, fj, mask=gm & ~later)
            two = tl.full([GB], 2.0, rm.dtype)
            if MODE == 0:
                tl.store(bt + b * P + fi, two, mask=fv)  # every valid gt's prior: overlap 2
            else:
                tl.store(bt + b * P + fi, two, mask=gm)
    tl.store(valid + b, anyv.to(tl.int8))


@triton.jit
def _encode_kernel(gt, labels, lm, pri, bt, bi, valid, prm, loc, conf, landm, ov, idx, G, P, NL,
                   BLOCK_: tl.constexpr, NLB: tl.constexpr, IS_F64: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_ + tl.arange(0, BLOCK_)
    m = p < P
    ok = tl.load(valid + b) != 0
    v0 = tl.load(prm + 0)
    v1 = tl.load(prm + 1)
    pos = tl.load(prm + 2)
    neg = tl.load(prm + 3)
    o = b * P + p
    j = tl.load(bi + o, mask=m, other=0).to(tl.int64)
    t = tl.load(bt + o, mask=m, other=0.0)
    gr = gt + (b * G + j) * 4
    gm = m & ok
    gx1 = tl.load(gr + 0, mask=gm, other=0.0)
    gy1 = tl.load(gr + 1, mask=gm, other=0.0)
    gx2 = tl.load(gr + 2, mask=gm, other=1.0)  # masked lanes: log(1), no warning
    gy2 = tl.load(gr + 3, mask=gm, other=1.0)
    pcx = tl.load(pri + p * 4 + 0, mask=m, other=1.0)
    pcy = tl.load(pri + p * 4 + 1, mask=m, other=1.0)
    pw = tl.load(pri + p * 4 + 2, mask=m, other=1.0)
    ph = tl.load(pri + p * 4 + 3, mask=m, other=1.0)
    e0 = _div((gx1 + gx2) * 0.5 - pcx, v0 * pw, IS_F64)
    e1 = _div((gy1 + gy2) * 0.5 - pcy, v0 * ph, IS_F64)
    e2 = _div(tl.log(_div(gx2 - gx1, pw, IS_F64)), v1, IS_F64)
    e3 = _div(tl.log(_div(gy2 - gy1, ph, IS_F64)), v1, IS_F64)
    tl.store(loc + o * 4 + 0, tl.where(ok, e0, 0.0), mask=m)
    tl.store(loc + o * 4 + 1, tl.where(ok, e1, 0.0), mask=m)
    tl.store(loc + o * 4 + 2, tl.where(ok, e2, 0.0), mask=m)
    tl.store(loc + o * 4 + 3, tl.where(ok, e3, 0.0), mask=m)
    lab = tl.load(labels + b * G + j, mask=gm, other=0)
    c = tl.where(t < pos, -1, lab)
    c = tl.where(t < neg, 0, c)
    tl.store(conf + o, tl.where(ok, c, 0), mask=m)
    tl.store(ov + o, tl.where(ok, t, 0.0), mask=m)
    tl.store(idx + o, tl.where(ok, j, -1), mask=m)
    q = tl.arange(0, NLB)[None, :]
    qm = m[:, None] & (q < NL)
    even = (q % 2) == 0
    pc = tl.where(even, pcx[:, None], pcy[:, None])
    pwh = tl.where(even, pw[:, None], ph[:, None])
    lv = tl.load(lm + (b * G + j)[:, None] * NL + q, mask=gm[:, None] & (q < NL), other=0.0)
    e = _div(lv - pc, v0 * pwh, IS_F64)
    tl.store(landm + o[:, None] * NL + q, tl.where(ok, e, 0.0), mask=qm)


@triton_custom_op("fastops::match_priors_triton", mutates_args=())
def match_priors_triton(gt_boxes: Tensor, gt_labels: Tensor, gt_landms: Tensor, counts: Tensor, priors: Tensor,
                        pos_threshold: float, neg_threshold: float, var0: float, var1: float, mode: str,
                        hard_threshold: Optional[float]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_triton_device(gt_boxes, "gt_boxes")
    gt, labels, lm, cnt, pri = (t.contiguous() for t in (gt_boxes, gt_labels, gt_landms, counts, priors))
    B, G, NL, P = gt.size(0), gt.size(1), lm.size(2), pri.size(0)
    dev, dt = gt.device, gt.dtype
    f64 = dt == torch.float64
    loc, landm, ov = gt.new_empty((B, P, 4)), gt.new_empty((B, P, NL)), gt.new_empty((B, P))
    conf, idx = labels.new_empty((B, P)), labels.new_empty((B, P))
    if B * P == 0:
        return loc, conf, landm, ov, idx
    bt, bi = gt.new_empty((B, P)), torch.empty((B, P), dtype=torch.int32, device=dev)
    rmax, ridx = gt.new_zeros((B, G)), torch.zeros((B, G), dtype=torch.int32, device=dev)
    valid = torch.zeros((B,), dtype=torch.int8, device=dev)
    grid = (B, triton.cdiv(P, BLOCK))
    launch(_best_gt_kernel)[grid](gt, cnt, pri, bt, bi, G, P, BLOCK_=BLOCK, IS_F64=f64, enable_fp_fusion=False)
    if G > 0:
        launch(_best_prior_kernel)[(B * G,)](gt, cnt, pri, rmax, ridx, G, P, BLOCK_=BLOCK, IS_F64=f64,
                                             enable_fp_fusion=False)
    hard = torch.tensor([0.0 if hard_threshold is None else hard_threshold], dtype=dt, device=dev)
    launch(_force_kernel)[(B,)](gt, cnt, pri, rmax, ridx, bt, bi, valid, hard, G, P, MODE=_reg.MODES[mode],
                                HAS_HARD=hard_threshold is not None, GB=max(2, triton.next_power_of_2(G)),
                                BLOCK_=BLOCK, IS_F64=f64, enable_fp_fusion=False)
    prm = torch.tensor([var0, var1, pos_threshold, neg_threshold], dtype=dt, device=dev)
    launch(_encode_kernel)[grid](gt, labels, lm, pri, bt, bi, valid, prm, loc, conf, landm, ov, idx, G, P, NL,
                                 BLOCK_=BLOCK, NLB=max(2, triton.next_power_of_2(max(NL, 1))), IS_F64=f64,
                                 enable_fp_fusion=False)
    return loc, conf, landm, ov, idx


register_fake(prior_nms_triton, _reg.FAKES["prior_nms"])
register_fake(match_priors_triton, _reg.FAKES["match_priors"])
