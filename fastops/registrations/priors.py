"""Prior-box family (prior_nms, match_priors): what every backend shares.

Fake kernels (data-dependent output sizes of the unpadded ``prior_nms`` as unbacked symbols), autocast (float16 /
bfloat16 inputs computed in float32) and the match modes mirrored from csrc/priors/priors.h (tests/test_priors.py
compares them with ``torch.ops.fastops._priors_constants()``). No op of the family has a gradient: both produce
targets / detections (the network's outputs are detached by the callers).
"""
import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)

MODES = {"ssd": 0, "yolact": 1}  # kModeSsd, kModeYolact


def prior_nms_fake(loc, scores, landms, priors, var0, var1, scale_x, scale_y, score_threshold, iou_threshold,
                   pre_nms_top_k, max_det, pad, plus_one):
    B, nl = loc.size(0), landms.size(2)
    counts = loc.new_empty((B,), dtype=torch.int64)
    if pad:
        return loc.new_empty((B, max_det, 4)), loc.new_empty((B, max_det)), loc.new_empty((B, max_det, nl)), counts
    m = torch.library.get_ctx().new_dynamic_size()
    return loc.new_empty((m, 4)), loc.new_empty((m,)), loc.new_empty((m, nl)), counts


def match_priors_fake(gt_boxes, gt_labels, gt_landms, counts, priors, pos_threshold, neg_threshold, var0, var1,
                      mode, hard_threshold):
    B, P, nl = gt_boxes.size(0), priors.size(0), gt_landms.size(2)
    return (gt_boxes.new_empty((B, P, 4)), gt_labels.new_empty((B, P)), gt_boxes.new_empty((B, P, nl)),
            gt_boxes.new_empty((B, P)), gt_labels.new_empty((B, P)))


FAKES = {"prior_nms": prior_nms_fake, "match_priors": match_priors_fake}
for _name, _fake in FAKES.items():
    torch.library.register_fake(f"fastops::{_name}")(_fake)

# Autocast (CPU and CUDA): float16/bfloat16 boxes are decoded / matched in float32 and the outputs are float32
# (a bfloat16 pixel coordinate is off by up to 2 px at 640; fastops.ops.priors does the same for every impl).
for _name in FAKES:
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"fastops::{_name}", _device, torch.float32)
