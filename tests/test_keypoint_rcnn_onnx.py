"""ONNX export of roi_heatmaps_to_keypoints (both exporters): the bicubic upsampling as 4-tap gathers per axis on a
grid padded to the largest RoI (fastops/registrations/keypoint_rcnn.py), run in onnxruntime and compared with eager
fastops (which is torchvision's result bit for bit, tests/test_keypoint_rcnn.py) at several dynamic RoI counts."""
import pytest
import torch

import fastops
from keypoints_helpers import onnx_session

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])


class H2K(torch.nn.Module):
    def forward(self, maps, rois):
        return fastops.roi_heatmaps_to_keypoints(maps, rois)


def _inputs(R, K, H, W, seed, maps_dtype=torch.float32, rois_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(R, K, H, W, generator=g, dtype=torch.float64).to(maps_dtype)
    xy = torch.rand(R, 2, generator=g, dtype=torch.float64) * 200
    wh = torch.rand(R, 2, generator=g, dtype=torch.float64) * 60 + 0.3
    rois = torch.cat([xy, xy + wh], 1)
    if R > 2:
        rois[0, 2:] = rois[0, :2] + 1.0     # exactly 1 x 1 px
        rois[1, 2] = rois[1, 0] - 3.0       # inverted: 1 px wide
        rois[2, 3] = rois[2, 1] + 0.25      # sub-pixel: 1 px high
    if R > 3:
        maps[3, 0] = 0.0                    # constant map: ties, the first pixel wins
    return maps, rois.to(rois_dtype)


def _check(run, m, args):
    kp, sc = run(*args)
    ekp, esc = m(*args)
    assert kp.dtype == sc.dtype == torch.float32
    # the argmax positions (hence x, y) are exact; scores are the upsampled value at the argmax: onnxruntime
    # evaluates ATen's baseline (unfused) order, eager the AVX2 one (fused multiply-adds): a few ulp
    assert torch.equal(kp, ekp)
    torch.testing.assert_close(sc, esc, rtol=1e-5, atol=1e-5)


@EXPORTERS
def test_roi_heatmaps_to_keypoints_onnx(dynamo):
    m = H2K()
    run = onnx_session(m, _inputs(5, 3, 14, 12, 0), dynamo, dynamic={0: {0: "R"}, 1: {0: "R"}})
    for R, seed in ((5, 0), (1, 1), (9, 2)):
        _check(run, m, _inputs(R, 3, 14, 12, seed))


@EXPORTERS
@pytest.mark.parametrize("maps_dtype,rois_dtype", [(torch.float64, torch.float64), (torch.float32, torch.float64),
                                                   (torch.float64, torch.float32)])
def test_roi_heatmaps_to_keypoints_onnx_dtypes(dynamo, maps_dtype, rois_dtype):
    m = H2K()
    args = _inputs(4, 2, 9, 11, 3, maps_dtype, rois_dtype)
    run = onnx_session(m, args, dynamo, dynamic={0: {0: "R"}, 1: {0: "R"}})
    for R, seed in ((4, 3), (7, 4)):
        _check(run, m, _inputs(R, 2, 9, 11, seed, maps_dtype, rois_dtype))


def test_roi_heatmaps_to_keypoints_onnx_no_rois():
    m = H2K()
    run = onnx_session(m, _inputs(3, 4, 8, 8, 5), False, dynamic={0: {0: "R"}, 1: {0: "R"}})
    kp, sc = run(*_inputs(0, 4, 8, 8, 5))
    assert kp.shape == (0, 4, 3) and sc.shape == (0, 4)
