"""UPSNet-style panoptic segmentation on torchvision's Mask R-CNN, with a VPSNet-style temporal mode.

The model is torchvision's ``maskrcnn_resnet50_fpn`` (ResNet-50-FPN, RPN, box and mask heads; built with
``weights=None, weights_backbone=None``) plus UPSNet's pieces (uber-research/UPSNet):

* a semantic head on the FPN (``fcn_head``): per level P2-P5 two 3x3 convs (128 channels, GroupNorm, ReLU),
  upsampled to the P2 resolution, concatenated, a 1x1 classifier over ``num_stuff + num_things`` classes (stuff
  first, UPSNet's layout) at 1/4 of the input;
* the parameter-free panoptic head, ``fastops.panoptic_fuse``: per detection the thing class's semantic logits inside
  its box plus its mask logits pasted into the box, stuff logits, UPSNet's void channel, argmax; ids ``0..S-1``
  stuff, ``S + i`` detection ``i``, 255 void.

fastops is in every hot path of inference: RoIAlign for the box/mask heads (``fastops.MultiScaleRoIAlign``),
per-class NMS of the detections (``fastops.batched_nms``), mask pasting (``fastops.paste_masks``) and the panoptic
fusion. ``impl="reference"`` runs the same model with torchvision's ops for RoIAlign/NMS/pasting (the anchors that
fastops reproduces) and the UPSNet transcription (``fastops.reference``) for the fusion.

VPSNet-style temporal mode (mcahny/vps, "fuse" stage): ``forward_frame(images, state)`` warps the previous frame's
FPN features to the current frame with ``fastops.flow_warp`` (pixel flow, align_corners=False, VPSNet's grid_sample
convention) using the flow of a small flow network on the two frames (``flow_net``, flow at 1/4 resolution, scaled
to each level), and fuses them with the current features (``temporal_fuse``: a per-pixel sigmoid attention on the
concatenated features, then a 1x1 conv, residual). Parameter names: the detector's are exactly torchvision's
``maskrcnn_resnet50_fpn`` names (``backbone.*``, ``rpn.*``, ``roi_heads.*``), so a torchvision Mask R-CNN checkpoint
loads (``load_panoptic_checkpoint(..., strict=False)``); the extra modules are ``fcn_head.*``, ``flow_net.*``,
``temporal_fuse.*``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import boxes as box_ops

import fastops
from fastops.models._impl import ImplChoice
from fastops.models._checkpoint import load_checkpoint

__all__ = ["UPSNet", "FCNHead", "FlowNetLite", "TemporalFuse", "load_panoptic_checkpoint"]

LEVELS = ("0", "1", "2", "3")


class FCNHead(nn.Module):
    """UPSNet's semantic (FCN) head on P2-P5 (plain 3x3 convs in place of UPSNet's deformable ones)."""

    def __init__(self, num_classes: int, in_channels: int = 256, channels: int = 128, groups: int = 32):
        super().__init__()

        def block(cin):
            return nn.Sequential(nn.Conv2d(cin, channels, 3, padding=1, bias=False), nn.GroupNorm(groups, channels),
                                 nn.ReLU(inplace=True))

        self.fcn_subnet = nn.ModuleList([nn.Sequential(block(in_channels), block(channels)) for _ in LEVELS])
        self.score = nn.Conv2d(channels * len(LEVELS), num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        outs = []
        for sub, f in zip(self.fcn_subnet, feats):
            o = sub(f)
            if o.shape[-2:] != size:
                o = F.interpolate(o, size=size, mode="bilinear", align_corners=False)
            outs.append(o)
        return self.score(torch.cat(outs, 1))


class FlowNetLite(nn.Module):
    """A small FlowNetS-like network: two frames (6 channels) -> flow ``[B,2,H/4,W/4]`` in pixels of that grid."""

    def __init__(self, channels: Sequence[int] = (32, 64, 96)):
        super().__init__()
        c1, c2, c3 = channels

        def conv(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True))

        self.conv1 = conv(6, c1, 2)     # 1/2
        self.conv2 = conv(c1, c2, 2)    # 1/4
        self.conv3 = conv(c2, c3, 2)    # 1/8
        self.deconv = conv(c3, c2, 1)
        self.predict_flow = nn.Conv2d(c2 * 2, 2, 3, padding=1)
        nn.init.normal_(self.predict_flow.weight, std=0.01)
        nn.init.zeros_(self.predict_flow.bias)

    def forward(self, cur: Tensor, prev: Tensor) -> Tensor:
        x = torch.cat([cur, prev], 1)
        c2 = self.conv2(self.conv1(x))
        c3 = self.deconv(self.conv3(c2))
        up = F.interpolate(c3, size=c2.shape[-2:], mode="bilinear", align_corners=False)
        return self.predict_flow(torch.cat([c2, up], 1))


class TemporalFuse(nn.Module):
    """Fuse current features with warped previous ones: ``cur + conv1x1(cat(cur, a * warped))``,
    ``a = sigmoid(attn(cat(cur, warped)))`` (weights shared across FPN levels)."""

    def __init__(self, channels: int = 256):
        super().__init__()
        self.attn = nn.Conv2d(channels * 2, 1, 3, padding=1)
        self.conv = nn.Conv2d(channels * 2, channels, 1)
        nn.init.normal_(self.attn.weight, std=0.01)
        nn.init.zeros_(self.attn.bias)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, cur: Tensor, warped: Tensor) -> Tensor:
        a = torch.sigmoid(self.attn(torch.cat([cur, warped], 1)))
        return cur + self.conv(torch.cat([cur, a * warped], 1))


class UPSNet(ImplChoice, nn.Module):
    """UPSNet-style panoptic model on torchvision's Mask R-CNN (see the module docstring).

    Args:
        num_things: thing classes ``T`` (the detector has ``T + 1`` classes, 0 = background; detector label ``k``
            is semantic channel ``num_stuff + k - 1``).
        num_stuff: stuff classes ``S``.
        panoptic_score_threshold: detections entering the panoptic fusion (UPSNet uses its test score threshold).
        temporal: add the VPSNet-style flow network and fusion (``forward_frame``).
        impl: ``"auto"`` (fastops) or ``"reference"`` (torchvision ops + UPSNet transcription); the ``impl``
            attribute may be changed later.
        **detector_kwargs: passed to ``maskrcnn_resnet50_fpn`` (``min_size``, ``max_size``,
            ``rpn_post_nms_top_n_test``, ``box_detections_per_img``, ``box_score_thresh`` ...).

    ``forward(images)`` (list of ``[3,H,W]``) returns in eval mode, per image, ``boxes``/``labels``/``scores``
    (original image pixels), ``masks`` ``[N,1,H,W]`` float probabilities (torchvision's format), ``panoptic``
    ``[H,W]`` int32 (``panoptic_instances``: the detections that entered the fusion, id ``S + i`` is the i-th of
    them); in train mode with targets
    (torchvision's Mask R-CNN targets plus ``semantic [H,W]`` int64, 255 = ignore) the loss dict.
    """

    def __init__(self, num_things: int = 80, num_stuff: int = 53, *, panoptic_score_threshold: float = 0.5,
                 semantic_loss_weight: float = 0.5, temporal: bool = False, impl: str = "auto",
                 **detector_kwargs):
        super().__init__()
        det = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_things + 1,
                                    **detector_kwargs)
        self.transform, self.backbone, self.rpn, self.roi_heads = det.transform, det.backbone, det.rpn, det.roi_heads
        self.num_things, self.num_stuff = num_things, num_stuff
        self.panoptic_score_threshold = panoptic_score_threshold
        self.semantic_loss_weight = semantic_loss_weight
        self.fcn_head = FCNHead(num_stuff + num_things)
        self.temporal = temporal
        if temporal:
            self.flow_net = FlowNetLite()
            self.temporal_fuse = TemporalFuse(self.backbone.out_channels)
        self._pools = {
            "auto": (fastops.MultiScaleRoIAlign(list(LEVELS), 7, 2), fastops.MultiScaleRoIAlign(list(LEVELS), 14, 2)),
            "reference": (torchvision.ops.MultiScaleRoIAlign(list(LEVELS), 7, 2),
                          torchvision.ops.MultiScaleRoIAlign(list(LEVELS), 14, 2)),
        }
        self.impl = impl

    def _use_impl(self, value: str) -> None:
        key = "reference" if value == "reference" else "auto"
        box_pool, mask_pool = self._pools[key]
        if key == "auto":
            box_pool.impl = mask_pool.impl = value
        # stateless modules (no parameters or buffers): swapping them leaves the state dict unchanged
        self.roi_heads.box_roi_pool = box_pool
        self.roi_heads.mask_roi_pool = mask_pool

    # -- network pieces ------------------------------------------------------------------------------------------
    def features(self, images: Tensor) -> Dict[str, Tensor]:
        return self.backbone(images)

    def semantic_logits(self, feats: Dict[str, Tensor]) -> Tensor:
        return self.fcn_head([feats[k] for k in LEVELS])

    def box_heads(self, feats: Dict[str, Tensor], proposals: List[Tensor], image_sizes: List[Tuple[int, int]]):
        rh = self.roi_heads
        x = rh.box_head(rh.box_roi_pool(feats, proposals, image_sizes))
        return rh.box_predictor(x)

    def mask_logits(self, feats: Dict[str, Tensor], boxes: List[Tensor], labels: List[Tensor],
                    image_sizes: List[Tuple[int, int]]) -> List[Tensor]:
        """Mask logits ``[N, M, M]`` of each detection's class, per image."""
        rh = self.roi_heads
        logits = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(feats, boxes, image_sizes)))
        lab = torch.cat(labels)
        logits = logits[torch.arange(lab.numel(), device=lab.device), lab]
        return list(logits.split([b.shape[0] for b in boxes]))

    def warp_features(self, feats: Dict[str, Tensor], prev_feats: Dict[str, Tensor], flow: Tensor):
        """Warp the previous frame's FPN levels to the current frame and fuse (VPSNet-style)."""
        out = {}
        fh, fw = flow.shape[-2:]
        for k in LEVELS:
            cur = feats[k]
            h, w = cur.shape[-2:]
            f = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            f = f * torch.tensor([w / fw, h / fh], dtype=f.dtype, device=f.device).view(1, 2, 1, 1)
            warped = fastops.flow_warp(prev_feats[k], f, units="pixel", align_corners=False, impl=self.impl)
            out[k] = self.temporal_fuse(cur, warped)
        out["pool"] = F.max_pool2d(out["3"], 1, 2, 0)  # torchvision's LastLevelMaxPool on the fused P5
        return out

    # -- post-processing -----------------------------------------------------------------------------------------
    def detect(self, class_logits: Tensor, box_regression: Tensor, proposals: List[Tensor],
               image_sizes: List[Tuple[int, int]]):
        """torchvision's ``RoIHeads.postprocess_detections`` with ``fastops.batched_nms``: softmax, decode, clip,
        score threshold, small-box removal, per-class NMS, top ``detections_per_img``."""
        self._check_reference()
        rh = self.roi_heads
        num_classes = class_logits.shape[-1]
        pred_boxes = rh.box_coder.decode(box_regression, proposals)
        pred_scores = F.softmax(class_logits, -1)
        counts = [p.shape[0] for p in proposals]
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, size in zip(pred_boxes.split(counts), pred_scores.split(counts), image_sizes):
            boxes = box_ops.clip_boxes_to_image(boxes, size)
            labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            inds = torch.where(scores > rh.score_thresh)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            keep = torch.where((ws >= 1e-2) & (hs >= 1e-2))[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = fastops.batched_nms(boxes, scores, labels, rh.nms_thresh, impl=self.impl)[: rh.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    def fuse(self, semantic_logits: Tensor, mask_logits: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor,
             image_size: Tuple[int, int], original_size: Tuple[int, int]) -> Dict[str, Tensor]:
        """One image: paste the masks (``fastops.paste_masks``, torchvision's format) and fuse the panoptic map
        (``fastops.panoptic_fuse``) from the 1/4-resolution semantic logits of the padded batch.

        ``boxes`` are in the (resized) input image's pixels; outputs are at ``original_size``."""
        h, w = image_size
        oh, ow = original_size
        ratio = boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
        boxes_o = boxes * ratio
        masks = fastops.paste_masks(torch.sigmoid(mask_logits)[:, None], boxes_o, (oh, ow), impl=self.impl)
        pan_sel = scores > self.panoptic_score_threshold
        sh, sw = semantic_logits.shape[-2:]
        padded = (sh * 4, sw * 4)
        pan = fastops.panoptic_fuse(semantic_logits, mask_logits[pan_sel], boxes[pan_sel], labels[pan_sel],
                                    num_stuff=self.num_stuff, output_size=padded, impl=self.impl)[:h, :w]
        if (h, w) != (oh, ow):
            pan = F.interpolate(pan[None, None].float(), size=(oh, ow), mode="nearest")[0, 0].to(torch.int32)
        return {"boxes": boxes_o, "labels": labels, "scores": scores, "masks": masks, "panoptic": pan,
                "panoptic_instances": torch.where(pan_sel)[0]}

    # -- forward -------------------------------------------------------------------------------------------------
    def _check_reference(self):
        if self._impl == "reference" and fastops.is_patched():
            raise RuntimeError("impl='reference' runs torchvision's own RoIAlign/NMS/paste, which "
                               "fastops.patch_torchvision() has replaced; call fastops.unpatch_torchvision() first")

    def _run(self, images: List[Tensor], targets=None, state: Optional[Dict[str, Tensor]] = None):
        self._check_reference()
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        det_targets = None
        if targets is not None:
            det_targets = [{k: v for k, v in t.items() if k != "semantic"} for t in targets]
        il, det_targets = self.transform(images, det_targets)
        feats = self.features(il.tensors)
        new_state = None
        if self.temporal:
            new_state = {"feats": {k: v for k, v in feats.items() if k in LEVELS}, "images": il.tensors}
            if state is not None:
                flow = self.flow_net(il.tensors, state["images"])
                feats = self.warp_features(feats, state["feats"], flow)
        sem = self.semantic_logits(feats)
        proposals, rpn_losses = self.rpn(il, feats, det_targets)
        if self.training:
            _, roi_losses = self.roi_heads(feats, proposals, il.image_sizes, det_targets)
            losses = {**rpn_losses, **roi_losses, "loss_semantic": self.semantic_loss(sem, il, targets)}
            return losses, new_state
        class_logits, box_regression = self.box_heads(feats, proposals, il.image_sizes)
        boxes, scores, labels = self.detect(class_logits, box_regression, proposals, il.image_sizes)
        mlog = self.mask_logits(feats, boxes, labels, il.image_sizes)
        results = [self.fuse(sem[i], mlog[i], boxes[i], labels[i], scores[i], il.image_sizes[i], original_sizes[i])
                   for i in range(len(images))]
        return results, new_state

    def semantic_loss(self, sem: Tensor, il, targets) -> Tensor:
        """Cross entropy of the 4x upsampled semantic logits (UPSNet's ``fcn_output``), 255 ignored."""
        sh, sw = sem.shape[-2:]
        up = F.interpolate(sem, size=(sh * 4, sw * 4), mode="bilinear", align_corners=False)
        loss = sem.new_zeros(())
        for i, t in enumerate(targets):
            h, w = il.image_sizes[i]
            gt = t["semantic"]
            if tuple(gt.shape) != (h, w):
                gt = F.interpolate(gt[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
            loss = loss + F.cross_entropy(up[i:i + 1, :, :h, :w], gt[None], ignore_index=255)
        return loss / len(targets) * self.semantic_loss_weight

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("targets must be given in training mode")
        return self._run(images, targets)[0]

    def forward_frame(self, images: List[Tensor], state: Optional[Dict[str, Tensor]] = None, targets=None):
        """VPSNet-style video step: returns ``(outputs, state)``; pass the previous call's ``state`` (``None`` for
        the first frame) to warp and fuse the previous frame's FPN features."""
        if not self.temporal:
            raise ValueError("forward_frame needs a model built with temporal=True")
        return self._run(images, targets, state)

    def video(self, frames: Sequence[List[Tensor]]):
        state, outs = None, []
        for frame in frames:
            res, state = self.forward_frame(frame, state)
            outs.append(res)
        return outs


def load_panoptic_checkpoint(model: UPSNet, path: str, strict: bool = True):
    """Load a state dict saved from this model, or (``strict=False``) a torchvision ``maskrcnn_resnet50_fpn``
    checkpoint (same detector names; the UPSNet/VPSNet modules keep their initialisation). Wrapped
    (``{"state_dict": ...}``, ``{"model": ...}``) and ``module.``-prefixed files load too (``_checkpoint.py``)."""
    return load_checkpoint(model, path, strict=strict)
