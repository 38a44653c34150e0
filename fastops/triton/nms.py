"""Triton kernels for the dense parts of the NMS family: IoU bitmask tiles (nms, batched_nms) and the per-class
IoU triangle of YOLACT's Fast NMS. Sorting / gathering / compaction are torch ops around them.

Registered as ``fastops::nms_triton``, ``fastops::batched_nms_triton``, ``fastops::fast_nms_triton`` (see
_registry.py: ``triton_op`` on a GPU, ``custom_op`` with an explicit fake under TRITON_INTERPRET=1; the fakes are
the compiled ops' ones, from fastops/registrations/nms.py).
Same results as the C++ kernels: IoU in float32 (float64 for float64 boxes) with IEEE division (``div_rn``) and
no FMA contraction, torchvision's ``iou > thr`` with a float threshold floored so that it equals the double
comparison, YOLACT's ``iou <= thr``.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

import fastops.registrations.nms as _reg
from fastops.triton._registry import launch, register_fake, triton_custom_op

TILE = 64  # boxes per mask word (int64 bits)
# Rows of a 64 x 64 IoU tile computed at once: all 64 in float32; 16 in float64, whose 64 x 64 tile held in
# registers spills on sm_90 (255 registers, ~1 KB of spill stores).
ROWS_F32 = 64
ROWS_F64 = 16


@triton.jit
def _iou(x1i, y1i, x2i, y2i, ai, x1j, y1j, x2j, y2j, aj, IS_F64: tl.constexpr):
    w = tl.maximum(tl.minimum(x2i, x2j) - tl.maximum(x1i, x1j), 0.0)
    h = tl.maximum(tl.minimum(y2i, y2j) - tl.maximum(y1i, y1j), 0.0)
    inter = w * h
    if IS_F64:
        return inter / ((ai + aj) - inter)  # fp64 division is IEEE-rounded
    else:
        return tl.math.div_rn(inter, (ai + aj) - inter)  # fp32 `/` may be approximate on a GPU


@triton.jit
def _load_boxes(b_ptr, idx, m):
    """Boxes idx of a contiguous [., 4] (x1, y1, x2, y2) array (0 where not m), and their areas."""
    x1 = tl.load(b_ptr + idx * 4 + 0, mask=m, other=0.0)
    y1 = tl.load(b_ptr + idx * 4 + 1, mask=m, other=0.0)
    x2 = tl.load(b_ptr + idx * 4 + 2, mask=m, other=0.0)
    y2 = tl.load(b_ptr + idx * 4 + 3, mask=m, other=0.0)
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


@triton.jit
def _iou_mask_kernel(b_ptr, cls_ptr, thr_ptr, mask_ptr, n, col_blocks, HAS_CLS: tl.constexpr,
                     TILE_: tl.constexpr, ROWS: tl.constexpr, IS_F64: tl.constexpr):
    """Bit k of mask[i, cb] = box cb*64+k is after i, (same class) and IoU(i, .) > thr. One 64x64 tile per program,
    ROWS rows at a time."""
    cb = tl.program_id(0)
    rb = tl.program_id(1)
    if cb >= rb:
        j = cb * TILE_ + tl.arange(0, TILE_)
        jm = j < n
        x1j, y1j, x2j, y2j, aj = _load_boxes(b_ptr, j, jm)
        thr = tl.load(thr_ptr)
        shifts = tl.arange(0, TILE_).to(tl.int64)
        if HAS_CLS:
            cj = tl.load(cls_ptr + j, mask=jm, other=1)
        for r0 in tl.static_range(0, TILE_, ROWS):
            i = rb * TILE_ + r0 + tl.arange(0, ROWS)
            im = i < n
            x1i, y1i, x2i, y2i, ai = _load_boxes(b_ptr, i, im)
            o = _iou(x1i[:, None], y1i[:, None], x2i[:, None], y2i[:, None], ai[:, None],
                     x1j[None, :], y1j[None, :], x2j[None, :], y2j[None, :], aj[None, :], IS_F64)
            sup = (o > thr) & (j[None, :] > i[:, None]) & jm[None, :]
            if HAS_CLS:
                ci = tl.load(cls_ptr + i, mask=im, other=0)
                sup = sup & (ci[:, None] == cj[None, :])
            bits = tl.sum(sup.to(tl.int64) << shifts[None, :], axis=1)  # distinct bits: the sum is the OR
            tl.store(mask_ptr + i.to(tl.int64) * col_blocks + cb, bits, mask=im)


@triton.jit
def _greedy_reduce_kernel(mask_ptr, order_ptr, keep_ptr, count_ptr, n, col_blocks, BLOCK_W: tl.constexpr):
    """Single program: walk the boxes in order; a box not yet removed is kept and ORs its mask row."""
    offs = tl.arange(0, BLOCK_W)
    wm = offs < col_blocks
    rem = tl.zeros([BLOCK_W], dtype=tl.int64)
    cnt = 0
    for i in range(0, n):
        word = tl.sum(tl.where(offs == i // 64, rem, 0), axis=0)
        bit = (word >> (i % 64)) & 1
        if bit == 0:
            row = tl.load(mask_ptr + i * col_blocks + offs, mask=wm, other=0)
            rem = rem | row
            tl.store(keep_ptr + cnt, tl.load(order_ptr + i))
            cnt += 1
    tl.store(count_ptr, cnt)


@triton.jit
def _fast_nms_kernel(b_ptr, k_ptr, thr_ptr, keep_ptr, L, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                     IS_F64: tl.constexpr):
    """keep[r, j] = j < k and IoU(i, j) <= thr for all i < j of row r (boxes b[r, :, 4] in score order)."""
    r = tl.program_id(0)
    jb = tl.program_id(1)
    k = tl.minimum(tl.load(k_ptr), L)
    base = b_ptr + r.to(tl.int64) * L * 4
    j = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    jm = j < k
    x1j, y1j, x2j, y2j, aj = _load_boxes(base, j, jm)
    thr = tl.load(thr_ptr)
    bad = tl.zeros([BLOCK_J], dtype=tl.int32)
    for i0 in range(0, (jb + 1) * BLOCK_J, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        im = i < k
        x1i, y1i, x2i, y2i, ai = _load_boxes(base, i, im)
        o = _iou(x1i[:, None], y1i[:, None], x2i[:, None], y2i[:, None], ai[:, None],
                 x1j[None, :], y1j[None, :], x2j[None, :], y2j[None, :], aj[None, :], IS_F64)
        sup = (~(o <= thr)) & (i[:, None] < j[None, :]) & im[:, None]
        bad = tl.maximum(bad, tl.max(sup.to(tl.int32), axis=0))
    keep = jm & (bad == 0)
    tl.store(keep_ptr + r.to(tl.int64) * L + j, keep.to(tl.int8), mask=j < L)


def _cd(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _gt_threshold(t: float, cd: torch.dtype, device) -> Tensor:
    """Threshold tensor for `iou > t` in the compute dtype, equal to torchvision's float-vs-double compare."""
    if cd == torch.float32:
        f = np.float32(t)
        if float(f) > t:
            f = np.nextafter(f, np.float32(-np.inf), dtype=np.float32)
        return torch.tensor([float(f)], dtype=cd, device=device)
    return torch.tensor([t], dtype=cd, device=device)


