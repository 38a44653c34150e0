"""YOLACT and YolactEdge with fastops in their hot paths.

YOLACT (Bolya et al., dbolya/yolact): ResNet-50 + FPN P3-P7, a protonet producing 32 prototypes at
``input_size / 4`` (138x138 for the default 550 input), one prediction head shared by all levels with 3 aspect
ratios per location and tanh mask coefficients. Inference decodes the boxes (variances 0.1/0.2), runs
``fastops.fast_nms`` and assembles the masks with ``fastops.yolact_masks``; training uses YOLACT's MultiBox loss
(matching with ``fastops.match_priors(mode="yolact")``, smooth-L1 box loss, OHEM class loss, semantic segmentation
loss) with the lincomb mask loss computed by ``fastops.yolact_mask_loss``.

YolactEdge (Liu et al., haotian-liu/yolact_edge): on non-keyframes only C3 is computed; a small flow network
(FlowNetMini) predicts, from the C3 laterals of the current frame and of the last keyframe, a flow plus a
per-channel scale and bias at the P4 and P5 resolutions; the keyframe's P4/P5 (before the FPN output convs) are
warped with ``fastops.flow_warp`` (YolactEdge's ``deform_op``: normalised units, ``flow / 8``, align_corners=True),
multiplied by the scale and shifted by the bias, and P3 is rebuilt from the warped P4 and the current lateral.

Every model takes ``impl="auto"`` (fastops kernels) or ``impl="reference"`` (the plain-PyTorch reference of each op,
i.e. the original projects' code); everything else is shared, so both paths compute the same model.

Parameter names follow dbolya/yolact so its checkpoints load (``load_yolact_checkpoint``): ``backbone.conv1``,
``backbone.bn1``, ``backbone.layers.{0-3}.*`` (ResNet stages, torchvision's Bottleneck names), ``fpn.lat_layers.*``,
``fpn.pred_layers.*``, ``fpn.downsample_layers.*``, ``proto_net.{0,2,4,8,10}.*``, ``prediction_layers.0.upfeature.0``,
``prediction_layers.0.{bbox,conf,mask}_layer``, ``semantic_seg_conv``. YolactEdge's names are the same plus
``flow_net_pre_convs.*`` and ``flow_net.*``, with its ``fpn_phase_1.``/``fpn_phase_2.`` prefixes mapped to ``fpn.``
(``convert_yolact_edge_state_dict``).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch import Tensor

import fastops
from fastops._library import check_impl
from fastops.models._checkpoint import load_checkpoint

VARIANCES = (0.1, 0.2)

__all__ = [
    "Yolact", "YolactEdge", "decode_boxes", "encode_boxes", "make_priors", "point_form", "jaccard",
    "load_yolact_checkpoint", "convert_yolact_edge_state_dict",
]


# ---------------------------------------------------------------------------------------------------------------
# Box utilities (dbolya/yolact layers/box_utils.py conventions)
# ---------------------------------------------------------------------------------------------------------------

def point_form(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    return torch.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)


def center_size(boxes: Tensor) -> Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return torch.cat(((boxes[:, 2:] + boxes[:, :2]) / 2, boxes[:, 2:] - boxes[:, :2]), 1)


def jaccard(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix ``[n, m]`` of point-form boxes."""
    max_xy = torch.min(a[:, None, 2:], b[None, :, 2:])
    min_xy = torch.max(a[:, None, :2], b[None, :, :2])
    inter = (max_xy - min_xy).clamp(min=0).prod(-1)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / (area_a + area_b - inter)


