"""ONNX export of the DensePose family (both exporters): roi_point_sample as GatherND of detectron2's 4 taps
(fastops/registrations/densepose.py), run in onnxruntime and compared with eager fastops at several RoI and point
counts; the chart ops refuse to export with a clear error."""
import io

import pytest
import torch

import fastops
from densepose_helpers import _boxes, _maps
from keypoints_helpers import onnx_session

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])


class Sample(torch.nn.Module):
    def forward(self, maps, roi_index, points):
        return fastops.roi_point_sample(maps, roi_index, points)


def _inputs(R, P, C, Sh, Sw, seed, dtype=torch.float32, points_dtype=None):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(R, C, Sh, Sw, generator=g, dtype=torch.float64).to(dtype)
    idx = torch.randint(0, R, (P,), generator=g)
    pts = torch.rand(P, 2, generator=g, dtype=torch.float64) * torch.tensor([Sw, Sh], dtype=torch.float64)
    if P > 4:  # the grid's edges: 0, the last cell, the far border S (hi clamped), integer coordinates
        pts[0] = torch.tensor([0.0, 0.0])
        pts[1] = torch.tensor([Sw, Sh], dtype=torch.float64)
        pts[2] = torch.tensor([Sw - 1, 2.0])
        pts[3] = torch.tensor([Sw - 0.5, Sh - 0.25])
    return maps, idx, pts.to(points_dtype or dtype)


@EXPORTERS
@pytest.mark.parametrize("dtype,points_dtype", [(torch.float32, None), (torch.float64, None),
                                                (torch.float32, torch.float64)])
def test_roi_point_sample_onnx(dynamo, dtype, points_dtype):
    m = Sample()
    dyn = {0: {0: "R"}, 1: {0: "P"}, 2: {0: "P"}}
    run = onnx_session(m, _inputs(3, 20, 5, 7, 6, 0, dtype, points_dtype), dynamo, dynamic=dyn)
    for R, P, seed in ((3, 20, 0), (6, 57, 1), (1, 9, 2)):
        args = _inputs(R, P, 5, 7, 6, seed, dtype, points_dtype)
        (got,) = run(*args)
        want = m(*args)
        assert got.dtype == want.dtype
        # the kernels' own weights and summation order, unfused: equal to the last bit on these inputs
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@EXPORTERS
@pytest.mark.parametrize("op", ["densepose_chart_to_iuv", "densepose_paste_iuv"])
def test_chart_ops_refuse_onnx(dynamo, op):
    import fastops.onnx

    class Chart(torch.nn.Module):
        def forward(self, coarse, fine, u, v, boxes):
            if op == "densepose_chart_to_iuv":
                return fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes)[0]
            return fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, boxes[:, 0], 40, 50)

    args = (*_maps(2, S=6, K=3), _boxes(2, img=40.0))
    with pytest.raises(Exception, match=f"{op} cannot be exported to ONNX"):
        if dynamo:
            torch.onnx.export(Chart(), args, dynamo=True, custom_translation_table=fastops.onnx.translations())
        else:
            torch.onnx.export(Chart(), args, io.BytesIO(), dynamo=False, opset_version=18)
