"""NMS family bad inputs: each case that could crash runs in a fresh interpreter (tests/isolated.py), the rest with
pytest.raises. Every error names the argument; every accepted edge returns torchvision's / the reference's result."""
import pytest
import torch

import fastops
from fastops.ops.nms import NmsInputError
from isolated import expect_error, expect_ok

B = "b = torch.tensor([[0., 0, 3, 1], [1., 0, 4, 1], [2, 0, 5, 1]]); s = torch.tensor([.9, .8, .7])\n"


# ---- could crash: isolated -----------------------------------------------------------------------------------------

ISOLATED_ERRORS = [
    # integer arguments past int64 or past the sizes the kernels index with
    ("fast_nms top_k 2**63", "fastops.fast_nms(b, s[None], 0.5, 2**63)", "top_k"),
    ("fast_nms max_det -2**63-1", "fastops.fast_nms(b, s[None], 0.5, 200, -2**63 - 1)", "max_det"),
    ("multiclass pre_nms_top_k 2**64", "fastops.multiclass_nms(b, s[:, None], 0.1, 0.5, 2**64)", "pre_nms_top_k"),
    ("multiclass pad max_det 2**40", "fastops.multiclass_nms(b, s[:, None], 0.1, 0.5, -1, 2**40, True)", "max_det"),
    ("multiclass pad max_det 0", "fastops.multiclass_nms(b, s[:, None], 0.1, 0.5, -1, 0, True)", "max_det"),
    ("op multiclass pad max_det 2**40",
     "torch.ops.fastops.multiclass_nms(b, s[:, None], 0.1, 0.5, -1, 2**40, True)", "max_det"),
    ("op multiclass pad max_det -1", "torch.ops.fastops.multiclass_nms(b, s[:, None], 0.1, 0.5, -1, -1, True)",
     "max_det"),
    # shapes / dtypes straight into the compiled ops (the host checks in csrc/nms/nms.cpp)
    ("op nms 1-D boxes", "torch.ops.fastops.nms(torch.rand(4), torch.rand(1), 0.5)", "boxes"),
    ("op nms N mismatch", "torch.ops.fastops.nms(b, torch.rand(5), 0.5)", "scores"),
    ("op nms int boxes", "torch.ops.fastops.nms(b.long(), s.long(), 0.5)", "boxes"),
    ("op batched idxs float", "torch.ops.fastops.batched_nms(b, s, s, 0.5)", "idxs"),
    ("op batched idxs N", "torch.ops.fastops.batched_nms(b, s, torch.zeros(9, dtype=torch.long), 0.5)", "idxs"),
    ("op fast_nms scores [N, C]", "torch.ops.fastops.fast_nms(b, torch.rand(3, 2), 0.5, 9, 9, 0.1, False)", "scores"),
    ("op multiclass boxes [N, C+1, 4]",
     "torch.ops.fastops.multiclass_nms(torch.rand(3, 3, 4), torch.rand(3, 2), 0.1, 0.5, -1, 9, False)", "boxes"),
    ("op soft_nms method", "torch.ops.fastops.soft_nms(b, s, 0.3, 0.5, 0.0, 'hard')", "method"),
    ("op soft_nms sigma 0", "torch.ops.fastops.soft_nms(b, s, 0.3, 0.0, 0.0, 'gaussian')", "sigma"),
]


@pytest.mark.parametrize("case", ISOLATED_ERRORS, ids=[c[0] for c in ISOLATED_ERRORS])
def test_isolated_error(case):
    _, code, match = case
    expect_error(B + code, RuntimeError if code.startswith("torch.ops") else ValueError, match)


