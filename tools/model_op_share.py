"""Each model's share of inference time spent in the ops fastops provides, before (reference path) and after.

    .venv/bin/python tools/model_op_share.py [--threads 1 2] [--models maskrcnn yolact ...] [--rounds 3]

"Before" runs the model's reference path (bundled models: ``impl="reference"``; torchvision Mask R-CNN: plain
torchvision); "after" runs fastops (``impl="auto"``; Mask R-CNN under ``fastops.patch_torchvision()``). On both
sides the op call sites are timed as regions (outermost call only): every public ``fastops.*`` function (called
with either impl), ``MultiScaleRoIAlign`` pooling, and torchvision's ``nms`` / ``batched_nms`` /
``paste_masks_in_image`` / ``roi_align`` names. A separate run under ``torch.profiler`` sums the top-level
``fastops::`` dispatcher ops, which checks that the fastops side really runs the compiled kernels (and the
reference side none). Workloads are those of bench/test_bench_model_*.py and bench/test_bench_patch_torchvision.py.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import statistics
import time
from collections import defaultdict

import torch

import fastops

# -- region timers ------------------------------------------------------------------------------------------------

_DEPTH = [0]
_TIMES: dict = defaultdict(float)


def _timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _DEPTH[0]:
            return fn(*args, **kwargs)
        _DEPTH[0] += 1
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _TIMES[name] += time.perf_counter() - t0
            _DEPTH[0] -= 1
    return wrapper


def _sites():
    """(owner, attribute, label) of every op call site a model may use."""
    sites = [(fastops, n, n) for n in sorted(dir(fastops))
             if not n.startswith("_") and n[0].islower() and callable(getattr(fastops, n))
             and getattr(getattr(fastops, n), "__module__", "").startswith("fastops.ops")]
    sites.append((fastops.MultiScaleRoIAlign, "forward", "MultiScaleRoIAlign"))
    for module, attr in [("torchvision.ops.poolers", "_multiscale_roi_align"), ("torchvision.ops.boxes", "nms"),
                         ("torchvision.ops.boxes", "batched_nms"), ("torchvision.ops.poolers", "roi_align"),
                         ("torchvision.models.detection.roi_heads", "roi_align"),
                         ("torchvision.models.detection.roi_heads", "paste_masks_in_image"),
                         ("torchvision.models.detection.roi_heads", "heatmaps_to_keypoints"),
                         ("torchvision.models.detection.transform", "paste_masks_in_image")]:
        sites.append((importlib.import_module(module), attr, f"tv.{attr}"))
    return sites


@contextlib.contextmanager
def timed_regions():
    saved = []
    for owner, attr, label in _sites():
        fn = getattr(owner, attr)
        saved.append((owner, attr, fn))
        setattr(owner, attr, _timed(label, fn))
    try:
        yield
    finally:
        for owner, attr, fn in reversed(saved):
            setattr(owner, attr, fn)


def fastops_profile(step):
    """(total ms, ms in top-level fastops:: ops, their names) of one profiled call of step()."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        total = time.perf_counter() - t0
    top, names = 0.0, set()
    for e in prof.events():
        if not e.name.startswith("fastops::"):
            continue
        names.add(e.name)
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("fastops::"):
            parent = parent.cpu_parent
        if parent is None:
            top += e.cpu_time_total / 1e3
    return total * 1e3, top, names


