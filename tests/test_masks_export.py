"""Deployment paths of the masks family: ONNX (both exporters, run in onnxruntime), TorchScript, torch.fx and
autocast. Results are compared with eager fastops (and, for autocast, with the float32 reference)."""
import io

import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision.models.detection.roi_heads as tv_roi_heads

import fastops
import fastops.onnx
from fastops.reference import masks as ref

HP, WP, P = 12, 15, 6


def _yolact(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(HP, WP, P, generator=g)
    coeffs = torch.randn(n, P, generator=g)
    xy = torch.rand(n, 2, generator=g) * 0.8
    boxes = torch.cat([xy - 0.1, xy + torch.rand(n, 2, generator=g) * 0.5], 1)
    boxes[0] = torch.tensor([0.7, 0.1, 0.2, 0.6])  # inverted
    gt = (torch.rand(n, HP, WP, generator=g) > 0.5).float()
    return protos, coeffs, boxes, gt


def _paste(n, seed=1, H=37, W=53):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, 1, 7, 7, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W * 0.9, H * 0.9]) - 4
    wh = torch.rand(n, 2, generator=g) * torch.tensor([W * 0.6, H * 0.6]) + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([30.0, 10.0, 12.0, 25.0])  # inverted: pastes nothing
    return masks, boxes, (H, W)


class YolactMasks(torch.nn.Module):
    def __init__(self, size, threshold):
        super().__init__()
        self.size, self.threshold = size, threshold

    def forward(self, protos, coeffs, boxes):
        return fastops.yolact_masks(protos, coeffs, boxes, self.size, threshold=self.threshold)


class MaskLoss(torch.nn.Module):
    def forward(self, protos, coeffs, boxes, gt):
        return fastops.yolact_mask_loss(protos, coeffs, boxes, gt)


class PasteMasks(torch.nn.Module):
    def __init__(self, shape, threshold, padding=1):
        super().__init__()
        self.shape, self.threshold, self.padding = shape, threshold, padding

    def forward(self, masks, boxes):
        return fastops.paste_masks(masks, boxes, self.shape, self.padding, self.threshold)


def _export(model, args, names, dynamo, dynamic_axis0):
    f = io.BytesIO()
    if dynamo:
        dims = {k: {0: torch.export.Dim("n", min=2)} for k in dynamic_axis0}
        prog = torch.onnx.export(model, args, dynamo=True, input_names=names, dynamic_shapes=(
            tuple(dims.get(k) for k in names)), custom_translation_table=fastops.onnx.translations())
        proto = prog.model_proto
    else:
        torch.onnx.export(model, args, f, dynamo=False, opset_version=17, input_names=names,
                          dynamic_axes={k: {0: "n"} for k in dynamic_axis0})
        proto = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(proto)
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert not any("fastops" in node.op_type for node in proto.graph.node)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, names, args):
    return sess.run(None, {k: v.numpy() for k, v in zip(names, args)})


def _check_bool(got, prob, thr, tol=1e-5):
    got = torch.from_numpy(got)
    assert got.dtype == torch.bool and got.shape == prob.shape
    bad = (got != (prob > thr)) & ((prob - thr).abs() > tol)
    assert not bad.any(), int(bad.sum())


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("size", [(29, 41), None])
def test_onnx_yolact_masks(dynamo, size):
    protos, coeffs, boxes, _ = _yolact(5)
    names = ["protos", "coeffs", "boxes"]
    sess = _export(YolactMasks(size, None), (protos, coeffs, boxes), names, dynamo, ["coeffs", "boxes"])
    sess_t = _export(YolactMasks(size, 0.5), (protos, coeffs, boxes), names, dynamo, ["coeffs", "boxes"])
    for n in (5, 9):  # dynamic detection count
        p, c, b, _ = _yolact(n, seed=n)
        want = fastops.yolact_masks(p, c, b, size, threshold=None)
        (got,) = _run(sess, names, (p, c, b))
        torch.testing.assert_close(torch.from_numpy(got), want, atol=2e-6, rtol=0)
        (got,) = _run(sess_t, names, (p, c, b))
        _check_bool(got, want, 0.5)
        assert torch.equal(torch.from_numpy(got), fastops.yolact_masks(p, c, b, size))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_yolact_mask_loss(dynamo):
    protos, coeffs, boxes, gt = _yolact(5)
    names = ["protos", "coeffs", "boxes", "gt"]
    sess = _export(MaskLoss(), (protos, coeffs, boxes, gt), names, dynamo, ["coeffs", "boxes", "gt"])
    for n in (5, 8):
        p, c, b, t = _yolact(n, seed=n)
        (got,) = _run(sess, names, (p, c, b, t))
        torch.testing.assert_close(torch.from_numpy(got), fastops.yolact_mask_loss(p, c, b, t), rtol=1e-5,
                                   atol=1e-4)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("padding", [1, 2])
