"""Loading the compiled library and helpers shared by every op's Python module."""
from __future__ import annotations

import os

import torch

try:
    from fastops import _C  # noqa: F401  (runs the TORCH_LIBRARY initialisers)
except ImportError as exc:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "fastops._C is not built: run `make build` (or `pip install --no-build-isolation .`) first"
    ) from exc

IMPLS = ("auto", "cpp", "triton", "reference")

# Triton under the CPU interpreter cannot go through triton_op/FakeTensor (BUILD_FACTS): register the same
# function as a plain custom_op with an explicit fake kernel instead.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def cuda_compiled() -> bool:
    """True when this build of fastops contains the CUDA kernels."""
    return bool(torch.ops.fastops._cuda_compiled())


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def check_tensor(name: str, t, *, dim=None, dtypes=None, device=None) -> None:
    """ValueError naming the argument when `t` is not a tensor of the expected rank, dtype or device."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a Tensor, got {type(t).__name__}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if t.dim() not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} like the input, got {t.device}")


FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
