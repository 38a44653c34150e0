// NMS family, device-neutral part: the op schemas and the host-side argument checks that the CPU (nms_cpu.cpp) and
// CUDA (nms_cuda.cu) entry points both call, so that every device rejects the same input with the same message.
//
// nms / batched_nms     exactly torchvision.ops' results (stable descending score order, `iou > thr` suppresses)
// multiclass_nms        score threshold + per-class top-k + per-class NMS + max_det cut in one op (pad variant)
// fast_nms              YOLACT's Fast NMS (per class, or cross-class cc_fast_nms)
// soft_nms              mmcv's soft-NMS (linear, gaussian, naive)
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "nms/nms.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def(
      "multiclass_nms(Tensor boxes, Tensor scores, float score_threshold, float iou_threshold, int pre_nms_top_k, "
      "int max_det, bool pad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "fast_nms(Tensor boxes, Tensor scores, float iou_threshold, int top_k, int max_det, float score_threshold, "
      "bool cross_class) -> (Tensor, Tensor, Tensor)");
  m.def(
      "soft_nms(Tensor boxes, Tensor scores, float iou_threshold, float sigma, float min_score, str method) "
      "-> (Tensor, Tensor)");
  // The constants of nms.h that Python mirrors (fastops/registrations/nms.py), in kConstants order.
  m.def("_nms_constants() -> int[]", [] {
    return std::vector<int64_t>(std::begin(fastops::nms::kConstants), std::end(fastops::nms::kConstants));
  });
}

namespace fastops {
namespace nms {

namespace {
constexpr int64_t kMaxBoxes = (int64_t(1) << 31) - 1;  // kernels index boxes with int32
}  // namespace

void check_boxes_scores(const at::Tensor& boxes, const at::Tensor& scores, const char* op) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must have shape [N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1, op, ": scores must have shape [N], got ", scores.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0), op, ": boxes and scores must have the same N, got ", boxes.size(0),
              " and ", scores.size(0));
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op, ": boxes must be floating point, got ",
              boxes.scalar_type());
  TORCH_CHECK(boxes.scalar_type() == scores.scalar_type(), op, ": scores must have the dtype of boxes (",
              boxes.scalar_type(), "), got ", scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), op, ": boxes and scores must be on the same device");
  TORCH_CHECK(boxes.size(0) <= kMaxBoxes, op, ": at most 2^31 - 1 boxes");
}

void check_batched(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs) {
  check_boxes_scores(boxes, scores, "batched_nms");
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "batched_nms: idxs must have shape [N] (N = ",
              boxes.size(0), "), got ", idxs.sizes());
  TORCH_CHECK(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false),
              "batched_nms: idxs must be an integer tensor, got ", idxs.scalar_type());
  TORCH_CHECK(idxs.device() == boxes.device(), "batched_nms: idxs must be on the device of boxes");
}

void check_multiclass(const at::Tensor& boxes, const at::Tensor& scores, int64_t max_det, bool pad) {
  TORCH_CHECK(scores.dim() == 2, "multiclass_nms: scores must have shape [N, C], got ", scores.sizes());
  const int64_t n = scores.size(0), nc = scores.size(1);
  TORCH_CHECK((boxes.dim() == 2 && boxes.size(0) == n && boxes.size(1) == 4) ||
                  (boxes.dim() == 3 && boxes.size(0) == n && boxes.size(1) == nc && boxes.size(2) == 4),
              "multiclass_nms: boxes must have shape [N, 4] or [N, C, 4] (N = ", n, ", C = ", nc, "), got ",
              boxes.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()) && boxes.scalar_type() == scores.scalar_type(),
              "multiclass_nms: boxes and scores must have the same floating dtype, got ", boxes.scalar_type(),
              " and ", scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), "multiclass_nms: boxes and scores must be on the same device");
  TORCH_CHECK(n <= kMaxBoxes, "multiclass_nms: at most 2^31 - 1 boxes");
  TORCH_CHECK(nc <= kMaxBoxes, "multiclass_nms: at most 2^31 - 1 classes");
  TORCH_CHECK(!pad || max_det > 0, "multiclass_nms: pad=True needs max_det > 0, got ", max_det);
  // without pad, max_det only cuts (any value past the number of detections is no cut)
  TORCH_CHECK(!pad || max_det <= kMaxBoxes, "multiclass_nms: pad=True needs max_det <= 2^31 - 1, got ", max_det);
}

void check_fast_nms(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "fast_nms: boxes must have shape [N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 2 && scores.size(1) == boxes.size(0),
              "fast_nms: scores must have shape [C, N] (N = ", boxes.size(0), "), got ", scores.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()) && boxes.scalar_type() == scores.scalar_type(),
              "fast_nms: boxes and scores must have the same floating dtype, got ", boxes.scalar_type(), " and ",
              scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), "fast_nms: boxes and scores must be on the same device");
  TORCH_CHECK(boxes.size(0) <= kMaxBoxes, "fast_nms: at most 2^31 - 1 boxes");
  TORCH_CHECK(scores.size(0) <= kMaxBoxes, "fast_nms: at most 2^31 - 1 classes");
}

int64_t check_soft_nms(const at::Tensor& boxes, const at::Tensor& scores, double sigma, c10::string_view method) {
  check_boxes_scores(boxes, scores, "soft_nms");
  int64_t code = -1;
  if (method == "naive") code = kSoftNaive;
  if (method == "linear") code = kSoftLinear;
  if (method == "gaussian") code = kSoftGaussian;
  TORCH_CHECK(code >= 0, "soft_nms: method must be 'linear', 'gaussian' or 'naive', got '", std::string(method),
              "'");
  TORCH_CHECK(code != kSoftGaussian || sigma > 0, "soft_nms: sigma must be > 0 for the gaussian method, got ", sigma);
  return code;
}

}  // namespace nms
}  // namespace fastops
