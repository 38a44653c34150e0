"""DensePose ops: drop-in checks (threads, deterministic mode, opcheck, torch.compile fullgraph, TorchScript,
autocast, dispatch) and the Triton kernels under TRITON_INTERPRET=1, against the detectron2 transcription."""
import io

import pytest
import torch

import fastops
from densepose_helpers import _assert_packed_equal, _boxes, _maps, _points
from fastops.reference import densepose as ref


def test_threads_do_not_change_results():
    coarse, fine, u, v = _maps(9, 28, seed=5)
    boxes = _boxes(9, hi=150.0)
    scores = torch.rand(9)
    maps = torch.randn(6, 5, 7, 7)
    ri = torch.randint(0, 6, (300,))
    pts = torch.rand(300, 2) * 7
    g = torch.randn(300, 5)
    outs = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            gm = torch.ops.fastops._roi_point_sample_backward(g, maps, ri, pts)
            outs.append((*fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes),
                         fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 90, 90), gm))
    finally:
        torch.set_num_threads(old)
    for x, y in zip(*outs):
        assert torch.equal(x, y)


def test_deterministic_mode():
    maps, ri, pts = _points(P=500)
    maps.requires_grad_(True)
    g = torch.randn(500, maps.size(1), dtype=maps.dtype)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a, = torch.autograd.grad(fastops.roi_point_sample(maps, ri, pts), maps, g)
        b, = torch.autograd.grad(fastops.roi_point_sample(maps, ri, pts), maps, g)
    finally:
        torch.use_deterministic_algorithms(old)
    assert torch.equal(a, b)


def test_opcheck():
    maps, ri, pts = _points(R=3, C=4, S=6, P=40, dtype=torch.float32)
    torch.library.opcheck(torch.ops.fastops.roi_point_sample.default, (maps.requires_grad_(True), ri, pts))
    coarse, fine, u, v = _maps(2, 6)
    boxes = _boxes(2, hi=12.0)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.fastops.densepose_paste_iuv.default,
                          (coarse, fine, u, v, boxes, torch.rand(2), 10, 12), test_utils=utils)
    torch.library.opcheck(torch.ops.fastops.densepose_chart_to_iuv.default, (coarse, fine, u, v, boxes),
                          test_utils=("test_schema", "test_autograd_registration"))


def test_compile_fullgraph():
    maps, ri, pts = _points(R=3, C=4, S=6, P=40, dtype=torch.float32)
    maps.requires_grad_(True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(m, r, p):
        return fastops.roi_point_sample(m, r, p).square().sum()

    a, = torch.autograd.grad(loss(maps, ri, pts), maps)
    b, = torch.autograd.grad(ref.roi_point_sample(maps, ri, pts).square().sum(), maps)
    torch.testing.assert_close(a, b)

    coarse, fine, u, v = _maps(4, 14)
    boxes = _boxes(4, hi=40.0)
    scores = torch.rand(4)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def post(c, f, uu, vv, b, s):
        lab, uv, off, ib = fastops.densepose_chart_to_iuv(c, f, uu, vv, b)
        return lab, uv, off, ib, fastops.densepose_paste_iuv(c, f, uu, vv, b, s, 50, 60)

    got = post(coarse, fine, u, v, boxes, scores)
    _assert_packed_equal(got[:4], ref.chart_to_iuv(coarse, fine, u, v, boxes))
    want = ref.paste_iuv(coarse, fine, u, v, boxes, scores, 50, 60)
    assert torch.equal(got[4][0], want[0]) and (got[4].int() - want.int()).abs().max() <= 1


def test_torchscript_roundtrip():
    class Post(torch.nn.Module):
        def forward(self, coarse, fine, u, v, boxes, scores, maps, ri, pts):
            lab, uv, off, ib = fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes)
            iuv = fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 40, 40)
            return lab, uv, off, ib, iuv, fastops.roi_point_sample(maps, ri, pts)

    coarse, fine, u, v = _maps(3, 10)
    boxes = _boxes(3, hi=30.0)
    maps, ri, pts = _points(dtype=torch.float32)
    args = (coarse, fine, u, v, boxes, torch.rand(3), maps, ri, pts)
    eager = Post()(*args)
    scripted = torch.jit.script(Post())
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    for a, b in zip(eager, loaded(*args)):
        assert torch.equal(a, b)


