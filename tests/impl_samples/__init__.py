"""Sample inputs, declared once per op family, that tests/test_impls.py runs through every implementation.

Each family module `tests/impl_samples/<family>.py` defines `SAMPLES: list[Sample]`. A Sample says how to build
inputs on a device and which public function to call; the harness calls it with impl="reference" and with every
other implementation that exists on this machine (cpp on CPU, cpp on CUDA, triton interpreted on CPU, triton on
CUDA), compares the outputs, and, when `grad` names arguments, the gradients of a random weighting of the outputs.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Sequence, Tuple

import torch


@dataclass
class Sample:
    name: str                                   # test id: "<op>-<case>"
    fn: Callable[..., Any]                      # the public function; takes impl=
    make: Callable[[torch.device], Tuple[tuple, Dict[str, Any]]]  # (args, kwargs) on a device
    grad: Sequence[int] = ()                    # positional arguments to differentiate (float tensors)
    impls: Sequence[str] = ("cpp", "triton")    # implementations that exist for this op
    atol: float = 1e-5
    rtol: float = 1e-5
    extra: Dict[str, Any] = field(default_factory=dict)


def all_samples():
    out = []
    for mod in pkgutil.iter_modules(__path__):
        out.extend(importlib.import_module(f"{__name__}.{mod.name}").SAMPLES)
    return out
