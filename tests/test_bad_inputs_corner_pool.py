"""corner_pool: bad and extreme inputs (NaN at the scan start, empty dims, wrong arguments). Cases that could
crash run in a fresh interpreter (tests/isolated.py); the rest use pytest.raises."""
import pytest
import torch

import fastops
from fastops.reference import corner_pool as R
from isolated import expect_ok

IMPLS = ["cpp", "triton", "reference"]
MODES = ["top", "bottom", "left", "right"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates_from_the_first_nan(impl, mode):
    # a NaN at the scan start used to hide the whole scan (and the docstring said NaN does not propagate): the rule
    # now is torch.cummax's, for every impl
    x = torch.randn(1, 2, 5, 6)
    x[0, 0, 4, 5] = float("nan")  # scan start of top / left
    x[0, 0, 0, 0] = float("nan")  # scan start of bottom / right
    x[0, 1, 2, 3] = float("nan")  # mid-scan
    out = fastops.corner_pool(x, mode, impl=impl)
    want = R.mmcv_corner_pool(x, mode)
    assert torch.equal(torch.isnan(out), torch.isnan(want))
    torch.testing.assert_close(out, want, equal_nan=True, atol=0, rtol=0)
    # gradients: every output from the first NaN on sends its gradient to that NaN
    xr = x.clone().requires_grad_(True)
    g = torch.rand(1, 2, 5, 6)
    (gi,) = torch.autograd.grad(fastops.corner_pool(xr, mode, impl=impl), xr, g)
    torch.testing.assert_close(gi, R.cornernet_pool_backward(x, g, mode), atol=1e-6, rtol=1e-6)
    assert torch.isclose(gi.sum(), g.sum())  # nothing lost, nothing doubled


@pytest.mark.parametrize("impl", IMPLS)
def test_reference_and_every_impl_accept_requires_grad(impl):
    # the reference failed on inputs that require grad (torch.maximum(out=) does not support autograd)
    x = torch.randint(0, 3, (1, 1, 4, 5)).float().requires_grad_(True)
    out = fastops.corner_pool(x, "right", impl=impl)
    out.sum().backward()
    assert x.grad.sum() == out.numel()


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_inputs(impl):
    for shape in ((0, 2, 3, 3), (1, 0, 3, 3), (1, 2, 0, 3), (1, 2, 3, 0)):
        for mode in MODES:
            assert fastops.corner_pool(torch.zeros(shape), mode, impl=impl).shape == shape


def test_wrong_inputs():
    with pytest.raises(ValueError, match="x"):
        fastops.corner_pool(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="x"):
        fastops.corner_pool(torch.rand(1, 1, 2, 2).long())
    with pytest.raises(ValueError, match="mode"):
        fastops.corner_pool(torch.rand(1, 1, 2, 2), 3)
    expect_ok("""
        x = torch.rand(1, 1, 3, 3)
        try:
            torch.ops.fastops._corner_pool_backward(torch.rand(1, 1, 3), x, x, "top")
        except RuntimeError as e:
            assert "same shape" in str(e)
        else:
            raise AssertionError("no error")
    """)


def test_masked_backward_wrong_mask():
    # a mask that does not fit the gradient would be read out of bounds: the op's check must stop it
    expect_ok("""
        g = torch.rand(1, 2, 9, 10)
        for mode, shape in [("top", (1, 2, 9, 1)), ("left", (1, 2, 1, 10)), ("left", (1, 2, 2, 9))]:
            try:
                torch.ops.fastops._corner_pool_masked_backward(g, torch.zeros(shape, dtype=torch.uint8), mode)
            except RuntimeError as e:
                assert "mask must be" in str(e)
            else:
                raise AssertionError("no error")
        try:
            torch.ops.fastops._corner_pool_masked_backward(g, torch.zeros(1, 2, 9, 2), "top")
        except RuntimeError as e:
            assert "uint8" in str(e)
        else:
            raise AssertionError("no error")
    """)
