"""roi_heatmaps_to_keypoints: bad and extreme inputs. The direct torch.ops calls with hostile values (where a
kernel could read out of bounds or overflow a size) run in a fresh interpreter (tests/isolated.py); the rest use
pytest.raises."""
import pytest
import torch
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_heatmaps_to_keypoints

import fastops
from isolated import expect_error, expect_ok
from keypoints_helpers import assert_same_as_torchvision

IMPLS = ["cpp", "triton", "reference"]


def _maps(R=3, K=4):
    return torch.randn(R, K, 12, 10)


def _rois(R=3):
    return torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.5, 70.0], [0.0, 0.0, 3.0, 3.0]])[:R]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rois_raise_value_error(impl, bad):
    rois = _rois()
    rois[1, 2] = bad
    with pytest.raises(ValueError):  # torchvision: int(nan) -> ValueError, int(inf) -> OverflowError
        fastops.roi_heatmaps_to_keypoints(_maps(), rois, impl)


@pytest.mark.parametrize("impl", ["cpp", "triton"])
def test_huge_rois_raise_value_error(impl):
    rois = _rois()
    rois[0, 2] = 1e9  # torchvision would try to allocate a [K, 40, 1e9] map
    with pytest.raises(ValueError, match="px"):
        fastops.roi_heatmaps_to_keypoints(_maps(), rois, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_size_and_inverted_rois_are_one_pixel(impl):
    rois = torch.tensor([[4.0, 4.0, 4.0, 4.0], [9.0, 9.0, 2.0, 3.0], [1.5, 2.5, 1.75, 2.5]])
    maps = _maps()
    got = fastops.roi_heatmaps_to_keypoints(maps, rois, impl)
    want = tv_heatmaps_to_keypoints(maps, rois)
    assert_same_as_torchvision(got, want, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_rois(impl):
    kp, s = fastops.roi_heatmaps_to_keypoints(torch.randn(0, 17, 56, 56), torch.zeros(0, 4), impl)
    assert kp.shape == (0, 17, 3) and s.shape == (0, 17)


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match="one box per map"):
        fastops.roi_heatmaps_to_keypoints(_maps(3), _rois(2))
    with pytest.raises(ValueError, match="rois"):
        fastops.roi_heatmaps_to_keypoints(_maps(), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="rois"):
        fastops.roi_heatmaps_to_keypoints(_maps(), torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="maps"):
        fastops.roi_heatmaps_to_keypoints(torch.randn(3, 4, 12), _rois())
    with pytest.raises(ValueError, match="non-empty"):
        fastops.roi_heatmaps_to_keypoints(torch.randn(3, 4, 0, 5), _rois())
    with pytest.raises(ValueError, match="impl"):
        fastops.roi_heatmaps_to_keypoints(_maps(), _rois(), "cuda")


def test_direct_op_calls_check_their_arguments():
    op = torch.ops.fastops.roi_heatmaps_to_keypoints
    with pytest.raises(ValueError, match="float32 or float64"):
        op(_maps().half(), _rois())
    with pytest.raises(ValueError, match="RoIs"):
        op(_maps(3), _rois(2))
    with pytest.raises(ValueError, match="H, W > 0"):
        op(torch.randn(3, 4, 0, 5), _rois())


def test_direct_op_hostile_values_do_not_crash():
    # huge finite boxes (int64 overflow of ceil), NaN corners and a 2^16 px box straight into the kernel
    expect_error("""
        rois = torch.tensor([[0.0, 0.0, 3e38, 4.0]])
        torch.ops.fastops.roi_heatmaps_to_keypoints(torch.randn(1, 2, 5, 5), rois)
    """, ValueError, "px")
    expect_error("""
        rois = torch.tensor([[0.0, float("nan"), 3.0, 4.0]], dtype=torch.float64)
        torch.ops.fastops.roi_heatmaps_to_keypoints(torch.randn(1, 2, 5, 5), rois)
    """, ValueError, "finite")
    expect_ok("""
        rois = torch.tensor([[0.0, 0.0, 65536.0, 1.0], [-1e30, -1e30, -1e30, -1e30]])
        kp, s = torch.ops.fastops.roi_heatmaps_to_keypoints(torch.randn(2, 1, 3, 3), rois)
        assert kp.shape == (2, 1, 3) and bool(torch.isfinite(kp).all())
    """)
