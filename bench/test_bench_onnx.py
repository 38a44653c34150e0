"""onnxruntime time of fastops' exported graphs (issue 13.5), 1 and 2 threads (onnxruntime's intra-op threads =
torch's). The files are exported once per module (not timed); each side runs the same inputs.

* Mask R-CNN post-processing (torchvision's ``postprocess_detections`` + ``maskrcnn_inference`` +
  ``paste_masks_in_image``: 1000 proposals x 91 classes -> 100 detections, 28x28 masks pasted into 800x1216),
  exported with the TorchScript exporter as torchvision's detection models are:
  anchor = plain torchvision's exported graph (``NonMaxSuppression`` + its ``Loop`` paste) in onnxruntime,
  fastops = the same module under ``fastops.patch_torchvision()`` exported (fastops' decompositions) in
  onnxruntime; side "eager" = the patched module in PyTorch (for information).
* YOLACT head post-processing (19248 priors x 80 classes, 138x138 prototypes -> masks at 550x550) and CenterNet
  head decoding (``[1,80,128,128]`` heads -> 100 detections), exported with the dynamo exporter: torchvision has no
  export of these, so anchor = the same fastops module in eager PyTorch, fastops = its exported graph in
  onnxruntime (what deploying through ONNX costs or saves).
"""
import io

import pytest
import torch
from torch import nn

import fastops
import fastops.onnx
from benchutil import record, run

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIDES = ("anchor", "fastops")
_CACHE = {}


def _session(model_bytes, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _export(module, args, dynamo):
    if dynamo:
        prog = torch.onnx.export(module, args, dynamo=True, custom_translation_table=fastops.onnx.translations(),
                                 verbose=False)
        return prog.model_proto.SerializeToString()
    f = io.BytesIO()
    torch.onnx.export(module, args, f, dynamo=False)
    return f.getvalue()


def _ort_call(model_bytes, args, threads):
    sess = _session(model_bytes, threads)
    feed = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
    return lambda: sess.run(None, feed)


# ---- Mask R-CNN post-processing --------------------------------------------------------------------------------

class MaskRCNNPost(nn.Module):
    def __init__(self, roi_heads, image_size):
        super().__init__()
        self.rh = roi_heads
        self.size = image_size

    def forward(self, class_logits, box_regression, proposals, mask_logits):
        import torchvision.models.detection.roi_heads as rh_mod

        boxes, scores, labels = self.rh.postprocess_detections(class_logits, box_regression, [proposals],
                                                               [self.size])
        boxes, scores, labels = boxes[0], scores[0], labels[0]
        probs = rh_mod.maskrcnn_inference(mask_logits[: boxes.shape[0]], [labels])[0]
        return boxes, scores, labels, rh_mod.paste_masks_in_image(probs, boxes, self.size)


def _maskrcnn():
    if "maskrcnn" not in _CACHE:
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        torch.manual_seed(0)
        rh = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0).roi_heads.eval()
        size = (800, 1216)
        g = torch.Generator().manual_seed(1)
        xy = torch.rand(1000, 2, generator=g) * torch.tensor([1100.0, 700.0])
        wh = 8 + torch.rand(1000, 2, generator=g) * 300
        args = (torch.randn(1000, 91, generator=g), torch.randn(1000, 364, generator=g) * 0.1,
                torch.cat([xy, xy + wh], 1), torch.randn(100, 91, 28, 28, generator=g))
        module = MaskRCNNPost(rh, size).eval()
        with torch.no_grad():
            plain = _export(module, args, dynamo=False)
            with fastops.patch_torchvision():
                patched = _export(module, args, dynamo=False)
        _CACHE["maskrcnn"] = module, args, plain, patched
    return _CACHE["maskrcnn"]


@pytest.mark.parametrize("side", SIDES + ("eager",))
def test_maskrcnn_postprocess_onnxruntime(benchmark, threads, side):
    module, args, plain, patched = _maskrcnn()
    record(benchmark, "Mask R-CNN postprocess (onnxruntime)",
           "1000 props x 91 cls -> 100 dets, masks 800x1216; anchor: torchvision's graph", threads, side)
    if side == "eager":
        def step():
            with torch.no_grad(), fastops.patch_torchvision():
                return module(*args)
    else:
        step = _ort_call(plain if side == "anchor" else patched, args, threads)
    run(benchmark, step, rounds=3)


# ---- YOLACT and CenterNet heads --------------------------------------------------------------------------------

class YolactPost(nn.Module):
    def __init__(self, model, size):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, loc, conf, mask, priors, proto):
        r = self.model.postprocess({"loc": loc, "conf": conf, "mask": mask, "priors": priors, "proto": proto},
                                   self.size)[0]
        return r["boxes"], r["labels"], r["scores"], r["masks"]


def _yolact():
    if "yolact" not in _CACHE:
        from fastops.models.yolact import Yolact

        torch.manual_seed(0)
        m = Yolact(81, 550).eval()
        with torch.no_grad():  # spread scores, boxes and coefficients like a trained model's (bench_model_yolact)
            head = m.prediction_layers[0]
            head.conf_layer.weight.mul_(0.05)
            head.bbox_layer.weight.mul_(0.01)
            head.mask_layer.weight.mul_(0.02)
            h = m.heads(torch.randn(1, 3, 550, 550, generator=torch.Generator().manual_seed(1)))
        args = (h["loc"], h["conf"], h["mask"], h["priors"], h["proto"])
        module = YolactPost(m, (550, 550)).eval()
        with torch.no_grad():
            _CACHE["yolact"] = module, args, _export(module, args, dynamo=True)
    return _CACHE["yolact"]


class CenterNetPost(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hm, wh, reg):
        return self.model.postprocess({"hm": hm, "wh": wh, "reg": reg})


def _centernet():
    if "centernet" not in _CACHE:
        from fastops.models.centernet import CenterNet

        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        args = (torch.randn(1, 80, 128, 128, generator=g) - 2.19, torch.rand(1, 2, 128, 128, generator=g) * 40,
                torch.rand(1, 2, 128, 128, generator=g))
        module = CenterNetPost(CenterNet(80).eval()).eval()
        with torch.no_grad():
            _CACHE["centernet"] = module, args, _export(module, args, dynamo=True)
    return _CACHE["centernet"]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("model", ["yolact", "centernet"])
def test_head_postprocess_onnxruntime(benchmark, threads, model, side):
    module, args, graph = _yolact() if model == "yolact" else _centernet()
    workload = ("19248 priors x 80 cls, proto 138x138 -> masks 550x550" if model == "yolact"
                else "heads [1,80,128,128] -> 100 dets")
    record(benchmark, f"{'YOLACT' if model == 'yolact' else 'CenterNet'} postprocess (onnxruntime)",
           workload + "; anchor: fastops eager", threads, side)
    if side == "anchor":
        def step():
            with torch.no_grad():
                return module(*args)
    else:
        step = _ort_call(graph, args, threads)
    run(benchmark, step, rounds=5)
