"""RoIAlign: fastops.roi_align / multi_scale_roi_align against torchvision.ops (the anchor) and the plain-PyTorch
reference; opcheck, gradcheck, compile, export, Triton (interpreted), errors."""
import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import fastops
from fastops.ops.roi_align import boxes_to_rois

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.float16: (4e-3, 4e-3),
       torch.bfloat16: (4e-3, 1.6e-2)}


def make_rois(k, n, h, w, scale=1.0, lo=2.0, hi=None, dtype=torch.float32, outside=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    hi = hi if hi is not None else max(h, w) / scale * 0.6
    size = torch.rand(k, 2, generator=g) * (hi - lo) + lo
    ext = torch.tensor([w / scale, h / scale])
    margin = 0.3 if outside else 0.0
    ctr = (torch.rand(k, 2, generator=g) * (1 + 2 * margin) - margin) * ext
    boxes = torch.cat([ctr - size / 2, ctr + size / 2], 1)
    idx = torch.randint(0, n, (k, 1), generator=g).float()
    return torch.cat([idx, boxes], 1).to(dtype)


def tv_roi_align(x, rois, out, scale, sr, aligned):
    """torchvision in float32/float64 (it has no bf16 CPU kernel and a slow fp16 one)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torchvision.ops.roi_align(x.to(dt), rois.to(dt), out, scale, sr, aligned)


def assert_close(actual, expected, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol)



def _same_at_one_and_two_threads(call) -> bool:
    """Whether call() gives the same bits with 2 threads as with 1 (the thread count restored afterwards)."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = call()
        torch.set_num_threads(1)
        one = call()
    finally:
        torch.set_num_threads(old)
    return torch.equal(one, two)

class TestForwardAgainstTorchvision:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("aligned", [False, True])
    @pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
    def test_dtypes_and_modes(self, dtype, aligned, sampling_ratio):
        x = torch.randn(2, 5, 23, 31).to(dtype)
        for scale in (1.0, 0.5, 0.25):
            rois = make_rois(17, 2, 23, 31, scale, dtype=dtype, outside=True)
            expected = tv_roi_align(x, rois, (7, 5), scale, sampling_ratio, aligned)
            actual = fastops.roi_align(x, rois, (7, 5), scale, sampling_ratio, aligned)
            assert actual.dtype == dtype
            assert_close(actual, expected, dtype)

    @pytest.mark.parametrize("layout", ["channels_last", "noncontiguous", "sliced_w"])
    def test_layouts(self, layout):
        x = torch.randn(2, 8, 19, 27)
        if layout == "channels_last":
            xi = x.contiguous(memory_format=torch.channels_last)
        elif layout == "noncontiguous":
            xi = torch.randn(2, 16, 19, 27)[:, ::2]
            x = xi.contiguous()
        else:
            xi = torch.randn(2, 8, 19, 54)[..., ::2]
            x = xi.contiguous()
        rois = make_rois(23, 2, 19, 27, 0.5, outside=True)
        expected = tv_roi_align(x, rois, 6, 0.5, -1, True)
        actual = fastops.roi_align(xi, rois, 6, 0.5, -1, True)
        assert_close(actual, expected, torch.float32)
        if layout == "channels_last":
            assert actual.is_contiguous(memory_format=torch.channels_last)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_channels_last_low_precision(self, dtype):
        x = torch.randn(2, 24, 19, 27).to(dtype).contiguous(memory_format=torch.channels_last)
        rois = make_rois(15, 2, 19, 27, 0.25, dtype=dtype)
        assert_close(fastops.roi_align(x, rois, 7, 0.25, 2, True), tv_roi_align(x, rois, 7, 0.25, 2, True), dtype)

    def test_list_of_boxes(self):
        x = torch.randn(3, 4, 20, 20)
        boxes = [make_rois(n, 1, 20, 20)[:, 1:] for n in (4, 0, 6)]
        expected = torchvision.ops.roi_align(x, boxes, 5, 1.0, 2)
        assert_close(fastops.roi_align(x, boxes, 5, 1.0, 2), expected, torch.float32)
        assert_close(fastops.RoIAlign(5, 1.0, 2)(x, boxes), expected, torch.float32)

    def test_zero_boxes_and_channels(self):
        x = torch.randn(2, 4, 10, 10)
        for impl in ("cpp", "reference"):
            out = fastops.roi_align(x, torch.zeros(0, 5), 3, impl=impl)
            assert out.shape == (0, 4, 3, 3) and out.dtype == x.dtype
            out = fastops.roi_align(torch.randn(2, 0, 10, 10), make_rois(3, 2, 10, 10), 3, impl=impl)
            assert out.shape == (3, 0, 3, 3)
            xg = x.clone().requires_grad_()
            fastops.roi_align(xg, torch.zeros(0, 5), 3, impl=impl).sum().backward()
            assert torch.equal(xg.grad, torch.zeros_like(x))  # no box: gradient exactly 0

    def test_boxes_wholly_outside_and_degenerate(self):
        x = torch.randn(1, 3, 12, 12)
        rois = torch.tensor([[0, -50.0, -50, -20, -20], [0, 30, 30, 60, 60], [0, 5, 5, 5, 5], [0, 8, 8, 3, 3],
                             [0, -0.5, -0.5, 12.5, 12.5], [0, 11.9, 0, 12.0, 12]])
        for aligned in (False, True):
            for sr in (0, 2):
                expected = tv_roi_align(x, rois, 4, 1.0, sr, aligned)
                assert_close(fastops.roi_align(x, rois, 4, 1.0, sr, aligned), expected, torch.float32)

    def test_same_result_with_one_and_two_threads(self):
        x = torch.randn(2, 40, 30, 30)
        rois = make_rois(50, 2, 30, 30, 0.5)
        old = torch.get_num_threads()
        try:
            outs, grads = [], []
            for n in (1, 2):
                torch.set_num_threads(n)
                for xi in (x, x.contiguous(memory_format=torch.channels_last)):
                    xi = xi.detach().requires_grad_()
                    y = fastops.roi_align(xi, rois, 7, 0.5, 0, True)
                    y.backward(torch.ones_like(y))
                    outs.append(y.detach())
                    grads.append(xi.grad)
        finally:
            torch.set_num_threads(old)
        assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
        assert torch.equal(grads[0], grads[2]) and torch.equal(grads[1], grads[3])

    @settings(deadline=None)  # examples: the "ci"/"long" profile of tests/conftest.py
    @given(n=st.integers(1, 3), c=st.integers(1, 7), h=st.integers(1, 17), w=st.integers(1, 17),
           k=st.integers(0, 9), ph=st.integers(1, 5), pw=st.integers(1, 5), sr=st.integers(-1, 3),
           aligned=st.booleans(), scale=st.sampled_from([1.0, 0.5, 0.125]), seed=st.integers(0, 1000))
    def test_property_odd_shapes(self, n, c, h, w, k, ph, pw, sr, aligned, scale, seed):
        x = torch.randn(n, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        rois = make_rois(k, n, h, w, scale, lo=0.0, dtype=torch.float64, outside=True, seed=seed)
        expected = tv_roi_align(x, rois, (ph, pw), scale, sr, aligned)
        assert_close(fastops.roi_align(x, rois, (ph, pw), scale, sr, aligned), expected, torch.float64)
        xcl = x.contiguous(memory_format=torch.channels_last)
        assert_close(fastops.roi_align(xcl, rois, (ph, pw), scale, sr, aligned), expected, torch.float64)


    # float32 NCHW runs the vectorised kernel (packed tables, dense x weights per 8 bins): cover its shape
    # classes - wide RoIs (more than 4 row vectors or 4 taps per bin), maps narrower than a row vector, more than
    # 8 bins per side, channel blocks with a remainder - and compare with torchvision in float32.
    @settings(max_examples=40, deadline=None)
    @given(c=st.integers(1, 37), h=st.integers(1, 70), w=st.integers(1, 70), k=st.integers(0, 12),
           ph=st.integers(1, 17), pw=st.integers(1, 17), sr=st.integers(-1, 3), aligned=st.booleans(),
           scale=st.sampled_from([1.0, 0.5, 0.25]), seed=st.integers(0, 1000))
    def test_property_float32(self, c, h, w, k, ph, pw, sr, aligned, scale, seed):
        x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(seed))
        rois = make_rois(k, 2, h, w, scale, lo=0.0, outside=True, seed=seed)
        expected = tv_roi_align(x, rois, (ph, pw), scale, sr, aligned)
        assert_close(fastops.roi_align(x, rois, (ph, pw), scale, sr, aligned), expected, torch.float32)

    @pytest.mark.parametrize("pw", [5, 6, 7, 8])
    def test_wide_rois_split_x_step(self, pw):
        """float32 NCHW RoIs wide on their map with 5-8 bins across take the split x step (bins 0-3 and 4-7 on two
        window segments, interleaved column pairs): wide and short boxes, boxes over the right edge (segments
        shifted left to stay in the row), maps barely wider than a segment; equal at 1 and 2 threads."""
        g = torch.Generator().manual_seed(pw)
        for w in (150, 37, 17):
            x = torch.randn(2, 19, 23, w, generator=g)
            k = 64
            bw = torch.rand(k, generator=g) * (w * 1.1 - 8) + 8
            bh = torch.rand(k, generator=g) * 20 + 0.5
            x1 = torch.rand(k, generator=g) * (w + 4) - bw / 2
            y1 = torch.rand(k, generator=g) * 23 - 2
            rois = torch.stack([torch.randint(0, 2, (k,), generator=g).float(), x1, y1, x1 + bw, y1 + bh], 1)
            for ph in (1, 7, 9):
                for sr in (2, 0, 1):
                    for aligned in (False, True):
                        expected = tv_roi_align(x, rois, (ph, pw), 1.0, sr, aligned)
                        got = fastops.roi_align(x, rois, (ph, pw), 1.0, sr, aligned)
                        assert_close(got, expected, torch.float32)
            assert _same_at_one_and_two_threads(lambda: fastops.roi_align(x, rois, (7, pw), 1.0, 2, True))

    @pytest.mark.parametrize("ph,pw", [(7, 7), (8, 8), (1, 7), (7, 1), (3, 5), (8, 2)])
    def test_transposed_x_step(self, ph, pw):
        """float32 NCHW RoIs with at most 8 bins per side take the transposed x step where it is cheaper (the y
        step's rows transposed in registers, each bin summing only its taps): narrow, wide, flat and tall boxes,
        boxes over the right edge (window shifted left), maps narrower than a row vector (masked last vector),
        fixed and adaptive sampling (up to ~20 taps per bin); equal at 1 and 2 threads. On an AVX-512 CPU the
        RoIs with windows of <= 128 columns and <= 4 row taps per bin take the AVX-512 step instead (fast_roi512:
        row loads whose last vector is a masked 4-, 8- or 16-lane load, permutes for the taps);
        tests/test_build.py::test_isa_variants_agree compares it with the AVX2 steps."""
        g = torch.Generator().manual_seed(ph * 10 + pw)
        for h, w in ((23, 150), (40, 37), (9, 17), (12, 5)):
            x = torch.randn(2, 19, h, w, generator=g)
            k = 80
            bw = torch.rand(k, generator=g) * (w * 1.1 - 0.5) + 0.5
            bh = torch.rand(k, generator=g) * (h * 1.1 - 0.5) + 0.5
            flat = torch.rand(k, generator=g) < 0.3
            bh = torch.where(flat, bh.clamp(max=2.0), bh)
            x1 = torch.rand(k, generator=g) * (w + 4) - bw / 2
            y1 = torch.rand(k, generator=g) * (h + 2) - bh / 2
            rois = torch.stack([torch.randint(0, 2, (k,), generator=g).float(), x1, y1, x1 + bw, y1 + bh], 1)
            for sr in (2, 0, 1):
                for aligned in (False, True):
                    expected = tv_roi_align(x, rois, (ph, pw), 1.0, sr, aligned)
                    got = fastops.roi_align(x, rois, (ph, pw), 1.0, sr, aligned)
                    assert_close(got, expected, torch.float32)
            assert _same_at_one_and_two_threads(lambda: fastops.roi_align(x, rois, (ph, pw), 1.0, 0, True))

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    @pytest.mark.parametrize("out", [7, (5, 11)])
    def test_non_finite_features(self, bad, out):
        """A NaN/inf pixel makes exactly the bins whose samples give it a non-zero weight non-finite; the others
        equal torchvision on the clean map (the vectorised kernel's zero weights must not leak it)."""
        x = torch.randn(2, 20, 24, 40, generator=torch.Generator().manual_seed(1))
        pix = [(0, 3, 10, 17), (1, 0, 5, 39), (0, 19, 23, 0), (1, 7, 12, 12)]
        mark = torch.zeros_like(x)
        for n, ch, i, j in pix:
            mark[n, ch, i, j] = 1.0
        xb = x.clone()
        xb[mark > 0] = bad
        rois = make_rois(60, 2, 24, 40, 1.0, lo=1.0, outside=True, seed=3)
        got = fastops.roi_align(xb, rois, out, 1.0, 2, True)
        hit = tv_roi_align(mark, rois, out, 1.0, 2, True) > 0
        clean = tv_roi_align(x, rois, out, 1.0, 2, True)
        assert hit.any() and (~hit).any()
        assert not torch.isfinite(got[hit]).any()
        torch.testing.assert_close(got[~hit], clean[~hit], atol=1e-5, rtol=1e-5)
        if bad == bad:  # +-inf alone (no two opposite infinities meet): the bin is that infinity
            assert torch.equal(got[hit], torch.full_like(got[hit], bad))

class TestBackward:
    @pytest.mark.parametrize("channels_last", [False, True])
    @pytest.mark.parametrize("aligned,sr", [(False, -1), (True, 2), (True, 0)])
    def test_gradcheck(self, channels_last, aligned, sr):
        x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        rois = make_rois(5, 2, 9, 8, 0.5, dtype=torch.float64, outside=True)
        torch.autograd.gradcheck(lambda t: fastops.roi_align(t, rois, 3, 0.5, sr, aligned), (x,))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("channels_last", [False, True])
    def test_grad_matches_torchvision(self, dtype, channels_last):
        x = torch.randn(2, 20, 25, 30).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rois = make_rois(30, 2, 25, 30, 0.5, dtype=dtype)
        g = torch.randn(30, 20, 7, 7)
        xa = x.float().detach().requires_grad_()
        torchvision.ops.roi_align(xa, rois.float(), 7, 0.5, 0, True).backward(g)
        xf = x.detach().requires_grad_()
        fastops.roi_align(xf, rois, 7, 0.5, 0, True).backward(g.to(dtype))
        assert xf.grad.dtype == dtype
        atol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(xf.grad.float(), xa.grad, atol=atol, rtol=atol)

    def test_reference_impl_gradcheck(self):
        x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
        rois = make_rois(3, 1, 7, 6, dtype=torch.float64)
        torch.autograd.gradcheck(lambda t: fastops.roi_align(t, rois, 2, 1.0, 2, True, impl="reference"), (x,))


class TestMultiScale:
    def _fpn(self, dtype=torch.float32, channels_last=False):
        feats = {f"p{i}": torch.randn(2, 6, 64 // 2 ** i, 96 // 2 ** i).to(dtype) for i in range(4)}
        if channels_last:
            feats = {k: v.contiguous(memory_format=torch.channels_last) for k, v in feats.items()}
        g = torch.Generator().manual_seed(1)
        boxes = []
        for n in (7, 9):
            wh = torch.rand(n, 2, generator=g) * 200 + 4
            xy = torch.rand(n, 2, generator=g) * torch.tensor([384.0, 256.0])
            boxes.append(torch.cat([xy, xy + wh], 1).to(dtype))
        return feats, boxes, [(256, 384), (250, 380)]

    @pytest.mark.parametrize("channels_last", [False, True])
    def test_module_matches_torchvision(self, channels_last):
        feats, boxes, shapes = self._fpn(channels_last=channels_last)
        names = ["p0", "p1", "p2", "p3"]
        expected = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)(feats, boxes, shapes)
        actual = fastops.MultiScaleRoIAlign(names, 7, 2)(feats, boxes, shapes)
        assert_close(actual, expected, torch.float32)
        ref = fastops.MultiScaleRoIAlign(names, 7, 2, impl="reference")(feats, boxes, shapes)
        assert_close(ref, expected, torch.float32)

    @pytest.mark.parametrize("channels_last", [False, True])
    def test_aligned_matches_reference(self, channels_last):
        feats, boxes, shapes = self._fpn(channels_last=channels_last)
        names = ["p0", "p1", "p2", "p3"]
        got = fastops.MultiScaleRoIAlign(names, 7, 2, aligned=True)(feats, boxes, shapes)
        want = fastops.MultiScaleRoIAlign(names, 7, 2, aligned=True, impl="reference")(feats, boxes, shapes)
        assert_close(got, want, torch.float32)
        # and the reference's aligned pooling is torchvision's per level
        rois = boxes_to_rois(boxes, torch.float32, torch.device("cpu"))
        from fastops.reference.roi_align import fpn_levels

        levels = fpn_levels(rois, 2, 5)
        for lvl, name in enumerate(names):
            idx = (levels == lvl).nonzero()[:, 0]
            if idx.numel():
                tv = torchvision.ops.roi_align(feats[name], rois[idx], 7, 0.25 / 2 ** lvl, 2, True)
                assert_close(got[idx], tv, torch.float32)
        assert not torch.allclose(got, fastops.MultiScaleRoIAlign(names, 7, 2)(feats, boxes, shapes), atol=1e-2)

    def test_subset_of_levels_and_single_level(self):
        feats, boxes, shapes = self._fpn()
        for names in (["p1", "p2"], ["p0"]):
            expected = torchvision.ops.MultiScaleRoIAlign(names, (5, 3), 0)(feats, boxes, shapes)
            assert_close(fastops.MultiScaleRoIAlign(names, (5, 3), 0)(feats, boxes, shapes), expected, torch.float32)

    def test_gradcheck_all_levels(self):
        feats = [torch.randn(1, 2, 16 // 2 ** i, 16 // 2 ** i, dtype=torch.float64, requires_grad=True)
                 for i in range(3)]
        rois = torch.tensor([[0, 1.0, 1, 6, 7], [0, 2, 2, 60, 50], [0, 0, 0, 15, 15], [0, 3, 1, 30, 40]],
                            dtype=torch.float64)
        for aligned in (False, True):
            torch.autograd.gradcheck(
                lambda *f: fastops.multi_scale_roi_align(list(f), rois, 2, [1.0, 0.5, 0.25], 2, aligned, 16, 1),
                feats)

    def test_grad_matches_torchvision(self):
        feats, boxes, shapes = self._fpn()
        names = ["p0", "p1", "p2", "p3"]
        fa = {k: v.detach().requires_grad_() for k, v in feats.items()}
        ff = {k: v.detach().requires_grad_() for k, v in feats.items()}
        g = torch.randn(16, 6, 7, 7)
        torchvision.ops.MultiScaleRoIAlign(names, 7, 2)(fa, boxes, shapes).backward(g)
        fastops.MultiScaleRoIAlign(names, 7, 2)(ff, boxes, shapes).backward(g)
        for k in names:
            torch.testing.assert_close(ff[k].grad, fa[k].grad, atol=1e-5, rtol=1e-5)


class TestLibrary:
    def test_opcheck(self):
        x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
        rois = make_rois(4, 2, 10, 12, dtype=torch.float64)
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.library.opcheck(torch.ops.fastops.roi_align.default, (xi.requires_grad_(), rois, 0.5, 3, 2, 2, True))
        feats = [torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True),
                 torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)]
        torch.library.opcheck(torch.ops.fastops.multi_scale_roi_align.default,
                              (feats, rois, [1.0, 0.5], 2, 2, -1, False, 224, 4))
        g = torch.randn(4, 3, 3, 2, dtype=torch.float64)
        torch.library.opcheck(torch.ops.fastops._roi_align_backward.default,
                              (g, rois, 0.5, 3, 2, 2, 3, 10, 12, 2, True, False))

    def test_compile_fullgraph_and_backward(self):
        x = torch.randn(2, 4, 12, 12, requires_grad=True)
        rois = make_rois(6, 2, 12, 12)

        def f(x, rois):
            return fastops.roi_align(x, rois, 3, 1.0, 2, True).sum(dim=(2, 3))

        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        out = compiled(x, rois)
        xa = x.detach().requires_grad_()
        want = torchvision.ops.roi_align(xa, rois, 3, 1.0, 2, True).sum(dim=(2, 3))
        torch.testing.assert_close(out, want)
        g = torch.randn_like(want)
        out.backward(g)
        want.backward(g)
        torch.testing.assert_close(x.grad, xa.grad)

    def test_compile_inductor_dynamic(self):
        x = torch.randn(2, 4, 12, 12)
        compiled = torch.compile(lambda x, r: fastops.roi_align(x, r, 3, 1.0, 2, True), fullgraph=True, dynamic=True)
        for k in (3, 5):
            rois = make_rois(k, 2, 12, 12)
            torch.testing.assert_close(compiled(x, rois), tv_roi_align(x, rois, 3, 1.0, 2, True))

    def test_export(self):
        class M(torch.nn.Module):
            def forward(self, x, rois):
                return fastops.roi_align(x, rois, (4, 4), 0.5, 2, True)

        x = torch.randn(2, 4, 12, 12)
        rois = make_rois(5, 2, 12, 12, 0.5)
        ep = torch.export.export(M(), (x, rois))
        assert any("fastops.roi_align" in str(n.target) for n in ep.graph.nodes)
        torch.testing.assert_close(ep.module()(x, rois), tv_roi_align(x, rois, 4, 0.5, 2, True))


class TestTriton:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("channels_last", [False, True])
    def test_forward_backward(self, dtype, channels_last):
        x = torch.randn(2, 3, 9, 11, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rois = make_rois(4, 2, 9, 11, 0.5, dtype=dtype, outside=True)
        expected = tv_roi_align(x, rois, 3, 0.5, 0, True)
        xt = x.detach().requires_grad_()
        actual = fastops.roi_align(xt, rois, 3, 0.5, 0, True, impl="triton")
        assert_close(actual, expected, dtype)
        g = torch.randn_like(expected)
        actual.backward(g.to(dtype))
        xa = x.detach().to(expected.dtype).requires_grad_()
        tv_roi_align(xa, rois, 3, 0.5, 0, True).backward(g)
        assert_close(xt.grad, xa.grad, dtype)

    def test_gradcheck_and_opcheck(self):
        import fastops.triton.roi_align  # noqa: F401

        x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
        rois = make_rois(3, 1, 6, 5, dtype=torch.float64)
        # fast_mode (random projections): the interpreted kernel costs ~1 s per call; the full Jacobian took ~60 calls
        torch.autograd.gradcheck(lambda t: fastops.roi_align(t, rois, 2, 1.0, 2, False, impl="triton"), (x,),
                                 fast_mode=True)
        torch.library.opcheck(torch.ops.fastops.roi_align_triton.default, (x, rois, 1.0, 2, 2, 2, False))

    def test_multi_scale(self):
        feats = [torch.randn(1, 2, 16 // 2 ** i, 16 // 2 ** i) for i in range(3)]
        rois = torch.tensor([[0, 1.0, 1, 6, 7], [0, 2, 2, 60, 50], [0, 0, 0, 15, 15], [0, 3, 1, 30, 40]])
        expected = fastops.multi_scale_roi_align(feats, rois, 2, [1.0, 0.5, 0.25], 2, False, 16, 1)
        ref = fastops.multi_scale_roi_align(feats, rois, 2, [1.0, 0.5, 0.25], 2, False, 16, 1, impl="reference")
        actual = fastops.multi_scale_roi_align(feats, rois, 2, [1.0, 0.5, 0.25], 2, False, 16, 1, impl="triton")
        assert_close(actual, ref, torch.float32)
        assert_close(expected, ref, torch.float32)

    def test_compile(self):
        x = torch.randn(1, 2, 6, 5)
        rois = make_rois(3, 1, 6, 5)
        f = torch.compile(lambda x, r: fastops.roi_align(x, r, 2, 1.0, 2, False, impl="triton"), fullgraph=True,
                          backend="aot_eager")
        torch.testing.assert_close(f(x, rois), tv_roi_align(x, rois, 2, 1.0, 2, False))

    def test_compile_when_the_backend_is_not_imported_yet(self):
        # A fresh interpreter: the compiled function's first call imports fastops.triton.roi_align
        # (_library's lazy import under dynamo), with fullgraph=True.
        from isolated import expect_ok

        expect_ok("""
            import sys, torch, torchvision, fastops
            assert "fastops.triton.roi_align" not in sys.modules
            x, rois = torch.randn(1, 2, 6, 5), torch.tensor([[0, 0.5, 0.5, 4.0, 3.0]])
            f = torch.compile(lambda x, r: fastops.roi_align(x, r, 2, 1.0, 2, False, impl="triton"), fullgraph=True,
                              backend="aot_eager")
            torch.testing.assert_close(f(x, rois), torchvision.ops.roi_align(x, rois, 2, 1.0, 2, False))
        """, timeout=300)


class TestErrors:
    def test_bad_ranks_and_shapes(self):
        x = torch.randn(1, 2, 8, 8)
        with pytest.raises(ValueError, match="input must be 4-D"):
            fastops.roi_align(torch.randn(2, 8, 8), torch.zeros(1, 5), 2)
        with pytest.raises(ValueError, match=r"boxes as a Tensor must have shape \[K, 5\]"):
            fastops.roi_align(x, torch.zeros(3, 4), 2)
        with pytest.raises(ValueError, match=r"boxes\[0\] must have shape \[L, 4\]"):
            fastops.roi_align(x, [torch.zeros(3, 5)], 2)
        with pytest.raises(ValueError, match="output_size must be >= 1"):
            fastops.roi_align(x, torch.zeros(1, 5), 0)
        with pytest.raises(ValueError, match="impl must be one of"):
            fastops.roi_align(x, torch.zeros(1, 5), 2, impl="cuda")

    def test_batch_index_out_of_range(self):
        x = torch.randn(2, 2, 8, 8)
        for bad in (2.0, -1.0, 0.5):
            with pytest.raises(RuntimeError, match="batch index"):
                fastops.roi_align(x, torch.tensor([[bad, 0, 0, 4, 4]]), 2)

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_boxes(self, bad):
        x = torch.randn(1, 2, 8, 8)
        with pytest.raises(RuntimeError, match="finite"):
            fastops.roi_align(x, torch.tensor([[0, 0, bad, 4, 4]]), 2)
        with pytest.raises(RuntimeError, match="finite"):
            fastops.multi_scale_roi_align([x, x[..., ::2, ::2]], torch.tensor([[0, 0, 0, bad, 4]]), 2, [1.0, 0.5])

    def test_non_finite_boxes_triton_never_reads_out_of_bounds(self):
        x = torch.randn(1, 2, 8, 8)
        rois = torch.tensor([[0, 0, float("nan"), 4, 4], [0, -1e38, -1e38, 1e38, 1e38], [5.0, 0, 0, 4, 4]])
        out = fastops.roi_align(x, rois, 2, impl="triton")
        assert out.shape == (3, 2, 2, 2) and bool((out == 0).all())  # such RoIs pool nothing

    def test_mixed_dtypes_and_devices(self):
        x = torch.randn(1, 2, 8, 8)
        with pytest.raises(ValueError, match="same dtype"):
            fastops.roi_align(x, torch.zeros(1, 5, dtype=torch.float64), 2)
        with pytest.raises(ValueError, match="must be on"):
            fastops.roi_align(x, torch.zeros(1, 5, device="meta"), 2)
        with pytest.raises(ValueError, match="dtype in"):
            fastops.roi_align(x.long(), torch.zeros(1, 5).long(), 2)

    def test_multi_scale_mismatch(self):
        f = [torch.randn(1, 2, 8, 8), torch.randn(1, 3, 4, 4)]
        with pytest.raises(ValueError, match="share batch, channels and dtype"):
            fastops.multi_scale_roi_align(f, torch.zeros(1, 5), 2, [1.0, 0.5])
        with pytest.raises(ValueError, match="one entry per level"):
            fastops.multi_scale_roi_align(f[:1], torch.zeros(1, 5), 2, [1.0, 0.5])


def test_boxes_to_rois_roundtrip():
    boxes = [torch.rand(3, 4), torch.rand(0, 4), torch.rand(2, 4)]
    rois = boxes_to_rois(boxes, torch.float32, torch.device("cpu"))
    assert rois.shape == (5, 5) and rois[:, 0].tolist() == [0, 0, 0, 2, 2]
    assert math.isclose(float(rois[3, 1]), float(boxes[2][0, 0]))


class TestLayout:
    """The layout rule (docs/roi_align.md, CONTRIBUTING.md; the import rules are tests/test_layout.py's): what Triton
    re-derives is checked against the reference, and the constants mirrored from C++ against C++."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
    def test_triton_fpn_levels_match_the_reference(self, dtype):
        from fastops.reference.roi_align import fpn_levels as ref_levels
        from fastops.triton._common import fpn_level_range, fpn_levels

        g = torch.Generator().manual_seed(0)
        xy = torch.rand(400, 2, generator=g) * 500
        wh = torch.rand(400, 2, generator=g) ** 3 * 900
        boxes = torch.cat([xy, xy + wh], 1)
        # exact level boundaries (sqrt(area) = 224 * 2^j), zero and negative areas, a huge box
        special = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 56, 56],
                                [5, 5, 5, 9], [9, 9, 5, 5], [0, 0, -3, 4], [0, 0, 1e6, 1e6]], dtype=torch.float32)
        rois = torch.cat([torch.zeros(408, 1), torch.cat([boxes, special])], 1).to(dtype)
        for scales in ([1 / 4, 1 / 8, 1 / 16, 1 / 32], [1 / 8, 1 / 16], [1 / 4, 1 / 32]):
            k_min, k_max = fpn_level_range(scales)
            assert (k_min, k_max) == (round(-math.log2(scales[0])), round(-math.log2(scales[-1])))
            for cs, cl in ((224, 4), (16, 1)):
                got = fpn_levels(rois, k_min, k_max, cs, cl)
                assert got.dtype == torch.int32
                assert torch.equal(got.long(), ref_levels(rois, k_min, k_max, cs, cl))

    def test_max_sampling_ratio_matches_cpp(self):
        from fastops.registrations.roi_align import MAX_SAMPLING_RATIO

        x = torch.randn(1, 1, 4, 4)
        rois = torch.tensor([[0, 0.0, 0, 3, 3]])
        out = torch.ops.fastops.roi_align(x, rois, 1.0, 1, 1, MAX_SAMPLING_RATIO, True)
        torch.testing.assert_close(out, torchvision.ops.roi_align(x, rois, 1, 1.0, 64, True), atol=1e-3, rtol=1e-3)
        with pytest.raises(ValueError, match="sampling_ratio"):
            torch.ops.fastops.roi_align(x, rois, 1.0, 1, 1, MAX_SAMPLING_RATIO + 1, True)
        with pytest.raises(ValueError, match="sampling_ratio"):
            fastops.roi_align(x, rois, 1, 1.0, MAX_SAMPLING_RATIO + 1, True)


class TestPropertiesAgainstReference:
    """cpp vs impl="reference" (independent formulation: per-sample gather), forward and gradients."""

    @settings(deadline=None)
    @given(n=st.integers(1, 2), c=st.integers(1, 4), h=st.integers(0, 13), w=st.integers(0, 13),
           k=st.integers(0, 6), ph=st.integers(1, 4), pw=st.integers(1, 4), sr=st.integers(-1, 3),
           aligned=st.booleans(), scale=st.sampled_from([1.0, 0.5, 0.25]), cl=st.booleans(),
           seed=st.integers(0, 10 ** 6))
    def test_roi_align(self, n, c, h, w, k, ph, pw, sr, aligned, scale, cl, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        rois = make_rois(k, n, max(h, 1), max(w, 1), scale, lo=0.0, dtype=torch.float64, outside=True, seed=seed)
        grad = torch.randn(k, c, ph, pw, dtype=torch.float64, generator=g)
        outs = []
        for impl in ("cpp", "reference"):
            xi = x.detach().clone().requires_grad_()
            y = fastops.roi_align(xi, rois, (ph, pw), scale, sr, aligned, impl=impl)
            y.backward(grad)
            outs.append((y.detach(), xi.grad))
        assert_close(outs[0][0], outs[1][0], torch.float64)
        assert_close(outs[0][1], outs[1][1], torch.float64)

    @settings(deadline=None)
    @given(c=st.integers(1, 3), levels=st.integers(2, 4), k=st.integers(0, 8), ph=st.integers(1, 3),
           sr=st.integers(-1, 2), aligned=st.booleans(), cl=st.booleans(), gap=st.booleans(),
           seed=st.integers(0, 10 ** 6))
    def test_multi_scale(self, c, levels, k, ph, sr, aligned, cl, gap, seed):
        g = torch.Generator().manual_seed(seed)
        # level l has scale 1/2^(l + step*l): with gap, levels are not consecutive (unmatched RoIs give 0)
        step = 2 if gap else 1
        scales = [0.5 ** (1 + step * lvl) for lvl in range(levels)]
        feats = [torch.randn(2, c, max(1, int(48 * s)), max(1, int(40 * s)), dtype=torch.float64, generator=g)
                 for s in scales]
        if cl:
            feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * 90 - 5
        wh = torch.rand(k, 2, generator=g, dtype=torch.float64) ** 2 * 120 - 2
        rois = torch.cat([torch.randint(0, 2, (k, 1), generator=g).double(), xy, xy + wh], 1)
        grad = torch.randn(k, c, ph, ph + 1, dtype=torch.float64, generator=g)
        outs = []
        for impl in ("cpp", "reference"):
            fs = [f.detach().clone().requires_grad_() for f in feats]
            y = fastops.multi_scale_roi_align(fs, rois, (ph, ph + 1), scales, sr, aligned, 16, 2, impl=impl)
            y.backward(grad)
            outs.append((y.detach(), [f.grad if f.grad is not None else torch.zeros_like(f) for f in fs]))
        assert_close(outs[0][0], outs[1][0], torch.float64)
        for a, b in zip(outs[0][1], outs[1][1]):
            assert_close(a, b, torch.float64)
