"""flow_warp samples for tests/test_impls.py: every convention, both layouts, forward and both gradients."""
import torch

from fastops.ops.flow_warp import flow_warp
from impl_samples import Sample


def _make(b, c, h, w, scale, units, layout="B2HW", channels_last=False, dtype=torch.float64, nonfinite=False):
    def make(device):
        g = torch.Generator().manual_seed(b * 1000 + c * 100 + h * 10 + w)
        x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
        f = torch.randn(b, 2, h, w, generator=g, dtype=torch.float64) * scale + 0.0137  # off the integer kinks
        if units == "normalized":
            f = f * (2.0 / max(w - 1, 1))
        if nonfinite:
            f[0, 0, 0, 0] = float("nan")
            f[0, 1, 1, 1] = float("inf")
            x[0, :, 0, 0] = float("nan")  # an input NaN reached only by the taps that include it
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if layout == "BHW2":
            f = f.permute(0, 2, 3, 1).contiguous()
        return (x.to(dtype).to(device), f.to(dtype).to(device)), {}
    return make


def _fn(padding_mode, align_corners, units, layout="B2HW", return_mask=False):
    def fn(x, f, impl):
        return flow_warp(x, f, padding_mode, align_corners, units, layout, return_mask, impl)
    fn.__module__ = flow_warp.__module__
    return fn


SAMPLES = []
for pm in ("zeros", "border"):
    for ac in (True, False):
        for units in ("pixel", "normalized"):
            SAMPLES.append(Sample(f"flow_warp-{pm}-ac{int(ac)}-{units}", _fn(pm, ac, units, return_mask=True),
                                  _make(2, 3, 6, 7, 3.0, units), grad=(0, 1), atol=1e-10, rtol=1e-10))
SAMPLES += [
    Sample("flow_warp-bhw2-channels_last", _fn("zeros", True, "pixel", "BHW2"),
           _make(1, 5, 5, 9, 2.5, "pixel", "BHW2", channels_last=True), grad=(0, 1), atol=1e-10, rtol=1e-10),
    Sample("flow_warp-size1-axes", _fn("border", False, "pixel"), _make(2, 2, 1, 6, 1.5, "pixel"), grad=(0, 1),
           atol=1e-10, rtol=1e-10),
    Sample("flow_warp-float32", _fn("zeros", False, "pixel", return_mask=True),
           _make(2, 4, 8, 9, 3.0, "pixel", dtype=torch.float32), grad=(0, 1), atol=1e-4, rtol=1e-4),
    Sample("flow_warp-nonfinite", _fn("zeros", True, "pixel", return_mask=True),
           _make(1, 3, 5, 6, 2.0, "pixel", nonfinite=True), atol=1e-10, rtol=1e-10),
]