def decode_boxes(loc: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """YOLACT's ``decode``: regressions ``[..., P, 4]`` against center-size priors ``[P, 4]`` -> relative
    point-form boxes."""
    xy = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    x1y1 = xy - wh / 2
    return torch.cat((x1y1, x1y1 + wh), -1)


def encode_boxes(matched: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """YOLACT's ``encode``: point-form gt boxes matched to center-size priors -> regression targets."""
    g_cxcy = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    g_wh = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / variances[1]
    return torch.cat([g_cxcy, g_wh], 1)


def sanitize_coordinates(x1: Tensor, x2: Tensor, size: int, padding: int = 0) -> Tuple[Tensor, Tensor]:
    """YOLACT's ``sanitize_coordinates(cast=False)``: relative -> pixel, ordered, clamped to ``[0, size]``."""
    x1 = x1 * size
    x2 = x2 * size
    lo = torch.clamp(torch.min(x1, x2) - padding, min=0)
    hi = torch.clamp(torch.max(x1, x2) + padding, max=size)
    return lo, hi


_PRIOR_CACHE: Dict[tuple, Tensor] = {}


def make_priors(conv_h: int, conv_w: int, scale: float, aspect_ratios: Sequence[float], max_size: float,
                square_anchors: bool = True) -> Tensor:
    """YOLACT's ``PredictionModule.make_priors`` (pixel scales, ``preapply_sqrt=False``), vectorised.

    Center-size priors ``[conv_h * conv_w * len(aspect_ratios), 4]`` in the order (row, column, aspect ratio):
    ``x = (i + 0.5) / conv_w``, ``y = (j + 0.5) / conv_h``, ``w = scale * sqrt(ar) / max_size``,
    ``h = scale / sqrt(ar) / max_size`` — or ``h = w`` with ``square_anchors`` (YOLACT's released configs keep
    this "backward compatibility" bug, so all three aspect ratios give square boxes). Computed in float64 and
    rounded once to float32, as YOLACT's Python floats are.
    """
    key = (conv_h, conv_w, float(scale), tuple(float(a) for a in aspect_ratios), float(max_size), square_anchors)
    if key not in _PRIOR_CACHE:
        d = torch.float64
        ys = (torch.arange(conv_h, dtype=d) + 0.5) / conv_h
        xs = (torch.arange(conv_w, dtype=d) + 0.5) / conv_w
        ar = torch.tensor([math.sqrt(a) for a in aspect_ratios], dtype=d)
        w = scale * ar / max_size
        h = w if square_anchors else scale / ar / max_size
        na = ar.numel()
        pri = torch.stack([
            xs.view(1, -1, 1).expand(conv_h, conv_w, na),
            ys.view(-1, 1, 1).expand(conv_h, conv_w, na),
            w.view(1, 1, -1).expand(conv_h, conv_w, na),
            h.view(1, 1, -1).expand(conv_h, conv_w, na),
        ], -1)
        _PRIOR_CACHE[key] = pri.reshape(-1, 4).to(torch.float32)
    return _PRIOR_CACHE[key]


# ---------------------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------------------

class ResNetBackbone(nn.Module):
    """torchvision's ResNet-50 (``weights=None``) under dbolya/yolact's names (``conv1``, ``bn1``, ``layers.i``)."""

    def __init__(self):
        super().__init__()
        r = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layers = nn.ModuleList([r.layer1, r.layer2, r.layer3, r.layer4])
        self.channels = [256, 512, 1024, 2048]

    def forward(self, x: Tensor, num_layers: int = 4) -> List[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in self.layers[:num_layers]:
            x = layer(x)
            outs.append(x)
        return outs


class FPN(nn.Module):
    """YOLACT's FPN (``lat_layers`` stored deepest first, ReLU after the 3x3 ``pred_layers``, two stride-2 convs
    for P6/P7). ``phase1``/``phase2`` are YolactEdge's split of the same computation."""

    def __init__(self, in_channels: Sequence[int], num_features: int = 256, num_downsample: int = 2):
        super().__init__()
        self.lat_layers = nn.ModuleList([nn.Conv2d(c, num_features, 1) for c in reversed(in_channels)])
        self.pred_layers = nn.ModuleList([nn.Conv2d(num_features, num_features, 3, padding=1) for _ in in_channels])
        self.downsample_layers = nn.ModuleList([
            nn.Conv2d(num_features, num_features, 3, padding=1, stride=2) for _ in range(num_downsample)])

    def phase1(self, convouts: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Top-down sums (before the output convs) and the laterals, both in input order (C3 first)."""
        n = len(convouts)
        out: List[Optional[Tensor]] = [None] * n
        lats: List[Optional[Tensor]] = [None] * n
        x = None
        for k, lat_layer in enumerate(self.lat_layers):
            j = n - 1 - k
            lat = lat_layer(convouts[j])
            lats[j] = lat
            if x is None:
                x = lat
            else:
                x = F.interpolate(x, size=convouts[j].shape[-2:], mode="bilinear", align_corners=False) + lat
            out[j] = x
        return out, lats  # type: ignore[return-value]

    def phase2(self, outs: List[Tensor]) -> List[Tensor]:
        outs = [F.relu(pred(o)) for pred, o in zip(self.pred_layers, outs)]
        for down in self.downsample_layers:
            outs.append(down(outs[-1]))
        return outs

    def forward(self, convouts: List[Tensor]) -> List[Tensor]:
        return self.phase2(self.phase1(convouts)[0])


class InterpolateModule(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)


def make_proto_net(in_channels: int = 256, num_prototypes: int = 32) -> nn.Sequential:
    """YOLACT's ``mask_proto_net`` ``[(256,3)]*3 + [(None,-2), (256,3)] + [(32,1)]`` with its ``make_net`` layout
    (a ReLU after every layer including the upsample, none after the last conv): indices 0,2,4,8,10 are convs."""
    layers: List[nn.Module] = []
    for _ in range(3):
        layers += [nn.Conv2d(in_channels, 256, 3, padding=1), nn.ReLU(inplace=True)]
        in_channels = 256
    layers += [InterpolateModule(2), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(256, num_prototypes, 1)]
    return nn.Sequential(*layers)


class PredictionModule(nn.Module):
    """YOLACT's prediction head (``extra_head_net=[(256,3)]``, no extra layers): box, class and mask-coefficient
    convs with ``num_priors`` anchors per location; tanh on the coefficients."""

    def __init__(self, in_channels: int, num_classes: int, num_priors: int, mask_dim: int):
        super().__init__()
        self.num_classes, self.mask_dim = num_classes, mask_dim
        self.upfeature = nn.Sequential(nn.Conv2d(in_channels, 256, 3, padding=1), nn.ReLU(inplace=True))
        self.bbox_layer = nn.Conv2d(256, num_priors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(256, num_priors * num_classes, 3, padding=1)
        self.mask_layer = nn.Conv2d(256, num_priors * mask_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        b = x.size(0)
        x = self.upfeature(x)
        loc = self.bbox_layer(x).permute(0, 2, 3, 1).reshape(b, -1, 4)
        conf = self.conf_layer(x).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes)
        coef = torch.tanh(self.mask_layer(x).permute(0, 2, 3, 1).reshape(b, -1, self.mask_dim))
        return loc, conf, coef


class Yolact(nn.Module):
    """YOLACT-ResNet50 (dbolya/yolact ``yolact_resnet50_config``) with fastops post-processing and mask loss.

    Args:
        num_classes: foreground classes + 1 (background is class 0 of the head; 81 for COCO).
        input_size: square input side (550); P3 is ``ceil(input_size / 8)`` and the prototypes are twice that.
        num_prototypes: mask coefficients / prototypes (32).
        aspect_ratios, scales: anchors per level (``[1, 1/2, 2]``; 24, 48, 96, 192, 384 pixels at 550: anchor sizes
            are relative, ``scale / 550``, so they scale with ``input_size``); ``square_anchors`` as YOLACT's configs.
        score_threshold, iou_threshold, top_k, max_det: YOLACT's Detect (0.05, 0.5, 200, 100).
        mask_threshold: masks are ``> 0.5`` (bool) in the detections.
        impl: ``"auto"`` (fastops kernels) or ``"reference"`` (plain-PyTorch reference ops); may be changed later
            through the ``impl`` attribute.

    ``forward(images)`` returns, in eval mode, one dict per image (``boxes`` float pixels ``[n, 4]``, ``labels``
    0-based foreground classes, ``scores``, ``masks`` bool ``[n, H, W]``); in train mode with ``targets`` the loss
    dict. ``heads(images)`` gives the raw head outputs, ``postprocess(...)`` turns them into detections.
    """

    def __init__(self, num_classes: int = 81, input_size: int = 550, *, num_prototypes: int = 32,
                 aspect_ratios: Sequence[float] = (1.0, 0.5, 2.0),
                 scales: Sequence[float] = (24, 48, 96, 192, 384), square_anchors: bool = True,
                 score_threshold: float = 0.05, iou_threshold: float = 0.5, top_k: int = 200, max_det: int = 100,
                 mask_threshold: float = 0.5, freeze_bn: bool = True, impl: str = "auto"):
        super().__init__()
        self.impl = check_impl(impl)
        self.num_classes, self.input_size, self.mask_dim = num_classes, int(input_size), num_prototypes
        self.aspect_ratios, self.scales, self.square_anchors = tuple(aspect_ratios), tuple(scales), square_anchors
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.top_k, self.max_det, self.mask_threshold = top_k, max_det, mask_threshold
        self._freeze_bn = freeze_bn
        # MultiBox loss settings (yolact_base_config)
        self.pos_threshold, self.neg_threshold, self.negpos_ratio = 0.5, 0.4, 3
        self.bbox_alpha, self.conf_alpha, self.mask_alpha, self.semantic_alpha = 1.5, 1.0, 6.125, 1.0
        self.masks_to_train = 100

        self.backbone = ResNetBackbone()
        self.selected_layers = [1, 2, 3]
        self.fpn = FPN([self.backbone.channels[i] for i in self.selected_layers])
        self.proto_net = make_proto_net(256, num_prototypes)
        self.prediction_layers = nn.ModuleList([
            PredictionModule(256, num_classes, len(self.aspect_ratios), num_prototypes)])
        self.semantic_seg_conv = nn.Conv2d(256, num_classes - 1, 1)
        self._init_weights()
        if freeze_bn:
            self.freeze_bn()

    # -- set-up --------------------------------------------------------------------------------------------------
    def _init_weights(self):
        """YOLACT's init: xavier_uniform weights and zero biases for every conv outside the backbone."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("backbone."):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def freeze_bn(self):
        """YOLACT trains with frozen BatchNorm (statistics and affine parameters)."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self._freeze_bn:
            self.freeze_bn()
        return self

    def priors(self, level_sizes: Sequence[Tuple[int, int]], device=None) -> Tensor:
        """All priors ``[P, 4]`` (center-size, relative) for the FPN level sizes, levels concatenated."""
        pri = [make_priors(h, w, s * self.input_size / 550.0, self.aspect_ratios, self.input_size,
                           self.square_anchors) for (h, w), s in zip(level_sizes, self.scales)]
        return torch.cat(pri, 0).to(device)

    # -- forward -------------------------------------------------------------------------------------------------
    def _predict(self, feats: List[Tensor]) -> Dict[str, Tensor]:
        head = self.prediction_layers[0]
        locs, confs, coefs = zip(*[head(f) for f in feats])
        proto = F.relu(self.proto_net(feats[0])).permute(0, 2, 3, 1).contiguous()
        out = {
            "loc": torch.cat(locs, 1), "conf": torch.cat(confs, 1), "mask": torch.cat(coefs, 1),
            "priors": self.priors([tuple(f.shape[-2:]) for f in feats], feats[0].device).to(feats[0].dtype),
            "proto": proto,
        }
        if self.training:
            out["segm"] = self.semantic_seg_conv(feats[0])
        return out

    def heads(self, images: Tensor) -> Dict[str, Tensor]:
        """Raw outputs: ``loc [B,P,4]``, ``conf [B,P,C]`` (logits), ``mask [B,P,K]`` (tanh coefficients),
        ``priors [P,4]``, ``proto [B,Hp,Wp,K]`` (ReLU prototypes), and ``segm`` in training."""
        convouts = self.backbone(images)
        feats = self.fpn([convouts[i] for i in self.selected_layers])
        return self._predict(feats)

    def forward(self, images: Tensor, targets: Optional[List[Dict[str, Tensor]]] = None,
                output_size: Optional[Tuple[int, int]] = None):
        out = self.heads(images)
        if self.training:
            if targets is None:
                raise ValueError("targets must be given in training mode")
            return self.loss(out, targets)
        return self.postprocess(out, output_size or tuple(images.shape[-2:]))

    # -- inference -----------------------------------------------------------------------------------------------
    def postprocess(self, out: Dict[str, Tensor], output_size: Tuple[int, int]) -> List[Dict[str, Tensor]]:
        """YOLACT's Detect + postprocess: softmax, decode, Fast NMS (``fastops.fast_nms``), then per detection
        ``sigmoid(proto @ coeff)`` cropped, resized to ``output_size`` and thresholded (``fastops.yolact_masks``);
        boxes in pixels via ``sanitize_coordinates`` (floats; YOLACT then casts to long)."""
        h, w = int(output_size[0]), int(output_size[1])
        conf = F.softmax(out["conf"], -1)
        boxes_all = decode_boxes(out["loc"], out["priors"])
        results = []
        for b in range(conf.size(0)):
            scores = conf[b, :, 1:].t()
            idx, labels, sc = fastops.fast_nms(boxes_all[b], scores, self.iou_threshold, self.top_k, self.max_det,
                                               self.score_threshold, impl=self.impl)
            boxes = boxes_all[b][idx]
            coeffs = out["mask"][b][idx]
            masks = fastops.yolact_masks(out["proto"][b], coeffs, boxes, (h, w), crop=True,
                                         threshold=self.mask_threshold, impl=self.impl)
            x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], w)
            y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], h)
            results.append({"boxes": torch.stack([x1, y1, x2, y2], 1), "labels": labels, "scores": sc,
                            "masks": masks})
        return results

    # -- training ------------------------------------------------------------------------------------------------
    def loss(self, out: Dict[str, Tensor], targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """YOLACT's MultiBoxLoss (yolact_base_config): ``B`` smooth-L1 box loss x1.5, ``C`` OHEM cross entropy
        (3 negatives per positive), ``M`` lincomb mask loss x6.125 (``fastops.yolact_mask_loss``; gt masks
        downsampled bilinearly to the prototype size and binarised; at most 100 masks per image), all divided by
        the number of positives; ``S`` semantic segmentation BCE divided by the batch size.

        ``targets[i]``: ``boxes [n,4]`` relative (x1,y1,x2,y2), ``labels [n]`` 0-based foreground classes,
        ``masks [n,H,W]`` float/bool at image resolution.
        """
        loc_data, conf_data, mask_data, priors, proto = (out["loc"], out["conf"], out["mask"], out["priors"],
                                                          out["proto"])
        bsz, num_priors = loc_data.shape[:2]
        with torch.no_grad():
            # YOLACT's match (no crowds) for the whole batch: fastops.match_priors(mode="yolact") on padded gt
            # (conf_t: label + 1, 0 background, -1 neutral; idx_t: matched gt)
            G = max([int(t["boxes"].size(0)) for t in targets] + [0])
            gt = priors.new_zeros((bsz, G, 4))
            lab = torch.zeros((bsz, G), dtype=torch.int64, device=priors.device)
            for b, t in enumerate(targets):
                gt[b, :t["boxes"].size(0)] = t["boxes"].to(priors)
                lab[b, :t["labels"].size(0)] = t["labels"].to(lab) + 1
            counts = torch.tensor([int(t["boxes"].size(0)) for t in targets], dtype=torch.int64,
                                  device=priors.device)
            loc_t, conf_t, _, _, idx_t = fastops.match_priors(gt, lab, priors, counts, None, self.pos_threshold,
                                                              self.neg_threshold, VARIANCES, "yolact", None,
                                                              self.impl)
            gt_box_t = gt.gather(1, idx_t.clamp(min=0)[..., None].expand(-1, -1, 4))
        pos = conf_t > 0
        num_pos = pos.sum(1, keepdim=True)
        losses: Dict[str, Tensor] = {}
        losses["B"] = F.smooth_l1_loss(loc_data[pos], loc_t[pos], reduction="sum") * self.bbox_alpha

        # OHEM (ohem_use_most_confident=False): rank negatives by logsumexp(conf) - conf[background]
        with torch.no_grad():
            bc = conf_data.reshape(-1, self.num_classes)
            loss_c = (torch.logsumexp(bc, 1) - bc[:, 0]).view(bsz, -1)
            loss_c[pos] = 0
            loss_c[conf_t < 0] = 0
            loss_idx = loss_c.sort(dim=1, descending=True, stable=True)[1]
            idx_rank = loss_idx.sort(dim=1, stable=True)[1]
            num_neg = torch.clamp(self.negpos_ratio * num_pos, max=num_priors - 1)
            neg = idx_rank < num_neg
            neg[pos] = False
            neg[conf_t < 0] = False
        sel = pos | neg
        losses["C"] = F.cross_entropy(conf_data[sel], conf_t[sel], reduction="sum") * self.conf_alpha

        mask_h, mask_w = proto.shape[1:3]
        loss_m = proto.new_zeros(())
        for b in range(bsz):
            cur_pos = pos[b]
            if not bool(cur_pos.any()):
                continue
            with torch.no_grad():
                gt = targets[b]["masks"].to(proto.dtype)
                down = F.interpolate(gt[None], (mask_h, mask_w), mode="bilinear", align_corners=False)[0]
                down = down.gt(0.5).to(proto.dtype)
            pos_idx_t = idx_t[b, cur_pos]
            pos_gt_box_t = gt_box_t[b, cur_pos]
            coef = mask_data[b, cur_pos]
            old_num_pos = coef.size(0)
            if old_num_pos > self.masks_to_train:
                select = torch.randperm(old_num_pos)[: self.masks_to_train].to(coef.device)
                coef, pos_idx_t, pos_gt_box_t = coef[select], pos_idx_t[select], pos_gt_box_t[select]
            per_det = fastops.yolact_mask_loss(proto[b], coef, pos_gt_box_t, down[pos_idx_t], impl=self.impl)
            if old_num_pos > coef.size(0):
                per_det = per_det * (old_num_pos / coef.size(0))
            loss_m = loss_m + per_det.sum()
        losses["M"] = loss_m * self.mask_alpha / mask_h / mask_w

        if "segm" in out:
            segm = out["segm"]
            sh, sw = segm.shape[-2:]
            loss_s = segm.new_zeros(())
            for b in range(bsz):
                with torch.no_grad():
                    gt = targets[b]["masks"].to(segm.dtype)
                    down = F.interpolate(gt[None], (sh, sw), mode="bilinear", align_corners=False)[0].gt(0.5)
                    seg_t = torch.zeros_like(segm[b])
                    for k in range(down.size(0)):
                        c = int(targets[b]["labels"][k])
                        seg_t[c] = torch.max(seg_t[c], down[k].to(segm.dtype))
                loss_s = loss_s + F.binary_cross_entropy_with_logits(segm[b], seg_t, reduction="sum")
            losses["S"] = loss_s / sh / sw * self.semantic_alpha / bsz

        total = num_pos.sum().to(loc_data.dtype).clamp(min=1)
        for k in ("B", "C", "M"):
            losses[k] = losses[k] / total
        return losses


# ---------------------------------------------------------------------------------------------------------------
# YolactEdge
# ---------------------------------------------------------------------------------------------------------------

def _conv_lrelu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True))


def _flow_convs(encode_layers: Sequence[int], cin: int, cout: int, enc: int, stride: int = 1) -> nn.Sequential:
    convs = [_conv_lrelu(cin, enc * encode_layers[0], stride)]
    for a, b in zip(encode_layers[:-1], encode_layers[1:]):
        convs.append(_conv_lrelu(enc * a, enc * b))
    convs.append(_conv_lrelu(enc * encode_layers[-1], cout))
    return nn.Sequential(*convs)


class FlowNetMiniPredLayer(nn.Module):
    """Flow (2 channels, 3x3, no bias) plus per-channel ``scale`` (bias initialised to 1) and ``bias`` maps."""

    def __init__(self, cin: int, num_features: int = 256):
        super().__init__()
        self.conv = nn.Conv2d(cin, 2, 3, padding=1, bias=False)
        self.scale = nn.Conv2d(cin, num_features, 1)
        self.bias = nn.Conv2d(cin, num_features, 1)
        for m in (self.conv, self.scale, self.bias):
            nn.init.kaiming_normal_(m.weight, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.scale.bias, 1.0)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        return self.conv(x), self.scale(x), self.bias(x)


class FlowNetMini(nn.Module):
    """YolactEdge's FlowNetMini: an encoder at strides 1/2/4 of the C3 lateral of (current, keyframe) and a
    coarse-to-fine decoder; returns ``[(flow, scale, bias)]`` at the C3, C4 and C5 resolutions (the finest is
    skipped when only P4/P5 are warped, as YolactEdge's ``skip_flow`` at inference)."""

    def __init__(self, in_features: int, encode_channels: int = 64,
                 encode_layers: Sequence[Sequence[int]] = ((4, 1), (2,), (4,)), num_features: int = 256,
                 shuffle_cat: bool = True):
        super().__init__()
        enc = encode_channels
        self.shuffle_cat = shuffle_cat
        self.conv1 = _flow_convs(encode_layers[0], in_features, enc, enc)
        self.conv2 = _flow_convs(encode_layers[1], enc, enc * 2, enc, stride=2)
        self.conv3 = _flow_convs(encode_layers[2], enc * 2, enc * 4, enc, stride=2)
        self.pred3 = FlowNetMiniPredLayer(enc * 4, num_features)
        self.pred2 = FlowNetMiniPredLayer(enc * 4 + 2, num_features)
        self.pred1 = FlowNetMiniPredLayer(enc * 2 + 2, num_features)
        self.upfeat3 = nn.Conv2d(enc * 4, enc * 2, 3, padding=1, bias=False)
        self.upflow3 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.upfeat2 = nn.Conv2d(enc * 4 + 2, enc, 3, padding=1, bias=False)
        self.upflow2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        for seq in (self.conv1, self.conv2, self.conv3):
            for m in seq.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, 0.1, mode="fan_in")
                    nn.init.zeros_(m.bias)

    def forward(self, target: Tensor, source: Tensor, finest: bool = False):
        if self.shuffle_cat:  # channels interleaved: t0, s0, t1, s1, ...
            x = torch.stack((target, source), 2).flatten(1, 2)
        else:
            x = torch.cat((target, source), 1)
        c1 = self.conv1(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        h2, w2 = c2.shape[-2:]
        flow3, scale3, bias3 = self.pred3(c3)
        up_feat3 = self.upfeat3(F.interpolate(c3, size=(h2, w2), mode="bilinear", align_corners=False))
        up_flow3 = self.upflow3(F.interpolate(flow3, size=(h2, w2), mode="bilinear", align_corners=False))
        cat2 = torch.cat((c2, up_feat3, up_flow3), 1)
        flow2, scale2, bias2 = self.pred2(cat2)
        preds = [(flow2, scale2, bias2), (flow3, scale3, bias3)]
        if finest:
            h1, w1 = c1.shape[-2:]
            up_feat2 = self.upfeat2(F.interpolate(cat2, size=(h1, w1), mode="bilinear", align_corners=False))
            up_flow2 = self.upflow2(F.interpolate(flow2, size=(h1, w1), mode="bilinear", align_corners=False))
            preds.insert(0, self.pred1(torch.cat((c1, up_feat2, up_flow2), 1)))
        return preds


class YolactEdge(Yolact):
    """YOLACT with YolactEdge's video mode (``warp_mode='flow'``, ``warp_layers='P4P5'``, scale factor and bias).

    ``forward(images)`` (or ``forward_frame(images, None)``) runs a keyframe; ``forward_frame(images, state)``
    with the ``state`` returned for the last keyframe runs a non-keyframe: C3 only, flow from FlowNetMini,
    keyframe P4/P5 warped with ``fastops.flow_warp``, P3 rebuilt, then the usual FPN outputs, heads and
    post-processing. ``video(frames, keyframe_interval)`` runs a sequence.
    """

    def __init__(self, num_classes: int = 81, input_size: int = 550, *, flow_reduce_channels: Sequence[int] = (128,),
                 flow_encode_channels: int = 64, flow_shuffle_cat: bool = True, **kwargs):
        super().__init__(num_classes, input_size, **kwargs)
        convs, c = [], 256
        for r in flow_reduce_channels:
            convs.append(nn.Sequential(nn.Conv2d(c, r, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)))
            c = r
        self.flow_net_pre_convs = nn.Module()
        self.flow_net_pre_convs.convs = nn.Sequential(*convs)
        self.flow_net = FlowNetMini(c * 2, flow_encode_channels, shuffle_cat=flow_shuffle_cat)

    def warp(self, feat: Tensor, flow: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        """YolactEdge's ``deform_op(feat, flow)`` (grid = base + flow / 8, align_corners=True) times scale plus
        bias."""
        return fastops.flow_warp(feat, flow / 8, units="normalized", align_corners=True, impl=self.impl) * scale + bias

    def _keyframe(self, images: Tensor):
        convouts = self.backbone(images)
        phase1, lats = self.fpn.phase1([convouts[i] for i in self.selected_layers])
        state = {"feats": [f.detach() for f in phase1], "lateral": lats[0].detach()}
        return self.fpn.phase2(list(phase1)), state

    def _nonkeyframe(self, images: Tensor, state: Dict[str, object]):
        c3 = self.backbone(images, num_layers=2)[-1]
        lateral = self.fpn.lat_layers[-1](c3)
        pre = self.flow_net_pre_convs.convs
        flows = self.flow_net(pre(lateral), pre(state["lateral"]))
        p4, p5 = (self.warp(f, *fl) for f, fl in zip(state["feats"][1:], flows))
        p3 = F.interpolate(p4, size=c3.shape[-2:], mode="bilinear", align_corners=False) + lateral
        return self.fpn.phase2([p3, p4, p5])

    def forward_frame(self, images: Tensor, state: Optional[Dict[str, object]] = None,
                      output_size: Optional[Tuple[int, int]] = None):
        """Returns ``(detections or head outputs, state)``; pass ``state=None`` for a keyframe (the returned state
        is the new keyframe's), the keyframe's state otherwise (returned unchanged). In train mode the head
        outputs are returned instead of detections."""
        if state is None:
            feats, state = self._keyframe(images)
        else:
            feats = self._nonkeyframe(images, state)
        out = self._predict(feats)
        if self.training:
            return out, state
        return self.postprocess(out, output_size or tuple(images.shape[-2:])), state

    def video(self, frames: Sequence[Tensor], keyframe_interval: int = 5):
        """Detections for each frame ``[B,3,H,W]``: every ``keyframe_interval``-th frame is a keyframe."""
        state, results = None, []
        for t, frame in enumerate(frames):
            dets, new_state = self.forward_frame(frame, None if t % keyframe_interval == 0 else state)
            state = new_state
            results.append(dets)
        return results


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------

def convert_yolact_edge_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """YolactEdge names -> ours: ``fpn_phase_1.`` and ``fpn_phase_2.`` become ``fpn.``; the ``*_proxy`` and TRT
    copies are dropped."""
    out = {}
    for k, v in state_dict.items():
        if "_proxy" in k:
            continue
        for old in ("fpn_phase_1.", "fpn_phase_2."):
            if k.startswith(old):
                k = "fpn." + k[len(old):]
        out[k] = v
    return out


def load_yolact_checkpoint(model: Yolact, path: str, strict: bool = True):
    """Load a state dict saved by this model or by dbolya/yolact (``Yolact.save_weights``) / YolactEdge.

    Like YOLACT's ``load_weights``: the old ``backbone.layer*`` keys and extra ``fpn.downsample_layers`` are
    dropped, BatchNorm ``num_batches_tracked`` buffers missing from old checkpoints are filled in, and YolactEdge's
    FPN prefixes are converted. Wrapped (``{"state_dict": ...}``, ``{"model": ...}``) and ``module.``-prefixed
    files load too (``_checkpoint.py``).
    """
    return load_checkpoint(model, path, strict=strict, convert=lambda sd: _convert_yolact(model, sd))


def _convert_yolact(model: Yolact, sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    sd = convert_yolact_edge_state_dict(sd)
    for k in list(sd):
        if k.startswith("backbone.layer") and not k.startswith("backbone.layers"):
            del sd[k]
        elif k.startswith("fpn.downsample_layers.") and int(k.split(".")[2]) >= len(model.fpn.downsample_layers):
            del sd[k]
    own = model.state_dict()
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v
    return sd
