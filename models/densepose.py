"""DensePose R-CNN (chart-based, detectron2's DensePose project) on torchvision's Faster R-CNN ResNet-50-FPN.

The detector is torchvision's ``fasterrcnn_resnet50_fpn`` (built with ``weights=None, weights_backbone=None``;
nothing is downloaded): ResNet-50-FPN, RPN, box head. The DensePose branch is detectron2's R50-FPN chart setup:

* RoIAlign 28 x 28, sampling ratio 2, aligned (detectron2's ``ROIAlignV2``) on P2-P5 through
  ``fastops.MultiScaleRoIAlign``;
* ``DensePoseV1ConvXHead``: 8 convs 3 x 3, 512 channels, ReLU (``densepose_head.body_conv_fcn{1..8}``);
* ``DensePoseChartPredictor``: four transposed convs (kernel 4, stride 2) giving coarse segmentation (2 channels),
  fine segmentation (25 = background + 24 parts), U and V (25 each) at 56 x 56, then a 2x bilinear up-scaling
  (align_corners=False) to 112 x 112 (``densepose_predictor.{ann_index,index_uv,u,v}_lowres``).

Hot paths through fastops: the RoIAlign of the box head and of the DensePose head, the chart post-processing
(``fastops.densepose_chart_to_iuv`` / ``densepose_paste_iuv``: one op for all detections, no resized 25-channel
maps) and the point sampling of the chart losses (``fastops.roi_point_sample``, deterministic backward).
``impl="reference"`` runs the same model with fastops' reference RoIAlign (torchvision's arithmetic) and the plain
PyTorch transcription of detectron2's post-processing and losses (``fastops.reference.densepose``).

Checkpoint mapping (``convert_detectron2_densepose``): detectron2's ``roi_heads.densepose_head.*`` ->
``densepose_head.*`` and ``roi_heads.densepose_predictor.*`` -> ``densepose_predictor.*`` (same parameter names
and shapes below these prefixes); the detector keeps torchvision's names (``backbone.*``, ``rpn.*``,
``roi_heads.*``), so a torchvision Faster R-CNN checkpoint loads into it; detectron2's backbone / RPN / box-head
names are not mapped (different layouts). See docs/densepose.md.

Training (``training_step``): detector losses from torchvision, plus detectron2's chart losses computed on the
ground-truth boxes that carry DensePose annotations (a simplification: detectron2 uses the positive proposals
matched to them, for which the estimated box differs from the GT box; ``densepose_point_grid`` takes both).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import fasterrcnn_resnet50_fpn

import fastops
from fastops._library import reference_module
from fastops.models._impl import ImplChoice
from fastops.models._checkpoint import load_checkpoint

__all__ = ["DensePoseRCNN", "DensePoseV1ConvXHead", "DensePoseChartPredictor", "densepose_chart_losses",
           "convert_detectron2_densepose", "load_densepose_checkpoint"]

LEVELS = ["0", "1", "2", "3"]
NUM_PARTS = 24


class DensePoseV1ConvXHead(nn.Module):
    """detectron2's DensePoseV1ConvXHead: ``n`` stacked 3 x 3 convs with ReLU (``body_conv_fcn{i}``)."""

    def __init__(self, in_channels: int = 256, hidden: int = 512, n: int = 8, kernel: int = 3):
        super().__init__()
        self.n = n
        c = in_channels
        for i in range(n):
            conv = nn.Conv2d(c, hidden, kernel, padding=kernel // 2)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            self.add_module(f"body_conv_fcn{i + 1}", conv)
            c = hidden
        self.out_channels = hidden

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.n):
            x = F.relu(getattr(self, f"body_conv_fcn{i + 1}")(x))
        return x


class DensePoseChartPredictor(nn.Module):
    """detectron2's DensePoseChartPredictor: transposed convs (kernel 4, stride 2, padding 1) for coarse (2), fine
    (K + 1), U and V (K + 1) channels, then a bilinear up-scaling by ``up_scale`` (align_corners=False)."""

    def __init__(self, in_channels: int = 512, num_parts: int = NUM_PARTS, coarse_channels: int = 2,
                 kernel: int = 4, up_scale: int = 2):
        super().__init__()
        k = num_parts + 1

        def deconv(cout):
            m = nn.ConvTranspose2d(in_channels, cout, kernel, stride=2, padding=kernel // 2 - 1)
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
            return m

        self.ann_index_lowres = deconv(coarse_channels)
        self.index_uv_lowres = deconv(k)
        self.u_lowres = deconv(k)
        self.v_lowres = deconv(k)
        self.up_scale = up_scale

    def _up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self._up(self.ann_index_lowres(x)), self._up(self.index_uv_lowres(x)), self._up(self.u_lowres(x)),
                self._up(self.v_lowres(x)))


