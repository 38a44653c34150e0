"""Checkpoint loading shared by every bundled model's loader (hourglass, centernet, yolact, panoptic).

A checkpoint file may hold the bare ``state_dict()``, or wrap it as ``{"state_dict": ...}`` (CenterNet,
stacked-hourglass, Lightning), ``{"model": ...}`` (Detectron2, torchvision's reference scripts) or
``{"model_state_dict": ...}``, possibly nested; keys may carry ``module.`` (DataParallel / DistributedDataParallel)
and ``model.`` (trainer wrappers) prefixes, e.g. stacked-hourglass's ``model.module.``. Prefixes are stripped with
torch's own ``torch.nn.modules.utils.consume_prefix_in_state_dict_if_present``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
PREFIXES = ("module.", "model.")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj, expected_keys: Optional[Iterable[str]] = None) -> "OrderedDict[str, torch.Tensor]":
    """The parameter dict inside a loaded checkpoint ``obj`` (a new dict; ``obj`` is left alone).

    Wrappers (``WRAPPER_KEYS``) are opened until a mapping of tensors is found. A prefix of ``PREFIXES`` is
    stripped, repeatedly, while every key carries it and (when ``expected_keys`` is given, e.g. the target
    module's ``state_dict().keys()``) no key already matches an expected one.
    """
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise ValueError(f"checkpoint must hold a state dict (a mapping of tensors), got {type(obj).__name__}")
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(f"checkpoint is a mapping but neither a state dict nor a wrapper of one "
                             f"(keys {WRAPPER_KEYS}); its keys: {sorted(map(str, obj))[:8]}")
        obj = inner
    sd = OrderedDict(obj)
    meta = getattr(obj, "_metadata", None)
    if meta is not None:
        sd._metadata = OrderedDict(meta)
    expected = None if expected_keys is None else set(expected_keys)
    stripped = True
    while stripped and sd:
        stripped = False
        if expected is not None and not expected.isdisjoint(sd):
            break
        for p in PREFIXES:
            if all(k.startswith(p) for k in sd):
                consume_prefix_in_state_dict_if_present(sd, p)
                stripped = True
                break
    return sd


def load_checkpoint(module: torch.nn.Module, path, *, strict: bool = True, map_location="cpu",
                    convert: Optional[Callable[[dict], dict]] = None):
    """Load a local checkpoint file (``torch.save``; nothing is downloaded) into ``module``: unwraps it with
    :func:`unwrap_state_dict`, applies ``convert`` (a model's own renaming, if any) and returns
    ``module.load_state_dict(...)``'s result (missing / unexpected keys)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path must name an existing local file, got {path!r}")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    sd = unwrap_state_dict(obj, module.state_dict().keys())
    if convert is not None:
        sd = convert(sd)
    return module.load_state_dict(sd, strict=strict)
