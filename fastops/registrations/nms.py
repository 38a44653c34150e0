"""NMS family registrations shared by every backend: fake kernels (the compiled op and its ``_triton`` twin use the
same one), autocast, quantized inputs, and the constants mirrored from csrc/nms/nms.h.

No NMS op has a backward (the outputs are indices, or copies of input rows selected by indices).
ONNX: see :func:`onnx_translations` and the TorchScript-exporter symbolics registered at import (fastops/onnx.py
collects the dynamo table).
"""
from __future__ import annotations

import torch

# ---- constants mirrored from csrc/nms/nms.h (tests/test_nms.py compares them with torch.ops.fastops._nms_constants)
TV_VANILLA_NUMEL_CPU = 4000      # kTorchvisionVanillaNumelCpu: torchvision's batched_nms per-class path above this
TV_VANILLA_NUMEL_CUDA = 100000   # kTorchvisionVanillaNumelCuda
SOFT_METHODS = {"naive": 0, "linear": 1, "gaussian": 2}  # kSoftNaive, kSoftLinear, kSoftGaussian
CONSTANTS = (TV_VANILLA_NUMEL_CPU, TV_VANILLA_NUMEL_CUDA, SOFT_METHODS["naive"], SOFT_METHODS["linear"],
             SOFT_METHODS["gaussian"])  # the order of kConstants


def tv_vanilla_numel(device: torch.device) -> int:
    """boxes.numel() above which torchvision's batched_nms runs its per-class path on `device`."""
    return TV_VANILLA_NUMEL_CUDA if device.type == "cuda" else TV_VANILLA_NUMEL_CPU


# ---- fake kernels (data-dependent output sizes) ----------------------------------------------------------------

def _dyn_at_most(n):
    m = torch.library.get_ctx().new_dynamic_size()
    torch._check(m <= n)
    return m


def nms_fake(boxes, scores, iou_threshold):
    return boxes.new_empty((_dyn_at_most(boxes.size(0)),), dtype=torch.int64)


def batched_nms_fake(boxes, scores, idxs, iou_threshold):
    return boxes.new_empty((_dyn_at_most(boxes.size(0)),), dtype=torch.int64)


def multiclass_nms_fake(boxes, scores, score_threshold, iou_threshold, pre_nms_top_k, max_det, pad):
    m = max_det if pad else torch.library.get_ctx().new_dynamic_size()
    return (boxes.new_empty((m, 4)), scores.new_empty((m,)), scores.new_empty((m,), dtype=torch.int64),
            scores.new_empty((m,), dtype=torch.int64), scores.new_empty((), dtype=torch.int64))


def fast_nms_fake(boxes, scores, iou_threshold, top_k, max_det, score_threshold, cross_class):
    m = torch.library.get_ctx().new_dynamic_size()
    return (boxes.new_empty((m,), dtype=torch.int64), boxes.new_empty((m,), dtype=torch.int64),
            scores.new_empty((m,)))


def soft_nms_fake(boxes, scores, iou_threshold, sigma, min_score, method):
    m = _dyn_at_most(boxes.size(0))
    return boxes.new_empty((m, 5)), boxes.new_empty((m,), dtype=torch.int64)


FAKES = {"nms": nms_fake, "batched_nms": batched_nms_fake, "multiclass_nms": multiclass_nms_fake,
         "fast_nms": fast_nms_fake, "soft_nms": soft_nms_fake}

for _name, _fake in FAKES.items():
    torch.library.register_fake(f"fastops::{_name}")(_fake)


# ---- autocast: torchvision's rule for nms (compute in float32, inputs of any float dtype) ----------------------

def register_autocast(op_name: str) -> None:
    """Under autocast (CPU or CUDA), float16/bfloat16 inputs of `fastops::<op_name>` are cast to float32 (float64
    stays float64: autocast only casts lower-precision types), as torchvision's nms autocast kernel does."""
    for device in ("cpu", "cuda"):
        torch.library.register_autocast(f"fastops::{op_name}", device, torch.float32)


for _name in FAKES:
    register_autocast(_name)


def autocast_inputs(*tensors):
    """The Python-side twin of the autocast kernels (impl="reference" runs no op): when autocast is on for the
    tensors' device and the float dtypes differ or are below float32, cast them to float32."""
    t0 = tensors[0]
    if not torch.is_autocast_enabled(t0.device.type):
        return tensors
    if all(t.dtype == torch.float64 for t in tensors):
        return tensors
    return tuple(t.float() if t.is_floating_point() else t for t in tensors)


# ---- quantized inputs (torchvision's qnms): the same result as nms on the dequantized values -------------------

def dequantize(t):
    return t.dequantize() if t.is_quantized else t


_qlib = torch.library.Library("fastops", "IMPL")


def _qnms(boxes, scores, iou_threshold):
    return torch.ops.fastops.nms(dequantize(boxes), dequantize(scores), iou_threshold)


def _qbatched_nms(boxes, scores, idxs, iou_threshold):
    return torch.ops.fastops.batched_nms(dequantize(boxes), dequantize(scores), idxs, iou_threshold)


_qlib.impl("nms", _qnms, "QuantizedCPU")
_qlib.impl("batched_nms", _qbatched_nms, "QuantizedCPU")


# ---- ONNX: fastops/registrations/nms_onnx.py (TorchScript-exporter symbolics registered at its import) -----------
from fastops.registrations import nms_onnx as _nms_onnx  # noqa: E402,F401
