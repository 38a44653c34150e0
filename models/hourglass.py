"""Stacked Hourglass (Newell et al. 2016) with fastops in the hot paths:

- training targets: :func:`fastops.render_gaussian_heatmaps` (MSRA Gaussians at the integer pixel, per-keypoint
  target weights, several people per image merged with max);
- decoding: :func:`fastops.heatmap_argmax` with ``refine="hourglass"`` (the stacked-hourglass parser's first maximum,
  +-0.25 towards the larger neighbour, +0.5).

Architecture and parameter names follow princeton-vl/pytorch_stacked_hourglass (``models/posenet.py``,
``models/layers.py``): ``pre`` (``Conv(3, 64, 7, 2, bn)``, ``Residual(64, 128)``, ``Pool``, ``Residual(128, 128)``,
``Residual(128, inp_dim)``), per stack ``hgs[i].0`` (recursive ``Hourglass`` with ``up1``, ``low1``, ``low2``,
``low3``), ``features[i]`` (``Residual`` + 1x1 ``Conv`` with BN), ``outs[i]``, and ``merge_features[i]`` /
``merge_preds[i]`` (``Merge.conv``); ``Conv`` holds ``conv``/``bn``, ``Residual`` holds ``bn1..3``, ``conv1..3``
and ``skip_layer`` (built even when unused, as the original, so the keys match). Its MPII checkpoints
(``{"state_dict": ...}`` with keys ``model.module.<name>``, nstack=8, inp_dim=256, oup_dim=16) load with
:meth:`StackedHourglass.load_checkpoint`. The original takes NHWC images (``imgs.permute(0, 3, 1, 2)``); pass
``nhwc_input=True`` for that, the default is NCHW.

Coordinates: a keypoint at input pixel ``p`` has heatmap coordinate ``p / stride - 0.5`` in fastops' convention
(pixel ``i`` holds its value at ``i``), so its target peak is at ``int(p / stride)`` as in the original's
``GenerateHeatmap``, and the parser's ``+0.5`` maps the decoded maximum back: input pixels = ``coords * stride``
(stride 4).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastops
from fastops.models._checkpoint import load_checkpoint
from fastops.models._kp_common import check_model_impl

Pool = nn.MaxPool2d


class Conv(nn.Module):
    """``Conv2d`` (bias, 'same' padding) + optional BatchNorm + optional ReLU (the original's ``Conv``)."""

    def __init__(self, inp_dim: int, out_dim: int, kernel_size: int = 3, stride: int = 1, bn: bool = False,
                 relu: bool = True):
        super().__init__()
        self.inp_dim = inp_dim
        self.conv = nn.Conv2d(inp_dim, out_dim, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=True)
        self.relu = nn.ReLU() if relu else None
        self.bn = nn.BatchNorm2d(out_dim) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        if x.size(1) != self.inp_dim:
            raise ValueError(f"Conv expects {self.inp_dim} input channels, got {x.size(1)}")
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 (out/2), BN-ReLU-3x3, BN-ReLU-1x1 (out), plus the input or a 1x1
    ``skip_layer`` when the channel count changes."""

    def __init__(self, inp_dim: int, out_dim: int):
        super().__init__()
        mid = int(out_dim / 2)
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(inp_dim)
        self.conv1 = Conv(inp_dim, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = Conv(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = Conv(mid, out_dim, 1, relu=False)
        self.skip_layer = Conv(inp_dim, out_dim, 1, relu=False)  # present in the checkpoints even when unused
        self.need_skip = inp_dim != out_dim

    def forward(self, x: Tensor) -> Tensor:
        residual = self.skip_layer(x) if self.need_skip else x
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + residual


class Hourglass(nn.Module):
    """Recursive hourglass of depth ``n`` on ``f`` channels (``f + increase`` below the first pooling)."""

    def __init__(self, n: int, f: int, bn=None, increase: int = 0):
        super().__init__()
        nf = f + increase
        self.up1 = Residual(f, f)
        self.pool1 = Pool(2, 2)
        self.low1 = Residual(f, nf)
        self.n = n
        self.low2 = Hourglass(n - 1, nf, bn=bn) if n > 1 else Residual(nf, nf)
        self.low3 = Residual(nf, f)

    def forward(self, x: Tensor) -> Tensor:
        up1 = self.up1(x)
        low3 = self.low3(self.low2(self.low1(self.pool1(x))))
        return up1 + F.interpolate(low3, size=up1.shape[2:], mode="nearest")


class Merge(nn.Module):
    def __init__(self, x_dim: int, y_dim: int):
        super().__init__()
        self.conv = Conv(x_dim, y_dim, 1, relu=False, bn=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class StackedHourglass(nn.Module):
    """The original's ``PoseNet``: ``nstack`` hourglasses with intermediate supervision, random initialisation.

    Args:
        nstack: number of stacks (8 in the MPII model).
        inp_dim: feature channels (256); oup_dim: keypoints K (16 for MPII).
        bn, increase: the original's ``Hourglass`` arguments (``increase`` widens the first level below the pool).
        depth: hourglass recursion depth (4 in the original; the input must be divisible by ``4 * 2**depth``).
        sigma: Gaussian sigma of the targets in heatmap pixels (``output_res / 64``, 1 for 64x64 heatmaps).
        nhwc_input: the original's NHWC image layout.
        impl: ``"auto"`` (fastops kernels) or ``"reference"`` (reference ops), for targets and decoding.

    ``forward`` returns the heatmaps of every stack ``[B, nstack, K, H/4, W/4]`` (the original's layout).
    """

    stride = 4

    def __init__(self, nstack: int = 8, inp_dim: int = 256, oup_dim: int = 16, bn: bool = False,
                 increase: int = 0, *, depth: int = 4, sigma: float = 1.0, nhwc_input: bool = False,
                 impl: str = "auto"):
        super().__init__()
        if nstack < 1 or depth < 1:
            raise ValueError(f"nstack and depth must be >= 1, got nstack={nstack}, depth={depth}")
        self.impl = check_model_impl(impl)
        self.nstack, self.oup_dim, self.depth = int(nstack), int(oup_dim), int(depth)
        self.sigma = float(sigma)
        self.nhwc_input = bool(nhwc_input)
        self.pre = nn.Sequential(
            Conv(3, 64, 7, 2, bn=True, relu=True),
            Residual(64, 128),
            Pool(2, 2),
            Residual(128, 128),
            Residual(128, inp_dim),
        )
        self.hgs = nn.ModuleList([nn.Sequential(Hourglass(depth, inp_dim, bn, increase)) for _ in range(nstack)])
        self.features = nn.ModuleList([
            nn.Sequential(Residual(inp_dim, inp_dim), Conv(inp_dim, inp_dim, 1, bn=True, relu=True))
            for _ in range(nstack)])
        self.outs = nn.ModuleList([Conv(inp_dim, oup_dim, 1, relu=False, bn=False) for _ in range(nstack)])
        self.merge_features = nn.ModuleList([Merge(inp_dim, inp_dim) for _ in range(nstack - 1)])
        self.merge_preds = nn.ModuleList([Merge(oup_dim, inp_dim) for _ in range(nstack - 1)])

    # -- network -------------------------------------------------------------------------------------------------

    def forward(self, imgs: Tensor) -> Tensor:
        x = imgs.permute(0, 3, 1, 2) if self.nhwc_input else imgs
        x = self.pre(x)
        preds_all = []
        for i in range(self.nstack):
            hg = self.hgs[i](x)
            feature = self.features[i](hg)
            preds = self.outs[i](feature)
            preds_all.append(preds)
            if i < self.nstack - 1:
                x = x + self.merge_preds[i](preds) + self.merge_features[i](feature)
        return torch.stack(preds_all, 1)

    # -- post-processing -----------------------------------------------------------------------------------------

    def decode(self, preds: Tensor) -> Tuple[Tensor, Tensor]:
        """Heatmaps -> ``(keypoints [B, K, 2] (x, y) in input pixels, scores [B, K])``.

        ``preds`` is the ``forward`` output ``[B, nstack, K, h, w]`` (the last stack is decoded) or one stack's
        ``[B, K, h, w]``. Keypoints: the stacked-hourglass parser (first maximum, +-0.25 towards the larger
        neighbour, +0.5) times the stride; -1 where the score is <= 0.
        """
        hm = (preds[:, -1] if preds.dim() == 5 else preds).detach()  # decoding is not differentiable
        coords, scores = fastops.heatmap_argmax(hm, refine="hourglass", impl=self.impl)
        coords = coords.to(hm.device)
        scores = scores.to(hm.device)
        kp = torch.where(scores[..., None] > 0, coords * self.stride, torch.full_like(coords, -1.0))
        return kp, scores

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Full inference: network + :meth:`decode` (call ``model.eval()`` first)."""
        return self.decode(self(images))

    # -- training ------------------------------------------------------------------------------------------------

    def build_targets(self, keypoints: Tensor, output_size: Sequence[int], visible: Optional[Tensor] = None
                      ) -> Tuple[Tensor, Tensor]:
        """Heatmap targets and target weights from keypoints in input pixels.

        Args:
            keypoints: ``[B, K, 2]`` or ``[B, N, K, 2]`` (N people merged with max), ``(x, y)`` input pixels.
            output_size: ``(h, w)`` of the heatmaps.
            visible: ``[B, K]`` / ``[B, N, K]``, entries < 0.5 are not drawn and get weight 0.

        Returns ``(heatmaps [B, K, h, w], weights [B, K])`` (weights: max over the people), via
        :func:`fastops.render_gaussian_heatmaps` (``mode="msra"``: peak 1 at ``int(p / stride)``, 3 sigma window).
        """
        if keypoints.dim() not in (3, 4) or keypoints.size(-1) != 2:
            raise ValueError(f"keypoints must be [B, K, 2] or [B, N, K, 2], got shape {tuple(keypoints.shape)}")
        kp = keypoints.to(torch.float32) / self.stride - 0.5
        hm, w = fastops.render_gaussian_heatmaps(kp, (int(output_size[0]), int(output_size[1])), self.sigma,
                                                 visible, mode="msra", impl=self.impl)
        if w.dim() == 3:
            w = w.amax(dim=1)
        return hm.to(keypoints.device), w.to(keypoints.device)

    def loss(self, preds: Tensor, heatmaps: Tensor, weights: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """The original's ``HeatmapLoss`` per stack (squared error averaged over pixels and keypoints), each keypoint's
        error scaled by its target weight. Returns ``(total = mean over stacks and images, per-stack [nstack])``."""
        err = (preds - heatmaps[:, None]) ** 2  # [B, S, K, h, w]
        if weights is not None:
            err = err * weights[:, None, :, None, None].to(err.dtype)
        per_image = err.mean(dim=(3, 4)).mean(dim=2)  # [B, S]
        return per_image.mean(), per_image.mean(dim=0)

    def training_step(self, images: Tensor, keypoints: Tensor, visible: Optional[Tensor] = None
                      ) -> Tuple[Tensor, Tensor]:
        """Forward, targets (fastops), loss; call ``.backward()`` on the returned total."""
        preds = self(images)
        heatmaps, weights = self.build_targets(keypoints, preds.shape[-2:], visible)
        return self.loss(preds, heatmaps, weights)

    def load_checkpoint(self, path, *, strict: bool = True):
        """Load a state dict from a local file (bare, or the original's ``{"state_dict": ...}`` with
        ``model.module.`` prefixes)."""
        return load_checkpoint(self, path, strict=strict)


def build_hourglass(nstack: int = 8, inp_dim: int = 256, oup_dim: int = 16, *, checkpoint=None,
                    impl: str = "auto", **kwargs) -> StackedHourglass:
    """A :class:`StackedHourglass`, random initialisation, optionally loading a local state-dict file."""
    model = StackedHourglass(nstack, inp_dim, oup_dim, impl=impl, **kwargs)
    if checkpoint is not None:
        model.load_checkpoint(checkpoint)
    return model
