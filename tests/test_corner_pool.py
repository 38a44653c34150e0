"""Corner pooling: fastops against CornerNet's forward/backward and mmcv's torch.cummax form
(fastops/reference/corner_pool.py)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastops
from fastops.reference import corner_pool as R
from fastops.registrations.corner_pool import pool_mask_shape
from keypoints_helpers import LOW, POOL_MODES, REFINES, close, realistic_maps, special_keypoints  # noqa: F401
from helpers import assert_all_equal, per_thread_count


def _check_against_cornernet(x, g, mode, impl="auto"):
    """corner_pool(x) equals CornerNet's forward exactly, and its gradient for grad_output g CornerNet's backward.
    Returns the output."""
    xr = x.clone().requires_grad_(True)
    out = fastops.corner_pool(xr, mode, impl=impl)
    assert torch.equal(out, R.cornernet_pool_forward(x, mode))
    (gi,) = torch.autograd.grad(out, xr, g)
    close(gi, R.cornernet_pool_backward(x, g, mode), rtol=1e-6, atol=1e-6)
    return out


@pytest.mark.parametrize("mode", POOL_MODES)
def test_corner_pool_forward_backward(mode):
    x = torch.randint(0, 5, (2, 3, 7, 9)).float()  # many ties: CornerNet's tie rule matters
    out = fastops.corner_pool(x, mode)
    assert torch.equal(out, R.cornernet_pool_forward(x, mode))
    assert torch.equal(out, R.mmcv_corner_pool(x, mode))
    g = torch.randn(2, 3, 7, 9)
    xr = x.clone().requires_grad_(True)
    (gi,) = torch.autograd.grad(fastops.corner_pool(xr, mode), xr, g)
    close(gi, R.cornernet_pool_backward(x, g, mode), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", POOL_MODES)
def test_corner_pool_gradcheck(mode):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fastops.corner_pool(t, mode), (x,))


def test_corner_pool_dtypes_noncontiguous_empty():
    x = torch.randn(2, 3, 6, 5)
    for dt in (torch.float64,) + LOW:
        for mode in POOL_MODES:
            assert torch.equal(fastops.corner_pool(x.to(dt), mode), R.mmcv_corner_pool(x.to(dt), mode))
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(fastops.corner_pool(xc, "left"), R.mmcv_corner_pool(x, "left"))
    assert fastops.corner_pool(torch.zeros(0, 2, 3, 3)).shape == (0, 2, 3, 3)
    assert fastops.corner_pool(torch.zeros(1, 2, 0, 3), "left").shape == (1, 2, 0, 3)


@settings(deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), mode=st.sampled_from(POOL_MODES), seed=st.integers(0, 1000))
def test_corner_pool_property(h, w, mode, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, (1, 2, h, w), generator=g).float()
    _check_against_cornernet(x, torch.randn(1, 2, h, w, generator=g), mode)


@pytest.mark.parametrize("mode", POOL_MODES)
def test_corner_pool_row_blocks(mode):
    # 33 rows: four full 8-row blocks of the interleaved left/right scans and a 1-row tail
    _check_against_cornernet(torch.randint(0, 6, (1, 2, 33, 21)).float(), torch.randn(1, 2, 33, 21), mode)


# ---- Triton (TRITON_INTERPRET=1 on CPU tensors; small cases: the interpreter is slow) ---------------------------

@pytest.mark.parametrize("mode", POOL_MODES)
def test_triton_corner_pool(mode):
    x = torch.randint(0, 4, (1, 2, 5, 6)).float()
    out = _check_against_cornernet(x, torch.randn(1, 2, 5, 6), mode, impl="triton")
    if mode == "top":
        xd = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: fastops.corner_pool(t, mode, impl="triton"), (xd,))
        torch.library.opcheck(torch.ops.fastops.corner_pool_triton.default, (xd, mode),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
        f = torch.compile(lambda t: fastops.corner_pool(t, mode, impl="triton"), fullgraph=True, backend="aot_eager")
        assert torch.equal(f(x), out.detach())


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mode", POOL_MODES)
def test_triton_low_precision_signed_values(dtype, mode):
    # Signed values (and a NaN): an order of raw bfloat16 bits agrees with the float order only for non-negative
    # values, so the integer inputs of the tests above could not see the interpreter's bfloat16 compare (below).
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2, 7, 9, generator=g).to(dtype)
    x[1, 0, 3, 4] = float("nan")
    gr = torch.randn(2, 2, 7, 9, generator=g).to(dtype)
    xr = x.clone().requires_grad_(True)
    out = fastops.corner_pool(xr, mode, impl="triton")
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), R.mmcv_corner_pool(x.float(), mode), equal_nan=True, atol=0, rtol=0)
    (gi,) = torch.autograd.grad(out, xr, gr)
    want = R.cornernet_pool_backward(x.double(), gr.double(), mode)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(gi.double(), want, atol=4 * eps * want.abs().max().item(), rtol=2 * eps)


try:  # module level: tools/triton_ptxas.py compiles every recorded launch and cannot reach a function's locals
    import triton
    import triton.language as tl

    @triton.jit
    def _bf16_max_kernel(a, b, out):
        va, vb = tl.load(a + tl.arange(0, 2)), tl.load(b + tl.arange(0, 2))
        tl.store(out + tl.arange(0, 2), tl.where(va > vb, va, vb))
except ImportError:
    _bf16_max_kernel = None


@pytest.mark.xfail(strict=True, reason="Triton 3.8's interpreter keeps bfloat16 as raw uint16 and compares the "
                   "bits (create_fcmpOGT = np.greater on uint16): the reason the corner_pool kernel compares in "
                   "float32. Strict: if a Triton upgrade fixes it, this XPASS fails and the kernel comment goes.")
def test_interpreter_bfloat16_compare_reproducer():
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter's behaviour; a GPU compares bfloat16 as floats")

    a = torch.tensor([-0.5, -0.25], dtype=torch.bfloat16)
    b = torch.tensor([-1.0, 0.5], dtype=torch.bfloat16)
    out = torch.empty_like(a)
    _bf16_max_kernel[(1,)](a, b, out)
    assert torch.equal(out, torch.maximum(a, b))  # interpreted: [-1.0, -0.25]


# ---- threads, errors, opcheck, compile, enums ----------------------------------------------------------------------

def test_same_results_one_and_two_threads():
    x = torch.randn(2, 8, 16, 16)

    def run():
        outs = []
        for mode in POOL_MODES:
            xr = x.clone().requires_grad_(True)
            y = fastops.corner_pool(xr, mode)
            outs += [y, *torch.autograd.grad(y, xr, torch.ones_like(y))]
        return outs

    assert_all_equal(*per_thread_count(run))


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        fastops.corner_pool(torch.rand(1, 1, 2, 2), "diag")
    with pytest.raises(ValueError, match="impl"):
        fastops.corner_pool(torch.rand(1, 1, 2, 2), impl="x")
    with pytest.raises(RuntimeError, match="mode"):
        torch.ops.fastops.corner_pool(torch.rand(1, 1, 2, 2), "diag")
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.fastops._corner_pool_backward(torch.rand(1, 1, 2, 3), torch.rand(1, 1, 2, 2),
                                                torch.rand(1, 1, 2, 2), "top")


def test_opcheck():
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    for mode in POOL_MODES:
        torch.library.opcheck(torch.ops.fastops.corner_pool.default, (x, mode), test_utils=utils)
    xd = x.detach()
    torch.library.opcheck(torch.ops.fastops._corner_pool_backward.default,
                          (torch.randn_like(xd), xd, torch.ops.fastops.corner_pool(xd, "top"), "top"),
                          test_utils=utils)
    for mode in ("top", "left"):
        torch.library.opcheck(torch.ops.fastops._corner_pool_masked.default, (x, mode), test_utils=utils)
        mask = torch.ops.fastops._corner_pool_masked(xd, mode)[1]
        torch.library.opcheck(torch.ops.fastops._corner_pool_masked_backward.default,
                              (torch.randn_like(xd), mask, mode), test_utils=utils)


def _record_bits(x, mode):
    """The record mask `_corner_pool_masked` must return, from CornerNet's forward: an element is a record where it
    is the first of its scan, or strictly above the previous output, or the first NaN; packed by 8 along the axis
    across the scan (numpy packbits, little bit order)."""
    out = R.cornernet_pool_forward(x, mode)
    axis = 2 if mode in ("top", "bottom") else 3
    rev = mode in ("top", "left")
    xs, os_ = (x.flip(axis), out.flip(axis)) if rev else (x, out)
    n = x.size(axis)
    cur, prev = xs.narrow(axis, 1, n - 1), os_.narrow(axis, 0, n - 1)
    rec = torch.cat([torch.ones_like(xs.narrow(axis, 0, 1), dtype=torch.bool),
                     (cur > prev) | (cur.isnan() & ~prev.isnan())], axis)
    rec = rec.flip(axis) if rev else rec
    return torch.from_numpy(np.packbits(rec.numpy(), axis=5 - axis, bitorder="little"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", POOL_MODES)
def test_record_mask_and_its_backward(dtype, mode):
    # H, W below, at and past the 8-row groups / 8-column tiles / mask bytes; ties and NaNs
    g = torch.Generator().manual_seed(3)
    for h, w in [(1, 1), (7, 9), (8, 8), (9, 17), (33, 21), (16, 40)]:
        x = torch.randint(0, 4, (2, 3, h, w), generator=g).to(dtype)
        x[0, 0, h // 2, w // 2] = float("nan")
        x[1, 2, h - 1, 0] = float("nan")
        out, mask = torch.ops.fastops._corner_pool_masked(x, mode)
        assert mask.dtype == torch.uint8 and mask.shape == pool_mask_shape(x.shape, mode)
        torch.testing.assert_close(out, R.cornernet_pool_forward(x, mode), equal_nan=True, atol=0, rtol=0)
        assert torch.equal(mask, _record_bits(x.double(), mode)), (h, w)
        gr = torch.randn(2, 3, h, w, generator=g).to(dtype)
        gi = torch.ops.fastops._corner_pool_masked_backward(gr, mask, mode)
        assert torch.equal(gi, torch.ops.fastops._corner_pool_backward(gr, x, out, mode)), (h, w)


def test_autograd_path_keeps_the_mask():
    """With a gradient to come, fastops.corner_pool runs `_corner_pool_masked` (its backward reads the gradient and
    the mask); without, the plain op."""
    x = torch.randn(1, 2, 9, 10, requires_grad=True)
    out = fastops.corner_pool(x, "left")
    assert "_corner_pool_masked" in type(out.grad_fn).__name__, type(out.grad_fn).__name__
    with torch.no_grad():
        assert torch.equal(fastops.corner_pool(x, "left"), out.detach())
    assert fastops.corner_pool(x.detach(), "left").grad_fn is None


def test_compile_fullgraph_export_and_backward():
    x = torch.randn(1, 2, 6, 5, requires_grad=True)

    def f(x):
        return fastops.corner_pool(x, "left")

    eager = f(x)
    assert torch.equal(eager, torch.compile(f, fullgraph=True, backend="aot_eager")(x))
    (g1,) = torch.autograd.grad(f(x).sum(), x)
    (g2,) = torch.autograd.grad(torch.compile(lambda t: f(t).sum(), fullgraph=True, backend="aot_eager")(x), x)
    assert torch.equal(g1, g2)

    class M(torch.nn.Module):
        def forward(self, t):
            return f(t)

    ep = torch.export.export(M(), (x.detach(),))
    assert torch.equal(ep.module()(x.detach()), eager.detach())


def test_enum_matches_the_cpp_header():
    import os
    import re

    from fastops.registrations import corner_pool as reg

    text = open(os.path.join(os.path.dirname(__file__), "..", "csrc", "corner_pool", "corner_pool.h")).read()
    body = re.search(r"enum PoolMode : int \{([^}]*)\}", text).group(1)
    cpp = {k.strip()[1:].lower(): int(v) for k, v in (item.split("=") for item in body.split(","))}
    assert cpp == reg.POOL_MODES


@pytest.mark.parametrize("impl", ["cpp", "triton"])
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mode", POOL_MODES)
def test_half_gradients_against_float64(impl, dtype, mode):
    # corner pooling only routes gradients (no arithmetic but sums): the low-precision gradient must equal the
    # float64 reference gradient of the same values up to the rounding of those sums; 1.5x would fail
    x = torch.randint(0, 6, (1, 2, 9, 10)).to(dtype)  # ties: the first met takes the gradient
    g = torch.randn(1, 2, 9, 10).to(dtype)
    xr = x.clone().requires_grad_(True)
    (gi,) = torch.autograd.grad(fastops.corner_pool(xr, mode, impl=impl), xr, g)
    want = R.cornernet_pool_backward(x.double(), g.double(), mode)
    assert gi.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(gi.double(), want, atol=4 * eps * want.abs().max().item(), rtol=2 * eps)


@settings(deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), mode=st.sampled_from(POOL_MODES), nan=st.booleans(),
       seed=st.integers(0, 10000))
def test_float_property_with_nan(h, w, mode, nan, seed):
    # float32 on shapes that exercise the 8-row x 8-column tiles of the CPU kernel and their leftovers
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (1, 2, h, w), generator=g).float()
    if nan:
        x.view(-1)[torch.randint(0, x.numel(), (2,), generator=g)] = float("nan")
    gr = torch.randn(1, 2, h, w, generator=g)
    xr = x.clone().requires_grad_(True)
    out = fastops.corner_pool(xr, mode)
    torch.testing.assert_close(out, R.mmcv_corner_pool(x, mode), equal_nan=True, atol=0, rtol=0)
    (gi,) = torch.autograd.grad(out, xr, gr)
    close(gi, R.cornernet_pool_backward(x, gr, mode), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("mode", POOL_MODES)
def test_onnx(dynamo, mode):
    from keypoints_helpers import onnx_roundtrip

    class M(torch.nn.Module):
        def forward(self, x):
            return fastops.corner_pool(x, mode)

    x = torch.randint(0, 9, (2, 3, 7, 11)).float()
    (got,) = onnx_roundtrip(M(), (x,), dynamo)
    assert torch.equal(got, fastops.corner_pool(x, mode))
