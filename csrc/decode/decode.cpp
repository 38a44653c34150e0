// Decoding keypoints: the schemas and the host-side checks that the CPU and CUDA entry points both call.
// The Python wrappers (fastops/ops/decode.py) raise ValueError first; these TORCH_CHECKs guard direct torch.ops
// calls.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "decode/decode.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("heatmap_argmax(Tensor heatmaps, str refine, int blur_kernel) -> (Tensor, Tensor)");
  m.def("soft_argmax(Tensor heatmaps, float beta, bool normalize) -> Tensor");
  m.def("_soft_argmax_backward(Tensor grad, Tensor heatmaps, Tensor coords, float beta, bool normalize) -> Tensor");
  // soft_argmax that also returns the probabilities p = softmax(beta * h) (float32, float64 for float64 maps): the
  // autograd path of fastops.soft_argmax, whose backward then reads p instead of recomputing the softmax.
  m.def("_soft_argmax_probs(Tensor heatmaps, float beta, bool normalize) -> (Tensor, Tensor)");
  m.def("_soft_argmax_probs_backward(Tensor grad, Tensor probs, Tensor coords, float beta, bool normalize) -> Tensor");
}

namespace fastops {
namespace heatmaps {

int parse_refine(c10::string_view s) {
  if (s == "none") return kNone;
  if (s == "quarter") return kQuarter;
  if (s == "hourglass") return kHourglass;
  if (s == "dark") return kDark;
  if (s == "dark_udp") return kDarkUDP;
  TORCH_CHECK(false, "heatmap_argmax: refine must be one of none, quarter, hourglass, dark, dark_udp, got '",
              std::string(s), "'");
  return 0;
}

static void check_maps(const at::Tensor& hm, const char* op) {
  TORCH_CHECK(hm.dim() == 4, op, ": heatmaps must be [B, K, H, W], got ", hm.sizes());
  TORCH_CHECK(is_float_type(hm.scalar_type()), op, ": heatmaps must be floating point");
  TORCH_CHECK(hm.size(0) * hm.size(1) == 0 || (hm.size(2) > 0 && hm.size(3) > 0), op,
              ": heatmaps must have H, W > 0, got ", hm.sizes());
  TORCH_CHECK(hm.size(2) < kMaxSide && hm.size(3) < kMaxSide, op, ": heatmaps must have H, W < 2^20, got ",
              hm.sizes());
}

void check_argmax_args(const at::Tensor& hm, int refine, int64_t blur_kernel) {
  check_maps(hm, "heatmap_argmax");
  TORCH_CHECK(blur_kernel >= 1 && blur_kernel <= kMaxBlur && blur_kernel % 2 == 1,
              "heatmap_argmax: blur_kernel must be odd and in [1, ", kMaxBlur, "], got ", blur_kernel);
}

void check_soft_argmax_args(const at::Tensor& hm, double beta) {
  check_maps(hm, "soft_argmax");
  TORCH_CHECK(std::isfinite(beta), "soft_argmax: beta must be finite, got ", beta);
}

void check_soft_argmax_probs_backward_args(const at::Tensor& grad, const at::Tensor& probs, const at::Tensor& coords) {
  const char* op = "_soft_argmax_probs_backward";
  TORCH_CHECK(probs.dim() == 4, op, ": probs must be [B, K, H, W], got ", probs.sizes());
  TORCH_CHECK(probs.scalar_type() == at::kFloat || probs.scalar_type() == at::kDouble, op,
              ": probs must be float32 or float64, got ", probs.scalar_type());
  TORCH_CHECK(probs.size(2) < kMaxSide && probs.size(3) < kMaxSide, op, ": probs must have H, W < 2^20");
  const std::vector<int64_t> want = {probs.size(0), probs.size(1), 2};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(want) && coords.sizes() == at::IntArrayRef(want), op,
              ": grad and coords must be [B, K, 2] = ", at::IntArrayRef(want), ", got ", grad.sizes(), " and ",
              coords.sizes());
  TORCH_CHECK(grad.device() == probs.device() && coords.device() == probs.device(), op,
              ": grad, probs and coords must be on one device");
}

}  // namespace heatmaps
}  // namespace fastops
