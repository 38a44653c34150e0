"""panoptic_fuse samples for tests/test_impls.py: ids are compared exactly (no near-ties: smooth logits)."""
import torch
import torch.nn.functional as F

from fastops.ops.panoptic import panoptic_fuse
from impl_samples import Sample


def _make(S, T, h, w, N, M=7, out=None, dtype=torch.float32, nan=False):
    def make(device):
        g = torch.Generator().manual_seed(S * 100 + T * 10 + N)
        H, W = out if out is not None else (h, w)
        sem = torch.randn(S + T, h, w, generator=g, dtype=torch.float64) * 3
        masks = torch.randn(N, M, M, generator=g, dtype=torch.float64) * 3
        x1 = torch.rand(N, generator=g, dtype=torch.float64) * W * 1.1 - 2
        y1 = torch.rand(N, generator=g, dtype=torch.float64) * H * 1.1 - 2
        boxes = torch.stack([x1, y1, x1 + torch.rand(N, generator=g) * W * 0.6,
                             y1 + torch.rand(N, generator=g) * H * 0.6], 1).float()
        labels = torch.randint(1, T + 1, (N,), generator=g)
        if nan:
            sem[0, 1, 2] = float("nan")
            sem[S, 3, 3] = float("nan")  # a thing channel: the void logit is NaN there
            sem[1, 4, 0] = float("inf")
        return (sem.to(dtype).to(device), masks.to(dtype).to(device), boxes.to(device), labels.to(device), S), \
            {"output_size": out}
    return make


def _fn(void):
    def fn(sem, masks, boxes, labels, S, output_size, impl):
        return panoptic_fuse(sem, masks, boxes, labels, S, output_size, void, impl)
    fn.__module__ = panoptic_fuse.__module__
    return fn


SAMPLES = [
    Sample("panoptic_fuse-void-float64", _fn(True), _make(4, 3, 9, 11, 5, dtype=torch.float64)),
    Sample("panoptic_fuse-novoid-upsampled-float64", _fn(False), _make(3, 4, 6, 7, 6, out=(17, 23),
                                                                          dtype=torch.float64)),
    Sample("panoptic_fuse-void-upsampled-no-instances", _fn(True), _make(3, 2, 5, 6, 0, out=(11, 13),
                                                                            dtype=torch.float64)),
    Sample("panoptic_fuse-nan-logits", _fn(True), _make(3, 3, 8, 8, 4, dtype=torch.float64, nan=True)),
]
