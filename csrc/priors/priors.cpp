// Prior-box family, device-neutral part: the op schemas and the host-side argument checks that the CPU
// (priors_cpu.cpp) and CUDA (priors_cuda.cu) entry points both call. The Python wrappers (fastops/ops/priors.py)
// raise ValueError first; these TORCH_CHECKs guard direct torch.ops calls.
//
// prior_nms     RetinaFace's detect.py post-processing: decode boxes + landmarks, score threshold, top-k, NMS
//               (the NMS family's op, through the dispatcher), keep-top-k; batched, flat or padded
// match_priors  the MultiBox loss's prior-to-gt matching for a whole batch (padded gt + counts)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "priors/priors.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "prior_nms(Tensor loc, Tensor scores, Tensor landms, Tensor priors, float var0, float var1, float scale_x, "
      "float scale_y, float score_threshold, float iou_threshold, int pre_nms_top_k, int max_det, bool pad, "
      "bool plus_one) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "match_priors(Tensor gt_boxes, Tensor gt_labels, Tensor gt_landms, Tensor counts, Tensor priors, "
      "float pos_threshold, float neg_threshold, float var0, float var1, str mode, float? hard_threshold) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("_priors_constants() -> int[]", [] {
    return std::vector<int64_t>(std::begin(fastops::priors::kConstants), std::end(fastops::priors::kConstants));
  });
}

namespace fastops {
namespace priors {

namespace {
constexpr int64_t kMax = (int64_t(1) << 31) - 1;  // priors, gt and detections are indexed with int32

void check_priors(const at::Tensor& priors, const at::Tensor& like, const char* op) {
  TORCH_CHECK(priors.dim() == 2 && priors.size(1) == 4, op, ": priors must have shape [P, 4], got ", priors.sizes());
  TORCH_CHECK(priors.scalar_type() == like.scalar_type(), op, ": priors must have dtype ", like.scalar_type(),
              ", got ", priors.scalar_type());
  TORCH_CHECK(priors.device() == like.device(), op, ": priors must be on the device of the other tensors");
  TORCH_CHECK(priors.size(0) <= kMax, op, ": at most 2^31 - 1 priors");
}
}  // namespace

void check_prior_nms(const at::Tensor& loc, const at::Tensor& scores, const at::Tensor& landms,
                     const at::Tensor& priors, int64_t max_det, bool pad) {
  TORCH_CHECK(loc.dim() == 3 && loc.size(2) == 4, "prior_nms: loc must have shape [B, P, 4], got ", loc.sizes());
  TORCH_CHECK(loc.scalar_type() == at::kFloat || loc.scalar_type() == at::kDouble,
              "prior_nms: loc must be float32 or float64, got ", loc.scalar_type());
  const int64_t B = loc.size(0), P = loc.size(1);
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) == B && scores.size(1) == P,
              "prior_nms: scores must have shape [B, P] = [", B, ", ", P, "], got ", scores.sizes());
  TORCH_CHECK(landms.dim() == 3 && landms.size(0) == B && landms.size(1) == P && landms.size(2) % 2 == 0,
              "prior_nms: landms must have shape [B, P, 2L] with B, P = ", B, ", ", P, ", got ", landms.sizes());
  for (const at::Tensor* t : {&scores, &landms}) {
    TORCH_CHECK(t->scalar_type() == loc.scalar_type() && t->device() == loc.device(),
                "prior_nms: scores and landms must have the dtype and device of loc");
  }
  check_priors(priors, loc, "prior_nms");
  TORCH_CHECK(priors.size(0) == P, "prior_nms: priors must have one row per prior of loc (P = ", P, "), got ",
              priors.size(0));
  TORCH_CHECK(!pad || (max_det > 0 && max_det <= kMax), "prior_nms: pad=True needs 0 < max_det < 2^31, got ",
              max_det);
}

int64_t check_match(const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_landms,
                    const at::Tensor& counts, const at::Tensor& priors, c10::string_view mode) {
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(2) == 4, "match_priors: gt_boxes must have shape [B, G, 4], got ",
              gt_boxes.sizes());
  TORCH_CHECK(gt_boxes.scalar_type() == at::kFloat || gt_boxes.scalar_type() == at::kDouble,
              "match_priors: gt_boxes must be float32 or float64, got ", gt_boxes.scalar_type());
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1);
  TORCH_CHECK(gt_labels.dim() == 2 && gt_labels.size(0) == B && gt_labels.size(1) == G &&
                  gt_labels.scalar_type() == at::kLong,
              "match_priors: gt_labels must be int64 [B, G] = [", B, ", ", G, "], got ", gt_labels.scalar_type(), " ",
              gt_labels.sizes());
  TORCH_CHECK(gt_landms.dim() == 3 && gt_landms.size(0) == B && gt_landms.size(1) == G &&
                  gt_landms.size(2) % 2 == 0 && gt_landms.scalar_type() == gt_boxes.scalar_type(),
              "match_priors: gt_landms must have shape [B, G, 2L] and the dtype of gt_boxes, got ",
              gt_landms.scalar_type(), " ", gt_landms.sizes());
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == B && counts.scalar_type() == at::kLong,
              "match_priors: counts must be int64 [B] (B = ", B, "), got ", counts.scalar_type(), " ",
              counts.sizes());
  for (const at::Tensor* t : {&gt_labels, &gt_landms, &counts}) {
    TORCH_CHECK(t->device() == gt_boxes.device(), "match_priors: every tensor must be on the device of gt_boxes");
  }
  check_priors(priors, gt_boxes, "match_priors");
  TORCH_CHECK(G <= kMax, "match_priors: at most 2^31 - 1 gt boxes per image");
  int64_t code = -1;
  if (mode == "ssd") code = kModeSsd;
  if (mode == "yolact") code = kModeYolact;
  TORCH_CHECK(code >= 0, "match_priors: mode must be 'ssd' or 'yolact', got '", std::string(mode), "'");
  // counts are data: checked on the host before any kernel reads gt rows (one small copy for CUDA tensors)
  const at::Tensor c = counts.to(at::kCPU).contiguous();
  const int64_t* cp = c.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(cp[b] >= 0 && cp[b] <= G, "match_priors: counts[", b, "] must be in [0, G = ", G, "], got ", cp[b]);
  }
  return code;
}

at::Tensor call_nms(const at::Tensor& boxes, const at::Tensor& scores, double thr) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastops::nms", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  return op.call(boxes, scores, thr);
}

}  // namespace priors
}  // namespace fastops
