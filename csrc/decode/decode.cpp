// Decoding keypoints: the schemas and the host-side checks that the CPU and CUDA entry points both call.
// The Python wrappers (fastops/ops/decode.py) raise ValueError first; these TORCH_CHECKs guard direct torch.ops
// calls.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "decode/decode.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("heatmap_argmax(Tensor heatmaps, str refine, int blur_kernel) -> (Tensor, Tensor)");
  m.def("soft_argmax(Tensor heatmaps, float beta, bool normalize) -> Tensor");
  m.def("_soft_argmax_backward(Tensor grad, Tensor heatmaps, Tensor coords, float beta, bool normalize) -> Tensor");
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

}  // namespace heatmaps
}  // namespace fastops
