"""CenterNet end to end: anchor = the same model with impl="reference" (CenterNet's own ctdet_decode and per-object
draw_umich_gaussian/gaussian_radius loops), fastops = impl="auto"; 1 and 2 threads.

- post-processing from head outputs to detections (sigmoid + decode + scaling), COCO size (80 classes, 512x512 input);
- full inference (network + post-processing), 256x256 input, 80 classes;
- the training step's targets (radius + heatmaps + regression targets), 8 images x 32 boxes, 128x128 maps, and the
  same with the focal/L1 losses from given head outputs, 2 images. At this size the fastops side mostly times the
  zeroing of the fresh [8,80,128,128] (42 MB) heatmap: torch's CPU allocator faults it in 4 KB pages (this machine's
  transparent huge pages are madvise-only and torch madvises only with THP_MEM_ALLOC_ENABLE=1), while the
  reference's np.zeros gets lazily zeroed pages (NumPy madvises huge pages itself) and touches only the objects'
  windows. Measured here: ~0.5x without THP_MEM_ALLOC_ENABLE, ~1.6-1.8x with it. In the full step the loss
  dominates.
"""
import pytest
import torch

from fastops.models.centernet import CenterNet

from benchutil import record, run

SIDES = ("anchor", "fastops")
C = 80


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CenterNet(C).eval()


def _impl(side):
    return "reference" if side == "anchor" else "auto"


@pytest.mark.parametrize("side", SIDES)
def test_centernet_postprocess(benchmark, threads, model, side):
    g = torch.Generator().manual_seed(1)
    out = {"hm": torch.randn(1, C, 128, 128, generator=g) - 2.19, "wh": torch.rand(1, 2, 128, 128, generator=g) * 40,
           "reg": torch.rand(1, 2, 128, 128, generator=g)}
    model.impl = _impl(side)
    record(benchmark, "CenterNet postprocess", f"heads [1,{C},128,128] -> 100 dets", threads, side)
    run(benchmark, lambda: model.postprocess(out), rounds=5 if side == "anchor" else 20)


@pytest.mark.parametrize("side", SIDES)
def test_centernet_inference(benchmark, threads, model, side):
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    model.impl = _impl(side)
    record(benchmark, "CenterNet inference", f"R18 1x3x256x256, {C} cls, net + decode", threads, side)
    run(benchmark, lambda: model.detect(x), rounds=3)


def _boxes(b, n, size=512):
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(b, n, 2, generator=g) * (size - 40)
    wh = 4 + torch.rand(b, n, 2, generator=g) * 200
    boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=-1)
    labels = torch.randint(0, C, (b, n), generator=g)
    labels[:, 3 * n // 4:] = -1  # padding, as in a padded batch
    return boxes, labels


@pytest.mark.parametrize("side", SIDES)
def test_centernet_targets(benchmark, threads, model, side):
    b, n = 8, 32
    boxes, labels = _boxes(b, n)
    model.impl = _impl(side)
    record(benchmark, "CenterNet targets", f"{b} imgs x {n} boxes -> [{b},{C},128,128]", threads, side)
    run(benchmark, lambda: model.build_targets(boxes, labels, (128, 128)), rounds=5 if side == "anchor" else 10)


@pytest.mark.parametrize("side", SIDES)
def test_centernet_targets_loss(benchmark, threads, model, side):
    b, n = 2, 32
    boxes, labels = _boxes(b, n)
    g = torch.Generator().manual_seed(4)
    out = {"hm": torch.randn(b, C, 128, 128, generator=g) - 2.19, "wh": torch.rand(b, 2, 128, 128, generator=g) * 40,
           "reg": torch.rand(b, 2, 128, 128, generator=g)}
    model.impl = _impl(side)

    def step():
        return model.loss(out, model.build_targets(boxes, labels, (128, 128)))[0]

    record(benchmark, "CenterNet targets+loss", f"{b} imgs x {n} boxes, [{b},{C},128,128] heads", threads, side)
    run(benchmark, step, rounds=3)


@pytest.mark.parametrize("side", SIDES)
def test_corner_pool_module_fwd_bwd(benchmark, threads, side):
    """CornerNet's tl_pool module (convs + TopPool + LeftPool) forward and backward; anchor: the same module with
    CornerNet's pooling forward/backward (reference), fastops: fastops.corner_pool."""
    from fastops.models.centernet import CornerPool

    torch.manual_seed(5)
    m = CornerPool(64, ("top", "left"), mid_dim=64, impl=_impl(side)).train()
    x = torch.randn(2, 64, 64, 64, requires_grad=True)

    def step():
        m.zero_grad(set_to_none=True)
        m(x).sum().backward()

    record(benchmark, "CornerPool module f+b", "tl_pool dim 64, [2,64,64,64]", threads, side)
    run(benchmark, step, rounds=3)
