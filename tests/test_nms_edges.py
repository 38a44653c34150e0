"""NMS family, the edges where implementations disagree first: IoU exactly at the threshold (`>` vs `>=`), empty
classes/boxes on every impl, the C++ constants mirrored in Python, and hypothesis properties cpp vs reference."""
import os

import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torchvision.ops.boxes import _batched_nms_vanilla

import fastops
from fastops.reference import nms as ref

IMPLS = ["cpp", "triton", "reference"]
TRITON_OPS = ("nms", "batched_nms", "fast_nms")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _impls(op):
    out = ["cpp", "reference"]
    if op in TRITON_OPS and INTERPRET:
        out.append("triton")
    return out


# IoU([0,0,3,1], [1,0,4,1]) = 2 / (3 + 3 - 2) = 0.5 exactly in float32 and float64; box 2 overlaps box 1 by 0.5
# too and box 0 by 1/5; box 3 is apart.
AT = torch.tensor([[0.0, 0, 3, 1], [1.0, 0, 4, 1], [2.0, 0, 5, 1], [10.0, 0, 13, 1]])
AT_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6])
BELOW = 0.5 - 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", IMPLS)
def test_nms_iou_at_threshold_keeps(impl, dtype):
    if impl not in _impls("nms"):
        pytest.skip("triton needs TRITON_INTERPRET=1")
    b, s = AT.to(dtype), AT_SCORES.to(dtype)
    # torchvision: suppressed when IoU > thr, so IoU == 0.5 keeps every box at 0.5
    assert torchvision.ops.nms(b, s, 0.5).tolist() == [0, 1, 2, 3]
    assert fastops.nms(b, s, 0.5, impl=impl).tolist() == [0, 1, 2, 3]
    assert fastops.nms(b, s, BELOW, impl=impl).tolist() == torchvision.ops.nms(b, s, BELOW).tolist() == [0, 2, 3]


@pytest.mark.parametrize("impl", IMPLS)
def test_batched_nms_iou_at_threshold_keeps(impl):
    if impl not in _impls("batched_nms"):
        pytest.skip("triton needs TRITON_INTERPRET=1")
    idxs = torch.tensor([0, 0, 0, 0])
    assert fastops.batched_nms(AT, AT_SCORES, idxs, 0.5, impl=impl).tolist() == [0, 1, 2, 3]
    assert fastops.batched_nms(AT, AT_SCORES, idxs, BELOW, impl=impl).tolist() == [0, 2, 3]
    assert torchvision.ops.batched_nms(AT, AT_SCORES, idxs, BELOW).tolist() == [0, 2, 3]
    # large enough for torchvision's per-class path (more than 1000 boxes on CPU): 300 copies of the pattern,
    # 75 classes of 16 boxes
    big = torch.cat([AT + 20 * k for k in range(300)])
    sc = torch.randperm(1200).float() / 1200  # distinct: the reference sorts ties stably, torchvision not
    cls = torch.arange(1200) // 16
    for thr in (0.5, BELOW):
        assert torch.equal(fastops.batched_nms(big, sc, cls, thr, impl=impl),
                           torchvision.ops.batched_nms(big, sc, cls, thr))


@pytest.mark.parametrize("impl", ["cpp", "reference"])
def test_multiclass_nms_iou_at_threshold_keeps(impl):
    scores = torch.stack([AT_SCORES, AT_SCORES.flip(0)], 1)  # two classes
    _, s, lab, idx = fastops.multiclass_nms(AT, scores, 0.0, 0.5, -1, 100, False, impl)
    assert sorted(zip(lab.tolist(), idx.tolist())) == [(c, i) for c in (0, 1) for i in range(4)]
    _, s, lab, idx = fastops.multiclass_nms(AT, scores, 0.0, BELOW, -1, 100, False, impl)
    # class 0 by score 0, 1, 2, 3: 1 suppressed by 0, 2 survives (IoU 0.2 with 0), 3 apart
    # class 1 by score 3, 2, 1, 0: 1 suppressed by 2, 0 survives (IoU 0.2 with 2)
    assert sorted(zip(lab.tolist(), idx.tolist())) == [(0, 0), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]


