"""CenterNet ("Objects as Points", ResNet-18 + 3 deconvolutions, hm/wh/reg heads) and a CornerNet-style corner pooling
module, with fastops in the hot paths:

- training targets: :func:`fastops.gaussian_radius` + :func:`fastops.render_center_heatmap` (CenterNet's
  ``gaussian_radius`` / ``draw_umich_gaussian``, batched, on the boxes' device);
- decoding: :func:`fastops.centernet_decode` (CenterNet's ``_nms`` + ``_topk`` + ``_transpose_and_gather_feat`` +
  ``ctdet_decode`` in one op);
- corner pooling: :func:`fastops.corner_pool` (CornerNet's TopPool/LeftPool/BottomPool/RightPool).

Parameter names follow xingyizhou/CenterNet's ``msra_resnet.py`` (``PoseResNet``): ``conv1``, ``bn1``,
``layer1``..``layer4`` (torchvision's ResNet-18 names, which CenterNet also uses), ``deconv_layers.{0,1,3,4,6,7}``
(ConvTranspose2d 4x4 stride 2 without bias + BatchNorm, three times, 256 channels) and the heads ``hm``, ``wh``, ``reg``
as ``Sequential(Conv2d(256, head_conv, 3), ReLU, Conv2d(head_conv, n, 1))`` (``hm.0``, ``hm.2``, ...), or a single
1x1 ``Conv2d`` when ``head_conv=0``. So a CenterNet ``res_18`` checkpoint (``ctdet --arch res_18``, saved as
``{"epoch", "state_dict"}``, possibly with a ``module.`` prefix) loads with :meth:`CenterNet.load_checkpoint`
(torchvision's unused ``fc`` is not built). The corner pooling module follows princeton-vl/CornerNet's ``pool``
(``p1_conv1``, ``p2_conv1``, ``p_conv1``, ``p_bn1``, ``conv1``, ``bn1``, ``conv2``; ``convolution`` blocks with
``conv``/``bn``).

Every model takes ``impl="auto"`` (fastops kernels) or ``impl="reference"`` (the plain-PyTorch/NumPy references in
``fastops.reference``); the attribute ``model.impl`` can be switched after construction.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import fastops
from fastops.models._checkpoint import load_checkpoint
from fastops.models._kp_common import check_model_impl

BN_MOMENTUM = 0.1
HM_BIAS = -2.19  # CenterNet/CornerNet: sigmoid(-2.19) ~ 0.1, the focal-loss prior


# ------------------------------------------------------------------------------------------------------------------
# CenterNet
# ------------------------------------------------------------------------------------------------------------------

class CenterNet(nn.Module):
    """CenterNet ``ctdet`` with a ResNet-18 backbone (CenterNet's ``msra_resnet`` ``res_18``), random initialisation.

    Args:
        num_classes: heatmap channels (80 for COCO).
        head_conv: channels of the 3x3 conv in each head (64 in CenterNet for ResNets); 0 for 1x1 heads.
        reg_offset: build the ``reg`` (sub-pixel offset) head.
        max_dets: K, the number of detections :meth:`postprocess` returns per image (100 in CenterNet).
        min_overlap, radius_variant: :func:`fastops.gaussian_radius` arguments for the targets (CenterNet: 0.7,
            ``"centernet"``, its published formula).
        hm_weight, wh_weight, off_weight: loss weights (CenterNet: 1, 0.1, 1).
        impl: ``"auto"`` (fastops kernels) or ``"reference"`` (the reference ops), for targets and decoding.

    Input: normalised images ``[B, 3, H, W]`` with H, W multiples of 32; the heads run at stride ``down_ratio = 4``.
    """

    down_ratio = 4

    def __init__(self, num_classes: int = 80, head_conv: int = 64, *, reg_offset: bool = True,
                 max_dets: int = 100, min_overlap: float = 0.7, radius_variant: str = "centernet",
                 hm_weight: float = 1.0, wh_weight: float = 0.1, off_weight: float = 1.0, impl: str = "auto"):
        super().__init__()
        self.impl = check_model_impl(impl)
        self.num_classes = int(num_classes)
        self.max_dets = int(max_dets)
        self.min_overlap = float(min_overlap)
        self.radius_variant = radius_variant
        self.hm_weight, self.wh_weight, self.off_weight = float(hm_weight), float(wh_weight), float(off_weight)
        backbone = torchvision.models.resnet18(weights=None)  # nothing is downloaded
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(backbone, name))
        # CenterNet's _make_deconv_layer(3, [256, 256, 256], [4, 4, 4]): kernel 4, padding 1, output_padding 0
        layers = []
        inplanes = 512
        for planes in (256, 256, 256):
            layers += [nn.ConvTranspose2d(inplanes, planes, kernel_size=4, stride=2, padding=1, output_padding=0,
                                          bias=False),
                       nn.BatchNorm2d(planes, momentum=BN_MOMENTUM),
                       nn.ReLU(inplace=True)]
            inplanes = planes
        self.deconv_layers = nn.Sequential(*layers)
        self.heads = {"hm": self.num_classes, "wh": 2}
        if reg_offset:
            self.heads["reg"] = 2
        for head in sorted(self.heads):
            n = self.heads[head]
            if head_conv > 0:
                fc = nn.Sequential(nn.Conv2d(256, head_conv, kernel_size=3, padding=1, bias=True),
                                   nn.ReLU(inplace=True),
                                   nn.Conv2d(head_conv, n, kernel_size=1, stride=1, padding=0))
            else:
                fc = nn.Conv2d(256, n, kernel_size=1, stride=1, padding=0)
            self.add_module(head, fc)
        self._init_heads()

    def _init_heads(self):
        # msra_resnet.init_weights: deconvs ~ N(0, 0.001), their BN 1/0; the last conv of hm gets bias -2.19,
        # the other heads' last convs N(0, 0.001) with bias 0
        for m in self.deconv_layers.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        for head, n in self.heads.items():
            for m in getattr(self, head).modules():
                if isinstance(m, nn.Conv2d) and m.weight.shape[0] == n:
                    if head == "hm":
                        nn.init.constant_(m.bias, HM_BIAS)
                    else:
                        nn.init.normal_(m.weight, std=0.001)
                        nn.init.constant_(m.bias, 0)

    # -- network -------------------------------------------------------------------------------------------------

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        """Head outputs at stride 4: ``{"hm": logits [B, C, H/4, W/4], "wh": [B, 2, ...], "reg": [B, 2, ...]}``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.deconv_layers(x)
        return {head: getattr(self, head)(x) for head in self.heads}

    # -- post-processing -----------------------------------------------------------------------------------------

    def postprocess(self, outputs: Dict[str, Tensor], k: Optional[int] = None) -> Tensor:
        """Head outputs -> detections ``[B, K, 6]`` rows ``(x1, y1, x2, y2, score, label)`` in input pixels
        (CenterNet's ``hm.sigmoid_()`` + ``ctdet_decode``, boxes scaled by ``down_ratio``; no test-time flip or
        affine un-warping)."""
        heat = outputs["hm"].detach().sigmoid()  # decoding is not differentiable
        reg = outputs.get("reg")
        dets = fastops.centernet_decode(heat, outputs["wh"].detach(), None if reg is None else reg.detach(),
                                        self.max_dets if k is None else int(k), impl=self.impl)
        return torch.cat([dets[..., :4] * self.down_ratio, dets[..., 4:]], dim=-1)

    @torch.no_grad()
    def detect(self, images: Tensor, k: Optional[int] = None) -> Tensor:
        """Full inference: network + :meth:`postprocess` (call ``model.eval()`` first)."""
        return self.postprocess(self(images), k)

    # -- training ------------------------------------------------------------------------------------------------

    def build_targets(self, boxes: Tensor, labels: Tensor, output_size: Sequence[int]) -> Dict[str, Tensor]:
        """CenterNet's ``ctdet`` targets for a padded batch of boxes (``CTDetDataset.__getitem__`` after the affine
        warp), on the boxes' device.

        Args:
            boxes: ``[B, N, 4]`` ``(x1, y1, x2, y2)`` in input pixels.
            labels: ``[B, N]`` integer classes; ``< 0`` marks padding.
            output_size: ``(H, W)`` of the head outputs (input size / 4).

        Returns ``{"hm": [B, C, H, W], "wh": [B, N, 2], "reg": [B, N, 2], "ind": [B, N] (int64), "reg_mask": [B, N]}``:
        boxes are scaled to the output, clipped to ``[0, W-1] x [0, H-1]``; objects with ``h, w > 0`` get radius
        ``max(0, int(gaussian_radius(ceil(h), ceil(w))))`` and a Gaussian at ``int(centre)``.
        """
        if boxes.dim() != 3 or boxes.size(-1) != 4:
            raise ValueError(f"boxes must be [B, N, 4], got shape {tuple(boxes.shape)}")
        if tuple(labels.shape) != tuple(boxes.shape[:2]):
            raise ValueError(f"labels must be [B, N] = {tuple(boxes.shape[:2])}, got {tuple(labels.shape)}")
        H, W = int(output_size[0]), int(output_size[1])
        b = boxes.to(torch.float32) / self.down_ratio
        x1, x2 = b[..., 0].clamp(0, W - 1), b[..., 2].clamp(0, W - 1)
        y1, y2 = b[..., 1].clamp(0, H - 1), b[..., 3].clamp(0, H - 1)
        h, w = y2 - y1, x2 - x1
        valid = (labels >= 0) & (h > 0) & (w > 0)
        radius = fastops.gaussian_radius(torch.ceil(h), torch.ceil(w), self.min_overlap,
                                         variant=self.radius_variant, impl=self.impl)
        radius = radius.to(boxes.device).clamp(min=0).floor().to(torch.int64)  # max(0, int(r))
        ct = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2], dim=-1)
        ct_int = ct.floor()  # ct >= 0: int() truncation
        lab = torch.where(valid, labels.to(torch.int64), torch.full_like(labels, -1, dtype=torch.int64))
        hm = fastops.render_center_heatmap(ct, radius, lab, self.num_classes, (H, W), impl=self.impl)
        hm = hm.to(device=boxes.device, dtype=torch.float32)
        ind = (ct_int[..., 1] * W + ct_int[..., 0]).to(torch.int64) * valid
        mask = valid.to(torch.float32)
        return {"hm": hm, "wh": torch.stack([w, h], dim=-1) * mask[..., None],
                "reg": (ct - ct_int) * mask[..., None], "ind": ind, "reg_mask": mask}

    def loss(self, outputs: Dict[str, Tensor], targets: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """CenterNet's ``CtdetLoss`` (one stack): focal loss on the clamped sigmoid heatmap + ``RegL1Loss`` on ``wh``
        and ``reg`` at the object centres. Returns ``(total, {"hm_loss", "wh_loss", "off_loss"})``."""
        pred = outputs["hm"].sigmoid().clamp(1e-4, 1 - 1e-4)  # CenterNet's _sigmoid
        hm_loss = focal_loss(pred, targets["hm"])
        wh_loss = reg_l1_loss(outputs["wh"], targets["reg_mask"], targets["ind"], targets["wh"])
        total = self.hm_weight * hm_loss + self.wh_weight * wh_loss
        stats = {"hm_loss": hm_loss, "wh_loss": wh_loss}
        if "reg" in outputs:
            off_loss = reg_l1_loss(outputs["reg"], targets["reg_mask"], targets["ind"], targets["reg"])
            total = total + self.off_weight * off_loss
            stats["off_loss"] = off_loss
        return total, stats

    def training_step(self, images: Tensor, boxes: Tensor, labels: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Forward, targets (fastops), loss; call ``.backward()`` on the returned total."""
        outputs = self(images)
        targets = self.build_targets(boxes, labels, outputs["hm"].shape[-2:])
        return self.loss(outputs, targets)

    def load_checkpoint(self, path, *, strict: bool = True):
        """Load a state dict from a local file (bare, or CenterNet's ``{"epoch", "state_dict"}``, ``module.``
        prefixes stripped)."""
        return load_checkpoint(self, path, strict=strict)


def focal_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """CenterNet's ``_neg_loss`` (CornerNet's focal loss, alpha 2, beta 4) on probabilities ``pred``; written without
    a data-dependent branch (``num_pos == 0`` divides by 1, which is CenterNet's ``-neg_loss``)."""
    pos = gt.eq(1).to(pred.dtype)
    neg = gt.lt(1).to(pred.dtype)
    neg_weights = torch.pow(1 - gt, 4)
    pos_loss = (torch.log(pred) * torch.pow(1 - pred, 2) * pos).sum()
    neg_loss = (torch.log(1 - pred) * torch.pow(pred, 2) * neg_weights * neg).sum()
    num_pos = pos.sum()
    return -(pos_loss + neg_loss) / num_pos.clamp(min=1)


def gather_feat(feat: Tensor, ind: Tensor) -> Tensor:
    """``[B, C, H, W]`` gathered at flat indices ``ind [B, N]`` -> ``[B, N, C]`` (``_transpose_and_gather_feat``
    without the permute copy)."""
    B, C = feat.shape[:2]
    g = feat.reshape(B, C, -1).gather(2, ind[:, None, :].expand(B, C, ind.size(1)))
    return g.transpose(1, 2)


def reg_l1_loss(output: Tensor, mask: Tensor, ind: Tensor, target: Tensor) -> Tensor:
    """CenterNet's ``RegL1Loss``: sum of ``|pred - target|`` at the masked centres over ``mask.sum() * 2 + 1e-4``."""
    pred = gather_feat(output, ind)
    m = mask[..., None].expand_as(pred).to(pred.dtype)
    loss = F.l1_loss(pred * m, target * m, reduction="sum")
    return loss / (m.sum() + 1e-4)


# ------------------------------------------------------------------------------------------------------------------
# CornerNet corner pooling
# ------------------------------------------------------------------------------------------------------------------

def corner_pool(x: Tensor, mode: str, impl: str = "auto") -> Tensor:
    """Differentiable corner pooling: :func:`fastops.corner_pool` (``impl="reference"`` is CornerNet's forward and
    its own backward, fastops.reference.corner_pool)."""
    return fastops.corner_pool(x, mode, impl=impl)


class convolution(nn.Module):  # noqa: N801  (CornerNet's name; parameter names conv/bn)
    """CornerNet's ``convolution``: k x k conv (bias only without BN), BatchNorm, ReLU."""

    def __init__(self, k: int, inp_dim: int, out_dim: int, stride: int = 1, with_bn: bool = True):
        super().__init__()
        pad = (k - 1) // 2
        self.conv = nn.Conv2d(inp_dim, out_dim, (k, k), padding=(pad, pad), stride=(stride, stride),
                              bias=not with_bn)
        self.bn = nn.BatchNorm2d(out_dim) if with_bn else nn.Sequential()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class CornerPool(nn.Module):
    """CornerNet's ``pool`` module: two 3x3 branches pooled in two directions and summed, 3x3 conv + BN, plus a 1x1
    shortcut, ReLU, 3x3 ``convolution``. ``modes=("top", "left")`` is CornerNet's ``tl_pool``,
    ``("bottom", "right")`` its ``br_pool``."""

    def __init__(self, dim: int, modes: Tuple[str, str] = ("top", "left"), mid_dim: int = 128, *,
                 impl: str = "auto"):
        super().__init__()
        for m in modes:
            if m not in ("top", "bottom", "left", "right"):
                raise ValueError(f"modes must name corner_pool modes, got {modes!r}")
        self.modes = tuple(modes)
        self.impl = check_model_impl(impl)
        self.p1_conv1 = convolution(3, dim, mid_dim)
        self.p2_conv1 = convolution(3, dim, mid_dim)
        self.p_conv1 = nn.Conv2d(mid_dim, dim, (3, 3), padding=(1, 1), bias=False)
        self.p_bn1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, (1, 1), bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = convolution(3, dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        pool1 = corner_pool(self.p1_conv1(x), self.modes[0], self.impl)
        pool2 = corner_pool(self.p2_conv1(x), self.modes[1], self.impl)
        p_bn1 = self.p_bn1(self.p_conv1(pool1 + pool2))
        bn1 = self.bn1(self.conv1(x))
        return self.conv2(self.relu1(p_bn1 + bn1))


def _kp_layer(cnv_dim: int, curr_dim: int, out_dim: int) -> nn.Sequential:
    # CornerNet's make_kp_layer: convolution(3, cnv_dim, curr_dim, with_bn=False) + 1x1 conv
    return nn.Sequential(convolution(3, cnv_dim, curr_dim, with_bn=False), nn.Conv2d(curr_dim, out_dim, (1, 1)))


class CornerNetHead(nn.Module):
    """One stack of CornerNet's prediction modules on a feature map ``[B, dim, H, W]``: top-left and bottom-right
    corner pooling (``tl_cnv``/``br_cnv``: :class:`CornerPool`), then corner
    heatmaps (``tl_heat``/``br_heat``, bias -2.19), 1-d embeddings (``tl_tag``/``br_tag``) and offsets
    (``tl_regr``/``br_regr``). Names follow CornerNet's ``kp`` module (its ModuleLists ``tl_cnvs[i]`` etc. hold one
    of these per stack). Returns ``{"tl_heat", "br_heat", "tl_tag", "br_tag", "tl_regr", "br_regr"}`` (heat as
    logits)."""

    def __init__(self, num_classes: int = 80, dim: int = 256, curr_dim: int = 256, *, impl: str = "auto"):
        super().__init__()
        self.tl_cnv = CornerPool(dim, ("top", "left"), impl=impl)
        self.br_cnv = CornerPool(dim, ("bottom", "right"), impl=impl)
        self.tl_heat = _kp_layer(dim, curr_dim, num_classes)
        self.br_heat = _kp_layer(dim, curr_dim, num_classes)
        self.tl_tag = _kp_layer(dim, curr_dim, 1)
        self.br_tag = _kp_layer(dim, curr_dim, 1)
        self.tl_regr = _kp_layer(dim, curr_dim, 2)
        self.br_regr = _kp_layer(dim, curr_dim, 2)
        for heat in (self.tl_heat, self.br_heat):
            nn.init.constant_(heat[-1].bias, HM_BIAS)

    @property
    def impl(self) -> str:
        return self.tl_cnv.impl

    @impl.setter
    def impl(self, value: str) -> None:
        self.tl_cnv.impl = self.br_cnv.impl = check_model_impl(value)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        tl, br = self.tl_cnv(x), self.br_cnv(x)
        return {"tl_heat": self.tl_heat(tl), "br_heat": self.br_heat(br), "tl_tag": self.tl_tag(tl),
                "br_tag": self.br_tag(br), "tl_regr": self.tl_regr(tl), "br_regr": self.br_regr(br)}


def build_centernet(num_classes: int = 80, *, checkpoint=None, impl: str = "auto", **kwargs) -> CenterNet:
    """A :class:`CenterNet`, random initialisation, optionally loading a local state-dict file."""
    model = CenterNet(num_classes, impl=impl, **kwargs)
    if checkpoint is not None:
        model.load_checkpoint(checkpoint)
    return model
