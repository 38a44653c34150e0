"""Helpers shared by the keypoint/centre models (hourglass.py, centernet.py): impl checks and checkpoint loading."""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import torch

MODEL_IMPLS = ("auto", "cpp", "reference")


def check_model_impl(impl: str) -> str:
    if impl not in MODEL_IMPLS:
        raise ValueError(f"impl must be one of {MODEL_IMPLS} ('auto': fastops kernels, 'reference': the "
                         f"plain-PyTorch reference ops), got {impl!r}")
    return impl


def unwrap_state_dict(obj, prefixes: Iterable[str] = ("module.", "model.module.", "model.")) -> dict:
    """The parameter dict inside a checkpoint: accepts a bare state dict or ``{"state_dict": ...}`` /
    ``{"model": ...}`` wrappers, and strips DataParallel/trainer prefixes (``module.``, ``model.module.``) when
    every key carries the same one."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint must hold a state dict, got {type(obj).__name__}")
    sd = dict(obj)
    for p in sorted(prefixes, key=len, reverse=True):
        if sd and all(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items()}
            break
    return sd


def load_state_dict_file(module: torch.nn.Module, path, *, strict: bool = True, map_location="cpu"):
    """Load a state dict saved with ``torch.save`` from a local file into ``module`` (nothing is downloaded)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path must name an existing local file, got {path!r}")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    return module.load_state_dict(unwrap_state_dict(obj), strict=strict)
