// Prior-box family (RetinaFace / SSD / YOLACT): the per-element math shared by the CPU and CUDA kernels.
//
// Priors are centre-size (cx, cy, w, h); gt and decoded boxes are point form (x1, y1, x2, y2). Every formula is
// evaluated in the operation order of the original code (biubug6/Pytorch_Retinaface utils/box_utils.py), so
// results are bit-identical to its PyTorch ops except for exp/log (libm vs ATen's vectorised exp/log: <= 1 ulp).
// The IoU is the NMS family's (nms.h: inter / ((area_a + area_b) - inter), widths clamped at 0), which is also the
// original's jaccard.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"
#include "nms/nms.h"

namespace fastops {
namespace priors {

// match_priors modes (the schema takes the name; fastops/registrations/priors.py mirrors kConstants, compared with
// torch.ops.fastops._priors_constants() by tests/test_priors.py)
constexpr int64_t kModeSsd = 0;     // ssd.pytorch / RetinaFace: each gt's best prior forced, later gt wins a prior
constexpr int64_t kModeYolact = 1;  // YOLACT: greedy exclusive forcing (best remaining (gt, prior) pair first)
constexpr int64_t kConstants[] = {kModeSsd, kModeYolact};

FASTOPS_HD float exp_(float x) { return expf(x); }
FASTOPS_HD double exp_(double x) { return exp(x); }
FASTOPS_HD float log_(float x) { return logf(x); }
FASTOPS_HD double log_(double x) { return log(x); }

// point form of a centre-size prior: (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
template <typename A>
FASTOPS_HD void point_form(A cx, A cy, A w, A h, A* out) {
  out[0] = cx - w / A(2);
  out[1] = cy - h / A(2);
  out[2] = cx + w / A(2);
  out[3] = cy + h / A(2);
}

// "a is a better maximum than b" for torch.max along a dim: NaN beats every number, the first NaN stays (callers
// scan in increasing index order and replace only on a strict win).
template <typename A>
FASTOPS_HD bool max_wins(A a, A b) {
  return a > b || (a != a && b == b);
}

// decode + decode_landm of one prior, scaled to pixels (detect.py: `boxes * scale`, `landms * scale1`).
template <typename A>
FASTOPS_HD void decode_box(A l0, A l1, A l2, A l3, A pcx, A pcy, A pw, A ph, A v0, A v1, A sx, A sy, A* out) {
  const A cx = pcx + l0 * v0 * pw;
  const A cy = pcy + l1 * v0 * ph;
  const A w = pw * exp_(l2 * v1);
  const A h = ph * exp_(l3 * v1);
  const A x1 = cx - w / A(2);
  const A y1 = cy - h / A(2);
  out[0] = x1 * sx;
  out[1] = y1 * sy;
  out[2] = (w + x1) * sx;
  out[3] = (h + y1) * sy;
}

template <typename A>
FASTOPS_HD A decode_landm(A l, A pc, A pwh, A v0, A s) {
  return (pc + l * v0 * pwh) * s;
}

// encode / encode_landm of a matched point-form gt box against a centre-size prior.
template <typename A>
FASTOPS_HD void encode_box(A gx1, A gy1, A gx2, A gy2, A pcx, A pcy, A pw, A ph, A v0, A v1, A* out) {
  out[0] = ((gx1 + gx2) / A(2) - pcx) / (v0 * pw);
  out[1] = ((gy1 + gy2) / A(2) - pcy) / (v0 * ph);
  out[2] = log_((gx2 - gx1) / pw) / v1;
  out[3] = log_((gy2 - gy1) / ph) / v1;
}

template <typename A>
FASTOPS_HD A encode_landm(A g, A pc, A pwh, A v0) {
  return (g - pc) / (v0 * pwh);
}

// conf of a prior from its matched label and overlap: `conf[ov < pos] = -1; conf[ov < neg] = 0` (YOLACT); with
// pos == neg (RetinaFace, SSD) it is `conf[ov < thr] = 0`. Thresholds are in the boxes' dtype, as the original's
// comparison of a float tensor with a Python float.
template <typename A>
FASTOPS_HD int64_t conf_of(int64_t label, A ov, A pos, A neg) {
  int64_t c = label;
  if (ov < pos) c = -1;
  if (ov < neg) c = 0;
  return c;
}

// ---- host-side checks (priors.cpp), called by the CPU and the CUDA entry points --------------------------------
void check_prior_nms(const at::Tensor& loc, const at::Tensor& scores, const at::Tensor& landms,
                     const at::Tensor& priors, int64_t max_det, bool pad);
// returns the mode code
int64_t check_match(const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_landms,
                    const at::Tensor& counts, const at::Tensor& priors, c10::string_view mode);
// torch.ops.fastops.nms through the dispatcher (the device's kernel for boxes' device): prior_nms' per-class NMS.
at::Tensor call_nms(const at::Tensor& boxes, const at::Tensor& scores, double thr);

}  // namespace priors
}  // namespace fastops
