"""Triton kernels of the peak ops (`heatmap_peaks`, `centernet_decode`: per-pixel peak keys, then torch.topk),
registered as `fastops::<op>_triton` (see _registry.py). Same conventions as csrc/peaks/peaks.h.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastops.registrations import peaks as _reg
from fastops.triton._keypoints import acc_dtype
from fastops.triton._registry import check_triton_device, launch, register_fake, triton_custom_op


# ---- heatmap_peaks / centernet_decode ----------------------------------------------------------------------------

@triton.jit
def _peak_score(heat, plane_base, H, W, y, x, msk, PAD, ACC: tl.constexpr):
    v = tl.load(heat + plane_base + y * W + x, mask=msk, other=0.0).to(ACC)
    m = v
    for dy in range(-PAD, PAD + 1):
        for dx in range(-PAD, PAD + 1):
            yy = y + dy
            xx = x + dx
            ok = msk & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            u = tl.load(heat + plane_base + yy * W + xx, mask=ok, other=float("-inf")).to(ACC)
            m = tl.where((u > m) | (u != u), u, m)
    return tl.where(m == v, v, 0.0) + 0.0


@triton.jit
def _peak_keys_kernel(heat, keys, scores, CHW, H, W, PAD, KEYS: tl.constexpr, ACC: tl.constexpr,
                      BLOCK: tl.constexpr):
    b = tl.program_id(0)
    f = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    msk = f < CHW
    plane = f // (H * W)
    y = (f // W) % H
    x = f % W
    s = _peak_score(heat, b * CHW + plane * H * W, H, W, y, x, msk, PAD, ACC)
    if KEYS:
        # (score descending, index ascending) as one int64: monotone image of the float bits, then the index
        bits = s.to(tl.float32).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        u = tl.where(bits >= 2147483648, 4294967295 - bits, bits + 2147483648)
        key = (u - 2147483648) * 4294967296 + (4294967295 - f.to(tl.int64))
        tl.store(keys + b * CHW + f, key, mask=msk)
    else:
        tl.store(scores + b * CHW + f, s.to(scores.dtype.element_ty), mask=msk)


def _peaks(hm: Tensor, k: int, kernel: int):
    B, C, H, W = hm.shape
    CHW = C * H * W
    ke = min(k, CHW)
    lo = dict(dtype=torch.int64, device=hm.device)
    if B * ke == 0:
        e = torch.empty((B, ke), **lo)
        return hm.new_empty((B, ke)), e, e.clone(), e.clone()
    if CHW >= 2 ** 32:
        raise RuntimeError("heatmap_peaks: C*H*W must be < 2^32 for the Triton kernel")
    BLK = 1024
    grid = (B, triton.cdiv(CHW, BLK))
    if hm.dtype != torch.float64:
        keys = torch.empty((B, CHW), **lo)
        launch(_peak_keys_kernel)[grid](hm, keys, keys, CHW, H, W, PAD=min((kernel - 1) // 2, max(H, W)), KEYS=True,
                                        ACC=tl.float32, BLOCK=BLK)
        top = torch.topk(keys, ke, dim=1).values
        flat = 4294967295 - (top & 0xFFFFFFFF)
        u = (top >> 32) + 2147483648
        bits = torch.where(u >= 2147483648, u - 2147483648, 4294967295 - u)
        bits = torch.where(bits >= 2147483648, bits - 4294967296, bits).to(torch.int32)
        scores = bits.view(torch.float32).to(hm.dtype)
    else:
        sc = torch.empty((B, CHW), dtype=hm.dtype, device=hm.device)
        launch(_peak_keys_kernel)[grid](hm, sc, sc, CHW, H, W, PAD=min((kernel - 1) // 2, max(H, W)), KEYS=False,
                                        ACC=tl.float64, BLOCK=BLK)
        srt = torch.sort(sc, dim=1, descending=True, stable=True)
        scores, flat = srt.values[:, :ke].contiguous(), srt.indices[:, :ke].contiguous()
    return scores, flat // (H * W), (flat // W) % H, flat % W


@triton_custom_op("fastops::heatmap_peaks_triton", mutates_args=())
def heatmap_peaks_triton(heatmaps: Tensor, k: int, kernel: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    check_triton_device(heatmaps, "heatmaps")
    return _peaks(heatmaps.contiguous(), k, kernel)


@triton_custom_op("fastops::centernet_decode_triton", mutates_args=())
def centernet_decode_triton(heat: Tensor, wh: Tensor, reg: Optional[Tensor], k: int) -> Tensor:
    check_triton_device(heat, "heat")
    scores, labels, ys, xs = _peaks(heat.contiguous(), k, 3)
    B, ke = scores.shape
    acc = torch.float64 if heat.dtype == torch.float64 else torch.float32
    bi = torch.arange(B, device=heat.device)[:, None].expand(B, ke)
    # gathers straight from NCHW (advanced indexing reads k values; no permute copy of the maps)
    w = wh[bi, 0, ys, xs].to(acc)
    h = wh[bi, 1, ys, xs].to(acc)
    if reg is not None:
        cx = xs.to(acc) + reg[bi, 0, ys, xs].to(acc)
        cy = ys.to(acc) + reg[bi, 1, ys, xs].to(acc)
    else:
        cx = xs.to(acc) + 0.5
        cy = ys.to(acc) + 0.5
    out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores.to(acc), labels.to(acc)], dim=-1)
    return out.to(heat.dtype)




for _name, _op in (("heatmap_peaks", heatmap_peaks_triton), ("centernet_decode", centernet_decode_triton)):
    register_fake(_op, _reg.FAKES[_name])
