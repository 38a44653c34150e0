"""NMS family ONNX export (both exporters) run in onnxruntime and compared with eager fastops."""
import io

import onnx
import onnxruntime as ort
import pytest
import torch

import fastops
import fastops.onnx


def _boxes(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(8, 2, generator=g) * 100
    o = torch.randint(0, 8, (n,), generator=g)
    c = ctr[o] + torch.randn(n, 2, generator=g) * 3
    wh = torch.rand(n, 2, generator=g) * 20 + 10
    return torch.cat([c - wh / 2, c + wh / 2], 1).to(dtype)


class NMS(torch.nn.Module):
    def __init__(self, thr=0.5):
        super().__init__()
        self.thr = thr

    def forward(self, boxes, scores):
        return fastops.nms(boxes, scores, self.thr)


class Batched(torch.nn.Module):
    def forward(self, boxes, scores, idxs):
        return fastops.batched_nms(boxes, scores, idxs, 0.5)


class Multi(torch.nn.Module):
    def __init__(self, top_k=-1, max_det=30, pad=False):
        super().__init__()
        self.top_k, self.max_det, self.pad = top_k, max_det, pad

    def forward(self, boxes, scores):
        return fastops.multiclass_nms(boxes, scores, 0.2, 0.5, self.top_k, self.max_det, self.pad)


class Fast(torch.nn.Module):
    def __init__(self, cross_class=False, top_k=20, max_det=25):
        super().__init__()
        self.cc, self.top_k, self.max_det = cross_class, top_k, max_det

    def forward(self, boxes, scores):
        return fastops.fast_nms(boxes, scores, 0.5, self.top_k, self.max_det, 0.05, self.cc)


def _export(model, args, dynamo, dynamic_axes):
    buf = io.BytesIO()
    if dynamo:
        shapes = tuple({ax: torch.export.Dim.AUTO for ax in axes} for axes in dynamic_axes)
        prog = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=shapes,
                                 custom_translation_table=fastops.onnx.translations())
        prog.save(buf) if hasattr(prog, "save") else None
        proto = prog.model_proto
    else:
        names = [f"in{i}" for i in range(len(args))]
        dyn = {n: {ax: f"{n}_{ax}" for ax in axes} for n, axes in zip(names, dynamic_axes)}
        torch.onnx.export(model, args, buf, dynamo=False, opset_version=18, input_names=names, dynamic_axes=dyn)
        proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    domains = {n.domain for n in proto.graph.node}
    assert all("fastops" not in d for d in domains), domains
    assert not proto.functions or all("fastops" not in f.domain for f in proto.functions)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, args):
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
    return [torch.from_numpy(o) for o in sess.run(None, feeds)]


def _same(got, want):
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    assert len(got) >= len(want)
    for g, w in zip(got, want):
        if w.is_floating_point():
            torch.testing.assert_close(g.to(w.dtype), w, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(g.to(w.dtype), w), (g, w)


EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_nms_onnx(dynamo):
    b, s = _boxes(60), torch.rand(60)
    for thr in (0.5, 0.7):
        sess = _export(NMS(thr), (b, s), dynamo, [(0,), (0,)])
        for n, seed in ((60, 0), (150, 1), (1, 2)):  # other box counts through the same file
            bb, ss = _boxes(n, seed), torch.rand(n, generator=torch.Generator().manual_seed(seed))
            _same(_run(sess, (bb, ss)), NMS(thr)(bb, ss))
    # IoU exactly at the threshold: kept, as in torchvision
    at = torch.tensor([[0.0, 0, 3, 1], [1.0, 0, 4, 1]])
    sess = _export(NMS(0.5), (b, s), dynamo, [(0,), (0,)])
    _same(_run(sess, (at, torch.tensor([0.9, 0.8]))), torch.tensor([0, 1]))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_batched_nms_onnx(dynamo):
    b, s = _boxes(80), torch.rand(80)
    i = torch.randint(0, 4, (80,))
    sess = _export(Batched(), (b, s, i), dynamo, [(0,), (0,), (0,)])
    for n, seed in ((80, 0), (200, 3)):
        g = torch.Generator().manual_seed(seed)
        bb, ss, ii = _boxes(n, seed), torch.rand(n, generator=g), torch.randint(-3, 40, (n,), generator=g)
        _same(_run(sess, (bb, ss, ii)), Batched()(bb, ss, ii))


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("top_k,max_det,pad", [(-1, 30, False), (5, 1000, False), (7, 40, True)])
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_multiclass_nms_onnx(dynamo, top_k, max_det, pad, per_class):
    def inputs(n, c, seed):
        g = torch.Generator().manual_seed(seed)
        b = torch.stack([_boxes(n, seed + k) for k in range(c)], 1) if per_class else _boxes(n, seed)
        return b, torch.rand(n, c, generator=g)
    m = Multi(top_k, max_det, pad)
    sess = _export(m, inputs(50, 3, 0), dynamo, [(0,), (0,)])
    for n, seed in ((50, 0), (120, 5)):
        args = inputs(n, 3, seed)
        _same(_run(sess, args), m(*args))


@pytest.mark.parametrize("cross_class", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_fast_nms_onnx(dynamo, dtype, cross_class):
    def inputs(n, seed):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(5, n, generator=g) * 2
        logits[0] += 2
        return _boxes(n, seed, dtype), torch.softmax(logits, 0)[1:].contiguous().to(dtype)
    m = Fast(cross_class)
    sess = _export(m, inputs(60, 0), dynamo, [(0,), (1,)])
    for n, seed in ((60, 0), (300, 7), (10, 8)):
        args = inputs(n, seed)
        _same(_run(sess, args), m(*args))


class Soft(torch.nn.Module):
    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, boxes, scores):
        return fastops.soft_nms(boxes, scores, 0.3, 0.5, 1e-2, self.method)


@pytest.mark.parametrize("method", ["linear", "gaussian", "naive"])
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_soft_nms_onnx(dynamo, method):
    m = Soft(method)
    b, s = _boxes(40), torch.rand(40)
    sess = _export(m, (b, s), dynamo, [(0,), (0,)])
    for n, seed in ((40, 0), (90, 4), (1, 5)):
        bb, ss = _boxes(n, seed), torch.rand(n, generator=torch.Generator().manual_seed(seed))
        got = _run(sess, (bb, ss))
        want = m(bb, ss)
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