@pytest.mark.parametrize("cross_class", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_fast_nms_iou_at_threshold_keeps(impl, cross_class):
    if impl not in _impls("fast_nms"):
        pytest.skip("triton needs TRITON_INTERPRET=1")
    # YOLACT keeps box j when max IoU with higher-scored boxes is <= thr: at 0.5 all four stay
    idx, lab, sc = fastops.fast_nms(AT, AT_SCORES[None], 0.5, 200, 100, 0.05, cross_class, impl)
    assert idx.tolist() == [0, 1, 2, 3]
    # below: box 1 (IoU 0.5 with 0) and box 2 (IoU 0.5 with 1: suppressed boxes still suppress) go
    idx, lab, sc = fastops.fast_nms(AT, AT_SCORES[None], BELOW, 200, 100, 0.05, cross_class, impl)
    assert idx.tolist() == [0, 3]


@pytest.mark.parametrize("impl", ["cpp", "reference"])
def test_soft_nms_iou_at_threshold_decays(impl):
    # mmcv compares with >=: IoU exactly 0.5 decays (linear: s * (1 - 0.5)) or drops (naive)
    dets, keep = fastops.soft_nms(AT, AT_SCORES, 0.5, 0.5, 1e-3, "naive", impl)
    assert keep.tolist() == [0, 2, 3]  # 1 dropped by 0; 2 overlaps 0 by 0.2 only
    dets, keep = fastops.soft_nms(AT, AT_SCORES, 0.5, 0.5, 1e-3, "linear", impl)
    # select 0 (0.9): 1 -> 0.8 * 0.5 = 0.4; 2 has IoU 0.2 < 0.5, stays 0.7; select 2 (0.7): 1 has IoU 0.5 -> 0.2
    assert keep.tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.9, 0.7, 0.6, 0.2]), rtol=0, atol=1e-7)
    dets, keep = fastops.soft_nms(AT, AT_SCORES, 0.5 + 1e-6, 0.5, 1e-3, "linear", impl)
    assert keep.tolist() == [0, 1, 2, 3] and torch.equal(dets[:, 4], AT_SCORES)


# ---- empty classes / boxes on every impl --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
@pytest.mark.parametrize("cross_class", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_fast_nms_no_class_or_no_box(impl, cross_class, shape):
    if impl not in _impls("fast_nms"):
        pytest.skip("triton needs TRITON_INTERPRET=1")
    c, n = shape
    out = fastops.fast_nms(torch.rand(n, 4), torch.rand(c, n), 0.5, 200, 100, 0.05, cross_class, impl)
    assert [t.shape for t in out] == [(0,), (0,), (0,)]
    assert out[0].dtype == out[1].dtype == torch.int64 and out[2].dtype == torch.float32


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("impl", ["cpp", "reference"])
def test_multiclass_nms_no_class_or_no_box(impl, pad, shape):
    n, c = shape
    out = fastops.multiclass_nms(torch.rand(n, 4), torch.rand(n, c), 0.05, 0.5, -1, 7, pad, impl)
    assert out[0].shape == ((7, 4) if pad else (0, 4))
    if pad:
        assert int(out[4]) == 0 and out[2].tolist() == [-1] * 7


def test_constants_mirror_cpp():
    import fastops.registrations.nms as reg

    assert tuple(torch.ops.fastops._nms_constants()) == reg.CONSTANTS
    # the values themselves are torchvision's (its batched_nms switch) and the C++ method codes
    import inspect

    src = inspect.getsource(torchvision.ops.boxes.batched_nms)
    assert f"{reg.TV_VANILLA_NUMEL_CPU} if boxes.device.type == \"cpu\" else 100_000" in src
    assert reg.TV_VANILLA_NUMEL_CUDA == 100_000


# ---- hypothesis: cpp vs reference (profile "ci": 200 examples per test; "long" for a deep run) -----------------

def _rand_case(n, seed, scale, dtype=torch.float32, ties=False, grid=False):
    g = torch.Generator().manual_seed(seed)
    if grid:  # integer coordinates: exact IoU ties at simple ratios (0.5, 1/3, ...)
        xy = torch.randint(0, 6, (n, 2), generator=g).float()
        boxes = torch.cat([xy, xy + torch.randint(1, 4, (n, 2), generator=g).float()], 1)
    else:
        xy = torch.rand(n, 2, generator=g) * scale
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * scale / 2], 1)
    scores = torch.randint(0, 4, (n,), generator=g).float() / 4 if ties else torch.rand(n, generator=g)
    return boxes.to(dtype), scores.to(dtype), g


