"""Plain PyTorch transcriptions of CornerNet's corner pooling (the tests' expected results, the benchmarks' anchor and
``impl="reference"``): CornerNet's TopPool/BottomPool/LeftPool/RightPool (forward: running max; backward: the
gradient goes to the element the running max came from, the first one met in the scan on ties) and mmcv's
``torch.cummax`` form (written from the published conventions, not copied).
"""
from __future__ import annotations

import torch
from torch import Tensor

# ------------------------------------------------------------------------------------------------------------------
# CornerNet pooling
# ------------------------------------------------------------------------------------------------------------------

_CUMMAX = {"bottom": (2, False), "left": (3, True), "right": (3, False), "top": (2, True)}


def mmcv_corner_pool(x: Tensor, mode: str) -> Tensor:
    """mmcv's CornerPool forward on torch >= 1.5: torch.cummax (differentiable through cummax's backward)."""
    dim, flip = _CUMMAX[mode]
    if flip:
        x = x.flip(dim)
    out, _ = torch.cummax(x, dim=dim)
    if flip:
        out = out.flip(dim)
    return out


def cornernet_pool_forward(x: Tensor, mode: str) -> Tensor:
    """CornerNet's C++ forward: log-step doubling with max, as in its cpools extension."""
    out = x.clone()
    dim = 2 if mode in ("top", "bottom") else 3
    n = x.size(dim)
    ind = 1
    while ind < n:
        if mode in ("top", "left"):  # out[i] = max(out[i], out[i + ind])
            cur = out.narrow(dim, 0, n - ind)
            nxt = out.narrow(dim, ind, n - ind).clone()
        else:  # out[i] = max(out[i], out[i - ind])
            cur = out.narrow(dim, ind, n - ind)
            nxt = out.narrow(dim, 0, n - ind).clone()
        torch.maximum(cur, nxt, out=cur)
        ind <<= 1
    return out


def cornernet_pool_backward(x: Tensor, grad_output: Tensor, mode: str) -> Tensor:
    """CornerNet's C++ backward: scan in the pooling direction keeping the running max and its index (updated only
    on a strictly greater value, so ties keep the element met first), scatter-adding each gradient there."""
    dim = 2 if mode in ("top", "bottom") else 3
    n = x.size(dim)
    order = range(n - 1, -1, -1) if mode in ("top", "left") else range(n)
    out = torch.zeros_like(x)
    max_val = None
    max_ind = None
    for i in order:
        xi = x.select(dim, i)
        if max_val is None:
            max_val = xi.clone()
            max_ind = torch.full_like(xi, i, dtype=torch.long)
        else:
            # strictly greater, or the first NaN (the forward's NaN propagates from there on)
            gt = (xi > max_val) | (torch.isnan(xi) & ~torch.isnan(max_val))
            max_val = torch.where(gt, xi, max_val)
            max_ind = torch.where(gt, torch.full_like(max_ind, i), max_ind)
        out.scatter_add_(dim, max_ind.unsqueeze(dim), grad_output.select(dim, i).unsqueeze(dim))
    return out


class _CornerNetPool(torch.autograd.Function):
    """CornerNet's forward and its own backward (torch.maximum's autograd would split ties)."""

    @staticmethod
    def forward(ctx, x, mode):
        ctx.save_for_backward(x)
        ctx.mode = mode
        return cornernet_pool_forward(x, mode)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return cornernet_pool_backward(x, grad, ctx.mode), None


def corner_pool(x: Tensor, mode: str = "top") -> Tensor:
    """CornerNet's pooling with its backward; works on inputs that require grad."""
    return _CornerNetPool.apply(x, mode)
