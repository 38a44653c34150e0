"""RoIAlign as a drop-in for torchvision (issue 12): TorchScript, torch.fx, autocast, quantized input, exception
types, torch.compile(dynamic=True), deterministic mode. Written from torchvision's own test conventions."""
import io

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import get_graph_node_names

import fastops

X = torch.rand(2, 4, 10, 10)
ROIS = torch.tensor([[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]], dtype=torch.float)


def _fpn():
    g = torch.Generator().manual_seed(0)
    feats = {"0": torch.randn(2, 3, 32, 32, generator=g), "1": torch.randn(2, 3, 16, 16, generator=g),
             "2": torch.randn(2, 3, 8, 8, generator=g)}
    boxes = [torch.tensor([[0.0, 0, 10, 10], [4, 4, 100, 90], [1, 2, 50, 40]]), torch.tensor([[5.0, 5, 120, 126]])]
    return feats, boxes, [(128, 128), (120, 128)]


def _roundtrip(scripted):
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    return torch.jit.load(buf)


class TestTorchScript:
    def test_function(self):
        f = torch.jit.script(fastops.roi_align)
        want = torchvision.ops.roi_align(X, ROIS, 3, 0.5, 2, True)
        torch.testing.assert_close(f(X, ROIS, 3, 0.5, 2, True), want)
        torch.testing.assert_close(f(X, ROIS, [3, 3], 0.5, 2, True), want)
        boxes = [ROIS[:3, 1:], ROIS[3:, 1:]]
        torch.testing.assert_close(f(X, boxes, 3, 0.5, 2, True), want)
        x = X.double().requires_grad_()
        torch.autograd.gradcheck(lambda t: f(t, ROIS.double(), 2, 1.0, 1), (x,))
        msra = torch.jit.script(fastops.multi_scale_roi_align)
        feats = [X, X[..., ::2, ::2]]
        torch.testing.assert_close(msra(feats, ROIS, 3, [1.0, 0.5], 2, False, 4, 2),
                                   fastops.multi_scale_roi_align(feats, ROIS, 3, [1.0, 0.5], 2, False, 4, 2))

    @pytest.mark.parametrize("output_size", [3, (3, 3), [3, 3]])
    def test_module_save_load(self, output_size):
        m = _roundtrip(torch.jit.script(fastops.RoIAlign(output_size, 1.0, -1)))
        torch.testing.assert_close(m(X, ROIS), torchvision.ops.roi_align(X, ROIS, 3, 1.0, -1))
        # torchvision's test_jit_boxes_list: a list of [L, 4] boxes
        roi = ROIS.t()
        assert m(torch.rand(2, 1, 10, 10), [roi, roi]).shape == (10, 1, 3, 3)

    def test_multi_scale_module_save_load(self):
        feats, boxes, shapes = _fpn()
        names = ["0", "1", "2"]
        m = _roundtrip(torch.jit.script(fastops.MultiScaleRoIAlign(names, 5, 2)))
        want = torchvision.ops.MultiScaleRoIAlign(names, 5, 2)(feats, boxes, shapes)
        torch.testing.assert_close(m(feats, boxes, shapes), want)
        single = _roundtrip(torch.jit.script(fastops.MultiScaleRoIAlign(["1"], 5, 2)))
        torch.testing.assert_close(single(feats, boxes, shapes),
                                   torchvision.ops.MultiScaleRoIAlign(["1"], 5, 2)(feats, boxes, shapes))


class _Wrap2(torch.nn.Module):  # torchvision's RoIOpTesterModuleWrapper
    def __init__(self, obj):
        super().__init__()
        self.layer = obj

    def forward(self, a, b):
        return self.layer(a, b)


class _Wrap3(_Wrap2):  # torchvision's MultiScaleRoIAlignModuleWrapper
    def forward(self, a, b, c):
        return self.layer(a, b, c)


class TestFx:
    def test_roi_align_is_a_leaf(self):
        gm = torch.fx.symbolic_trace(fastops.RoIAlign((5, 5), 1.0, -1))
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        assert len(calls) == 1 and "roi_align" in str(calls[0].target)
        torch.testing.assert_close(gm(X, ROIS), torchvision.ops.roi_align(X, ROIS, 5, 1.0, -1))
        names = get_graph_node_names(_Wrap2(fastops.RoIAlign(5, 1.0, -1)))
        assert len(names[0]) == 3 and len(names[1]) == 3  # the two inputs and one roi_align call

    def test_multi_scale_is_a_leaf(self):
        names = get_graph_node_names(_Wrap3(fastops.MultiScaleRoIAlign(["0"], 7, 2)))
        assert len(names[0]) == 4 and len(names[1]) == 4  # the three inputs and one pooling call

    def test_multi_scale_trace_runs(self):
        feats, boxes, shapes = _fpn()
        m = fastops.MultiScaleRoIAlign(["0", "1"], 3, 2)
        gm = torch.fx.symbolic_trace(m)
        torch.testing.assert_close(gm(feats, boxes, shapes), m(feats, boxes, shapes))