ISOLATED_OK = [
    # stride-0 (expanded) and transposed inputs, every op
    ("stride-0 boxes", "bb = torch.tensor([[0., 0, 2, 2]]).expand(50, 4); ss = torch.rand(50)\n"
                       "assert fastops.nms(bb, ss, 0.5).numel() == 1\n"
                       "assert fastops.batched_nms(bb, ss, torch.zeros(50, dtype=torch.long).expand(50), 0.5).numel() == 1\n"
                       "assert fastops.fast_nms(bb, ss[None].expand(3, 50), 0.5)[0].numel() == 3\n"
                       "assert fastops.multiclass_nms(bb, ss[:, None].expand(50, 3), 0.0)[0].shape == (3, 4)\n"
                       "assert fastops.soft_nms(bb, ss, method='naive')[1].numel() == 1"),
    # NaN / inf everywhere: defined results (docstring), no crash, on every op
    ("nan and inf", "bb = torch.tensor([[0., 0, 2, 2], [float('nan')] * 4, [0, 0, float('inf'), 2], [1, 1, 3, 3]])\n"
                    "ss = torch.tensor([float('nan'), 0.5, float('inf'), -float('inf')])\n"
                    "assert torch.equal(fastops.nms(bb, ss, 0.5), torchvision.ops.nms(bb, ss, 0.5))\n"
                    "fastops.batched_nms(bb, ss, torch.tensor([0, 0, 1, 1]), 0.5)\n"
                    "fastops.fast_nms(bb, ss[None], 0.5); fastops.fast_nms(bb, ss[None], 0.5, cross_class=True)\n"
                    "fastops.multiclass_nms(bb, ss[:, None], 0.0, 0.5, pad=True)\n"
                    "for m in ('linear', 'gaussian', 'naive'): fastops.soft_nms(bb, ss, method=m)"),
    # huge and negative coordinates (float overflow of areas to inf)
    ("huge boxes", "bb = torch.tensor([[-3e38, -3e38, 3e38, 3e38], [0., 0, 3e38, 3e38], [1e30, 1e30, 2e30, 2e30]])\n"
                   "ss = torch.tensor([.9, .8, .7])\n"
                   "assert torch.equal(fastops.nms(bb, ss, 0.5), torchvision.ops.nms(bb, ss, 0.5))\n"
                   "assert torch.equal(fastops.batched_nms(bb, ss, torch.tensor([0, 1, 0]), 0.5),\n"
                   "                   torchvision.ops.batched_nms(bb, ss, torch.tensor([0, 1, 0]), 0.5))\n"
                   "fastops.fast_nms(bb, ss[None], 0.5); fastops.soft_nms(bb, ss)"),
    # extreme class ids (the counting-sort range computation must not overflow)
    ("extreme idxs", "bb = torch.rand(6, 2).repeat(1, 2) + torch.tensor([0., 0, 1, 1]); ss = torch.rand(6)\n"
                     "ii = torch.tensor([-2**63, 2**63 - 1, 0, -2**63, 2**63 - 1, 5])\n"
                     "from torchvision.ops.boxes import _batched_nms_vanilla\n"
                     "assert torch.equal(fastops.batched_nms(bb, ss, ii, 0.5), _batched_nms_vanilla(bb, ss, ii, 0.5))"),
    # top_k / max_det far beyond N; pre_nms_top_k beyond N
    ("big top_k", "assert fastops.fast_nms(b, s[None], 0.5, 2**62, 2**62)[0].tolist() == [0, 1, 2]\n"
                  "assert fastops.multiclass_nms(b, s[:, None], 0.1, 0.5, 2**62, 2**62)[3].tolist() == [0, 1, 2]"),
    # empty inputs for every op and impl
    ("empty", "e = torch.zeros(0, 4)\n"
              "for impl in ('cpp', 'reference', 'triton'):\n"
              "    assert fastops.nms(e, torch.zeros(0), 0.5, impl).shape == (0,)\n"
              "    assert fastops.batched_nms(e, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5, impl).shape == (0,)\n"
              "    assert fastops.fast_nms(e, torch.zeros(2, 0), 0.5, 9, 9, 0.0, False, impl)[0].shape == (0,)\n"
              "for impl in ('cpp', 'reference'):\n"
              "    assert fastops.soft_nms(e, torch.zeros(0), impl=impl)[0].shape == (0, 5)\n"
              "    assert fastops.multiclass_nms(e, torch.zeros(0, 3), impl=impl)[0].shape == (0, 4)"),
]


@pytest.mark.parametrize("case", ISOLATED_OK, ids=[c[0] for c in ISOLATED_OK])
def test_isolated_ok(case):
    expect_ok(B + case[1])


# ---- plain errors ------------------------------------------------------------------------------------------------

b = torch.tensor([[0.0, 0, 3, 1], [1.0, 0, 4, 1], [2, 0, 5, 1]])
s = torch.tensor([0.9, 0.8, 0.7])

