"""heatmap_argmax / soft_argmax: bad and extreme inputs. Cases that could crash run in a fresh interpreter
(tests/isolated.py); the rest use pytest.raises."""
import pytest
import torch

import fastops
from isolated import expect_ok

IMPLS = ["cpp", "triton", "reference"]
REFINES = ["none", "quarter", "hourglass", "dark", "dark_udp"]


def test_blur_kernel_range_checked():
    hm = torch.rand(1, 2, 6, 6)
    for bk in (0, -1, 2, 33, 2**32 + 11, 11.0, True):
        with pytest.raises(ValueError, match="blur_kernel"):
            fastops.heatmap_argmax(hm, refine="dark", blur_kernel=bk)
    with pytest.raises(RuntimeError, match="blur_kernel"):
        torch.ops.fastops.heatmap_argmax(hm, "dark", 2**32 + 11)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("refine", ["dark", "dark_udp"])
def test_blur_kernel_one(impl, refine):
    # the reference crashed with blur_kernel=1 (mmpose's [border:-border] slice is empty for border 0)
    g = torch.Generator().manual_seed(0)
    hm = torch.rand(2, 3, 9, 8, generator=g) + 0.5
    c, s = fastops.heatmap_argmax(hm, refine=refine, blur_kernel=1, impl=impl)
    rc, rs = fastops.heatmap_argmax(hm, refine=refine, blur_kernel=1, impl="reference")
    torch.testing.assert_close(c, rc, atol=1e-3, rtol=0)
    assert torch.equal(s, rs)


@pytest.mark.parametrize("refine", REFINES)
def test_nan_and_inf_maxima_keep_integer_coordinates(refine):
    # dark_udp returned NaN coordinates for a NaN maximum; the rule: non-finite refinements fall back
    expect_ok(f"""
        hm = torch.rand(1, 4, 9, 10) * 0.5 + 0.1
        hm[0, 0, 4, 5] = float("nan")                           # NaN maximum
        hm[0, 1, 3, 3] = float("inf")                           # inf maximum
        hm[0, 2, 5, 6] = 2.0; hm[0, 2, 5, 7] = float("nan")     # NaN next to the maximum (NaN wins: first NaN)
        hm[0, 3, 2, 2] = 3.0; hm[0, 3, 8, 9] = float("-inf")    # -inf far away
        for impl in ("cpp", "triton", "reference"):
            c, s = fastops.heatmap_argmax(hm, refine="{refine}", blur_kernel=3, impl=impl)
            assert torch.isfinite(c).all(), (impl, c)
            assert torch.isnan(s[0, 0]) and s[0, 1] == float("inf") and torch.isnan(s[0, 2]), impl
            base = torch.tensor([[5., 4.], [3., 3.], [7., 5.]])
            assert ((c[0, :3] - base).abs() <= 0.75).all(), (impl, c)
            assert torch.isfinite(s[0, 3]), impl
    """)


@pytest.mark.parametrize("impl", IMPLS)
def test_soft_argmax_nan_rule(impl):
    hm = torch.rand(1, 3, 4, 5)
    hm[0, 0, 1, 1] = float("nan")
    hm[0, 1, 2, 2] = float("inf")
    out = fastops.soft_argmax(hm, 1.0, impl=impl)
    assert torch.isnan(out[0, :2]).all() and torch.isfinite(out[0, 2]).all()


def test_soft_argmax_beta_range():
    for beta in (float("nan"), float("inf"), "1", None):
        with pytest.raises(ValueError, match="beta"):
            fastops.soft_argmax(torch.rand(1, 1, 3, 3), beta)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_inputs(impl):
    c, s = fastops.heatmap_argmax(torch.zeros(0, 17, 8, 8), impl=impl)
    assert c.shape == (0, 17, 2) and s.shape == (0, 17)
    c, s = fastops.heatmap_argmax(torch.zeros(2, 0, 0, 0), impl=impl)
    assert c.shape == (2, 0, 2)
    assert fastops.soft_argmax(torch.zeros(0, 3, 4, 4), impl=impl).shape == (0, 3, 2)