CASE = dict(n=st.integers(0, 60), seed=st.integers(0, 2**16), scale=st.sampled_from([1.0, 10.0, 1000.0]),
            ties=st.booleans(), grid=st.booleans(),
            thr=st.sampled_from([0.0, 0.2, 1 / 3, 0.5, 0.7, 1.0]) | st.floats(0.0, 1.0))


@given(classes=st.integers(1, 5), **CASE)
def test_property_nms_batched(n, classes, thr, seed, scale, ties, grid):
    boxes, scores, g = _rand_case(n, seed, scale, ties=ties, grid=grid)
    idxs = torch.randint(0, classes, (n,), generator=g)
    assert torch.equal(fastops.nms(boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
    assert torch.equal(fastops.batched_nms(boxes, scores, idxs, thr), ref.batched_nms(boxes, scores, idxs, thr))
    assert torch.equal(fastops.batched_nms(boxes, scores, idxs, thr), _batched_nms_vanilla(boxes, scores, idxs, thr)) \
        or ties


@given(classes=st.integers(1, 4), top_k=st.integers(-1, 30), max_det=st.integers(-1, 40),
       cross_class=st.booleans(), sthr=st.sampled_from([0.0, 0.25, 0.5]), **CASE)
def test_property_fast_nms(n, classes, thr, seed, scale, ties, grid, top_k, max_det, cross_class, sthr):
    boxes, _, g = _rand_case(n, seed, scale, grid=grid)
    scores = torch.randint(0, 4, (classes, n), generator=g).float() / 4 if ties else torch.rand(classes, n, generator=g)
    got = fastops.fast_nms(boxes, scores, thr, top_k, max_det, sthr, cross_class)
    exp = ref.fast_nms(boxes, scores, thr, top_k, max_det, sthr, cross_class)
    assert all(torch.equal(x, y) for x, y in zip(got, exp))


@given(classes=st.integers(1, 4), top_k=st.integers(-1, 30), max_det=st.integers(-1, 40), per_class=st.booleans(),
       pad=st.booleans(), sthr=st.sampled_from([0.0, 0.25, 0.5]), dtype=st.sampled_from([torch.float32, torch.float64]),
       **CASE)
def test_property_multiclass_nms(n, classes, thr, seed, scale, ties, grid, top_k, max_det, per_class, pad, sthr,
                                 dtype):
    boxes, _, g = _rand_case(n * (classes if per_class else 1), seed, scale, dtype, grid=grid)
    if per_class:
        boxes = boxes.view(n, classes, 4)
    scores = torch.randint(0, 4, (n, classes), generator=g).float() / 4 if ties else torch.rand(n, classes, generator=g)
    scores = scores.to(dtype)
    max_det = max_det if (max_det > 0 or not pad) else 5
    got = fastops.multiclass_nms(boxes, scores, sthr, thr, top_k, max_det, pad)
    exp = ref.multiclass_nms(boxes, scores, sthr, thr, top_k, max_det, pad)
    assert all(torch.equal(x, y) for x, y in zip(got, exp))


@given(method=st.sampled_from(["linear", "gaussian", "naive"]), min_score=st.sampled_from([0.0, 1e-3, 0.1]),
       sigma=st.sampled_from([0.1, 0.5, 2.0]), dtype=st.sampled_from([torch.float32, torch.float64]), **CASE)
def test_property_soft_nms(n, thr, seed, scale, ties, grid, method, min_score, sigma, dtype):
    boxes, scores, _ = _rand_case(n, seed, scale, dtype, ties=ties, grid=grid)
    dets, keep = fastops.soft_nms(boxes, scores, thr, sigma, min_score, method)
    edets, ekeep = ref.soft_nms(boxes, scores, thr, sigma, min_score, method)
    if method == "gaussian":  # libm exp vs PyTorch's vectorised exp may differ in the last bit: compare values
        torch.testing.assert_close(dets, edets, rtol=1e-5, atol=1e-7)
    else:
        assert torch.equal(keep, ekeep) and torch.equal(dets, edets)