def measure(step, rounds=3):
    """Median total ms, median op-region ms, {label: ms} of the median round, and the profiler's view."""
    step()  # warm-up
    runs = []
    for _ in range(rounds):
        _TIMES.clear()
        with timed_regions():
            t0 = time.perf_counter()
            step()
            total = (time.perf_counter() - t0) * 1e3
        runs.append((total, sum(_TIMES.values()) * 1e3, {k: v * 1e3 for k, v in _TIMES.items()}))
    runs.sort(key=lambda r: r[0])
    total, region, per_label = runs[len(runs) // 2]
    return {"total_ms": total, "region_ms": region, "per_label": per_label, "profile": fastops_profile(step)}


# -- workloads (as in bench/) ------------------------------------------------------------------------------------

def _torchvision(builder_name, name):
    import torchvision.models.detection as D

    torch.manual_seed(0)
    m = getattr(D, builder_name)(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
    x = [torch.rand(3, 800, 1216, generator=torch.Generator().manual_seed(1))]

    def step(side):
        with torch.no_grad(), (fastops.patch_torchvision() if side == "after" else contextlib.nullcontext()):
            return m(x)
    return f"torchvision {name}", "1x3x800x1216, 100 dets", step


def _maskrcnn():
    return _torchvision("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn")


def _keypointrcnn():
    return _torchvision("keypointrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn")


def _bundled(build, call):
    m, x = build()

    def step(side):
        m.impl = "reference" if side == "before" else "auto"
        with torch.no_grad():
            return call(m, x)
    return step


def _yolact():
    from fastops.models.yolact import Yolact

    def build():
        torch.manual_seed(0)
        m = Yolact(81, 550).eval()
        with torch.no_grad():
            head = m.prediction_layers[0]
            head.conf_layer.weight.mul_(0.05)
            head.bbox_layer.weight.mul_(0.01)
            head.mask_layer.weight.mul_(0.02)
        return m, torch.randn(1, 3, 550, 550, generator=torch.Generator().manual_seed(1))
    return "YOLACT", "1x3x550x550 -> 550x550", _bundled(build, lambda m, x: m(x))


def _centernet():
    from fastops.models.centernet import CenterNet

    def build():
        torch.manual_seed(0)
        return CenterNet(80).eval(), torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    return "CenterNet", "R18 1x3x256x256, 80 cls, detect", _bundled(build, lambda m, x: m.detect(x))


def _hourglass():
    from fastops.models.hourglass import StackedHourglass

    def build():
        torch.manual_seed(0)
        m = StackedHourglass(nstack=2, inp_dim=128, oup_dim=16).eval()
        return m, torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    return "Stacked Hourglass", "2 stacks x 128 ch, 1x3x256x256, predict", _bundled(build, lambda m, x: m.predict(x))


def _upsnet():
    from fastops.models.panoptic import UPSNet

    def build():
        torch.manual_seed(0)
        m = UPSNet(80, 53, min_size=512, max_size=768).eval()
        with torch.no_grad():
            m.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.3)
        return m, [torch.rand(3, 512, 768, generator=torch.Generator().manual_seed(1))]
    return "UPSNet", "3x512x768, 80+53 classes", _bundled(build, lambda m, x: m(x))


def _retinaface():
    from fastops.models.retinaface import RetinaFace

    def build():
        torch.manual_seed(0)
        m = RetinaFace("mobilenet0.25").eval()
        with torch.no_grad():
            for h in list(m.ClassHead) + list(m.BboxHead) + list(m.LandmarkHead):
                h.conv1x1.weight.mul_(0.05)
        return m, torch.randn(1, 3, 640, 640, generator=torch.Generator().manual_seed(2))
    return "RetinaFace", "mobilenet0.25 1x3x640x640, detect", _bundled(build, lambda m, x: m.detect(x))


def _densepose():
    from fastops.models.densepose import DensePoseRCNN

    def build():
        torch.manual_seed(0)
        m = DensePoseRCNN(2, min_size=320, max_size=320, box_detections_per_img=20, box_score_thresh=0.0,
                          rpn_post_nms_top_n_test=100, head_channels=128).eval()
        return m, [torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(1))]
    return "DensePose R-CNN", "320x320, 20 dets, head 128x8, detect", _bundled(build, lambda m, x: m.detect(x))


MODELS = {"maskrcnn": _maskrcnn, "keypointrcnn": _keypointrcnn, "yolact": _yolact, "centernet": _centernet,
          "hourglass": _hourglass, "upsnet": _upsnet, "retinaface": _retinaface, "densepose": _densepose}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    print("| model | workload | thr | path | total ms | in op regions ms | share | top-level fastops:: ms "
          "(profiled) | largest regions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in args.models:
        name, workload, step = MODELS[key]()
        for threads in args.threads:
            torch.set_num_threads(threads)
            for side in ("before", "after"):
                r = measure(lambda: step(side), args.rounds)
                ptotal, pfast, _ = r["profile"]
                top = sorted(r["per_label"].items(), key=lambda kv: -kv[1])[:3]
                print(f"| {name} | {workload} | {threads} | {side} | {r['total_ms']:.1f} | {r['region_ms']:.1f} | "
                      f"{100 * r['region_ms'] / r['total_ms']:.1f}% | {pfast:.1f} of {ptotal:.1f} | "
                      + ", ".join(f"{k} {v:.1f}" for k, v in top) + " |", flush=True)


if __name__ == "__main__":
    main()
