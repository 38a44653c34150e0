"""heatmap_peaks / centernet_decode: bad and extreme inputs. Cases that once crashed run in a fresh interpreter
(tests/isolated.py); the rest use pytest.raises."""
import pytest
import torch

import fastops
from isolated import expect_error, expect_ok

IMPLS = ["cpp", "triton", "reference"]


@pytest.mark.parametrize("kernel", [2**31 + 1, 2**32 + 3, 2**62 - 1])
def test_huge_kernel_is_the_whole_map(kernel):
    # 2**31 + 1 segfaulted (negative pad), 2**32 + 3 behaved as 3 (truncated to 32 bits)
    expect_ok(f"""
        heat = torch.rand(2, 3, 5, 6)
        want = fastops.heatmap_peaks(heat, 10, 13, impl="reference")  # 13 > 2 * 6 + 1: the whole map
        for impl in ("cpp", "triton", "reference"):
            got = fastops.heatmap_peaks(heat, 10, {kernel}, impl=impl)
            for a, b in zip(got, want):
                assert torch.equal(a, b), impl
        # one peak per plane: the plane's maximum
        s, l, y, x = fastops.heatmap_peaks(heat, 6, {kernel})
        assert torch.equal(s[:, :3].sort(1).values, heat.amax((2, 3)).sort(1).values)
    """)


def test_integer_arguments_range_checked():
    heat = torch.rand(1, 2, 4, 4)
    for k in (-1, 2**62 + 1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="k"):
            fastops.heatmap_peaks(heat, k)
    for kernel in (0, -3, 2, 2**62 + 3, 3.0, None):
        with pytest.raises(ValueError, match="kernel"):
            fastops.heatmap_peaks(heat, 5, kernel)
    with pytest.raises(ValueError, match="k"):
        fastops.centernet_decode(heat, torch.rand(1, 2, 4, 4), None, 2**63)
    with pytest.raises(RuntimeError, match="kernel"):
        torch.ops.fastops.heatmap_peaks(heat, 5, -1)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch_and_classes(impl):
    for shape in ((0, 3, 4, 4), (2, 0, 4, 4), (2, 0, 0, 0), (0, 0, 3, 3)):
        heat = torch.rand(shape)
        s, l, y, x = fastops.heatmap_peaks(heat, 5, impl=impl)
        assert s.shape == (shape[0], 0 if shape[1] * shape[2] * shape[3] == 0 else 5)
        assert l.dtype == torch.int64 and y.shape == s.shape and x.shape == s.shape
        d = fastops.centernet_decode(heat, torch.rand(shape[0], 2, *shape[2:]), None, 5, impl=impl)
        assert d.shape == (shape[0], s.shape[1], 6)


@pytest.mark.parametrize("impl", IMPLS)
def test_infinite_peaks_keep_their_value(impl):
    heat = torch.zeros(1, 2, 5, 5)
    heat[0, 0, 2, 2] = float("inf")
    heat[0, 1] = float("-inf")
    heat[0, 1, 4, 4] = 0.5
    s, l, y, x = fastops.heatmap_peaks(heat, 4, impl=impl)
    assert s[0, 0] == float("inf") and (l[0, 0], y[0, 0], x[0, 0]) == (0, 2, 2)
    assert s[0, 1] == 0.5
    # the -inf plane: every -inf pixel whose window holds no larger value is a peak of -inf; others score 0
    assert not torch.isnan(s).any()


def test_nan_heat_never_crashes():
    expect_ok("""
        heat = torch.full((1, 2, 6, 6), float("nan"))
        for impl in ("cpp", "triton", "reference"):
            s, l, y, x = fastops.heatmap_peaks(heat, 5, impl=impl)
            assert (s == 0).all(), impl
            d = fastops.centernet_decode(heat, torch.rand(1, 2, 6, 6), None, 5, impl=impl)
            assert d.shape == (1, 5, 6)
    """)


def test_wrong_inputs():
    heat = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="heatmaps"):
        fastops.heatmap_peaks(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="heatmaps"):
        fastops.heatmap_peaks(torch.rand(1, 3, 0, 8))
    with pytest.raises(ValueError, match="heatmaps"):
        fastops.heatmap_peaks(heat.long())
    with pytest.raises(ValueError, match="wh"):
        fastops.centernet_decode(heat, torch.rand(1, 2, 8, 7))
    with pytest.raises(ValueError, match="reg"):
        fastops.centernet_decode(heat, torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8).half())
    with pytest.raises(ValueError, match="impl"):
        fastops.heatmap_peaks(heat, impl="cuda")
    expect_error("fastops.heatmap_peaks(torch.rand(1, 1, 2**20, 1), 3)", ValueError, "heatmaps")
