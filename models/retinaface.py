"""RetinaFace (Deng et al.; the PyTorch implementation biubug6/Pytorch_Retinaface) with fastops in its hot paths.

Backbone (MobileNet-0.25 or torchvision's ResNet-50, built with ``weights=None``: nothing is downloaded) + FPN (3
levels, strides 8/16/32) + one SSH context module per level + per-level 1x1 heads for 2 anchors per location:
classes (2), boxes (4) and five landmarks (10). Prior boxes: ``min_sizes [[16, 32], [64, 128], [256, 512]]``, steps
8/16/32, centre-size and relative to the image, no clipping (16,800 priors at 640 x 640).

Hot paths outside the network:
  * ``detect()``: decode boxes and landmarks (variances 0.1/0.2), score threshold, top-k, NMS, keep-top-k in one
    op, :func:`fastops.prior_nms` (the original decodes on the device, then runs a NumPy NMS on the host);
  * ``training_step()``: the MultiBox loss's prior-to-gt matching for the whole batch in one op,
    :func:`fastops.match_priors` (the original loops over the images in Python).
``impl="reference"`` runs the plain transcriptions of the original (fastops/reference/priors.py) instead.

Parameter names are the original's, so its published checkpoints (``mobilenet0.25_Final.pth``,
``Resnet50_Final.pth``, saved from DataParallel with a ``module.`` prefix, stripped on load) load through
``checkpoint=`` / :meth:`RetinaFace.load_checkpoint`: ``body.*`` (``body.stage{1,2,3}.*`` for MobileNet-0.25,
torchvision's ``body.conv1/bn1/layer{1-4}.*`` for ResNet-50), ``fpn.output{1,2,3}.*``, ``fpn.merge{1,2}.*``,
``ssh{1,2,3}.conv3X3.*`` / ``conv5X5_1`` / ``conv5X5_2`` / ``conv7X7_2`` / ``conv7x7_3``,
``ClassHead.{0,1,2}.conv1x1``, ``BboxHead.{0,1,2}.conv1x1``, ``LandmarkHead.{0,1,2}.conv1x1``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.models._utils import IntermediateLayerGetter

import fastops
from fastops._library import check_impl
from fastops.models._checkpoint import load_checkpoint
from fastops.ops.priors import split_detections

__all__ = ["RetinaFace", "CFG_MNET", "CFG_RE50", "prior_boxes", "build_retinaface"]

CFG_MNET = {"name": "mobilenet0.25", "min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32],
            "variance": [0.1, 0.2], "clip": False, "loc_weight": 2.0,
            "return_layers": {"stage1": 1, "stage2": 2, "stage3": 3}, "in_channel": 32, "out_channel": 64}
CFG_RE50 = {"name": "Resnet50", "min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32],
            "variance": [0.1, 0.2], "clip": False, "loc_weight": 2.0,
            "return_layers": {"layer2": 1, "layer3": 2, "layer4": 3}, "in_channel": 256, "out_channel": 256}
CONFIGS = {"mobilenet0.25": CFG_MNET, "resnet50": CFG_RE50}


def prior_boxes(image_size: Tuple[int, int], min_sizes=CFG_MNET["min_sizes"], steps=CFG_MNET["steps"],
                clip: bool = False, device=None) -> Tensor:
    """The original ``PriorBox.forward()``: ``[P, 4]`` float32 ``(cx, cy, w, h)`` relative to ``image_size``
    ``(H, W)``; per level ``ceil(H / step) x ceil(W / step)`` cells in row-major order, ``len(min_sizes[k])``
    priors per cell (computed in double as the original's Python floats, then rounded to float32)."""
    H, W = int(image_size[0]), int(image_size[1])
    out = []
    for ms, step in zip(min_sizes, steps):
        fh, fw = -(-H // step), -(-W // step)
        cy = ((torch.arange(fh, dtype=torch.float64) + 0.5) * step / H)[:, None, None].expand(fh, fw, len(ms))
        cx = ((torch.arange(fw, dtype=torch.float64) + 0.5) * step / W)[None, :, None].expand(fh, fw, len(ms))
        sx = (torch.tensor(ms, dtype=torch.float64) / W)[None, None, :].expand(fh, fw, len(ms))
        sy = (torch.tensor(ms, dtype=torch.float64) / H)[None, None, :].expand(fh, fw, len(ms))
        out.append(torch.stack([cx, cy, sx, sy], -1).reshape(-1, 4))
    pri = torch.cat(out, 0).float()
    if clip:
        pri = pri.clamp(min=0, max=1)
    return pri.to(device)


# ---------------------------------------------------------------------------------------------------------------
# net.py
# ---------------------------------------------------------------------------------------------------------------

def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup),
                         nn.LeakyReLU(negative_slope=leaky, inplace=True))


def conv_bn_no_relu(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp: int, oup: int, stride: int, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, stride, padding=0, bias=False), nn.BatchNorm2d(oup),
                         nn.LeakyReLU(negative_slope=leaky, inplace=True))


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True))


