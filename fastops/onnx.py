"""ONNX export of fastops ops to standard ONNX operators (no custom domain; any ONNX runtime runs the file).

TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): importing fastops registers a symbolic for every
op (see each family's ``fastops/registrations/<family>.py``); nothing else is needed.

Dynamo exporter (``dynamo=True``, torch's default): pass the translations,

    torch.onnx.export(model, args, "model.onnx", dynamo=True,
                      custom_translation_table=fastops.onnx.translations())
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict

import fastops.registrations as _registrations


def translations() -> Dict[object, Callable]:
    """{torch.ops.fastops.<op>.default: onnxscript function} for every op family (the dynamo exporter's table)."""
    table: Dict[object, Callable] = {}
    for mod in pkgutil.iter_modules(_registrations.__path__):
        family = importlib.import_module(f"{_registrations.__name__}.{mod.name}")
        if hasattr(family, "onnx_translations"):
            table.update(family.onnx_translations())
    return table
