"""flow_warp with hostile or careless input: each case that could crash runs in its own interpreter
(tests/isolated.py); the plain argument errors use pytest.raises."""
import pytest
import torch

import fastops
from isolated import expect_error, expect_ok

_SETUP = "x = torch.randn(2, 3, 5, 6)\nf = torch.randn(2, 2, 5, 6)\n"


@pytest.mark.parametrize("impl", ("cpp", "triton"))
@pytest.mark.parametrize("shape", ((0, 3, 5, 6), (2, 0, 5, 6), (2, 3, 0, 6), (2, 3, 5, 0)))
def test_empty_dims_forward_and_backward(shape, impl):
    b, c, h, w = shape
    expect_ok(f"""
x = torch.randn({shape}, requires_grad=True)
f = torch.randn({b}, 2, {h}, {w}, requires_grad=True)
out, mask = fastops.flow_warp(x, f, return_mask=True, impl={impl!r})
assert out.shape == x.shape and mask.shape == ({b}, 1, {h}, {w})
gi, gf = torch.autograd.grad(out.sum(), (x, f), allow_unused=True)
assert gi is None or gi.shape == x.shape
assert gf is None or (gf.shape == f.shape and (gf == 0).all())
""")


@pytest.mark.parametrize("impl", ("cpp", "triton"))
@pytest.mark.parametrize("padding_mode", ("zeros", "border"))
def test_huge_and_non_finite_flow(padding_mode, impl):
    expect_ok(f"""
x = torch.randn(1, 4, 6, 7, requires_grad=True)
f = torch.zeros(1, 2, 6, 7)
f[0, 0, 0] = 1e30; f[0, 1, 1] = -1e30; f[0, 0, 2] = float('nan'); f[0, 1, 3] = float('inf')
f[0, 0, 4] = 3e9; f[0, 1, 5, :3] = -2 ** 62
f.requires_grad_()
out, mask = fastops.flow_warp(x, f, padding_mode={padding_mode!r}, return_mask=True, impl={impl!r})
assert torch.isfinite(out).all() and ((mask == 0) | (mask == 1)).all()
assert (out[0, :, 2] == 0).all() and (out[0, :, 3] == 0).all()
ref = fastops.flow_warp(x, f, padding_mode={padding_mode!r}, impl="reference")
torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
gi, gf = torch.autograd.grad(out.sum(), (x, f))
assert torch.isfinite(gi).all() and torch.isfinite(gf).all()
""")


@pytest.mark.parametrize("impl", ("cpp", "triton"))
def test_stride0_and_channels_last_c1(impl):
    expect_ok(f"""
x = torch.randn(1, 1, 5, 6).expand(3, 4, 5, 6)        # stride-0 batch and channels
f = (torch.randn(1, 2, 1, 6) * 2).expand(3, 2, 5, 6)  # stride-0 rows
out = fastops.flow_warp(x, f, impl={impl!r})
torch.testing.assert_close(out, fastops.flow_warp(x.contiguous(), f.contiguous(), impl="reference"))
y = torch.randn(2, 1, 5, 6).contiguous(memory_format=torch.channels_last)
out = fastops.flow_warp(y, torch.randn(2, 2, 5, 6), impl={impl!r})
assert out.shape == y.shape
""")


def test_raw_op_checks_shapes_in_cpp():
    expect_error(_SETUP + "torch.ops.fastops.flow_warp(x, f[:, :, :4], 'zeros', True, 'pixel', False)",
                 RuntimeError, "flow")
    expect_error(_SETUP + "torch.ops.fastops.flow_warp(x[0], f, 'zeros', True, 'pixel', False)",
                 RuntimeError, "input")
    expect_error(_SETUP + "torch.ops.fastops._flow_warp_backward(x[:1], x, f, 'zeros', True, 'pixel', True, True)",
                 RuntimeError, "grad_output")
    expect_error(_SETUP + "torch.ops.fastops.flow_warp(x.long(), f.long(), 'zeros', True, 'pixel', False)",
                 RuntimeError, "floating point")


def test_argument_errors_name_the_argument():
    x, f = torch.randn(2, 3, 5, 6), torch.randn(2, 2, 5, 6)
    cases = [
        (dict(input=x.int()), "input"), (dict(input=x[0]), "input"), (dict(flow=f[:, :1]), "flow"),
        (dict(flow=f.double()), "flow"), (dict(flow=f.permute(0, 2, 3, 1)), "flow"),
        (dict(flow_layout="BHW2"), "flow"), (dict(padding_mode="reflection"), "padding_mode"),
        (dict(units="px"), "units"), (dict(flow_layout="B2WH"), "flow_layout"), (dict(impl="gpu"), "impl"),
        (dict(align_corners=1), "align_corners"), (dict(return_mask="yes"), "return_mask"),
        (dict(input=[1.0]), "input"),
    ]
    for kw, name in cases:
        args = dict(input=x, flow=f)
        args.update(kw)
        with pytest.raises(ValueError, match=name):
            fastops.flow_warp(**args)


def test_no_input_is_mutated():
    x, f = torch.randn(2, 3, 5, 6, requires_grad=True), torch.randn(2, 2, 5, 6, requires_grad=True)
    x0, f0 = x.detach().clone(), f.detach().clone()
    for impl in ("cpp", "triton", "reference"):
        out = fastops.flow_warp(x, f, impl=impl)
        torch.autograd.grad(out.sum(), (x, f))
    assert torch.equal(x, x0) and torch.equal(f, f0)
