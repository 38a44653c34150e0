"""Element offsets past 2^31 (issue 11): the kernels must index with 64-bit arithmetic.

The feature maps here have more than 2^31 elements (8.6-13 GB of float32) but are never filled: `torch.empty`
reserves address space and only the pages written (a small window at the far corner) or read take memory, so each
test needs a few MB. A kernel that wrapped an offset to 32 bits would read an untouched page (zeros) or another
part of the window instead of the right pixels, and its result would differ from the same RoIs pooled from a
small copy of the window. (paste_masks' test is in test_bad_inputs_masks.py; yolact_masks and heatmap_argmax held
when probed.)

Ops whose index arithmetic was checked by reading instead, because a test would need the whole output in memory
(> 8 GB): docs/reliability.md, "Offsets past 2^31".
"""
import pytest
import torch

import fastops

WIN = 64  # the filled window: the last WIN rows and columns of the map


def _lazy_map(shape, channels_last=False):
    """An uninitialised float32 map (address space only) with random values in its far-corner window."""
    try:
        x = torch.empty(shape, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    except (RuntimeError, MemoryError) as exc:  # no address space for it (e.g. overcommit disabled)
        pytest.skip(f"cannot reserve {shape}: {exc}")
    g = torch.Generator().manual_seed(0)
    x[:, :, -WIN:, -WIN:] = torch.rand(shape[0], shape[1], WIN, WIN, generator=g) + 0.5
    return x


def _far_corner_rois(n, h, w):
    # Boxes in the window, some over the map's right/bottom edge. Their coordinates are multiples of 1/4 and each
    # bin is 2 x 2 pixels with sampling_ratio 2, so every sample lies on a multiple of 1/4: the same taps and
    # weights, exactly, after the shift to the small copy's coordinates.
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(24):
        b = int(torch.randint(0, n, (1,), generator=g))
        x1 = w - 4 - float(torch.randint(0, 4 * (WIN - 12), (1,), generator=g)) / 4
        y1 = h - 4 - float(torch.randint(0, 4 * (WIN - 12), (1,), generator=g)) / 4
        rows.append([b, x1, y1, x1 + 8, y1 + 8])
    return torch.tensor(rows, dtype=torch.float64).float()


@pytest.mark.parametrize("shape,channels_last,why", [
    ((1, 3, 2 ** 15, 2 ** 15 + 8), False, "channel 2 starts past 2^31 (AVX2 packed NCHW path)"),
    ((1, 1, 2 ** 16, 2 ** 15 + 8), False, "one plane of more than 2^31 elements (the packed path's int32 rows "
                                          "do not fit: the sparse walk)"),
    ((3, 1, 2 ** 15, 2 ** 15 + 8), False, "image 2 starts past 2^31"),
    ((1, 4, 2 ** 15, 2 ** 14 + 8), True, "channels_last, (y * W + x) * C past 2^31"),
])
def test_roi_align_forward_offsets_past_2_31(shape, channels_last, why):
    n, c, h, w = shape
    x = _lazy_map(shape, channels_last)
    assert x.numel() > 2 ** 31, why
    rois = _far_corner_rois(n, h, w)
    out = fastops.roi_align(x, rois, (4, 4), 1.0, 2, True)
    small = x[:, :, -WIN:, -WIN:].contiguous()
    shifted = rois.clone()
    shifted[:, 1::2] -= w - WIN
    shifted[:, 2::2] -= h - WIN
    expected = fastops.roi_align(small, shifted, (4, 4), 1.0, 2, True)
    assert bool((expected.abs() > 0.1).any(dim=(1, 2, 3)).all())  # every RoI reads filled pixels
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_multi_scale_roi_align_offsets_past_2_31():
    """The FPN path (one table per level): the big map is level 0, a small one level 1."""
    n, c, h, w = 1, 3, 2 ** 15, 2 ** 15 + 8
    x = _lazy_map((n, c, h, w))
    lvl1 = torch.randn(n, c, 16, 16)
    rois = _far_corner_rois(n, h, w)  # 8 x 8 boxes: all on level 0 (canonical 224 at level 4)
    out = fastops.multi_scale_roi_align([x, lvl1], rois, (4, 4), [1.0, 0.5], 2, True)
    small = x[:, :, -WIN:, -WIN:].contiguous()
    shifted = rois.clone()
    shifted[:, 1::2] -= w - WIN
    shifted[:, 2::2] -= h - WIN
    expected = fastops.roi_align(small, shifted, (4, 4), 1.0, 2, True)
    assert bool((expected.abs() > 0.1).any(dim=(1, 2, 3)).all())
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(bool(__import__("os").environ.get("FASTOPS_SANITIZED")), reason="8.6 GB output (+1/8 shadow)")
@pytest.mark.skipif(not __import__("os").environ.get("FASTOPS_LARGE_TESTS"),
                    reason="83 s and 9.9 GB RSS (CI's 60-minute budget): FASTOPS_LARGE_TESTS=1 runs it")
def test_flow_warp_forward_offsets_past_2_31():
    """flow_warp: channel c's plane starts at c * H * W, past 2^31 for the last channels. The output (8.6 GB) is
    written in full; the input is reserved, and only its last channels' window is filled."""
    n, c, h, w = 1, 4096, 725, 725
    assert n * c * h * w > 2 ** 31
    x = _lazy_map((n, c, h, w))
    try:
        flow = torch.zeros(n, 2, h, w)
        flow[:, 0], flow[:, 1] = 0.25, -0.75  # fractional: 4 taps per pixel
        out = fastops.flow_warp(x, flow)
    except (RuntimeError, MemoryError) as exc:
        pytest.skip(f"cannot allocate the 8.6 GB output: {exc}")
    tail = slice(c - 16, c)  # planes starting at 2,144,550,000 .. 2,152,434,375 (the last 10 past 2^31)
    small = x[:, tail, -WIN:, -WIN:].contiguous()
    expected = fastops.flow_warp(small, flow[:, :, -WIN:, -WIN:])
    # Inside the window (away from its top edge, where the sample reads unfilled rows above it) the warp of the
    # small copy is the warp of the big map.
    got = out[:, tail, -WIN + 1:, -WIN:-1]
    assert bool((got.abs() > 0.1).all())
    torch.testing.assert_close(got, expected[:, :, 1:, :-1], rtol=0, atol=0)
    del out