class TestAutocast:
    @pytest.mark.parametrize("x_dtype,rois_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                                    (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
    @pytest.mark.parametrize("impl", ["auto", "reference"])
    def test_roi_align_cpu(self, x_dtype, rois_dtype, impl):
        x, rois = X.to(x_dtype), ROIS.to(rois_dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fastops.roi_align(x, rois, 5, 1.0, 2, True, impl=impl)
            want = torchvision.ops.roi_align(x, rois, 5, 1.0, 2, True)
        assert got.dtype == want.dtype == x_dtype
        exact = fastops.roi_align(x.float(), rois.float(), 5, 1.0, 2, True, impl=impl)
        torch.testing.assert_close(got.float(), exact.to(x_dtype).float(), atol=0, rtol=0)
        torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)

    def test_compiled_op_and_module_and_backward(self):
        x = X.bfloat16().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.ops.fastops.roi_align(x, ROIS, 1.0, 3, 3, 2, False)  # mixed dtypes reach the op
            assert out.dtype == torch.bfloat16
            out2 = fastops.RoIAlign(3, 1.0, 2)(x, ROIS)
        torch.testing.assert_close(out, out2)
        out.float().sum().backward()
        assert x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0

    def test_multi_scale_cpu(self):
        feats, boxes, shapes = _fpn()
        feats = {k: v.bfloat16() for k, v in feats.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fastops.MultiScaleRoIAlign(["0", "1", "2"], 3, 2)(feats, boxes, shapes)
            want = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2"], 3, 2)(feats, boxes, shapes)
        assert got.dtype == want.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


class TestQuantized:
    """torchvision's test_qroialign / test_qroi_align_multiple_images, with fastops."""

    @pytest.mark.parametrize("aligned", [True, False])
    @pytest.mark.parametrize("scale,zero_point", [(1, 0), (2, 10), (0.1, 50)])
    @pytest.mark.parametrize("qdtype", [torch.qint8, torch.quint8, torch.qint32])
    def test_qroialign(self, aligned, scale, zero_point, qdtype):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(50, 100, size=(1, 2, 10, 10), generator=g).float()
        qx = torch.quantize_per_tensor(x, scale=scale, zero_point=zero_point, dtype=qdtype)
        rois = torch.randint(0, 5, size=(1000, 5), generator=g).float()
        rois[:, 0] = 0
        rois[:, 3:] += rois[:, 1:3]
        qrois = torch.quantize_per_tensor(rois, scale=scale, zero_point=zero_point, dtype=qdtype)
        y = fastops.roi_align(qx.dequantize(), qrois.dequantize(), 5, 1, -1, aligned)
        qy = fastops.roi_align(qx, qrois, 5, 1, -1, aligned)
        assert qy.dtype == qdtype and qy.q_scale() == scale and qy.q_zero_point() == zero_point
        want = torch.quantize_per_tensor(y, scale=scale, zero_point=zero_point, dtype=qdtype)
        diff = qy.int_repr().long() != want.int_repr().long()
        assert diff.float().mean() < 0.05
        torch.testing.assert_close((qy.dequantize() - want.dequantize()).abs()[diff],
                                   torch.full((int(diff.sum()),), float(scale)))
        tv = torchvision.ops.roi_align(qx, qrois, 5, 1, -1, aligned)
        assert (tv.int_repr().long() - qy.int_repr().long()).abs().max() <= 1

    def test_multiple_images(self):
        qx = torch.quantize_per_tensor(torch.rand(2, 3, 10, 10) * 50, scale=1, zero_point=0, dtype=torch.qint8)
        qrois = torch.quantize_per_tensor(torch.tensor([[0, 1, 1, 5, 5.]]), scale=1, zero_point=0, dtype=torch.qint8)
        with pytest.raises(RuntimeError, match="Only one image per batch is allowed"):
            fastops.roi_align(qx, qrois, output_size=5)


class TestExceptionTypes:
    """Where torchvision raises AssertionError (check_roi_boxes_shape), fastops' ValueError is one too."""

    @pytest.mark.parametrize("boxes", [torch.tensor([[0, 0, 3, 3.]]), [torch.tensor([[0, 0, 3.]])], "boxes"])
    def test_malformed_boxes(self, boxes):
        a = torch.linspace(1, 64, 64).reshape(1, 1, 8, 8)
        with pytest.raises(AssertionError):
            torchvision.ops.roi_align(a, boxes, output_size=(2, 2))
        with pytest.raises(AssertionError, match="boxes"):
            fastops.roi_align(a, boxes, output_size=(2, 2))
        with pytest.raises(ValueError, match="boxes"):
            fastops.roi_align(a, boxes, output_size=(2, 2))


def test_multi_scale_module_compiles_dynamic_fullgraph():
    feats, boxes, shapes = _fpn()
    names = ["0", "1", "2"]
    compiled = torch.compile(fastops.MultiScaleRoIAlign(names, 3, 2), dynamic=True, fullgraph=True,
                             backend="aot_eager")
    for k in (2, 5):
        bx = [torch.cat([boxes[0]] * k), boxes[1]]
        want = torchvision.ops.MultiScaleRoIAlign(names, 3, 2)(feats, bx, shapes)
        torch.testing.assert_close(compiled(feats, bx, shapes), want)


def test_triton_backward_honours_deterministic_mode():
    import fastops.triton.roi_align as troi

    old, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        # a GPU tensor (meta stands in for it here): atomics make the order vary, so the op refuses
        with pytest.raises(RuntimeError, match="_roi_align_backward_triton.*deterministic"):
            troi.check_deterministic(torch.empty(0, device="meta"), "fastops::_roi_align_backward_triton")
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="deterministic"):
            troi.check_deterministic(torch.empty(0, device="meta"), "fastops::_roi_align_backward_triton")
        # interpreted on CPU tensors the atomics run in program order: allowed, and the result is bitwise stable
        torch.use_deterministic_algorithms(True)
        grads = []
        for _ in range(2):
            x = X[:1, :2].clone().requires_grad_()
            fastops.roi_align(x, ROIS[:2], 2, 1.0, 2, True, impl="triton").sum().backward()
            grads.append(x.grad)
        assert torch.equal(grads[0], grads[1])
    finally:
        torch.use_deterministic_algorithms(old, warn_only=warn)