def test_onnx_paste_masks(dynamo, padding):
    masks, boxes, shape = _paste(6)
    names = ["masks", "boxes"]
    sess = _export(PasteMasks(shape, None, padding), (masks, boxes), names, dynamo, names)
    sess_t = _export(PasteMasks(shape, 0.5, padding), (masks, boxes), names, dynamo, names)
    for n in (6, 11):
        m, b, _ = _paste(n, seed=n)
        want = tv_roi_heads.paste_masks_in_image(m, b, shape, padding)
        (got,) = _run(sess, names, (m, b))
        torch.testing.assert_close(torch.from_numpy(got), want, atol=2e-6, rtol=0)
        torch.testing.assert_close(torch.from_numpy(got), fastops.paste_masks(m, b, shape, padding), atol=2e-6,
                                   rtol=0)
        (got,) = _run(sess_t, names, (m, b))
        _check_bool(got, want, 0.5)


# ---- TorchScript, fx, autocast -------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_functions_save_load(tmp_path):
    protos, coeffs, boxes, gt = _yolact(4)
    masks, pboxes, shape = _paste(4)
    cases = [
        (fastops.yolact_masks, (protos, coeffs, boxes, (20, 30), True, None, "auto")),
        (fastops.yolact_masks, (protos, coeffs, boxes, None, False, 0.5, "auto")),
        (fastops.yolact_mask_loss, (protos, coeffs, boxes, gt, "auto")),
        (fastops.paste_masks, (masks, pboxes, shape, 1, None, "auto")),
        (fastops.paste_masks, (masks[:, 0], pboxes, shape, 2, 0.5, "auto")),
    ]
    # defaults survive scripting (a saved and loaded function takes every argument, a TorchScript limitation)
    assert torch.equal(torch.jit.script(fastops.yolact_masks)(protos, coeffs, boxes),
                       fastops.yolact_masks(protos, coeffs, boxes))
    for k, (fn, args) in enumerate(cases):
        scripted = torch.jit.script(fn)
        path = tmp_path / f"f{k}.pt"
        scripted.save(str(path))
        loaded = torch.jit.load(str(path))
        want = fn(*args)
        for got in (scripted(*args), loaded(*args)):
            assert torch.equal(got, want), fn.__name__


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_module_calling_masks_ops(tmp_path):
    m = torch.jit.script(YolactMasks((20, 30), 0.5))
    protos, coeffs, boxes, _ = _yolact(4)
    assert torch.equal(m(protos, coeffs, boxes), fastops.yolact_masks(protos, coeffs, boxes, (20, 30)))
    graph = str(m.graph) + str(m.code)
    assert "fastops" in graph


def test_fx_keeps_ops_as_leaves():
    protos, coeffs, boxes, gt = _yolact(4)
    masks, pboxes, shape = _paste(4)
    for mod, args in ((YolactMasks((20, 30), 0.5), (protos, coeffs, boxes)), (MaskLoss(), (protos, coeffs, boxes, gt)),
                      (PasteMasks(shape, None), (masks, pboxes))):
        gm = torch.fx.symbolic_trace(mod)
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert len(targets) == 1, targets
        assert targets[0].__name__ in ("yolact_masks", "yolact_mask_loss", "paste_masks")
        torch.testing.assert_close(gm(*args), mod(*args))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(dtype):
    protos, coeffs, boxes, gt = _yolact(5)
    masks, pboxes, shape = _paste(5)
    with torch.autocast("cpu", dtype=dtype):
        # mixed dtypes, as a network under autocast produces them
        out = fastops.yolact_masks(protos.to(dtype), coeffs, boxes, (20, 30), threshold=None)
        p = protos.to(dtype).requires_grad_()
        loss = fastops.yolact_mask_loss(p, coeffs, boxes.to(dtype), gt)
        pasted = fastops.paste_masks(masks.to(dtype), pboxes, shape)
    assert out.dtype == loss.dtype == torch.float32
    assert pasted.dtype == dtype  # paste_masks keeps the masks' dtype, as torchvision's (tests/test_autocast_impls.py)
    pr = protos.to(dtype).float()
    torch.testing.assert_close(out, ref.yolact_postprocess_masks(pr, coeffs, boxes, (20, 30), True, None),
                               atol=2e-6, rtol=0)
    torch.testing.assert_close(loss, ref.lincomb_mask_loss(pr, coeffs, boxes.to(dtype).float(), gt), rtol=1e-5,
                               atol=1e-4)
    # resized in float32, rounded once to the masks' dtype: within half an ulp of [0, 1] values (+ float32 noise)
    torch.testing.assert_close(pasted.float(), tv_roi_heads.paste_masks_in_image(masks.to(dtype).float(), pboxes,
                                                                                 shape),
                               atol=(2.0 ** -9 if dtype == torch.bfloat16 else 2.0 ** -12) + 1e-6, rtol=0)
    loss.sum().backward()
    assert p.grad.dtype == dtype and torch.isfinite(p.grad.float()).all()


