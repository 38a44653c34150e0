"""RoIAlign to ONNX (issue 13): both exporters, standard ops only, run in onnxruntime (CPU) against eager fastops."""
import warnings

import numpy as np
import pytest
import torch

import fastops
import fastops.onnx
from fastops.reference.roi_align import fpn_levels

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class SingleLevel(torch.nn.Module):
    def __init__(self, aligned, sampling_ratio):
        super().__init__()
        self.aligned, self.sampling_ratio = aligned, sampling_ratio

    def forward(self, x, rois):
        return fastops.roi_align(x, rois, (3, 4), 0.5, self.sampling_ratio, self.aligned)


class MultiLevel(torch.nn.Module):
    def __init__(self, aligned):
        super().__init__()
        self.aligned = aligned

    def forward(self, f0, f1, f2, rois):
        return fastops.multi_scale_roi_align([f0, f1, f2], rois, 3, [0.25, 0.125, 0.0625], 2, self.aligned, 32, 3)


def _rois(k, seed, hi):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g) * hi * 0.8
    wh = torch.rand(k, 2, generator=g) ** 2 * hi + 1
    idx = torch.randint(0, 2, (k, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], 1)


def _export(model, args, names, dynamo, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            k = torch.export.Dim("k", min=1)
            shapes = {n: ({0: k} if n == "rois" else None) for n in names}
            torch.onnx.export(model, args, path, dynamo=True, dynamic_shapes=shapes,
                              custom_translation_table=fastops.onnx.translations())
        else:
            torch.onnx.export(model, args, path, dynamo=False, opset_version=16, input_names=names,
                              output_names=["out"], dynamic_axes={"rois": {0: "k"}})
    m = onnx.load(path)
    onnx.checker.check_model(m)
    domains = {n.domain for n in m.graph.node}
    assert domains <= {"", "ai.onnx"}, f"non-standard domains {domains}"
    assert any(n.op_type == "RoiAlign" for n in m.graph.node)
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _run(sess, args):
    return sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})[0]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 0), (False, 2), (False, -1)])
def test_roi_align(tmp_path, dynamo, aligned, sampling_ratio):
    x = torch.randn(2, 3, 12, 16)
    model = SingleLevel(aligned, sampling_ratio)
    sess = _export(model, (x, _rois(5, 0, 32)), ["x", "rois"], dynamo, str(tmp_path / "m.onnx"))
    for k, seed in ((5, 1), (9, 2)):  # another box count than exported: dynamic K
        rois = _rois(k, seed, 32)
        rois[0, 1:] = torch.tensor([30.0, 20, 2, 3])  # inverted (aligned: empty; legacy: forced to 1 px)
        want = model(x, rois)
        assert want.abs().sum() > 0
        np.testing.assert_allclose(_run(sess, (x, rois)), want.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("aligned", [False, True])
def test_multi_scale_roi_align(tmp_path, dynamo, aligned):
    feats = [torch.randn(2, 3, 32 // 2 ** i, 40 // 2 ** i) for i in range(3)]
    model = MultiLevel(aligned)
    sess = _export(model, (*feats, _rois(6, 0, 128)), ["f0", "f1", "f2", "rois"], dynamo,
                   str(tmp_path / "m.onnx"))
    for k, seed in ((6, 3), (11, 4)):
        rois = _rois(k, seed, 128)
        rois[0, 1:] = torch.tensor([10.0, 10, 4, 30])  # negative area: no level, zeros
        levels = fpn_levels(rois, 2, 4, 32, 3)
        assert len(set(levels[1:].tolist())) >= 2 and levels[0] == -1
        want = model(*feats, rois)
        assert want[0].abs().sum() == 0 and want[1:].abs().sum(dim=(1, 2, 3)).gt(0).all()
        np.testing.assert_allclose(_run(sess, (*feats, rois)), want.numpy(), atol=1e-5, rtol=1e-5)