def _bitmask_greedy(b: Tensor, cls, thr: Tensor, order: Tensor):
    n = b.size(0)
    col_blocks = triton.cdiv(n, TILE)
    mask = torch.zeros((n, col_blocks), dtype=torch.int64, device=b.device)
    has_cls = cls is not None
    is_f64 = b.dtype == torch.float64
    launch(_iou_mask_kernel)[(col_blocks, col_blocks)](b, cls if has_cls else order, thr, mask, n, col_blocks,
                                                      HAS_CLS=has_cls, TILE_=TILE, enable_fp_fusion=False,
                                                      ROWS=ROWS_F64 if is_f64 else ROWS_F32, IS_F64=is_f64)
    keep = torch.empty((n,), dtype=torch.int64, device=b.device)
    count = torch.zeros((1,), dtype=torch.int32, device=b.device)
    launch(_greedy_reduce_kernel)[(1,)](mask, order, keep, count, n, col_blocks,
                                        BLOCK_W=triton.next_power_of_2(col_blocks))
    return keep[: int(count.item())]


@triton_custom_op("fastops::nms_triton", mutates_args=())
def nms_triton(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    n = boxes.size(0)
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    cd = _cd(boxes)
    order = torch.sort(scores, stable=True, descending=True)[1]
    b = boxes.index_select(0, order).to(cd).contiguous()
    return _bitmask_greedy(b, None, _gt_threshold(iou_threshold, cd, boxes.device), order)


@triton_custom_op("fastops::batched_nms_triton", mutates_args=())
def batched_nms_triton(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    n = boxes.size(0)
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    cd = _cd(boxes)
    order = torch.sort(scores, stable=True, descending=True)[1]
    cls_sorted = idxs.to(torch.int64).index_select(0, order)
    cls_g, perm = torch.sort(cls_sorted, stable=True)
    grouped = order.index_select(0, perm)
    b = boxes.index_select(0, grouped).to(cd).contiguous()
    kept = _bitmask_greedy(b, cls_g.contiguous(), _gt_threshold(iou_threshold, cd, boxes.device), grouped)
    flag = torch.zeros((n,), dtype=torch.bool, device=boxes.device)
    flag[kept] = True
    if boxes.numel() > _reg.tv_vanilla_numel(boxes.device):
        # torchvision's per-class path: its unstable sort of the survivors decides the order of tied scores
        asc = torch.where(flag)[0]
        ks = scores[asc] if scores.dtype == torch.float64 else scores[asc].float()
        return asc[ks.sort(descending=True)[1]]
    return order[flag.index_select(0, order)]


def _sort_candidates(score: Tensor, cand: Tensor) -> Tensor:
    """Per row: candidates first, by descending score (stable: ties by column)."""
    p1 = torch.sort(score, dim=1, stable=True, descending=True)[1]
    nc = (~cand.gather(1, p1)).to(torch.uint8)
    p2 = torch.sort(nc, dim=1, stable=True)[1]
    return p1.gather(1, p2)


@triton_custom_op("fastops::fast_nms_triton", mutates_args=())
def fast_nms_triton(boxes: Tensor, scores: Tensor, iou_threshold: float, top_k: int, max_det: int,
                    score_threshold: float, cross_class: bool) -> tuple[Tensor, Tensor, Tensor]:
    n, nc = boxes.size(0), scores.size(0)
    dev = boxes.device
    L = min(top_k, n) if top_k > 0 else n
    if n == 0 or nc == 0 or L == 0:
        e = torch.empty((0,), dtype=torch.int64, device=dev)
        return e, e.clone(), scores.new_empty((0,))
    cd = _cd(boxes)
    mx_t, amax = scores.max(dim=0)
    passing = mx_t > score_threshold                    # in the scores' dtype, like YOLACT's conf filter
    if cross_class:
        order = _sort_candidates(mx_t.to(cd)[None], passing[None])[:, :L]
    else:
        order = _sort_candidates(scores, passing[None].expand(nc, n))[:, :L]
    rows = order.size(0)
    order = order.contiguous()
    npass = passing.sum().view(1)
    b = boxes.to(cd)[order].contiguous()                 # [rows, L, 4]
    keep = torch.empty((rows, L), dtype=torch.int8, device=dev)
    block_j = min(64, triton.next_power_of_2(L))
    launch(_fast_nms_kernel)[(rows, triton.cdiv(L, block_j))](
        b, npass, torch.tensor([iou_threshold], dtype=cd, device=dev), keep, L, BLOCK_I=32, BLOCK_J=block_j, enable_fp_fusion=False,
        IS_F64=cd == torch.float64)
    det = order.reshape(-1)
    if cross_class:
        lab = amax.index_select(0, det)
    else:
        lab = torch.arange(rows, device=dev).repeat_interleave(L)
    kflat = keep.reshape(-1).bool()
    sc = scores[lab, det]
    fo = _sort_candidates(sc[None], kflat[None])[0]
    total = int(kflat.sum().item())
    m = min(total, max_det) if max_det > 0 else total
    sel = fo[:m]
    return det[sel], lab[sel], sc[sel]


register_fake(nms_triton, _reg.nms_fake)
register_fake(batched_nms_triton, _reg.batched_nms_fake)
register_fake(fast_nms_triton, _reg.fast_nms_fake)
