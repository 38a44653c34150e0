"""Peaks: fastops against the PyTorch transcription of CenterNet's _nms / _topk / ctdet_decode
(fastops/reference/peaks.py)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastops
from fastops.reference import peaks as R
from keypoints_helpers import LOW, POOL_MODES, REFINES, close, realistic_maps, special_keypoints  # noqa: F401
from helpers import assert_all_equal, per_thread_count


def test_peaks_match_centernet_topk():
    heat = torch.rand(2, 7, 20, 24)
    s, l, y, x = fastops.heatmap_peaks(heat, 50)
    rs, ri, rc, ry, rx = R.centernet_topk(R.centernet_nms(heat), 50)
    close(s, rs, atol=0, rtol=0)
    assert torch.equal(l, rc.long()) and torch.equal(y, ry.long()) and torch.equal(x, rx.long())


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_peaks_ties_flat_and_negative(kernel):
    heat = torch.randint(0, 4, (2, 3, 9, 11)).float() / 4  # many ties
    heat[1, 0] = -torch.rand(9, 11)
    heat[1, 1] = 0.5  # flat: every pixel is a peak
    out = fastops.heatmap_peaks(heat, 60, kernel)
    ref = R.heatmap_peaks(heat, 60, kernel)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    # k larger than C*H*W is clamped
    assert fastops.heatmap_peaks(heat[:, :1, :2, :2], 10)[0].shape == (2, 4)


def test_peaks_nan_never_wins():
    heat = torch.rand(1, 2, 8, 8)
    heat[0, 0, 3, 3] = float("nan")
    s, l, y, x = fastops.heatmap_peaks(heat, 128)
    assert not torch.isnan(s).any()
    ref = R.heatmap_peaks(heat, 128)
    assert torch.equal(s, ref[0]) and torch.equal(x, ref[3])


def test_centernet_decode():
    heat = torch.rand(2, 6, 16, 20)
    wh = torch.rand(2, 2, 16, 20) * 10
    reg = torch.rand(2, 2, 16, 20)
    close(fastops.centernet_decode(heat, wh, reg, 40), R.centernet_ctdet_decode(heat, wh, reg, 40))
    close(fastops.centernet_decode(heat, wh, None, 40), R.centernet_ctdet_decode(heat, wh, None, 40))
    # wh / reg read in place with any strides
    whn = wh.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    regn = torch.rand(2, 16, 20, 2).permute(0, 3, 1, 2)
    close(fastops.centernet_decode(heat, whn, regn, 40), R.centernet_ctdet_decode(heat, whn, regn, 40))
    for dt in (torch.float64,) + LOW:
        d = fastops.centernet_decode(heat.to(dt), wh.to(dt), reg.to(dt), 10)
        assert d.dtype == dt
        close(d, R.centernet_decode(heat.to(dt), wh.to(dt), reg.to(dt), 10), dt)
    assert fastops.centernet_decode(torch.rand(0, 3, 4, 4), torch.rand(0, 2, 4, 4), None, 5).shape == (0, 5, 6)


def test_decode_errors():
    heat = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="wh"):
        fastops.centernet_decode(heat, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="reg"):
        fastops.centernet_decode(heat, torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8).double())
    with pytest.raises(ValueError, match="k"):
        fastops.heatmap_peaks(heat, -1)
    with pytest.raises(ValueError, match="kernel"):
        fastops.heatmap_peaks(heat, 5, kernel=2)


@settings(deadline=None)
@given(h=st.integers(1, 10), w=st.integers(1, 10), k=st.integers(0, 30), seed=st.integers(0, 1000))
def test_peaks_property_odd_shapes(h, w, k, seed):
    g = torch.Generator().manual_seed(seed)
    heat = torch.randint(0, 5, (2, 3, h, w), generator=g).float()
    for a, b in zip(fastops.heatmap_peaks(heat, k), R.heatmap_peaks(heat, k)):
        assert torch.equal(a, b)


# ---- Triton (TRITON_INTERPRET=1 on CPU tensors; small cases: the interpreter is slow) ---------------------------

def test_triton_peaks_and_decode():
    heat = torch.randint(0, 4, (2, 3, 6, 7)).float() / 4
    heat[1, 0] = -torch.rand(6, 7)
    for k in (5, 200):
        for a, b in zip(fastops.heatmap_peaks(heat, k, impl="triton"), R.heatmap_peaks(heat, k)):
            assert torch.equal(a, b)
    heat = torch.rand(2, 3, 6, 7)
    wh = torch.rand(2, 2, 6, 7) * 5
    reg = torch.rand(2, 6, 7, 2).permute(0, 3, 1, 2)
    close(fastops.centernet_decode(heat, wh, reg, 10, impl="triton"), R.centernet_ctdet_decode(heat, wh, reg, 10))
    d64 = fastops.centernet_decode(heat.double(), wh.double(), None, 10, impl="triton")
    close(d64, R.centernet_ctdet_decode(heat.double(), wh.double(), None, 10), torch.float64)
    torch.library.opcheck(torch.ops.fastops.heatmap_peaks_triton.default, (heat, 7, 3),
                          test_utils=("test_schema", "test_faketensor"))


# ---- threads, errors, opcheck, compile -------------------------------------------------------------------------------

def test_same_results_one_and_two_threads():
    heat = torch.rand(2, 20, 32, 32)
    assert_all_equal(*per_thread_count(lambda: fastops.heatmap_peaks(heat, 100)))


def test_opcheck():
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.fastops.heatmap_peaks.default, (torch.rand(2, 3, 6, 7), 10, 3), test_utils=utils)
    torch.library.opcheck(torch.ops.fastops.centernet_decode.default,
                          (torch.rand(2, 3, 6, 7), torch.rand(2, 2, 6, 7), torch.rand(2, 2, 6, 7), 10),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.fastops.centernet_decode.default,
                          (torch.rand(2, 3, 6, 7), torch.rand(2, 2, 6, 7), None, 10), test_utils=utils)


def test_compile_fullgraph_and_export():
    def f(heat, wh):
        return (fastops.centernet_decode(heat, wh, None, 7),) + fastops.heatmap_peaks(heat, 9, 3)

    args = (torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 8))
    eager = f(*args)
    for a, b in zip(eager, torch.compile(f, fullgraph=True, backend="aot_eager")(*args)):
        assert torch.equal(a, b)

    class M(torch.nn.Module):
        def forward(self, heat, wh):
            return f(heat, wh)

    ep = torch.export.export(M(), args)
    for a, b in zip(eager, ep.module()(*args)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx(dynamo):
    from keypoints_helpers import onnx_roundtrip

    class P(torch.nn.Module):
        def forward(self, heat):
            return fastops.heatmap_peaks(heat, 20, 5)

    class D(torch.nn.Module):
        def forward(self, heat, wh, reg):
            return fastops.centernet_decode(heat, wh, reg, 15), fastops.centernet_decode(heat, wh, None, 7)

    heat = torch.randint(0, 5, (2, 3, 9, 10)).float() / 4  # ties: ONNX TopK orders them by index as fastops
    for got, want in zip(onnx_roundtrip(P(), (heat,), dynamo), fastops.heatmap_peaks(heat, 20, 5)):
        assert torch.equal(got, want)
    heat = torch.rand(2, 3, 9, 10)
    wh, reg = torch.rand(2, 2, 9, 10) * 5, torch.rand(2, 2, 9, 10)
    for got, want in zip(onnx_roundtrip(D(), (heat, wh, reg), dynamo), D()(heat, wh, reg)):
        close(got, want, rtol=1e-6, atol=1e-6)
