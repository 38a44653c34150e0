"""DensePose ops: bad input (NaN boxes, points outside the RoI, roi_index out of range, mismatched channel counts)
gets a clear error, never a crash. Direct torch.ops calls that would read out of bounds without their checks run in
a fresh interpreter (tests/isolated.py)."""
import pytest
import torch

import fastops
from densepose_helpers import _boxes, _maps, _points


def test_bad_inputs_raise_value_error():
    coarse, fine, u, v = _maps(2, 8)
    boxes = _boxes(2)
    nan_boxes = boxes.clone()
    nan_boxes[1, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        fastops.densepose_chart_to_iuv(coarse, fine, u, v, nan_boxes)
    with pytest.raises(ValueError, match="finite"):
        fastops.densepose_paste_iuv(coarse, fine, u, v, nan_boxes, torch.rand(2), 10, 10)
    with pytest.raises(ValueError, match="u must have fine's shape"):
        fastops.densepose_chart_to_iuv(coarse, fine, u[:, :24], v, boxes)
    with pytest.raises(ValueError, match="coarse"):
        fastops.densepose_chart_to_iuv(coarse[:, :, :7], fine, u, v, boxes)
    with pytest.raises(ValueError, match="boxes"):
        fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes[:1])
    with pytest.raises(ValueError, match="scores"):
        fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, torch.tensor([0.5, float("nan")]), 10, 10)
    with pytest.raises(ValueError, match="height"):
        fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, torch.rand(2), -1, 10)
    maps, ri, pts = _points()
    with pytest.raises(ValueError, match="roi_index"):
        fastops.roi_point_sample(maps, ri + maps.size(0), pts)
    with pytest.raises(ValueError, match="roi_index"):
        fastops.roi_point_sample(maps, ri - 100, pts)
    for bad in (-0.5, maps.size(-1) + 0.1, float("nan"), float("inf")):
        p = pts.clone()
        p[7, 1] = bad
        with pytest.raises(ValueError, match="inside the RoI"):
            fastops.roi_point_sample(maps, ri, p)
    with pytest.raises(ValueError, match="points"):
        fastops.roi_point_sample(maps, ri, pts[:-1])
    with pytest.raises(ValueError, match="roi_index"):
        fastops.roi_point_sample(maps, ri.int(), pts)


def test_direct_op_calls_check_too():
    coarse, fine, u, v = _maps(2, 8)
    boxes = _boxes(2)
    nan_boxes = boxes.clone()
    nan_boxes[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="finite"):
        torch.ops.fastops.densepose_chart_to_iuv(coarse, fine, u, v, nan_boxes)
    huge = boxes.clone()
    huge[0, 2] = 1e7
    with pytest.raises(RuntimeError, match="per side"):
        torch.ops.fastops.densepose_chart_to_iuv(coarse, fine, u, v, huge)
    with pytest.raises(RuntimeError, match="fine's shape"):
        torch.ops.fastops.densepose_chart_to_iuv(coarse, fine, u[:, :3], v, boxes)
    maps, ri, pts = _points()
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.fastops.roi_point_sample(maps, ri * 1000, pts)
    p = pts.clone()
    p[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="inside the RoI"):
        torch.ops.fastops.roi_point_sample(maps, ri, p)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.fastops._roi_point_sample_backward(torch.ones(ri.numel(), maps.size(1), dtype=maps.dtype), maps,
                                                     ri - 1000, pts)


@pytest.mark.parametrize("impl", ["cpp", "triton"])
def test_out_of_range_index_direct_call_isolated(impl):
    # a kernel reading maps[roi_index] without its check would read (or, in the backward, write) out of bounds
    from isolated import expect_error
    suffix = "" if impl == "cpp" else "_triton"
    expect_error(f"""
        import fastops.triton.densepose
        maps = torch.randn(2, 3, 5, 5)
        ri = torch.tensor([0, 1, 1 << 40])
        pts = torch.rand(3, 2) * 5
        torch.ops.fastops.roi_point_sample{suffix}(maps, ri, pts)
    """, RuntimeError, "out of range")
    expect_error(f"""
        import fastops.triton.densepose
        maps = torch.randn(2, 3, 5, 5)
        ri = torch.tensor([0, 1, 1])
        pts = torch.tensor([[0.0, 0.0], [1.0, 1e30], [2.0, 2.0]])
        torch.ops.fastops._roi_point_sample_backward{suffix}(torch.ones(3, 3), maps, ri, pts)
    """, RuntimeError, "inside the RoI")


def test_huge_and_nan_boxes_direct_call_isolated():
    from isolated import expect_error
    expect_error("""
        c, f = torch.randn(1, 2, 4, 4), torch.randn(1, 25, 4, 4)
        torch.ops.fastops.densepose_paste_iuv(c, f, f, f, torch.tensor([[0.0, 0.0, 1e12, 5.0]]), torch.ones(1), 8, 8)
    """, RuntimeError, "per side")
    expect_error("""
        c, f = torch.randn(1, 2, 4, 4), torch.randn(1, 25, 4, 4)
        torch.ops.fastops.densepose_chart_to_iuv(c, f, f, f, torch.tensor([[-1e30, 0.0, 1e30, 5.0]]))
    """, RuntimeError, "2^40")
    expect_error("""
        c, f = torch.randn(1, 2, 4, 4), torch.randn(1, 25, 4, 4)
        torch.ops.fastops.densepose_chart_to_iuv(c, f, f, f, torch.tensor([[0.0, float("nan"), 3.0, 5.0]]))
    """, RuntimeError, "finite")
