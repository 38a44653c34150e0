"""RoIAlign samples for tests/test_impls.py: roi_align and multi_scale_roi_align, forward and backward, NCHW and
channels_last, aligned True/False, float32 and float64, boxes partly outside the map."""
from __future__ import annotations

import torch

import fastops
from impl_samples import Sample


def _rois(k, n, h, w, scale, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    ext = torch.tensor([w / scale, h / scale])
    size = torch.rand(k, 2, generator=g) * ext * 0.7 + 0.5
    ctr = (torch.rand(k, 2, generator=g) * 1.4 - 0.2) * ext
    idx = torch.randint(0, n, (k, 1), generator=g).float()
    return torch.cat([idx, ctr - size / 2, ctr + size / 2], 1).to(dtype=dtype, device=device)


def _single(dtype, channels_last, aligned, sampling_ratio):
    def make(device):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(2, 5, 13, 17, generator=g, dtype=dtype).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x, _rois(7, 2, 13, 17, 0.5, dtype, device, 4), (2, 3), 0.5, sampling_ratio, aligned), {}
    return make


def _multi(dtype, channels_last, aligned):
    def make(device):
        g = torch.Generator().manual_seed(5)
        feats = [torch.randn(2, 3, 32 // 2 ** i, 40 // 2 ** i, generator=g, dtype=dtype).to(device) for i in range(3)]
        if channels_last:
            feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        rois = _rois(9, 2, 32, 40, 1.0, dtype, device, 6)
        # canonical_scale 8, level 1: sizes 2..36 px spread the RoIs over all three levels
        ctr = (rois[:, 1:3] + rois[:, 3:5]) / 2
        half = torch.tensor([1.0, 2, 3, 5, 7, 10, 13, 15, 18], dtype=dtype, device=device)[:, None]
        rois = torch.cat([rois[:, :1], ctr - half, ctr + half], 1)
        return (feats, rois, 2, [1.0, 0.5, 0.25], 2, aligned, 8, 1), {}
    return make


def _opts(dtype):
    # Triton under the CPU interpreter costs seconds per call: float64 runs cpp only (the fp64 accumulation
    # path of the Triton kernels is covered by tests/test_roi_align.py::TestTriton).
    if dtype == torch.float32:
        return dict(atol=1e-5, rtol=1e-5)
    return dict(atol=1e-10, rtol=1e-10, impls=("cpp",))


SAMPLES = []
for _dtype in (torch.float32, torch.float64):
    for _cl in (False, True):
        for _aligned in (False, True):
            _tag = f"{str(_dtype)[6:]}-{'cl' if _cl else 'nchw'}-{'aligned' if _aligned else 'legacy'}"
            SAMPLES.append(Sample(f"roi_align-{_tag}", fastops.roi_align,
                                  _single(_dtype, _cl, _aligned, 0 if _aligned else 2), grad=(0,), **_opts(_dtype)))
            SAMPLES.append(Sample(f"multi_scale_roi_align-{_tag}", fastops.multi_scale_roi_align,
                                  _multi(_dtype, _cl, _aligned), grad=(0,), **_opts(_dtype)))