class DensePoseRCNN(ImplChoice, nn.Module):
    """DensePose R-CNN (see the module docstring).

    Args:
        num_classes: detector classes including background (detectron2's DensePose: person only, 2).
        head_channels, head_convs: the DensePose head's width and depth (detectron2: 512, 8).
        impl: ``"auto"`` (fastops kernels) or ``"reference"`` (reference RoIAlign + detectron2 transcription); the
            ``impl`` attribute may be changed later.
        **detector_kwargs: passed to ``fasterrcnn_resnet50_fpn`` (``min_size``, ``max_size``,
            ``box_detections_per_img``, ``box_score_thresh``, ``rpn_post_nms_top_n_test`` ...).
    """

    def __init__(self, num_classes: int = 2, *, impl: str = "auto", head_channels: int = 512, head_convs: int = 8,
                 w_points: float = 0.01, w_part: float = 1.0, w_segm: float = 5.0, **detector_kwargs):
        super().__init__()
        det = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                      **detector_kwargs)
        self.transform, self.backbone, self.rpn, self.roi_heads = det.transform, det.backbone, det.rpn, det.roi_heads
        self.densepose_head = DensePoseV1ConvXHead(self.backbone.out_channels, head_channels, head_convs)
        self.densepose_predictor = DensePoseChartPredictor(self.densepose_head.out_channels)
        self.w_points, self.w_part, self.w_segm = w_points, w_part, w_segm
        # stateless (no parameters or buffers): swapping impl leaves the state dict unchanged
        self.box_pool = fastops.MultiScaleRoIAlign(LEVELS, 7, 2)
        self.densepose_pool = fastops.MultiScaleRoIAlign(LEVELS, 28, 2, aligned=True)
        self.roi_heads.box_roi_pool = self.box_pool
        self.impl = impl

    def _use_impl(self, value: str) -> None:
        self.box_pool.impl = value
        self.densepose_pool.impl = value

    # -- pieces --------------------------------------------------------------------------------------------------
    def chart(self, feats: Dict[str, Tensor], boxes: List[Tensor],
              image_sizes: List[Tuple[int, int]]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Predictor outputs (coarse, fine, u, v) ``[R, C, 112, 112]`` for boxes in the network input's pixels."""
        return self.densepose_predictor(self.densepose_head(self.densepose_pool(feats, boxes, image_sizes)))

    def postprocess(self, coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor, boxes: Tensor, scores: Tensor,
                    image_size: Tuple[int, int]) -> Dict[str, Tensor]:
        """One image's DensePose results from its detections (boxes in original image pixels): the packed per-box
        labels / UV (``fastops.densepose_chart_to_iuv``) and the image-level IUV map (``densepose_paste_iuv``)."""
        lab, uv, offsets, boxes_xywh = fastops.densepose_chart_to_iuv(coarse, fine, u, v, boxes, impl=self._impl)
        iuv = fastops.densepose_paste_iuv(coarse, fine, u, v, boxes, scores, image_size[0], image_size[1],
                                          impl=self._impl)
        return {"dp_labels": lab, "dp_uv": uv, "dp_offsets": offsets, "dp_boxes_xywh": boxes_xywh, "iuv": iuv}

    # -- inference -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        """Per image: ``boxes`` (original pixels), ``scores``, ``labels``, the packed DensePose results
        (``dp_labels``, ``dp_uv``, ``dp_offsets``, ``dp_boxes_xywh``, see ``densepose_chart_to_iuv``) and ``iuv``
        ``[3, H, W]`` uint8 at the original size."""
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        il, _ = self.transform(images, None)
        feats = self.backbone(il.tensors)
        proposals, _ = self.rpn(il, feats, None)
        dets, _ = self.roi_heads(feats, proposals, il.image_sizes, None)
        boxes = [d["boxes"] for d in dets]
        coarse, fine, u, v = self.chart(feats, boxes, il.image_sizes)
        dets = self.transform.postprocess(dets, il.image_sizes, original_sizes)
        out = []
        start = 0
        for d, size in zip(dets, original_sizes):
            n = d["boxes"].shape[0]
            sl = slice(start, start + n)
            start += n
            res = self.postprocess(coarse[sl], fine[sl], u[sl], v[sl], d["boxes"], d["scores"], size)
            out.append({**d, **res})
        return out

    # -- training ------------------------------------------------------------------------------------------------
    def chart_losses(self, coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor, roi_index: Tensor, points: Tensor,
                     part_gt: Tensor, u_gt: Tensor, v_gt: Tensor, coarse_gt: Tensor) -> Dict[str, Tensor]:
        return densepose_chart_losses(coarse, fine, u, v, roi_index, points, part_gt, u_gt, v_gt, coarse_gt,
                                      self.w_points, self.w_part, self.w_segm, self._impl)

    def training_step(self, images: List[Tensor], targets: List[Dict[str, Tensor]],
                      detector_losses: bool = True) -> Dict[str, Tensor]:
        """Loss dict. ``targets`` per image: torchvision's ``boxes`` / ``labels`` plus DensePose annotations of
        its instances: ``dp_index`` [J] (instance of each point), ``dp_x``, ``dp_y`` [J] (in the GT box's 256 x 256
        grid), ``dp_I`` [J] (part 0..24), ``dp_U``, ``dp_V`` [J], and ``dp_masks`` [N, M, M] (coarse foreground of
        each instance's box, any M; resized to the predictor's size with nearest). ``detector_losses=False``
        returns the chart losses only (RPN and box-head sampling are random)."""
        il, tt = self.transform(images, targets)
        feats = self.backbone(il.tensors)
        losses: Dict[str, Tensor] = {}
        if detector_losses:
            proposals, rpn_losses = self.rpn(il, feats, tt)
            _, det_losses = self.roi_heads(feats, proposals, il.image_sizes, tt)
            losses.update(rpn_losses)
            losses.update(det_losses)
        boxes = [t["boxes"] for t in tt]
        coarse, fine, u, v = self.chart(feats, boxes, il.image_sizes)
        size = fine.shape[-1]
        xs, ys, parts, us, vs, ri, gts, masks = [], [], [], [], [], [], [], []
        base = 0
        for t, b in zip(tt, boxes):
            xywh = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1)
            idx = t["dp_index"].long()
            xs.append(t["dp_x"])
            ys.append(t["dp_y"])
            parts.append(t["dp_I"].long())
            us.append(t["dp_U"])
            vs.append(t["dp_V"])
            ri.append(idx + base)
            gts.append(xywh[idx])
            m = t["dp_masks"]
            if m.shape[-2:] != (size, size):
                m = F.interpolate(m[:, None].float(), size=(size, size), mode="nearest")[:, 0]
            masks.append(m.long())
            base += b.shape[0]
        gt = torch.cat(gts)
        points, valid = fastops.densepose_point_grid(torch.cat(xs), torch.cat(ys), gt, gt, size)
        losses.update(self.chart_losses(coarse, fine, u, v, torch.cat(ri)[valid], points[valid],
                                        torch.cat(parts)[valid], torch.cat(us)[valid], torch.cat(vs)[valid],
                                        torch.cat(masks)))
        return losses

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training:
            if targets is None:
                raise ValueError("targets must be given in training mode")
            return self.training_step(images, targets)
        return self.detect(images)


def densepose_chart_losses(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor, roi_index: Tensor, points: Tensor,
                           part_gt: Tensor, u_gt: Tensor, v_gt: Tensor, coarse_gt: Tensor, w_points: float = 0.01,
                           w_part: float = 1.0, w_segm: float = 5.0, impl: str = "auto") -> Dict[str, Tensor]:
    """detectron2's chart losses on valid points (``fastops.reference.densepose.chart_losses`` documents them); the
    fastops path samples U, V and the fine segmentation with ``fastops.roi_point_sample``; ``impl="reference"``
    runs the transcription."""
    if impl == "reference":
        return reference_module("densepose").chart_losses(
            coarse, fine, u, v, roi_index, points, part_gt, u_gt, v_gt, coarse_gt, w_points=w_points, w_part=w_part,
            w_segm=w_segm)
    fg = part_gt > 0
    # U and V only at each foreground point's own part: the [R, C] planes as R * C one-channel maps, sampled at
    # plane roi * C + part (the same values and gradients as sampling all C channels and gathering one).
    plane = (roi_index * u.size(1) + part_gt.long())[fg]
    pts_fg = points[fg]
    u_est = fastops.roi_point_sample(u.flatten(0, 1).unsqueeze(1), plane, pts_fg, impl=impl).squeeze(1)
    v_est = fastops.roi_point_sample(v.flatten(0, 1).unsqueeze(1), plane, pts_fg, impl=impl).squeeze(1)
    fine_est = fastops.roi_point_sample(fine, roi_index, points, impl=impl)
    return {
        "loss_densepose_U": F.smooth_l1_loss(u_est, u_gt[fg], reduction="sum") * w_points,
        "loss_densepose_V": F.smooth_l1_loss(v_est, v_gt[fg], reduction="sum") * w_points,
        "loss_densepose_I": F.cross_entropy(fine_est, part_gt.long()) * w_part,
        "loss_densepose_S": F.cross_entropy(coarse, coarse_gt.long()) * w_segm,
    }


def convert_detectron2_densepose(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """detectron2 DensePose branch names -> this model's: ``roi_heads.densepose_head.*`` -> ``densepose_head.*``,
    ``roi_heads.densepose_predictor.*`` -> ``densepose_predictor.*``; every other key is dropped (detectron2's
    backbone / RPN / box head use other layouts). Load the result with ``strict=False``."""
    out = {}
    for k, t in state_dict.items():
        for src, dst in (("roi_heads.densepose_head.", "densepose_head."),
                         ("roi_heads.densepose_predictor.", "densepose_predictor.")):
            if k.startswith(src):
                out[dst + k[len(src):]] = torch.as_tensor(t)
    return out


def load_densepose_checkpoint(model: DensePoseRCNN, path: str, strict: bool = True, detectron2: bool = False):
    """Load a state dict saved from this model, a torchvision Faster R-CNN checkpoint (``strict=False``), or
    (``detectron2=True``, ``strict=False``) the DensePose branch of a detectron2 checkpoint."""
    return load_checkpoint(model, path, strict=strict,
                           convert=convert_detectron2_densepose if detectron2 else None)