class SSH(nn.Module):
    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        assert out_channel % 4 == 0
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2, stride=1)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, stride=1, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, stride=1, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)

    def forward(self, x: Tensor) -> Tensor:
        c5_1 = self.conv5X5_1(x)
        c7_2 = self.conv7X7_2(c5_1)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(c7_2)], dim=1))


class FPN(nn.Module):
    def __init__(self, in_channels_list: Sequence[int], out_channels: int):
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = conv_bn1x1(in_channels_list[0], out_channels, stride=1, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels_list[1], out_channels, stride=1, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels_list[2], out_channels, stride=1, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, feats: Dict[str, Tensor]) -> List[Tensor]:
        x = list(feats.values())
        o1, o2, o3 = self.output1(x[0]), self.output2(x[1]), self.output3(x[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=[o2.size(2), o2.size(3)], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=[o1.size(2), o1.size(3)], mode="nearest"))
        return [o1, o2, o3]


class MobileNetV1(nn.Module):
    """MobileNet-0.25 as in the original (``avg`` and ``fc`` exist but the layer getter drops them)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(3, 8, 2, leaky=0.1), conv_dw(8, 16, 1), conv_dw(16, 32, 2),
                                    conv_dw(32, 32, 1), conv_dw(32, 64, 2), conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(256, 1000)


class _Head(nn.Module):
    def __init__(self, inchannels: int, num_anchors: int, width: int):
        super().__init__()
        self.width = width
        self.conv1x1 = nn.Conv2d(inchannels, num_anchors * width, kernel_size=(1, 1), stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.width)


class RetinaFace(nn.Module):
    """RetinaFace with the original's module tree.

    Args:
        cfg: ``"mobilenet0.25"`` / ``"resnet50"`` or a config dict like :data:`CFG_MNET`.
        score_threshold, iou_threshold, top_k, keep_top_k: detect.py's defaults (0.02, 0.4, 5000, 750).
        impl: ``"auto"`` (fastops ops) or ``"reference"`` (the original's code, transcribed).
        checkpoint: a local file with the original's state dict (``module.`` prefixes are stripped).

    ``forward(images)`` returns the raw ``(loc [B,P,4], conf [B,P,2] logits, landms [B,P,10])`` (the original's
    train-phase output; its test phase applies a softmax to conf, as :meth:`detect` does).
    """

    def __init__(self, cfg="mobilenet0.25", *, score_threshold: float = 0.02, iou_threshold: float = 0.4,
                 top_k: int = 5000, keep_top_k: int = 750, impl: str = "auto", checkpoint=None):
        super().__init__()
        self.cfg = dict(CONFIGS[cfg.lower()] if isinstance(cfg, str) else cfg)
        self.impl = check_impl(impl)
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.top_k, self.keep_top_k = top_k, keep_top_k
        if self.cfg["name"] == "mobilenet0.25":
            backbone = MobileNetV1()
        else:
            backbone = torchvision.models.resnet50(weights=None)
        self.body = IntermediateLayerGetter(backbone, self.cfg["return_layers"])
        c = self.cfg["in_channel"]
        out = self.cfg["out_channel"]
        self.fpn = FPN([c * 2, c * 4, c * 8], out)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out, out), SSH(out, out), SSH(out, out)
        na = len(self.cfg["min_sizes"][0])
        self.ClassHead = nn.ModuleList([_Head(out, na, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out, na, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out, na, 10) for _ in range(3)])
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    def load_checkpoint(self, path, *, strict: bool = True):
        """Load the original's checkpoint file (bare or DataParallel ``module.``-prefixed state dict)."""
        return load_checkpoint(self, path, strict=strict)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        fpn = self.fpn(self.body(images))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([self.BboxHead[i](f) for i, f in enumerate(feats)], dim=1)
        conf = torch.cat([self.ClassHead[i](f) for i, f in enumerate(feats)], dim=1)
        landms = torch.cat([self.LandmarkHead[i](f) for i, f in enumerate(feats)], dim=1)
        return loc, conf, landms

    def priors(self, image_size: Tuple[int, int], device=None) -> Tensor:
        return prior_boxes(image_size, self.cfg["min_sizes"], self.cfg["steps"], self.cfg["clip"], device)

    # -- inference -------------------------------------------------------------------------------------------------
    def postprocess(self, loc: Tensor, conf: Tensor, landms: Tensor, image_size: Tuple[int, int],
                    pad: bool = False):
        """detect.py after the network: per image ``(boxes [n,4], scores [n], landmarks [n,10])`` in pixels of
        ``image_size`` ``(H, W)``; ``pad=True``: ``(boxes [B,K,4], scores [B,K], landmarks [B,K,10], num_valid
        [B])`` with ``K = keep_top_k``."""
        h, w = int(image_size[0]), int(image_size[1])
        priors = self.priors((h, w), loc.device).to(loc.dtype)
        scores = F.softmax(conf, dim=-1)[..., 1]
        out = fastops.prior_nms(loc, scores, landms, priors, (float(w), float(h)), self.score_threshold,
                                self.iou_threshold, self.top_k, self.keep_top_k, tuple(self.cfg["variance"]), pad,
                                True, self.impl)
        return out if pad else split_detections(*out)

    @torch.no_grad()
    def detect(self, images: Tensor, pad: bool = False):
        """The network in eval mode plus :meth:`postprocess` (one result per image)."""
        loc, conf, landms = self(images)
        return self.postprocess(loc, conf, landms, tuple(images.shape[-2:]), pad)

    # -- training --------------------------------------------------------------------------------------------------
    def training_step(self, images: Tensor, targets: List[Tensor], threshold: float = 0.35,
                      negpos_ratio: int = 7) -> Dict[str, Tensor]:
        """train.py's step: the MultiBox loss of the original (overlap 0.35, 7 negatives per positive, hard gt
        below 0.2 best overlap ignored) on ``targets[i]`` ``[n, 15]`` rows ``(x1, y1, x2, y2, 10 landmark
        coordinates, label)`` relative to the image (label -1: a face without landmarks). Returns ``loss_l``,
        ``loss_c``, ``loss_landm`` and ``loss = loc_weight * loss_l + loss_c + loss_landm``."""
        loc, conf, landms = self(images)
        priors = self.priors(tuple(images.shape[-2:]), images.device).to(loc.dtype)
        var = tuple(self.cfg["variance"])
        if self.impl == "reference":
            from fastops.reference.priors import multibox_loss
            ll, lc, lm = multibox_loss((loc, conf, landms), priors, targets, threshold, var, negpos_ratio)
        else:
            with torch.no_grad():
                boxes, labels, lmk, counts = pad_targets(targets, landms.size(2), loc.dtype, loc.device)
                loc_t, conf_t, landm_t, _, _ = fastops.match_priors(
                    boxes, labels, priors, counts, lmk, threshold, threshold, var, "ssd", 0.2, self.impl)
            ll, lc, lm = multibox_from_targets(loc, conf, landms, loc_t, conf_t, landm_t, negpos_ratio)
        return {"loss_l": ll, "loss_c": lc, "loss_landm": lm, "loss": self.cfg["loc_weight"] * ll + lc + lm}


def pad_targets(targets: List[Tensor], nl: int, dtype, device):
    """List of ``[n_i, 4 + nl + 1]`` target rows -> padded ``boxes [B,G,4]``, ``labels int64 [B,G]``,
    ``landmarks [B,G,nl]`` and ``counts int64 [B]`` (the layout :func:`fastops.match_priors` takes)."""
    B = len(targets)
    G = max([int(t.size(0)) for t in targets] + [0])
    rows = torch.zeros((B, G, 4 + nl + 1), dtype=dtype, device=device)
    for b, t in enumerate(targets):
        rows[b, :t.size(0)] = t.to(dtype)
    counts = torch.tensor([int(t.size(0)) for t in targets], dtype=torch.int64, device=device)
    return rows[..., :4].contiguous(), rows[..., -1].long(), rows[..., 4:4 + nl].contiguous(), counts


def multibox_from_targets(loc: Tensor, conf: Tensor, landms: Tensor, loc_t: Tensor, conf_t: Tensor,
                          landm_t: Tensor, negpos_ratio: int = 7) -> Tuple[Tensor, Tensor, Tensor]:
    """MultiBoxLoss.forward after its matching loop: smooth-L1 landmark loss over ``conf_t > 0``, smooth-L1 box
    loss and OHEM cross entropy (``negpos_ratio`` negatives per positive, ranked by ``logsumexp - conf[target]``)
    over ``conf_t != 0``; box and class losses divided by the positives, the landmark loss by the positives with
    landmarks."""
    nc = conf.size(2)
    pos1 = conf_t > 0
    n1 = max(float(pos1.sum()), 1.0)
    loss_landm = F.smooth_l1_loss(landms[pos1], landm_t[pos1], reduction="sum")
    pos = conf_t != 0
    target = pos.long()
    loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    with torch.no_grad():
        bc = conf.reshape(-1, nc)
        m = bc.max()
        loss_c = torch.log(torch.sum(torch.exp(bc - m), 1, keepdim=True)) + m - bc.gather(1, target.view(-1, 1))
        loss_c[pos.view(-1, 1)] = 0
        loss_c = loss_c.view(conf.size(0), -1)
        _, loss_idx = loss_c.sort(1, descending=True)
        _, idx_rank = loss_idx.sort(1)
        num_pos = pos.long().sum(1, keepdim=True)
        neg = idx_rank < torch.clamp(negpos_ratio * num_pos, max=pos.size(1) - 1)
    sel = pos | neg
    loss_c = F.cross_entropy(conf[sel], target[sel], reduction="sum")
    n = max(float(num_pos.sum()), 1.0)
    return loss_l / n, loss_c / n, loss_landm / n1


def build_retinaface(cfg="mobilenet0.25", *, checkpoint=None, impl: str = "auto", **kwargs) -> RetinaFace:
    return RetinaFace(cfg, checkpoint=checkpoint, impl=impl, **kwargs)
