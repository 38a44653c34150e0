"""DensePose: chart post-processing (`densepose_chart_to_iuv`, `densepose_paste_iuv`) and point sampling for the
chart losses (`roi_point_sample`, with `densepose_point_grid` to place annotated points in the predictor grid).

Conventions and anchors: docs/densepose.md. Compiled kernels: `torch.ops.fastops.<name>` (schemas in
csrc/densepose/densepose.cpp); `impl="triton"` runs `fastops::<name>_triton` (fastops/triton/densepose.py);
`impl="reference"` runs the detectron2 transcription in fastops.reference.densepose.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

import fastops.registrations.densepose  # noqa: F401  (fake kernels, autograd, autocast)
from fastops._library import FLOAT_DTYPES, check_int, check_tensor, dispatch, reference_module, triton_module
from fastops.ops._keypoints import autocast_float32, traced_call

MAX_IMAGE_SIDE = 1 << 18

torch.fx.wrap("densepose_chart_to_iuv")
torch.fx.wrap("densepose_paste_iuv")
torch.fx.wrap("roi_point_sample")


def _check_chart(coarse, fine, u, v, boxes):
    check_tensor("fine", fine, dim=4, dtypes=FLOAT_DTYPES)
    R, K, S1, S2 = fine.shape
    if K < 1 or S1 < 1 or S2 < 1:
        raise ValueError(f"fine must be [R, K, S, S] with K, S >= 1, got {tuple(fine.shape)}")
    check_tensor("coarse", coarse, dim=4, dtypes=(fine.dtype,), device=fine.device)
    if coarse.size(0) != R or coarse.size(1) < 1 or tuple(coarse.shape[2:]) != (S1, S2):
        raise ValueError(f"coarse must be [R, Kc, S, S] = [{R}, Kc, {S1}, {S2}] like fine, got {tuple(coarse.shape)}")
    for name, t in (("u", u), ("v", v)):
        check_tensor(name, t, dim=4, dtypes=(fine.dtype,), device=fine.device)
        if t.shape != fine.shape:
            raise ValueError(f"{name} must have fine's shape {tuple(fine.shape)} (one map per part, the same "
                             f"channel count), got {tuple(t.shape)}")
    check_tensor("boxes", boxes, dim=2, dtypes=FLOAT_DTYPES, device=fine.device)
    if tuple(boxes.shape) != (R, 4):
        raise ValueError(f"boxes must be [R, 4] = [{R}, 4], got {tuple(boxes.shape)}")
    if not torch.compiler.is_compiling() and R > 0 and not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes must be finite (NaN or inf box)")


def densepose_chart_to_iuv(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor, boxes: Tensor,
                           impl: str = "auto") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """DensePose chart predictor outputs -> per-detection labels and U/V on the detection's box, all detections at
    once (detectron2's ``densepose_chart_predictor_output_to_result`` without materialising the resized maps).

    ``coarse [R, Kc, S, S]`` (Kc = 2: background / foreground), ``fine [R, K, S, S]`` (K = 25: background + 24
    parts), ``u``, ``v`` ``[R, K, S, S]`` (same dtype and device), ``boxes [R, 4]`` XYXY in image pixels.

    Per detection, as detectron2: the box becomes integer XYWH (``x1, y1, x2 - x1, y2 - y1`` truncated toward
    zero, w and h at least 1); each map is sampled at the ``h x w`` output pixels with
    ``F.interpolate(mode="bilinear", align_corners=False)``'s taps; ``label = argmax(fine) * (argmax(coarse) > 0)``
    (torch.argmax's rule: the first maximum wins, NaN counts as the maximum); U and V of the winning part (0 on
    background). The argmaxes run over the channels per pixel; only the chosen part's U/V are interpolated.

    Returns ``(labels, uv, offsets, boxes_xywh)``: ``labels`` uint8 ``[N]`` and ``uv`` float32 ``[2 N]`` packed per
    detection (detection i's ``labels[offsets[i]:offsets[i+1]].view(h, w)`` and
    ``uv[2 offsets[i]:2 offsets[i+1]].view(2, h, w)``), ``offsets`` int64 ``[R + 1]`` (pixels),
    ``boxes_xywh`` int64 ``[R, 4]`` (see :func:`densepose_unpack`). ``N`` depends on the box values: under
    torch.compile it is an unbacked size.

    Arithmetic: ATen's bilinear CPU kernel fuses multiply-adds on AVX2; the kernels do the same in their AVX2
    variant (plain in the baseline one, as ATen's), so labels equal the transcription's except where two parts'
    interpolated scores agree to the last bit of rounding (docs/densepose.md).

    NaN/inf: boxes must be finite (ValueError); a NaN score wins its argmax (as torch.argmax); NaN U/V stay NaN in
    ``uv``. float16/bfloat16 maps are interpolated in float32 and rounded to their dtype before the argmax (as
    F.interpolate returns them). Autocast: float32. TorchScript: scripts (the compiled kernel).

    ONNX: not exported; both exporters stop with a RuntimeError (docs/densepose.md, "ONNX").
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes)
    leaf = traced_call(densepose_chart_to_iuv, (coarse, fine, u, v, boxes), coarse, fine, u, v, boxes, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_chart_to_iuv, coarse, coarse, fine, u, v, boxes, impl)


def _chart_to_iuv(coarse, fine, u, v, boxes, impl):
    _check_chart(coarse, fine, u, v, boxes)
    return dispatch(
        "densepose_chart_to_iuv", impl, fine.device,
        cpp=lambda: torch.ops.fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes),
        reference=lambda: reference_module("densepose").chart_to_iuv(coarse, fine, u, v, boxes),
        triton=lambda: triton_module("densepose").densepose_chart_to_iuv_triton(coarse, fine, u, v, boxes))