# ---- exception types: torchvision's for the same bad input (issue 12) ----------------------------------------

def _bad_paste_inputs():
    m = torch.rand(3, 1, 8, 8)
    b = torch.tensor([[1.0, 2, 10, 12], [0, 0, 5, 5], [3, 3, 9, 20]])
    return {
        "boxes [N, 3]": (m, b[:, :3], (20, 20), 1),
        "boxes 1-D": (m, b[0], (20, 20), 1),
        "boxes [N, 1, 4]": (m, b[:, None], (20, 20), 1),
        "boxes bool": (m, b > 3, (20, 20), 1),
        "boxes list": (m, b.tolist(), (20, 20), 1),
        "masks 2-D": (m[0, 0], b, (20, 20), 1),
        "masks int64": ((m * 10).long(), b, (20, 20), 1),
        "masks bool": (m > 0.5, b, (20, 20), 1),
        "masks complex": (m.to(torch.complex64), b, (20, 20), 1),
        "masks zero width": (m[..., :0], b, (20, 20), 1),
        "masks zero height, padding 0": (m[:, :, :0], b, (20, 20), 0),
        "masks list": ([m[0]], b, (20, 20), 1),
        "image_shape 3 values": (m, b, (20, 20, 3), 1),
        "image_shape int": (m, b, 20, 1),
        "image_shape float side": (m, b, (20.0, 20), 1),
        "image_shape negative": (m, b, (-1, 20), 1),
        "padding float": (m, b, (20, 20), 1.5),
    }


@pytest.mark.parametrize("case", list(_bad_paste_inputs()))
def test_paste_masks_errors_are_torchvisions_types(case):
    """Code that catches what torchvision's paste_masks_in_image raises keeps working with fastops.paste_masks
    (and the patched torchvision), and fastops' own ValueError naming the argument stays."""
    args = _bad_paste_inputs()[case]
    with pytest.raises(Exception) as tv:
        tv_roi_heads.paste_masks_in_image(*args)
    with pytest.raises(ValueError) as fo:
        fastops.paste_masks(*args)
    assert isinstance(fo.value, type(tv.value)), (case, type(tv.value), type(fo.value).__mro__)
    assert any(w in str(fo.value) for w in ("masks", "boxes", "image_shape", "padding")), str(fo.value)
    with fastops.patch_torchvision(), pytest.raises(type(tv.value)):
        tv_roi_heads.paste_masks_in_image(*args)


@pytest.mark.parametrize("impl", ["cpp", "reference", "triton"])
@pytest.mark.parametrize("padding", [1, 2])
def test_paste_masks_zero_height_masks_like_torchvision(impl, padding):
    """Issue 12: [N, 1, 0, Mw] masks with padding > 0 are valid in torchvision (the zero padding is resized and
    pasted: an all-zero result); fastops gives the same, thresholded as `0 > threshold`, also when scripted."""
    b = torch.tensor([[1.0, 2, 10, 12], [0, 0, 5, 5], [3, 3, 9, 3], [-4, 5, 30, 8]])
    masks = torch.rand(4, 1, 0, 7)
    want = tv_roi_heads.paste_masks_in_image(masks, b, (20, 24), padding)
    got = fastops.paste_masks(masks, b, (20, 24), padding, impl=impl)
    assert got.shape == want.shape == (4, 1, 20, 24) and got.dtype == want.dtype
    assert torch.equal(got, want)
    for thr in (0.5, -0.5):
        assert torch.equal(fastops.paste_masks(masks, b, (20, 24), padding, thr, impl=impl), want > thr)
    assert torch.equal(torch.ops.fastops.paste_masks(masks[:, 0], b, 20, 24, padding, None), want)
    with fastops.patch_torchvision():
        assert torch.equal(tv_roi_heads.paste_masks_in_image(masks, b, (20, 24), padding), want)


def test_paste_masks_integer_boxes_like_torchvision():
    masks, boxes, shape = _paste(6)
    ib = boxes.round().long()
    torch.testing.assert_close(fastops.paste_masks(masks, ib, shape),
                               tv_roi_heads.paste_masks_in_image(masks, ib, shape), atol=2e-6, rtol=0)
