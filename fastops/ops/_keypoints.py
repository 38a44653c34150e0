"""Argument checks shared by the keypoint families (render, decode, peaks, corner_pool)."""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from fastops._library import FLOAT_DTYPES, check_int, check_tensor

MAX_SIDE = 1 << 20  # csrc/keypoints_common.h kMaxSide


def size2(heatmap_size, name: str = "heatmap_size") -> Tuple[int, int]:
    """(H, W) from an int or a pair of ints, each in [0, 2^20)."""
    if isinstance(heatmap_size, (tuple, list, torch.Size)):
        if len(heatmap_size) != 2:
            raise ValueError(f"{name} must be an int or a pair (H, W), got {heatmap_size!r}")
        h, w = heatmap_size
    else:
        h = w = heatmap_size
    out = []
    for v in (h, w):
        if isinstance(v, torch.SymInt):  # traced with dynamic shapes: checked by the kernel
            out.append(v)
            continue
        if isinstance(v, (Tensor, float, bool)):
            raise ValueError(f"{name} must be an int or a pair of ints (H, W), got {heatmap_size!r}")
        out.append(check_int(name, v, low=0, high=MAX_SIDE - 1))
    return out[0], out[1]


def choice(name: str, value, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def finite_float(name: str, value, what: str = "a finite number") -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what}, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be {what}, got {v}")
    return v


def check_maps(name: str, t, dims=(4,)) -> None:
    """A float map tensor [..., H, W] with non-empty H and W whenever there is a map, and H, W < 2^20."""
    check_tensor(name, t, dim=dims, dtypes=FLOAT_DTYPES)
    lead = 1
    for s in t.shape[:-2]:
        lead *= s
    if lead > 0 and (t.size(-2) == 0 or t.size(-1) == 0):
        raise ValueError(f"{name} must have non-empty H and W, got shape {tuple(t.shape)}")
    if t.size(-2) >= MAX_SIDE or t.size(-1) >= MAX_SIDE:
        raise ValueError(f"{name} must have H, W < 2**20, got shape {tuple(t.shape)}")


def _f32(a):
    return a.float() if isinstance(a, Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a


def autocast_float32(fn, first, *args):
    """``fn(*args)``; under autocast for ``first``'s device (CPU or CUDA), with float16/bfloat16 tensors among
    ``args`` as float32 and autocast off inside (so a reference's own ops are not recast): the Python twin of the
    float32 autocast kernels of the compiled ops (registrations/<family>.py), for every ``impl``."""
    if isinstance(first, Tensor) and first.device.type in ("cpu", "cuda") and \
            torch.is_autocast_enabled(first.device.type):
        with torch.autocast(first.device.type, enabled=False):
            return fn(*[_f32(a) for a in args])
    return fn(*args)


def traced_call(fn, tensors, *args):
    """``fn(*args)`` through ``__torch_function__`` when ``tensors`` hold torch.fx Proxies (or tensor subclasses):
    symbolic tracing then records one call of the public function (a leaf) whichever module calls it, where
    ``torch.fx.wrap`` covers only calls through the wrapping module's globals. None otherwise."""
    if torch.overrides.has_torch_function(tensors):
        return torch.overrides.handle_torch_function(fn, tensors, *args)
    return None


def grad_path(t: Tensor) -> bool:
    """Whether an op on ``t`` runs on the autograd path that keeps extra state for its backward (soft_argmax's
    probabilities, corner_pool's record mask): a gradient will be asked for, and the call is not being traced or
    exported (those keep the public op: its ONNX symbolic, its own autograd)."""
    return t.requires_grad and torch.is_grad_enabled() and not (
        torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())