def densepose_paste_iuv(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor, boxes: Tensor, scores: Tensor,
                        height: int, width: int, impl: str = "auto") -> Tensor:
    """The detections of :func:`densepose_chart_to_iuv` pasted into one image-level IUV map ``[3, height, width]``
    uint8: ``I`` = part label, ``U``/``V`` = detectron2's quantization ``(uv * 255).clamp(0, 255)`` truncated
    (NaN -> 0). Each detection covers its integer box clipped to the image; a pixel takes the foreground
    (``I > 0``) of the highest-scoring detection whose foreground covers it (equal scores: the lower detection
    index); background pixels of a detection never overwrite. Pixels no detection claims are ``(0, 0, 0)``.

    ``scores [R]`` (NaN rejected), ``height``, ``width`` in ``[0, 2**18]``. Only the visible part of each box is
    computed. Autocast: float32. TorchScript: scripts. ONNX: not exported; both exporters stop with a
    RuntimeError (docs/densepose.md, "ONNX").
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, height, width)
    leaf = traced_call(densepose_paste_iuv, (coarse, fine, u, v, boxes, scores), coarse, fine, u, v, boxes, scores,
                       height, width, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_paste_iuv, coarse, coarse, fine, u, v, boxes, scores, height, width, impl)


def _paste_iuv(coarse, fine, u, v, boxes, scores, height, width, impl):
    _check_chart(coarse, fine, u, v, boxes)
    check_tensor("scores", scores, dim=1, dtypes=FLOAT_DTYPES, device=fine.device)
    if scores.size(0) != boxes.size(0):
        raise ValueError(f"scores must be [R] = [{boxes.size(0)}], got {tuple(scores.shape)}")
    if not torch.compiler.is_compiling() and bool(torch.isnan(scores).any()):
        raise ValueError("scores must not be NaN")
    height = check_int("height", height, low=0, high=MAX_IMAGE_SIDE)
    width = check_int("width", width, low=0, high=MAX_IMAGE_SIDE)
    return dispatch(
        "densepose_paste_iuv", impl, fine.device,
        cpp=lambda: torch.ops.fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, height, width),
        reference=lambda: reference_module("densepose").paste_iuv(coarse, fine, u, v, boxes, scores, height, width),
        triton=lambda: triton_module("densepose").densepose_paste_iuv_triton(coarse, fine, u, v, boxes, scores,
                                                                              height, width))


def densepose_unpack(labels: Tensor, uv: Tensor, offsets: Tensor, boxes_xywh: Tensor) -> List[Tuple[Tensor, Tensor]]:
    """The packed output of :func:`densepose_chart_to_iuv` as a list of ``(labels [h, w], uv [2, h, w])`` views."""
    out: List[Tuple[Tensor, Tensor]] = []
    offs = offsets.tolist()
    for i, (_, _, w, h) in enumerate(boxes_xywh.tolist()):
        a, b = offs[i], offs[i + 1]
        out.append((labels[a:b].view(h, w), uv[2 * a:2 * b].view(2, h, w)))
    return out


def densepose_point_grid(x_norm: Tensor, y_norm: Tensor, box_gt_xywh: Tensor, box_est_xywh: Tensor,
                         size: int) -> Tuple[Tensor, Tensor]:
    """detectron2's BilinearInterpolationHelper placement of annotated points (plain PyTorch, any impl): a point
    ``(x_norm, y_norm)`` in the GT box's 256 x 256 grid is at image ``x = x0_gt + x_norm * w_gt / 256``; in the
    estimated box's S x S predictor grid at ``(x - x0_est) * S / w_est`` (same for y). Boxes are XYWH, gathered per
    point ``[P, 4]``. Returns ``points [P, 2]`` (x, y) for :func:`roi_point_sample` and ``valid [P]`` (the point
    lies in the estimated box: detectron2's ``j_valid``)."""
    x = box_gt_xywh[:, 0] + x_norm * box_gt_xywh[:, 2] / 256.0
    y = box_gt_xywh[:, 1] + y_norm * box_gt_xywh[:, 3] / 256.0
    valid = (x - box_est_xywh[:, 0] >= 0) & (x - box_est_xywh[:, 0] < box_est_xywh[:, 2]) & \
        (y - box_est_xywh[:, 1] >= 0) & (y - box_est_xywh[:, 1] < box_est_xywh[:, 3])
    xg = (x - box_est_xywh[:, 0]) * size / box_est_xywh[:, 2]
    yg = (y - box_est_xywh[:, 1]) * size / box_est_xywh[:, 3]
    return torch.stack([xg, yg], 1), valid


def roi_point_sample(maps: Tensor, roi_index: Tensor, points: Tensor, impl: str = "auto") -> Tensor:
    """Bilinear samples of per-RoI maps at points: ``maps [R, C, Sh, Sw]``, ``roi_index [P]`` int64 in ``[0, R)``,
    ``points [P, 2]`` = ``(x, y)`` in the RoI's grid (cell ``i`` at coordinate ``i``, no half-pixel shift; as
    produced by :func:`densepose_point_grid`) -> ``[P, C]`` in maps' dtype.

    detectron2's ``BilinearInterpolationHelper.extract_at_points`` convention: ``lo = floor(x)`` clamped to
    ``[0, Sw - 1]``, ``hi = min(lo + 1, Sw - 1)``, weight ``min(x, hi) - lo``; taps summed in the order ylo-xlo,
    ylo-xhi, yhi-xlo, yhi-xhi. Points must be finite and inside ``[0, Sw] x [0, Sh]`` (ValueError otherwise:
    filter with ``valid`` first), ``roi_index`` in range (ValueError).

    Backward: gradient for ``maps`` (points and indices get none); on the CPU each RoI's points are summed in point
    order by one thread (no atomics: the same bits for any thread count, deterministic mode honoured). Speed: the
    gradient ``[R, C, Sh, Sw]`` is bandwidth-bound at one write of the gradient; the CPU kernel takes it from the
    large-block cache (``fastops.empty_cpu_cache``) and zeroes each RoI's planes just before adding that RoI's taps,
    so it is one write pass without page faults: 64 RoIs x 25 x 112^2 float32 (80 MB) x 3 maps in the bundled loss,
    fwd+bwd 42.7 ms at 1 thread (~5.7 GB/s written) and 24.5 ms at 2 on the 2-core dev VM (docs/densepose.md).
    NaN/inf in maps propagate to the samples that read them. Autocast: float32 compute and output.
    TorchScript: scripts. ONNX (both exporters, opset 18; R and P dynamic): the taps as ``GatherND`` on the maps
    transposed to ``[R, Sh, Sw, C]``, the kernels' weights and summation order (equal to eager's bits in the
    tests); the range checks on points / roi_index are not in the graph (out-of-range inputs give undefined
    values or a runtime error in onnxruntime).
    """
    if torch.jit.is_scripting():
        return torch.ops.fastops.roi_point_sample(maps, roi_index, points)
    leaf = traced_call(roi_point_sample, (maps, roi_index, points), maps, roi_index, points, impl)
    if leaf is not None:
        return leaf
    return autocast_float32(_roi_point_sample, maps, maps, roi_index, points, impl)


def _roi_point_sample(maps, roi_index, points, impl):
    check_tensor("maps", maps, dim=4, dtypes=FLOAT_DTYPES)
    if maps.size(2) < 1 or maps.size(3) < 1:
        raise ValueError(f"maps must have Sh, Sw >= 1, got {tuple(maps.shape)}")
    check_tensor("roi_index", roi_index, dim=1, dtypes=(torch.int64,), device=maps.device)
    check_tensor("points", points, dim=2, dtypes=FLOAT_DTYPES, device=maps.device)
    if tuple(points.shape) != (roi_index.size(0), 2):
        raise ValueError(f"points must be [P, 2] with roi_index's P = {roi_index.size(0)}, got {tuple(points.shape)}")
    if not torch.compiler.is_compiling() and roi_index.numel() > 0:
        if bool(((roi_index < 0) | (roi_index >= maps.size(0))).any()):
            raise ValueError(f"roi_index out of range [0, {maps.size(0)})")
        px, py = points[:, 0], points[:, 1]
        inside = (px >= 0) & (px <= maps.size(3)) & (py >= 0) & (py <= maps.size(2))
        if not bool(inside.all()):
            raise ValueError(f"points must be finite and inside the RoI grid [0, {maps.size(3)}] x "
                             f"[0, {maps.size(2)}]; filter points outside the box first (densepose_point_grid's "
                             f"valid)")
    return dispatch(
        "roi_point_sample", impl, maps.device,
        cpp=lambda: torch.ops.fastops.roi_point_sample(maps, roi_index, points),
        reference=lambda: reference_module("densepose").roi_point_sample(maps, roi_index, points),
        triton=lambda: triton_module("densepose").roi_point_sample_triton(maps, roi_index, points))
