"""Keypoint R-CNN's training path: is the keypoint loss worth a fused op? (docs/keypoint_rcnn.md, "Training path")

    /work/quiet-run .venv/bin/python tools/keypoint_loss_share.py [RoIs per image for the head timing, default 20]

Times torchvision's keypoints_to_heatmap + keypointrcnn_loss (forward + backward; the step includes a clone of the
logits) on 100 positive RoIs x 17 keypoints x 56 x 56 logits (2 images x 50, as the model trains at 2 x 512 x 512),
and the whole keypoint head (MultiScaleRoIAlign + 8 convs + predictor + loss) forward + backward on 2 x N of those
RoIs from random FPN features, scaled linearly to 100 RoIs; 1 and 2 threads, medians; then a torch.profiler table
of the loss alone (1 thread).
"""
import statistics, sys, time
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn, roi_heads

torch.manual_seed(0)
R, K, S = 100, 17, 56
g = torch.Generator().manual_seed(0)
# 2 images x 50 positive RoIs, 512x512 image
def rois_img():
    xy = torch.rand(50, 2, generator=g) * 400
    return torch.cat([xy, xy + 16 + torch.rand(50, 2, generator=g) * 300], 1)
props = [rois_img(), rois_img()]
gt = []
midx = []
for p in props:
    n_gt = 8
    kp = torch.rand(n_gt, K, 3, generator=g)
    b = p[:n_gt]
    kp[..., 0] = b[:, None, 0] + kp[..., 0] * (b[:, None, 2] - b[:, None, 0]) * 1.1
    kp[..., 1] = b[:, None, 1] + kp[..., 1] * (b[:, None, 3] - b[:, None, 1]) * 1.1
    kp[..., 2] = (kp[..., 2] > 0.3).float()
    gt.append(kp)
    midx.append(torch.randint(0, n_gt, (50,), generator=g))
logits0 = torch.randn(R, K, S, S, generator=g)

def loss_step():
    logits = logits0.clone().requires_grad_()
    loss = roi_heads.keypointrcnn_loss(logits, props, gt, midx)
    loss.backward()
    return loss

def targets_only():
    return [roi_heads.keypoints_to_heatmap(k[m], p, S) for p, k, m in zip(props, gt, midx)]

model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None).train()
rh = model.roi_heads
feats = {k: torch.randn(2, 256, 512 // s, 512 // s, generator=g) for k, s in zip(["0", "1", "2", "3"], [4, 8, 16, 32])}
feats["pool"] = torch.randn(2, 256, 8, 8, generator=g)
sizes = [(512, 512), (512, 512)]
NH = int(sys.argv[1]) if len(sys.argv) > 1 else 20  # RoIs per image for the head timing (scaled to 50 per image)
hprops = [p[:NH] for p in props]
hgt_idx = [m[:NH] for m in midx]

def head_step():
    model.zero_grad(set_to_none=True)
    x = rh.keypoint_roi_pool(feats, hprops, sizes)
    x = rh.keypoint_head(x)
    logits = rh.keypoint_predictor(x)
    loss = roi_heads.keypointrcnn_loss(logits, hprops, gt, hgt_idx)
    loss.backward()

def med(fn, n):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)

for th in (1, 2):
    torch.set_num_threads(th)
    tl = med(loss_step, 30)
    tt = med(targets_only, 30)
    th_ = med(head_step, 2)
    scaled = th_ * 50 / NH
    print(f"threads={th}: loss fwd+bwd {tl*1e3:.2f} ms (targets alone {tt*1e3:.2f} ms); "
          f"keypoint head fwd+bwd with {2*NH} RoIs {th_*1e3:.0f} ms -> x{50/NH:.1f} = {scaled*1e3:.0f} ms at 100 RoIs; "
          f"loss share {tl/(scaled):.2%}", flush=True)

torch.set_num_threads(1)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(5):
        loss_step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
