"""Helpers shared by the keypoint/centre models (hourglass.py, centernet.py); checkpoints: _checkpoint.py."""
from __future__ import annotations

MODEL_IMPLS = ("auto", "cpp", "reference")


def check_model_impl(impl: str) -> str:
    if impl not in MODEL_IMPLS:
        raise ValueError(f"impl must be one of {MODEL_IMPLS} ('auto': fastops kernels, 'reference': the "
                         f"plain-PyTorch reference ops), got {impl!r}")
    return impl
