"""NMS family as a drop-in for torchvision.ops (issue 12): TorchScript, torch.fx, autocast, quantized inputs,
exception types, the empty shortcut of batched_nms, deterministic mode."""

import pytest
import torch
import torchvision

import fastops
from helpers import script_roundtrip


def _case(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 40 + 1], 1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, 4, (n,), generator=g)


# ---- TorchScript ---------------------------------------------------------------------------------------------------

class _Post(torch.nn.Module):
    def forward(self, boxes, scores, idxs):
        return fastops.nms(boxes, scores, 0.5), fastops.batched_nms(boxes, scores, idxs, 0.5)


def test_script_nms_batched_nms_functions():
    boxes, scores, idxs = _case()
    for fn, args in ((fastops.nms, (boxes, scores, 0.5)), (fastops.batched_nms, (boxes, scores, idxs, 0.5))):
        scripted, loaded = script_roundtrip(fn)
        want = fn(*args)
        # a loaded script function keeps no default values (TorchScript): pass impl too
        assert torch.equal(scripted(*args), want) and torch.equal(loaded(*args, "auto"), want)
    assert torch.equal(fastops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def test_script_module_and_other_ops():
    boxes, scores, idxs = _case()
    scripted, loaded = script_roundtrip(_Post())
    for a, b in zip(loaded(boxes, scores, idxs), _Post()(boxes, scores, idxs)):
        assert torch.equal(a, b)
    ys = torch.rand(3, boxes.size(0))
    _, fast = script_roundtrip(fastops.fast_nms)
    for a, b in zip(fast(boxes, ys, 0.5, 50, 40, 0.05, True, "auto"), fastops.fast_nms(boxes, ys, 0.5, 50, 40, 0.05, True)):
        assert torch.equal(a, b)
    _, soft = script_roundtrip(fastops.soft_nms)
    for a, b in zip(soft(boxes, scores, 0.3, 0.5, 1e-3, "gaussian", "auto"),
                    fastops.soft_nms(boxes, scores, 0.3, 0.5, 1e-3, "gaussian")):
        assert torch.equal(a, b)


class _MultiClass(torch.nn.Module):
    def forward(self, boxes, scores):
        b, s, l, i = fastops.multiclass_nms(boxes, scores, 0.1, 0.5, 50, 40)  # unpacking, as in eager code
        padded = fastops.multiclass_nms(boxes, scores, 0.1, 0.5, -1, 30, True)
        return b, s, l, i, padded[4]


def test_script_multiclass_nms_keeps_the_outputs_of_both_arities():
    boxes, _, _ = _case(200)
    scores = torch.rand(200, 3, generator=torch.Generator().manual_seed(5))
    scripted, loaded = script_roundtrip(fastops.multiclass_nms)
    for pad in (False, True):
        args = (boxes, scores, 0.1, 0.5, -1, 30, pad)
        want = fastops.multiclass_nms(*args)
        assert isinstance(want, tuple) and len(want) == (5 if pad else 4)
        for fn in (scripted, loaded):
            got = fn(*args, "auto")
            assert len(got) == len(want)
            for a, b in zip(got, want):
                assert torch.equal(a, b)
    per_class = boxes[:, None].repeat(1, 3, 1)  # [N, C, 4] boxes
    assert all(torch.equal(a, b) for a, b in zip(scripted(per_class, scores, 0.1, 0.5),
                                                   fastops.multiclass_nms(per_class, scores, 0.1, 0.5)))
    _, module = script_roundtrip(_MultiClass())
    for a, b in zip(module(boxes, scores), _MultiClass()(boxes, scores)):
        assert torch.equal(a, b)


def test_script_batched_nms_empty_shortcut():
    _, loaded = script_roundtrip(fastops.batched_nms)
    out = loaded(torch.empty((0,)), torch.empty((0,)), torch.empty((0,), dtype=torch.int64), 0.5, "auto")
    assert out.dtype == torch.int64 and out.shape == (0,)


# ---- torch.fx ------------------------------------------------------------------------------------------------------

def test_fx_keeps_ops_as_leaves():
    gm = torch.fx.symbolic_trace(_Post())
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert fastops.nms in targets and fastops.batched_nms in targets
    boxes, scores, idxs = _case()
    for a, b in zip(gm(boxes, scores, idxs), _Post()(boxes, scores, idxs)):
        assert torch.equal(a, b)


# ---- autocast ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["cpp", "reference", "triton"])
def test_autocast_cpu_mixed_dtypes(impl):
    boxes, scores, idxs = _case(500)
    b16 = boxes.to(torch.bfloat16)
    want = torchvision.ops.nms(b16.float(), scores, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fastops.nms(b16, scores, 0.5, impl)          # bf16 boxes, fp32 scores: computed in float32
        gotb = fastops.batched_nms(b16, scores, idxs, 0.5, impl)
        tv = torchvision.ops.nms(b16, scores, 0.5)          # torchvision's own autocast kernel
    assert torch.equal(got, want) and torch.equal(got, tv)
    assert torch.equal(gotb, torchvision.ops.batched_nms(b16.float(), scores, idxs, 0.5))


def test_autocast_cpu_compiled_ops_directly():
    boxes, scores, _ = _case(200)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.ops.fastops.nms(boxes.bfloat16(), scores, 0.5)
        dets, keep = torch.ops.fastops.soft_nms(boxes.bfloat16(), scores.half(), 0.3, 0.5, 1e-3, "linear")
        mc = fastops.multiclass_nms(boxes.bfloat16(), scores[:, None].repeat(1, 2), 0.1, 0.5)
        fast = fastops.fast_nms(boxes, scores[None].bfloat16(), 0.5)
    assert torch.equal(got, torchvision.ops.nms(boxes.bfloat16().float(), scores, 0.5))
    assert dets.dtype == torch.float32
    assert torch.equal(keep, fastops.soft_nms(boxes.bfloat16().float(), scores.half().float())[1])
    assert mc[0].dtype == torch.float32 and fast[2].dtype == torch.float32
    # float64 stays float64 (autocast casts only lower-precision types), and outside autocast dtypes must match
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fastops.nms(boxes.double(), scores.double(), 0.5),
                           torchvision.ops.nms(boxes.double(), scores.double(), 0.5))
    with pytest.raises(ValueError, match="scores"):
        fastops.nms(boxes.bfloat16(), scores, 0.5)


# ---- quantized (torchvision's test_qnms, on fastops) -----------------------------------------------------------

def _tensors_with_iou(n, iou_thresh):
    # torchvision's TestNMS._create_tensors_with_iou: the last box has IoU just above the threshold with the first
    boxes = torch.rand(n, 4) * 100
    boxes[:, 2:] += boxes[:, :2]
    boxes[-1, :] = boxes[0, :]
    x0, y0, x1, y1 = boxes[-1].tolist()
    iou_thresh += 1e-5
    boxes[-1, 2] += (x1 - x0) * (1 - iou_thresh) / iou_thresh
    return boxes, torch.rand(n)


@pytest.mark.parametrize("iou", (0.2, 0.5, 0.8))
@pytest.mark.parametrize("scale, zero_point", ((1, 0), (2, 50), (3, 10)))
def test_qnms(iou, scale, zero_point):
    torch.manual_seed(0)
    boxes, scores = _tensors_with_iou(1000, iou)
    scores *= 100
    qboxes = torch.quantize_per_tensor(boxes, scale=scale, zero_point=zero_point, dtype=torch.quint8)
    qscores = torch.quantize_per_tensor(scores, scale=scale, zero_point=zero_point, dtype=torch.quint8)
    want = torchvision.ops.nms(qboxes, qscores, iou)         # torchvision's quantized kernel
    assert torch.equal(fastops.nms(qboxes, qscores, iou), want)
    assert torch.equal(torch.ops.fastops.nms(qboxes, qscores, iou), want)
    assert torch.equal(fastops.nms(qboxes.dequantize(), qscores.dequantize(), iou), want)
    idxs = torch.randint(0, 3, (1000,))
    assert torch.equal(fastops.batched_nms(qboxes, qscores, idxs, iou),
                       fastops.batched_nms(qboxes.dequantize(), qscores.dequantize(), idxs, iou))


# ---- exception types and the empty shortcut ----------------------------------------------------------------------

def test_exception_types_as_torchvision():
    for fn in (torchvision.ops.nms, fastops.nms):
        with pytest.raises(RuntimeError):
            fn(torch.rand(4), torch.rand(3), 0.5)
        with pytest.raises(RuntimeError):
            fn(torch.rand(3, 4), torch.rand(4), 0.5)
    with pytest.raises(ValueError, match="boxes"):  # and still fastops' ValueError naming the argument
        fastops.nms(torch.rand(4), torch.rand(3), 0.5)


def test_batched_nms_empty_shortcut():
    for fn in (torchvision.ops.batched_nms, fastops.batched_nms):
        out = fn(torch.empty((0,), dtype=torch.int64), None, None, None)
        assert out.dtype == torch.int64 and out.shape == (0,)


# ---- deterministic mode ------------------------------------------------------------------------------------------

def test_deterministic_mode_triton_paths_run():
    # the Triton NMS kernels use no atomics (one program per mask tile / per row; a single-program reduction):
    # deterministic mode has nothing to refuse and the results are torchvision's
    boxes, scores, idxs = _case(200)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.equal(fastops.nms(boxes, scores, 0.5, "triton"), torchvision.ops.nms(boxes, scores, 0.5))
        assert torch.equal(fastops.batched_nms(boxes, scores, idxs, 0.5, "triton"),
                           torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))
    finally:
        torch.use_deterministic_algorithms(old)
    import inspect

    import fastops.triton.nms as tnms

    assert "atomic" not in inspect.getsource(tnms)
