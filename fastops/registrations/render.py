"""Rendering targets (render_gaussian_heatmaps, render_center_heatmap, gaussian_radius): what every backend shares.

Fake kernels for the compiled ops and their `_triton` twins, and the enum values mirrored from
csrc/render/render.h (tests/test_render.py compares them with the header).
"""
from __future__ import annotations

import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)

# Mirrors of csrc/render/render.h
MODES = {"msra": 0, "udp": 1, "dark": 2}  # enum RenderMode
KERNELS = {"gaussian": 0, "cauchy": 1}  # enum RenderKernel
VARIANTS = {"centernet": 0, "cornernet": 1}  # enum RadiusVariant
MIN_SIGMA = 1e-3  # kMinSigma
MAX_SIGMA = 1e6  # kMaxSigma
MAX_SIDE = 1 << 20  # kMaxSide (csrc/keypoints_common.h)


def render_fake(keypoints, visible, height, width, sigma, mode, kernel):
    B, N, K = keypoints.shape[:3]
    return keypoints.new_empty((B, K, height, width)), keypoints.new_empty((B, N, K))


def center_fake(centers, radii, labels, num_classes, height, width):
    return centers.new_empty((centers.size(0), num_classes, height, width))


def radius_fake(heights, widths, min_overlap, variant):
    return heights.new_empty(heights.shape)


FAKES = {"render_gaussian_heatmaps": render_fake, "render_center_heatmap": center_fake,
         "gaussian_radius": radius_fake}

for _name, _fake in FAKES.items():
    torch.library.register_fake(f"fastops::{_name}")(_fake)

# Autocast (CPU and CUDA): float16/bfloat16 inputs are cast to float32 and the outputs are float32 (targets for a
# loss autocast computes in float32); fastops.ops.render does the same for every impl (_keypoints.autocast_float32).
AUTOCAST_FLOAT32 = tuple(FAKES)
for _name in AUTOCAST_FLOAT32:
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"fastops::{_name}", _device, torch.float32)
