"""render_gaussian_heatmaps / render_center_heatmap / gaussian_radius: bad and extreme inputs. Cases that once
crashed or hit undefined behaviour run in a fresh interpreter (tests/isolated.py); the rest use pytest.raises."""
import pytest
import torch

import fastops
from isolated import expect_ok

IMPLS = ["cpp", "triton", "reference"]


@pytest.mark.parametrize("sigma", [0.0, -1.0, 1e-30, 9.9e-4, 1e6, float("nan"), float("inf"), "2", None])
def test_sigma_out_of_range(sigma):
    # 1e-30 put NaN at the keypoint pixel (NaN cast to int in fast_expf)
    with pytest.raises(ValueError, match="sigma"):
        fastops.render_gaussian_heatmaps(torch.rand(1, 2, 2) * 5, (8, 8), sigma)
    with pytest.raises(RuntimeError, match="sigma"):
        torch.ops.fastops.render_gaussian_heatmaps(torch.rand(1, 1, 2, 2), None, 8, 8, 1e-30, "msra", "gaussian")


@pytest.mark.parametrize("impl", IMPLS)
def test_smallest_sigma_is_finite(impl):
    kp = torch.tensor([[[3.0, 4.0], [2.4, 5.6]]])
    for mode in ("msra", "udp", "dark"):
        for kernel in ("gaussian", "cauchy"):
            hm, wt = fastops.render_gaussian_heatmaps(kp, (8, 8), 1e-3, mode=mode, kernel=kernel, impl=impl)
            assert torch.isfinite(hm).all(), (mode, kernel)
            assert wt.tolist() == [[1.0, 1.0]]
            if kernel == "gaussian":
                assert hm.max() <= 1
                if mode == "dark":  # (msra/udp: mmpose's patch centre is trunc(mu - 3 sigma), a pixel off here)
                    assert hm[0, 0, 4, 3] == 1


def test_heatmap_size_and_num_classes_range_checked():
    kp = torch.rand(1, 2, 2)
    for size in ((2**20, 4), (4, -1), (2**32 + 4, 4), (4.0, 4), 4.5, (torch.tensor(4), 4)):
        with pytest.raises(ValueError, match="heatmap_size"):
            fastops.render_gaussian_heatmaps(kp, size)
    c, r, lab = torch.rand(1, 2, 2), torch.ones(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)
    for n in (-1, 2**31, 2**32 + 1, 2.0):
        with pytest.raises(ValueError, match="num_classes"):
            fastops.render_center_heatmap(c, r, lab, n, (4, 4))
    with pytest.raises(ValueError, match="labels"):
        fastops.render_center_heatmap(c, r, lab + 1, 1, (4, 4))
    with pytest.raises(ValueError, match="radii"):
        fastops.render_center_heatmap(c, torch.tensor([[1.0, float("nan")]]), lab, 1, (4, 4))


def test_huge_centres_and_radii():
    # a 2^63 centre was cast to int64 (UBSan); huge radii must not overflow either
    expect_ok("""
        c = torch.tensor([[[-1e19, 2.0], [9.3e18, 3.0], [1e30, 1.0], [2.0, -4e18]]], dtype=torch.float64)
        r = torch.tensor([[10**20 // 10**2, 2**62, 3, 2**62]])
        lab = torch.zeros(1, 4, dtype=torch.long)
        for impl in ("cpp", "triton"):
            out = fastops.render_center_heatmap(c, r, lab, 1, (6, 5), impl=impl)
            assert torch.isfinite(out).all() and out.shape == (1, 1, 6, 5), impl
        far = fastops.render_center_heatmap(c[:, 2:3], r[:, 2:3], lab[:, :1], 1, (6, 5))
        assert far.abs().sum() == 0
    """)


@pytest.mark.parametrize("impl", IMPLS)
def test_visibility_exactly_half_is_drawn(impl):
    kp = torch.tensor([[[3.0, 4.0], [5.0, 2.0], [1.0, 1.0]]])
    vis = torch.tensor([[0.5, 0.49999997, float("nan")]])
    hm, wt = fastops.render_gaussian_heatmaps(kp, (8, 8), 1.0, vis, impl=impl)
    assert wt.tolist() == [[0.5, 0.0, 0.0]]
    assert hm[0, 0, 4, 3] == 1 and hm[0, 1].abs().sum() == 0 and hm[0, 2].abs().sum() == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_inputs(impl):
    for shape in ((0, 17, 2), (2, 0, 2), (2, 0, 3, 2), (0, 2, 3, 2)):
        hm, wt = fastops.render_gaussian_heatmaps(torch.rand(shape), (8, 8), impl=impl)
        assert hm.shape == (shape[0], shape[-2], 8, 8) and wt.shape == shape[:-1]
    out = fastops.render_center_heatmap(torch.rand(2, 0, 2), torch.zeros(2, 0, dtype=torch.long),
                                        torch.zeros(2, 0, dtype=torch.long), 3, (4, 5), impl=impl)
    assert out.shape == (2, 3, 4, 5) and out.abs().sum() == 0
    assert fastops.gaussian_radius(torch.zeros(0), torch.zeros(0), impl=impl).shape == (0,)
