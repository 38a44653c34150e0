"""Helpers shared by the Triton kernels of the keypoint families (render, decode, peaks, corner_pool)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def acc_type(dtype: torch.dtype):
    """Accumulation type of a kernel: float32 for half/bfloat16/float, float64 for float64 (csrc/common.h acc_t)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def map_block(n: int) -> int:
    """Block size of the one-program-per-map kernels: n rounded up to a power of two, in [16, 4096]."""
    return max(16, min(4096, triton.next_power_of_2(max(n, 1))))
