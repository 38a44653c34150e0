"""NMS family: against torchvision (nms, batched_nms), YOLACT's fast_nms / cc_fast_nms transcription, the mmcv
soft-NMS reference and the user-side multiclass recipe (fastops.reference.nms), never against the kernels."""
import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops.boxes import _batched_nms_vanilla

import fastops
from fastops.reference import nms as ref
from helpers import assert_all_equal, needs_inductor_vec, per_thread_count

LOW = (torch.float16, torch.bfloat16)


def rand_boxes(n, dtype=torch.float32, size=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3 + 1
    return torch.cat([xy, xy + wh], 1).to(dtype)


def clustered(n, objects=20, seed=0, size=500.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(objects, 2, generator=g) * size
    wh = torch.rand(objects, 2, generator=g) * 100 + 10
    o = torch.randint(0, objects, (n,), generator=g)
    jit = torch.randn(n, 4, generator=g)
    c = ctr[o] + jit[:, :2] * 0.1 * wh[o]
    s = wh[o] * (1 + 0.1 * jit[:, 2:]).clamp(min=0.2)
    return torch.cat([c - s / 2, c + s / 2], 1).to(dtype)


def distinct_scores(n, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    if dtype in LOW:  # few distinct values exist: a permutation of representable, distinct ones
        vals = torch.linspace(0.01, 0.99, max(n, 1)).to(dtype).unique()
        if vals.numel() >= n:
            return vals[torch.randperm(vals.numel(), generator=g)[:n]]
        return (torch.randperm(n, generator=g).float() / n).to(dtype)
    return torch.randperm(n, generator=g).to(dtype) / max(n, 1) + torch.rand(n, generator=g).to(dtype) * 1e-4


def tv_nms(boxes, scores, thr):
    return torchvision.ops.nms(boxes.float() if boxes.dtype in LOW else boxes,
                               scores.float() if scores.dtype in LOW else scores, thr)


# ---- nms ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gen", ["random", "clustered"])
@pytest.mark.parametrize("n", [1, 7, 300, 3000])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision(gen, n, thr):
    boxes = rand_boxes(n) if gen == "random" else clustered(n)
    scores = distinct_scores(n)
    assert torch.equal(fastops.nms(boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_nms_dtypes(dtype):
    boxes, scores = clustered(800, dtype=dtype), distinct_scores(800, dtype)
    assert torch.equal(fastops.nms(boxes, scores, 0.5), tv_nms(boxes, scores, 0.5))


def test_nms_ties_stable_and_noncontiguous():
    boxes = clustered(500)
    scores = (torch.arange(500) % 7).float()  # many ties: torchvision's stable sort keeps lower index first
    assert torch.equal(fastops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    wide = torch.zeros(500, 9)
    wide[:, 1::2] = boxes  # boxes with column stride 2
    nc_boxes = wide[:, 1::2]
    nc_scores = torch.stack([scores, scores], 1)[:, 1]
    assert not nc_boxes.is_contiguous() and not nc_scores.is_contiguous()
    assert torch.equal(fastops.nms(nc_boxes, nc_scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    bt = boxes.t().contiguous().t()  # column-major
    assert torch.equal(fastops.nms(bt, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def test_nms_edge_cases():
    e = torch.zeros(0, 4)
    out = fastops.nms(e, torch.zeros(0), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64
    one = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert fastops.nms(one, torch.tensor([0.3]), 0.5).tolist() == [0]
    same = one.repeat(10, 1)
    sc = distinct_scores(10)
    assert torch.equal(fastops.nms(same, sc, 0.5), torchvision.ops.nms(same, sc, 0.5))
    assert fastops.nms(same, sc, 0.5).numel() == 1
    # zero-area boxes: IoU 0/0 = NaN with each other, 0 with others: never suppressed, like torchvision
    degen = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0, 0, 0, 5.0]])
    sc = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert torch.equal(fastops.nms(degen, sc, 0.5), torchvision.ops.nms(degen, sc, 0.5))


def test_nms_nan():
    boxes, scores = clustered(300), distinct_scores(300)
    scores[[3, 50, 200]] = float("nan")
    boxes[[7, 8, 100]] = float("nan")
    boxes[9, 2] = float("inf")
    out = fastops.nms(boxes, scores, 0.5)
    assert torch.equal(out, torchvision.ops.nms(boxes, scores, 0.5))
    assert out[:3].tolist() == [3, 50, 200]  # NaN scores rank first, as torch.sort does
    for i in (7, 8, 100):
        assert i in out.tolist()  # NaN boxes are never suppressed
    nanall = torch.full((5, 4), float("nan"))
    assert fastops.nms(nanall, torch.rand(5), 0.5).numel() == 5


def test_threads_identical():
    boxes, scores = clustered(5000, objects=50), distinct_scores(5000)
    idxs = torch.randint(0, 30, (5000,))
    mb, ms = _mc_inputs(5000, 6, False)
    yb, ys = _yolact_inputs(6000, 10)

    def run():
        return (fastops.nms(boxes, scores, 0.5), fastops.batched_nms(boxes, scores, idxs, 0.5),
                *fastops.multiclass_nms(mb, ms, 0.2, 0.5, max_det=-1), *fastops.fast_nms(yb, ys, 0.5, 200, -1),
                *fastops.fast_nms(yb, ys, 0.5, 200, -1, cross_class=True))

    assert_all_equal(*per_thread_count(run))


# ---- batched_nms --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gen", ["random", "clustered"])
@pytest.mark.parametrize("n,classes", [(1, 1), (50, 3), (800, 10), (5000, 80)])
def test_batched_nms_matches_torchvision(gen, n, classes):
    boxes = rand_boxes(n) if gen == "random" else clustered(n)
    scores = distinct_scores(n)
    idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(3))
    got = fastops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(got, _batched_nms_vanilla(boxes, scores, idxs, 0.5))
    assert torch.equal(got, torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("n", [800, 1200])
def test_batched_nms_tied_scores_in_torchvision_order(n):
    # torchvision's per-class path (n > 1000) sorts the survivors with an unstable sort: same tie order
    boxes = clustered(n)
    scores = (torch.arange(n) % 13).float() / 13
    idxs = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(2))
    expect = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(fastops.batched_nms(boxes, scores, idxs, 0.5), expect)
    assert torch.equal(fastops.batched_nms(boxes, scores, idxs, 0.5, impl="triton"), expect)


@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32, torch.uint8])
def test_batched_nms_class_values(idx_dtype):
    n = 600
    boxes, scores = clustered(n), distinct_scores(n)
    g = torch.Generator().manual_seed(5)
    if idx_dtype == torch.uint8:
        idxs = torch.randint(0, 256, (n,), generator=g).to(idx_dtype)
    else:  # sparse, negative and huge category values (the non-counting-sort path)
        pool = torch.tensor([-(2**30), -5, 0, 7, 2**30 + 3], dtype=torch.int64)
        idxs = pool[torch.randint(0, 5, (n,), generator=g)].to(idx_dtype)
    expect = _batched_nms_vanilla(boxes, scores, idxs.long(), 0.5)
    assert torch.equal(fastops.batched_nms(boxes, scores, idxs, 0.5), expect)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_batched_nms_dtypes(dtype):
    boxes, scores = clustered(1500, dtype=dtype), distinct_scores(1500, dtype)
    idxs = torch.randint(0, 7, (1500,))
    expect = torchvision.ops.batched_nms(boxes.double() if dtype == torch.float64 else boxes.float(),
                                         scores.double() if dtype == torch.float64 else scores.float(), idxs, 0.5)
    assert torch.equal(fastops.batched_nms(boxes, scores, idxs, 0.5), expect)


def test_batched_nms_edge_and_nan():
    out = fastops.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64
    boxes, scores = clustered(400), distinct_scores(400)
    idxs = torch.randint(0, 4, (400,))
    scores[[1, 2]] = float("nan")
    boxes[[5, 6]] = float("nan")
    got = fastops.batched_nms(boxes, scores, idxs, 0.5)
    # torchvision's final sort is not stable (the two NaN scores may come in either order): same set, and the
    # stable order of the per-class reference
    assert torch.equal(got.sort()[0], _batched_nms_vanilla(boxes, scores, idxs, 0.5).sort()[0])
    assert torch.equal(got, ref.batched_nms(boxes, scores, idxs, 0.5))
    assert got[:2].tolist() == [1, 2]
    same = torch.tensor([[0.0, 0, 4, 4]]).repeat(6, 1)
    got = fastops.batched_nms(same, torch.arange(6.0), torch.tensor([0, 1, 0, 1, 2, 2]), 0.5)
    assert got.tolist() == [5, 3, 2]


# ---- multiclass_nms -----------------------------------------------------------------------------------------------

def _mc_inputs(n, c, per_class, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(n, c, generator=g) ** 2).to(dtype)
    if per_class:
        boxes = torch.stack([clustered(n, seed=seed + k) for k in range(c)], 1).to(dtype)
    else:
        boxes = clustered(n, seed=seed, dtype=dtype)
    return boxes, scores


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("top_k,max_det", [(-1, 100), (20, 50), (5, -1), (1000, 7)])
def test_multiclass_nms_matches_recipe(per_class, top_k, max_det):
    boxes, scores = _mc_inputs(400, 6, per_class)
    got = fastops.multiclass_nms(boxes, scores, 0.3, 0.5, pre_nms_top_k=top_k, max_det=max_det)
    expect = ref.multiclass_nms(boxes, scores, 0.3, 0.5, top_k, max_det, False)
    assert len(got) == 4
    for x, y in zip(got, expect):
        assert torch.equal(x, y)


def test_multiclass_nms_against_torchvision_directly():
    # the user recipe written inline with torchvision.ops.batched_nms (distinct scores: order is unambiguous)
    boxes, _ = _mc_inputs(300, 5, False)
    scores = torch.randperm(1500).float().view(300, 5) / 1500
    mask = scores > 0.2
    i, c = mask.nonzero(as_tuple=True)
    keep = torchvision.ops.batched_nms(boxes[i], scores[i, c], c, 0.5)[:60]
    b, s, lab, idx = fastops.multiclass_nms(boxes, scores, 0.2, 0.5, max_det=60)
    assert torch.equal(idx, i[keep]) and torch.equal(lab, c[keep]) and torch.equal(s, scores[i, c][keep])
    assert torch.equal(b, boxes[i[keep]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_multiclass_nms_dtypes_pad(dtype):
    boxes, scores = _mc_inputs(200, 4, True, dtype)
    got = fastops.multiclass_nms(boxes, scores, 0.1, 0.6, pre_nms_top_k=30, max_det=500, pad=True)
    expect = ref.multiclass_nms(boxes, scores, 0.1, 0.6, 30, 500, True)
    assert got[0].shape == (500, 4) and got[0].dtype == dtype and got[1].dtype == dtype
    for x, y in zip(got, expect):
        assert torch.equal(x, y)
    m = int(got[4])
    assert (got[2][m:] == -1).all() and (got[3][m:] == -1).all() and (got[1][m:] == 0).all()


def test_multiclass_nms_edge():
    b, s, lab, idx = fastops.multiclass_nms(torch.zeros(0, 4), torch.zeros(0, 3))
    assert b.shape == (0, 4) and s.shape == (0,) and lab.dtype == torch.int64
    out = fastops.multiclass_nms(torch.zeros(0, 4), torch.zeros(0, 3), pad=True, max_det=5)
    assert out[0].shape == (5, 4) and int(out[4]) == 0 and out[3].tolist() == [-1] * 5
    boxes, scores = _mc_inputs(50, 3, False)
    scores[4, 1] = float("nan")  # NaN scores never pass the threshold
    boxes[7] = float("nan")
    got = fastops.multiclass_nms(boxes, scores, 0.05, 0.5, max_det=1000)
    expect = ref.multiclass_nms(boxes, scores, 0.05, 0.5, -1, 1000, False)
    for x, y in zip(got, expect):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
    assert not ((got[3] == 4) & (got[2] == 1)).any()


# ---- fast_nms -----------------------------------------------------------------------------------------------------

def _yolact_inputs(n, c, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = clustered(n, objects=15, seed=seed, dtype=dtype)
    logits = torch.randn(c + 1, n, generator=g) * 2
    logits[0] += 3  # background dominates, as in YOLACT's softmax output
    scores = torch.softmax(logits, 0)[1:].contiguous().to(dtype)
    return boxes, scores


@pytest.mark.parametrize("cross_class", [False, True])
@pytest.mark.parametrize("n,c,top_k,max_det", [(1, 1, 200, 100), (60, 3, 200, 100), (3000, 20, 200, 100),
                                               (3000, 20, 50, 40), (500, 5, -1, -1)])
def test_fast_nms_matches_yolact(cross_class, n, c, top_k, max_det):
    boxes, scores = _yolact_inputs(n, c)
    got = fastops.fast_nms(boxes, scores, 0.5, top_k, max_det, 0.05, cross_class=cross_class)
    expect = ref.fast_nms(boxes, scores, 0.5, top_k, max_det, 0.05, cross_class)
    for x, y in zip(got, expect):
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_fast_nms_dtypes(dtype):
    boxes, scores = _yolact_inputs(1000, 8, dtype)
    got = fastops.fast_nms(boxes, scores, 0.5, 100, 100, 0.05)
    if dtype in LOW:  # IoU in float32: the reference on the float32 values of the same boxes
        exp = ref.fast_nms(boxes.float(), scores.float(), 0.5, 100, 100, float(torch.tensor(0.05, dtype=dtype)))
        exp = (exp[0], exp[1], exp[2].to(dtype))
    else:
        exp = ref.fast_nms(boxes, scores, 0.5, 100, 100, 0.05)
    for x, y in zip(got, exp):
        assert torch.equal(x, y)


def test_fast_nms_edge_and_nan():
    out = fastops.fast_nms(torch.zeros(0, 4), torch.zeros(3, 0))
    assert all(t.shape == (0,) for t in out) and out[0].dtype == torch.int64
    boxes, scores = _yolact_inputs(200, 4)
    out = fastops.fast_nms(boxes, scores * 0, 0.5)  # nothing passes the threshold
    assert all(t.numel() == 0 for t in out)
    scores[2, 10] = float("nan")
    boxes[11] = float("nan")
    boxes[12, :2] = boxes[12, 2:]  # zero-area
    for cc in (False, True):
        got = fastops.fast_nms(boxes, scores, 0.5, 50, 100, 0.05, cross_class=cc)
        exp = ref.fast_nms(boxes, scores, 0.5, 50, 100, 0.05, cc)
        for x, y in zip(got, exp):
            assert torch.equal(x, y)
    same = torch.tensor([[0.0, 0, 4, 4]]).repeat(5, 1)
    idx, lab, sc = fastops.fast_nms(same, torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]]), 0.5)
    assert idx.tolist() == [0] and lab.tolist() == [0]


# ---- soft_nms -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["linear", "gaussian", "naive"])
@pytest.mark.parametrize("n", [1, 40, 400])
def test_soft_nms_matches_reference(method, n):
    boxes, scores = clustered(n, objects=10), distinct_scores(n)
    dets, keep = fastops.soft_nms(boxes, scores, 0.3, 0.5, 1e-3, method)
    edets, ekeep = ref.soft_nms(boxes, scores, 0.3, 0.5, 1e-3, method)
    assert torch.equal(keep, ekeep)
    assert torch.equal(dets[:, :4], edets[:, :4])
    if method == "gaussian":  # exp: libm vs PyTorch's vectorised exp may differ in the last bit
        torch.testing.assert_close(dets, edets, rtol=1e-5, atol=1e-7)
    else:
        assert torch.equal(dets, edets)


def test_soft_nms_naive_is_nms():
    boxes, scores = clustered(500), distinct_scores(500)
    _, keep = fastops.soft_nms(boxes, scores, 0.5, 0.5, 1e-30, "naive")
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5 - 1e-7))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_soft_nms_dtypes(dtype):
    boxes, scores = clustered(150, objects=8, dtype=dtype), distinct_scores(150, dtype)
    dets, keep = fastops.soft_nms(boxes, scores, 0.3, 0.5, 1e-2, "linear")
    edets, ekeep = ref.soft_nms(boxes, scores, 0.3, 0.5, 1e-2, "linear")
    assert torch.equal(keep, ekeep) and dets.dtype == dtype
    assert torch.equal(dets, edets)


def test_soft_nms_edge_and_nan():
    dets, keep = fastops.soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert dets.shape == (0, 5) and keep.shape == (0,)
    dets, keep = fastops.soft_nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([1e-5]))
    assert keep.tolist() == [0]  # the first selection is kept whatever its score (mmcv)
    boxes, scores = clustered(100), distinct_scores(100)
    scores[3] = float("nan")
    boxes[4] = float("nan")
    for m in ("linear", "gaussian", "naive"):
        dets, keep = fastops.soft_nms(boxes, scores, 0.3, 0.5, 1e-3, m)
        edets, ekeep = ref.soft_nms(boxes, scores, 0.3, 0.5, 1e-3, m)
        assert torch.equal(keep, ekeep) and 3 not in keep.tolist()
        torch.testing.assert_close(dets, edets, rtol=1e-5, atol=1e-7, equal_nan=True)
    # infinite scores: inf * 0 = NaN discards the box (naive), inf * (1 - iou) stays inf (linear)
    same = torch.tensor([[0.0, 0, 4, 4]]).repeat(4, 1)
    inf = torch.full((4,), float("inf"))
    assert fastops.soft_nms(same, inf, method="naive")[1].tolist() == [0]
    assert fastops.soft_nms(same, inf, method="naive", impl="reference")[1].tolist() == [0]


# ---- errors -------------------------------------------------------------------------------------------------------

def test_errors():
    b, s = rand_boxes(5), torch.rand(5)
    with pytest.raises(ValueError, match="boxes"):
        fastops.nms(torch.rand(5, 3), s, 0.5)
    with pytest.raises(ValueError, match="scores"):
        fastops.nms(b, torch.rand(4), 0.5)
    with pytest.raises(ValueError, match="scores"):
        fastops.nms(b, s.double(), 0.5)
    with pytest.raises(ValueError, match="boxes"):
        fastops.nms(b.long(), s, 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        fastops.nms(b, s, float("nan"))
    with pytest.raises(ValueError, match="idxs"):
        fastops.batched_nms(b, s, torch.zeros(5), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        fastops.batched_nms(b, s, torch.zeros(4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="boxes"):
        fastops.multiclass_nms(torch.rand(5, 2, 4), torch.rand(5, 3))
    with pytest.raises(ValueError, match="max_det"):
        fastops.multiclass_nms(b, torch.rand(5, 3), pad=True, max_det=0)
    with pytest.raises(ValueError, match="scores"):
        fastops.fast_nms(b, torch.rand(3, 4))
    with pytest.raises(ValueError, match="method"):
        fastops.soft_nms(b, s, method="hard")
    with pytest.raises(ValueError, match="sigma"):
        fastops.soft_nms(b, s, sigma=0.0, method="gaussian")
    with pytest.raises(ValueError, match="impl"):
        fastops.nms(b, s, 0.5, impl="cuda")
    with pytest.raises(RuntimeError, match="boxes"):  # the compiled op checks too
        torch.ops.fastops.nms(torch.rand(5, 3), s, 0.5)


# ---- opcheck, compile, export -------------------------------------------------------------------------------------

def _op_cases():
    b, s = clustered(64), distinct_scores(64)
    idxs = torch.randint(0, 3, (64,))
    mb, ms = _mc_inputs(40, 3, True)
    yb, ys = _yolact_inputs(80, 4)
    return [
        (torch.ops.fastops.nms, (b, s, 0.5)),
        (torch.ops.fastops.batched_nms, (b, s, idxs, 0.5)),
        (torch.ops.fastops.multiclass_nms, (mb, ms, 0.2, 0.5, 10, 30, False)),
        (torch.ops.fastops.multiclass_nms, (mb[:, 0], ms, 0.2, 0.5, -1, 30, True)),
        (torch.ops.fastops.fast_nms, (yb, ys, 0.5, 20, 30, 0.05, False)),
        (torch.ops.fastops.fast_nms, (yb, ys, 0.5, 20, 30, 0.05, True)),
        (torch.ops.fastops.soft_nms, (b, s, 0.3, 0.5, 1e-3, "gaussian")),
    ]


@pytest.mark.parametrize("case", range(7))
def test_opcheck(case):
    op, args = _op_cases()[case]
    torch.library.opcheck(op, args)


def test_compile_fullgraph():
    torch._dynamo.reset()
    b, s = clustered(300), distinct_scores(300)
    idxs = torch.randint(0, 5, (300,))
    yb, ys = _yolact_inputs(300, 4)

    @torch.compile(fullgraph=True, backend="eager", dynamic=True)
    def post(b, s, idxs, yb, ys):
        keep = fastops.batched_nms(b, s, idxs, 0.5)
        k2 = fastops.nms(b, s, 0.5)
        mc = fastops.multiclass_nms(b, torch.stack([s, s.flip(0)], 1), 0.1, 0.5, max_det=50, pad=True)
        fi, fl, fs = fastops.fast_nms(yb, ys, 0.5, 50, 40)
        d, k = fastops.soft_nms(b, s, method="linear")
        return b[keep].sum(0), k2, mc[1] * 2, fs + 1, d[:, 4], k

    out = post(b, s, idxs, yb, ys)
    assert torch.equal(out[0], b[torchvision.ops.batched_nms(b, s, idxs, 0.5)].sum(0))
    assert torch.equal(out[1], torchvision.ops.nms(b, s, 0.5))
    assert torch.equal(out[3], ref.fast_nms(yb, ys, 0.5, 50, 40)[2] + 1)
    assert torch.equal(out[5], ref.soft_nms(b, s, method="linear")[1])


@needs_inductor_vec
def test_compile_inductor_batched_nms_any_size():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, dynamic=True)
    def post(boxes, scores, idxs):
        keep = fastops.batched_nms(boxes, scores, idxs, 0.5)
        return boxes[keep] * 2, scores[keep]

    for n in (50, 6000):  # torchvision switches algorithm at 1000 boxes (CPU); the op does not
        b, s = clustered(n), distinct_scores(n)
        i = torch.randint(0, 8, (n,))
        keep = torchvision.ops.batched_nms(b, s, i, 0.5)
        out = post(b, s, i)
        assert torch.equal(out[0], b[keep] * 2) and torch.equal(out[1], s[keep])


def test_export():
    class Post(torch.nn.Module):
        def forward(self, boxes, scores):
            keep = fastops.batched_nms(boxes, scores.amax(1), scores.argmax(1), 0.5)
            b, s, lab, idx, nv = fastops.multiclass_nms(boxes, scores, 0.1, 0.5, max_det=20, pad=True)
            return keep, b, s, lab, idx, nv

    boxes, scores = _mc_inputs(120, 3, False)
    ep = torch.export.export(Post(), (boxes, scores))
    got = ep.module()(boxes, scores)
    exp = Post()(boxes, scores)
    for x, y in zip(got, exp):
        assert torch.equal(x, y)
    assert got[1].shape == (20, 4)


# ---- property test ------------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 70), classes=st.integers(1, 5), thr=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1.0, 10.0, 1000.0]))
def test_property_nms_batched(n, classes, thr, seed, scale):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * scale
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * scale / 2], 1)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, classes, (n,), generator=g)
    assert torch.equal(fastops.nms(boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
    assert torch.equal(fastops.batched_nms(boxes, scores, idxs, thr), _batched_nms_vanilla(boxes, scores, idxs, thr))
    yolact = fastops.fast_nms(boxes, scores[None].repeat(classes, 1), thr, 10, 20, 0.2)
    exp = ref.fast_nms(boxes, scores[None].repeat(classes, 1), thr, 10, 20, 0.2)
    assert all(torch.equal(x, y) for x, y in zip(yolact, exp))


def test_reference_impl_dispatch():
    b, s = clustered(100), distinct_scores(100)
    assert torch.equal(fastops.nms(b, s, 0.5, impl="reference"), fastops.nms(b, s, 0.5))
    assert math.isclose(float(fastops.soft_nms(b, s, impl="reference")[0][:, 4].sum()),
                        float(fastops.soft_nms(b, s)[0][:, 4].sum()), rel_tol=1e-6)


# ---- Triton (interpreted on CPU tensors) --------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter: NaN boxes divide 0/NaN
@pytest.mark.parametrize("n", [1, 150])
def test_triton_nms_batched(n):
    boxes, scores = clustered(n), distinct_scores(n)
    boxes[min(3, n - 1)] = float("nan")
    idxs = torch.randint(0, 3, (n,))
    assert torch.equal(fastops.nms(boxes, scores, 0.5, impl="triton"), torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(fastops.batched_nms(boxes, scores, idxs, 0.5, impl="triton"),
                       _batched_nms_vanilla(boxes, scores, idxs, 0.5))
    assert fastops.nms(boxes[:0], scores[:0], 0.5, impl="triton").shape == (0,)


@pytest.mark.parametrize("cross_class", [False, True])
def test_triton_fast_nms(cross_class):
    boxes, scores = _yolact_inputs(300, 3)
    got = fastops.fast_nms(boxes, scores, 0.5, 40, 30, 0.05, cross_class=cross_class, impl="triton")
    exp = ref.fast_nms(boxes, scores, 0.5, 40, 30, 0.05, cross_class)
    for x, y in zip(got, exp):
        assert torch.equal(x, y)
    b16, s16 = boxes.to(torch.float64), scores.to(torch.float64)
    got = fastops.fast_nms(b16, s16, 0.5, 40, 30, 0.05, cross_class=cross_class, impl="triton")
    exp = ref.fast_nms(b16, s16, 0.5, 40, 30, 0.05, cross_class)
    for x, y in zip(got, exp):
        assert torch.equal(x, y)


def test_triton_opcheck_compile():
    import fastops.triton.nms  # noqa: F401

    b, s = clustered(70), distinct_scores(70)
    yb, ys = _yolact_inputs(60, 2)
    torch.library.opcheck(torch.ops.fastops.nms_triton, (b, s, 0.5))
    torch.library.opcheck(torch.ops.fastops.fast_nms_triton, (yb, ys, 0.5, 20, 10, 0.05, False))

    @torch.compile(fullgraph=True, backend="eager")
    def f(b, s):
        return fastops.nms(b, s, 0.5, impl="triton") + 1

    assert torch.equal(f(b, s), torchvision.ops.nms(b, s, 0.5) + 1)


def test_noncontiguous_multiclass_fast_nms():
    boxes, scores = _mc_inputs(300, 5, False)
    s_cm = scores.t().contiguous().t()  # [N, C] column-major view
    for x, y in zip(fastops.multiclass_nms(boxes, s_cm, 0.2, 0.5, pre_nms_top_k=20, max_det=40),
                    ref.multiclass_nms(boxes, scores, 0.2, 0.5, 20, 40, False)):
        assert torch.equal(x, y)
    pb, ps = _mc_inputs(100, 3, True)
    pb_nc = pb.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    for x, y in zip(fastops.multiclass_nms(pb_nc, ps, 0.2, 0.5), ref.multiclass_nms(pb, ps, 0.2, 0.5)):
        assert torch.equal(x, y)
    yb, ys = _yolact_inputs(400, 6)
    ys_nc = ys.t().contiguous().t()
    yb_nc = yb.t().contiguous().t()
    for cc in (False, True):
        for x, y in zip(fastops.fast_nms(yb_nc, ys_nc, 0.5, 50, 60, cross_class=cc),
                        ref.fast_nms(yb, ys, 0.5, 50, 60, 0.05, cc)):
            assert torch.equal(x, y)


def test_batched_nms_bench_size_ties_in_torchvision_order():
    # the benchmark's workload (20k boxes, 80 classes, torch.rand scores: a few exact ties among the survivors, so
    # the kernel runs ATen's unstable sort of the survivors), and the same with many ties and two NaN scores
    g = torch.Generator().manual_seed(0)
    boxes = clustered(20000)
    idxs = torch.randint(0, 80, (20000,), generator=g)
    for scores in (torch.rand(20000, generator=g), torch.randint(0, 50, (20000,), generator=g).float() / 50):
        expect = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
        assert torch.equal(fastops.batched_nms(boxes, scores, idxs, 0.5), expect)
    scores[[3, 7]] = float("nan")
    scores[[4, 9]] = -0.0
    expect = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(fastops.batched_nms(boxes, scores, idxs, 0.5), expect)


@pytest.mark.parametrize("levels", [1, 2, 7, 300, 3000, 0])
def test_batched_nms_tie_densities_in_torchvision_order(levels):
    # the survivors' sort replays std::sort's partition phase (bit-mask scans) and orders tied runs by the positions
    # it leaves: every density of ties, from all equal to a few pairs (levels 0: torch.rand), against torchvision
    g = torch.Generator().manual_seed(11 + levels)
    boxes = clustered(6000)
    idxs = torch.randint(0, 3, (6000,), generator=g)
    scores = torch.rand(6000, generator=g) if levels == 0 else \
        torch.randint(0, levels, (6000,), generator=g).float() / levels
    for n in (6000, 1100, 1021):
        expect = torchvision.ops.batched_nms(boxes[:n], scores[:n], idxs[:n], 0.7)
        # at 1 and 2 threads (the two halves of the first partition run on two threads)
        for got in per_thread_count(lambda: fastops.batched_nms(boxes[:n], scores[:n], idxs[:n], 0.7)):
            assert torch.equal(got, expect)


@pytest.mark.parametrize("thr", [0.3, 0.5])
@pytest.mark.parametrize("n", [3, 9, 17, 70, 1200])
def test_nms_chains_of_overlapping_heads(n, thr):
    # the AVX2 greedy pass takes up to four heads (boxes 0-3 while each survives the ones before it): chains where
    # each box overlaps its neighbours (IoU 0.6) more than the box two steps away (IoU 0.33), in score order, shuffled
    # and mixed with isolated boxes, so that a pass stops taking heads at every position; against torchvision
    g = torch.Generator().manual_seed(n)
    x = torch.arange(n, dtype=torch.float32) * 4.0 % 400.0
    y = torch.div(torch.arange(n), 100, rounding_mode="floor").float() * 50.0
    chain = torch.stack([x, y, x + 16.0, y + 10.0], 1)  # neighbours: 120/200 = 0.6, two apart: 80/240 = 0.33
    lone = rand_boxes(n, seed=n) + 1000.0
    for boxes in (chain, torch.cat([chain, lone]), torch.cat([chain, lone])[torch.randperm(2 * n, generator=g)]):
        m = boxes.size(0)
        for scores in (torch.linspace(1.0, 0.0, m), torch.rand(m, generator=g)):
            idxs = torch.randint(0, 3, (m,), generator=g)
            expect = torchvision.ops.nms(boxes, scores, thr)
            for got in per_thread_count(lambda: fastops.nms(boxes, scores, thr)):
                assert torch.equal(got, expect)
            expect = torchvision.ops.batched_nms(boxes, scores, idxs, thr)
            for got in per_thread_count(lambda: fastops.batched_nms(boxes, scores, idxs, thr)):
                assert torch.equal(got, expect)
