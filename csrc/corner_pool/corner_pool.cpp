// Corner pooling: the schemas and the host-side checks that the CPU and CUDA entry points both call.
// The Python wrapper (fastops/ops/corner_pool.py) raises ValueError first; these TORCH_CHECKs guard direct
// torch.ops calls.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "corner_pool/corner_pool.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("corner_pool(Tensor input, str mode) -> Tensor");
  m.def("_corner_pool_backward(Tensor grad, Tensor input, Tensor output, str mode) -> Tensor");
}

namespace fastops {
namespace heatmaps {

int parse_pool_mode(c10::string_view s) {
  if (s == "top") return kTop;
  if (s == "bottom") return kBottom;
  if (s == "left") return kLeft;
  if (s == "right") return kRight;
  TORCH_CHECK(false, "corner_pool: mode must be 'top', 'bottom', 'left' or 'right', got '", std::string(s), "'");
  return 0;
}

void check_pool_args(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "corner_pool: input must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(is_float_type(x.scalar_type()), "corner_pool: input must be floating point");
  TORCH_CHECK(x.size(2) < (1 << 30) && x.size(3) < (1 << 30), "corner_pool: input too large");
}

void check_pool_backward_args(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& output) {
  check_pool_args(input);
  TORCH_CHECK(grad.sizes() == input.sizes() && output.sizes() == input.sizes(),
              "_corner_pool_backward: grad, input and output must have the same shape, got ", grad.sizes(), ", ",
              input.sizes(), ", ", output.sizes());
  TORCH_CHECK(output.scalar_type() == input.scalar_type(), "_corner_pool_backward: output must have input's dtype");
  TORCH_CHECK(grad.device() == input.device() && output.device() == input.device(),
              "_corner_pool_backward: grad, input and output must be on one device");
}

}  // namespace heatmaps
}  // namespace fastops