PLAIN = [
    ("boxes 1-D", lambda: fastops.nms(torch.rand(4), torch.rand(3), 0.5), "boxes"),
    ("boxes [N, 3]", lambda: fastops.nms(torch.rand(3, 3), s, 0.5), "boxes"),
    ("scores N", lambda: fastops.nms(b, torch.rand(4), 0.5), "scores"),
    ("scores dtype", lambda: fastops.nms(b, s.double(), 0.5), "scores"),
    ("boxes int", lambda: fastops.nms(b.long(), s, 0.5), "boxes"),
    ("boxes not a tensor", lambda: fastops.nms(b.tolist(), s, 0.5), "boxes"),
    ("iou nan", lambda: fastops.nms(b, s, float("nan")), "iou_threshold"),
    ("iou str", lambda: fastops.nms(b, s, "0.5"), "iou_threshold"),
    ("idxs float", lambda: fastops.batched_nms(b, s, s, 0.5), "idxs"),
    ("idxs bool", lambda: fastops.batched_nms(b, s, s > 0, 0.5), "idxs"),
    ("idxs 2-D", lambda: fastops.batched_nms(b, s, torch.zeros(3, 1, dtype=torch.long), 0.5), "idxs"),
    ("multiclass scores 1-D", lambda: fastops.multiclass_nms(b, s), "scores"),
    ("multiclass boxes C", lambda: fastops.multiclass_nms(torch.rand(3, 2, 4), torch.rand(3, 3)), "boxes"),
    ("multiclass top_k float", lambda: fastops.multiclass_nms(b, s[:, None], 0.1, 0.5, 2.0), "pre_nms_top_k"),
    ("multiclass max_det bool", lambda: fastops.multiclass_nms(b, s[:, None], 0.1, 0.5, -1, True), "max_det"),
    ("multiclass score nan", lambda: fastops.multiclass_nms(b, s[:, None], float("nan")), "score_threshold"),
    ("multiclass triton", lambda: fastops.multiclass_nms(b, s[:, None], impl="triton"), "triton"),
    ("fast_nms scores [N, C]", lambda: fastops.fast_nms(b, torch.rand(3, 2)), "scores"),
    ("fast_nms top_k float", lambda: fastops.fast_nms(b, s[None], 0.5, 1.5), "top_k"),
    ("soft method", lambda: fastops.soft_nms(b, s, method="hard"), "method"),
    ("soft sigma", lambda: fastops.soft_nms(b, s, sigma=0.0, method="gaussian"), "sigma"),
    ("soft min_score nan", lambda: fastops.soft_nms(b, s, min_score=float("nan")), "min_score"),
    ("soft triton", lambda: fastops.soft_nms(b, s, impl="triton"), "triton"),
    ("impl", lambda: fastops.nms(b, s, 0.5, "cuda"), "impl"),
]


@pytest.mark.parametrize("case", PLAIN, ids=[c[0] for c in PLAIN])
def test_plain_error(case):
    _, fn, match = case
    with pytest.raises(ValueError, match=match):
        fn()


@pytest.mark.parametrize("case", [c for c in PLAIN if c[0] not in ("impl", "multiclass triton", "soft triton")],
                         ids=lambda c: c[0])
def test_input_errors_are_runtime_errors_too(case):
    # torchvision raises RuntimeError for the same bad input: code catching it keeps working after the swap
    with pytest.raises(RuntimeError):
        case[1]()
    with pytest.raises(NmsInputError):
        case[1]()


def test_no_input_mutated():
    bb, ss = torch.rand(200, 2).repeat(1, 2) + torch.tensor([0.0, 0, 0.3, 0.3]), torch.rand(200)
    ii = torch.randint(0, 3, (200,))
    copies = [t.clone() for t in (bb, ss, ii)]
    fastops.nms(bb, ss, 0.5)
    fastops.batched_nms(bb, ss, ii, 0.5)
    fastops.fast_nms(bb, ss[None], 0.5)
    fastops.multiclass_nms(bb, ss[:, None], 0.1)
    fastops.soft_nms(bb, ss)
    assert all(torch.equal(a, c) for a, c in zip((bb, ss, ii), copies))


@pytest.mark.parametrize("impl", ["cpp", "reference", "triton"])
def test_fast_nms_without_classes(impl):
    # C = 0 with boxes present: the reference used to fail here (issue 11); every impl returns three empty outputs
    out = fastops.fast_nms(b, torch.zeros(0, 3), 0.5, 9, 9, 0.0, False, impl)
    assert len(out) == 3 and all(t.numel() == 0 for t in out) and out[0].dtype == torch.int64
    out = fastops.fast_nms(b, torch.zeros(0, 3), 0.5, 9, 9, 0.0, True, impl)
    assert all(t.numel() == 0 for t in out)