def test_autocast_float32():
    maps, ri, pts = _points(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fastops.roi_point_sample(maps.bfloat16(), ri, pts)
        direct = torch.ops.fastops.roi_point_sample(maps.bfloat16(), ri, pts)
    assert out.dtype == torch.float32 and direct.dtype == torch.float32
    torch.testing.assert_close(out, ref.roi_point_sample(maps.bfloat16().float(), ri, pts.float()))
    coarse, fine, u, v = _maps(2, 10)
    boxes = _boxes(2, hi=30.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fastops.densepose_chart_to_iuv(coarse.bfloat16(), fine.bfloat16(), u.bfloat16(), v.bfloat16(), boxes)
    want = ref.chart_to_iuv(coarse.bfloat16().float(), fine.bfloat16().float(), u.bfloat16().float(),
                            v.bfloat16().float(), boxes)
    _assert_packed_equal(got, want)


def test_reference_impl_dispatch():
    maps, ri, pts = _points()
    assert torch.equal(fastops.roi_point_sample(maps, ri, pts, impl="reference"), ref.roi_point_sample(maps, ri, pts))


def test_triton_int_boxes_match_reference():
    from fastops.triton._registry import INTERPRET
    if not INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")
    from fastops.triton import densepose as T
    boxes = torch.cat([_boxes(50, hi=200.0), torch.tensor([[3.0, 4.0, 2.0, 3.5], [-7.9, -3.2, -7.1, 9.9]])])
    assert torch.equal(T.int_boxes_xywh(boxes), ref.int_boxes_xywh(boxes))


def test_triton_matches_transcription():
    from fastops.triton._registry import INTERPRET
    if not INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")
    coarse, fine, u, v = _maps(4, 10, K=6)
    boxes = _boxes(4, hi=30.0, img=30.0)
    boxes[0] = torch.tensor([2.2, 3.7, 2.9, 4.1])
    _assert_packed_equal(fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes, impl="triton"),
                         ref.chart_to_iuv(coarse, fine, u, v, boxes))
    scores = torch.tensor([0.5, 0.5, 0.9, 0.1])
    got = fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, 30, 33, impl="triton")
    want = ref.paste_iuv(coarse, fine, u, v, boxes, scores, 30, 33)
    assert torch.equal(got[0], want[0]) and (got.int() - want.int()).abs().max() <= 1
    maps, ri, pts = _points(P=60)
    maps.requires_grad_(True)
    out = fastops.roi_point_sample(maps, ri, pts, impl="triton")
    want = ref.roi_point_sample(maps, ri, pts)
    assert torch.equal(out, want)
    g = torch.randn_like(out)
    a, = torch.autograd.grad(out, maps, g)
    b, = torch.autograd.grad(want, maps, g)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    m2 = maps.detach()[:2, :2, :5, :5].clone().requires_grad_(True)
    ri2 = ri[:20] % 2
    p2 = pts[:20] * 5 / 9
    assert torch.autograd.gradcheck(lambda m: fastops.roi_point_sample(m, ri2, p2, impl="triton"), (m2,))
    with pytest.raises(ValueError, match="roi_index"):
        fastops.roi_point_sample(maps, ri + 100, pts, impl="triton")
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.fastops.roi_point_sample_triton(maps.detach(), ri + 100, pts)
    with pytest.raises(RuntimeError, match="finite"):
        torch.ops.fastops.densepose_chart_to_iuv_triton(coarse, fine, u, v, boxes * float("nan"))


def test_triton_opcheck_and_compile():
    from fastops.triton._registry import INTERPRET
    if not INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")
    import fastops.triton.densepose  # noqa: F401  (registers the _triton ops)
    maps, ri, pts = _points(R=2, C=3, S=4, P=10, dtype=torch.float32)
    torch.library.opcheck(torch.ops.fastops.roi_point_sample_triton.default, (maps.requires_grad_(True), ri, pts))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(m):
        return fastops.roi_point_sample(m, ri, pts, impl="triton").sum()

    a, = torch.autograd.grad(f(maps), maps)
    b, = torch.autograd.grad(ref.roi_point_sample(maps, ri, pts).sum(), maps)
    torch.testing.assert_close(a, b)
