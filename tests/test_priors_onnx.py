"""ONNX export of prior_nms (both exporters): decode + TopK + NonMaxSuppression (fastops/registrations/priors.py),
run in onnxruntime and compared with eager fastops at several batch and prior counts; match_priors (training
targets) refuses to export with a clear error."""
import io

import pytest
import torch

import fastops
from keypoints_helpers import onnx_session

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])


class PriorNMS(torch.nn.Module):
    def __init__(self, pad, top_k, max_det, plus_one=True, landmarks=True):
        super().__init__()
        self.args = pad, top_k, max_det, plus_one
        self.landmarks = landmarks

    def forward(self, loc, scores, landms, priors):
        pad, top_k, max_det, plus_one = self.args
        return fastops.prior_nms(loc, scores, landms if self.landmarks else None, priors, (64.0, 48.0), 0.3, 0.4,
                                 top_k, max_det, (0.1, 0.2), pad, plus_one)


def _inputs(B, P, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(P, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
    sizes = torch.rand(P, 2, generator=g, dtype=torch.float64) * 0.25 + 0.05
    priors = torch.cat([centres, sizes], 1)
    loc = torch.randn(B, P, 4, generator=g, dtype=torch.float64) * 0.5
    scores = torch.rand(B, P, generator=g, dtype=torch.float64)
    landms = torch.randn(B, P, 10, generator=g, dtype=torch.float64)
    if P > 4:
        scores[0, :3] = 0.99            # equal scores: ties by prior index
        loc[0, 1, 2] = float("nan")     # a top candidate with a non-finite box: dropped before NMS
        scores[-1, 2] = float("nan")    # never passes the threshold
        loc[-1, 3, 3] = 1e4             # exp overflow: inf box, dropped
    return tuple(t.to(dtype) for t in (loc, scores, landms, priors))


def _check(run, m, args, pad):
    got = run(*args)
    want = m(*args)
    assert torch.equal(got[3], want[3])  # counts / num_valid
    assert got[0].shape == want[0].shape and got[2].shape == want[2].shape
    assert torch.equal(got[1], want[1])  # the selected scores: the same detections in the same order
    # boxes / landmarks: onnxruntime's Exp vs libm's (<= 1 ulp before scaling)
    for a, b in ((got[0], want[0]), (got[2], want[2])):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-5, equal_nan=True)


@EXPORTERS
@pytest.mark.parametrize("pad,top_k,max_det", [(False, 40, 12), (True, 40, 12), (False, -1, -1), (True, 25, 60)])
def test_prior_nms_onnx(dynamo, pad, top_k, max_det):
    m = PriorNMS(pad, top_k, max_det)
    dyn = {0: {0: "B", 1: "P"}, 1: {0: "B", 1: "P"}, 2: {0: "B", 1: "P"}, 3: {0: "P"}}
    run = onnx_session(m, _inputs(2, 60, 0), dynamo, dynamic=dyn)
    for B, P, seed in ((2, 60, 0), (3, 90, 1), (1, 33, 2)):
        args = _inputs(B, P, seed)
        _check(run, m, args, pad)
    assert run(*_inputs(3, 90, 1))[3].sum() > 3  # several detections per image survive


@EXPORTERS
def test_prior_nms_onnx_float64_no_landmarks_plain_iou(dynamo):
    m = PriorNMS(True, 50, 20, plus_one=False, landmarks=False)
    dyn = {0: {0: "B", 1: "P"}, 1: {0: "B", 1: "P"}, 2: {0: "B", 1: "P"}, 3: {0: "P"}}
    run = onnx_session(m, _inputs(2, 50, 3, torch.float64), dynamo, dynamic=dyn)
    for B, P, seed in ((2, 50, 3), (4, 70, 4)):
        _check(run, m, _inputs(B, P, seed, torch.float64), True)


@EXPORTERS
def test_match_priors_refuses_onnx(dynamo):
    class Match(torch.nn.Module):
        def forward(self, gt, labels, priors):
            return fastops.match_priors(gt, labels, priors)[0]

    import fastops.onnx

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 4, generator=g)
    gt[..., 2:] += gt[..., :2]
    args = (gt, torch.ones(2, 3, dtype=torch.int64), _inputs(1, 20, 0)[3])
    with pytest.raises(Exception, match="match_priors cannot be exported to ONNX"):
        if dynamo:
            torch.onnx.export(Match(), args, dynamo=True, custom_translation_table=fastops.onnx.translations())
        else:
            torch.onnx.export(Match(), args, io.BytesIO(), dynamo=False, opset_version=18)
