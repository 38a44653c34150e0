"""NMS family samples for tests/test_impls.py: every impl against impl="reference" (torchvision's nms, YOLACT's
fast_nms transcription, mmcv's soft-NMS semantics, the multiclass recipe). No op has a gradient."""
from __future__ import annotations

import torch

import fastops
from impl_samples import Sample


def _boxes(n, objects=12, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(objects, 2, generator=g) * 200
    wh = torch.rand(objects, 2, generator=g) * 60 + 10
    o = torch.randint(0, objects, (n,), generator=g)
    jit = torch.randn(n, 4, generator=g)
    c = ctr[o] + jit[:, :2] * 0.1 * wh[o]
    s = wh[o] * (1 + 0.1 * jit[:, 2:]).clamp(min=0.2)
    return torch.cat([c - s / 2, c + s / 2], 1).to(dtype=dtype, device=device)


def _scores(shape, seed=1, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).to(dtype=dtype, device=device)


def _at_threshold(device):
    # IoU([0,0,3,1], [1,0,4,1]) = 2 / 4 = 0.5 exactly: kept at iou_threshold 0.5 (`>` suppresses), dropped below
    b = torch.tensor([[0.0, 0, 3, 1], [1.0, 0, 4, 1], [2.0, 0, 5, 1], [10.0, 0, 13, 1]], device=device)
    return b, torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)


def _nms(dtype, n=300):
    def make(device):
        return (_boxes(n, dtype=dtype, device=device), _scores(n, dtype=dtype, device=device), 0.5), {}
    return make


def _batched(n=400, classes=5, dtype=torch.float32):
    def make(device):
        idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(2)).to(device)
        return (_boxes(n, dtype=dtype, device=device), _scores(n, dtype=dtype, device=device), idxs, 0.5), {}
    return make


def _multiclass(per_class, pad, dtype=torch.float32):
    def make(device):
        n, c = 200, 4
        b = torch.stack([_boxes(n, seed=k, dtype=dtype, device=device) for k in range(c)], 1) if per_class \
            else _boxes(n, dtype=dtype, device=device)
        return (b, _scores((n, c), dtype=dtype, device=device) ** 2, 0.2, 0.5, 30, 50, pad), {}
    return make


def _fast(cross_class, dtype=torch.float32):
    def make(device):
        n, c = 500, 6
        g = torch.Generator().manual_seed(3)
        logits = torch.randn(c + 1, n, generator=g) * 2
        logits[0] += 3
        s = torch.softmax(logits, 0)[1:].contiguous().to(dtype=dtype, device=device)
        return (_boxes(n, dtype=dtype, device=device), s, 0.5, 50, 60, 0.05, cross_class), {}
    return make


def _soft(method, dtype=torch.float32):
    def make(device):
        return (_boxes(120, dtype=dtype, device=device), _scores(120, dtype=dtype, device=device), 0.3, 0.5, 1e-3,
                method), {}
    return make


def _thr(fn):
    def make(device):
        b, s = _at_threshold(device)
        if fn == "batched":
            return (b, s, torch.zeros(4, dtype=torch.int64, device=device), 0.5), {}
        if fn == "fast":
            return (b, s[None], 0.5, 200, 100, 0.05, False), {}
        return (b, s, 0.5), {}
    return make


SAMPLES = [
    Sample("nms-f32", fastops.nms, _nms(torch.float32)),
    Sample("nms-f64", fastops.nms, _nms(torch.float64)),
    Sample("nms-f16", fastops.nms, _nms(torch.float16)),
    Sample("nms-at-threshold", fastops.nms, _thr("nms")),
    Sample("batched_nms-f32", fastops.batched_nms, _batched()),
    Sample("batched_nms-bf16", fastops.batched_nms, _batched(dtype=torch.bfloat16)),
    Sample("batched_nms-large", fastops.batched_nms, _batched(n=1500, classes=7)),  # torchvision's per-class path
    Sample("batched_nms-at-threshold", fastops.batched_nms, _thr("batched")),
    Sample("multiclass_nms-shared", fastops.multiclass_nms, _multiclass(False, False), impls=("cpp",), atol=0, rtol=0),
    Sample("multiclass_nms-per-class-pad", fastops.multiclass_nms, _multiclass(True, True), impls=("cpp",), atol=0,
           rtol=0),
    Sample("multiclass_nms-f64", fastops.multiclass_nms, _multiclass(False, False, torch.float64), impls=("cpp",),
           atol=0, rtol=0),
    Sample("fast_nms-f32", fastops.fast_nms, _fast(False), atol=0, rtol=0),
    Sample("fast_nms-cross-class", fastops.fast_nms, _fast(True), atol=0, rtol=0),
    Sample("fast_nms-f64", fastops.fast_nms, _fast(False, torch.float64), atol=0, rtol=0),
    Sample("fast_nms-at-threshold", fastops.fast_nms, _thr("fast"), atol=0, rtol=0),
    Sample("soft_nms-linear", fastops.soft_nms, _soft("linear"), impls=("cpp",), atol=0, rtol=0),
    Sample("soft_nms-gaussian", fastops.soft_nms, _soft("gaussian"), impls=("cpp",), atol=1e-7, rtol=1e-5),
    Sample("soft_nms-naive-f64", fastops.soft_nms, _soft("naive", torch.float64), impls=("cpp",), atol=0, rtol=0),
]
