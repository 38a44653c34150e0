// Corner pooling: the schemas and the host-side checks that the CPU and CUDA entry points both call.
// The Python wrapper (fastops/ops/corner_pool.py) raises ValueError first; these TORCH_CHECKs guard direct
// torch.ops calls.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "corner_pool/corner_pool.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("corner_pool(Tensor input, str mode) -> Tensor");
  m.def("_corner_pool_backward(Tensor grad, Tensor input, Tensor output, str mode) -> Tensor");
  // corner_pool that also returns its record mask (one bit per element, corner_pool.h pool_mask_shape): the
  // autograd path of fastops.corner_pool, whose backward then reads the gradient and the mask only.
  m.def("_corner_pool_masked(Tensor input, str mode) -> (Tensor, Tensor)");
  m.def("_corner_pool_masked_backward(Tensor grad, Tensor mask, str mode) -> Tensor");
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

std::vector<int64_t> pool_mask_shape(at::IntArrayRef sizes, int mode) {
  if (mode == kTop || mode == kBottom) return {sizes[0], sizes[1], sizes[2], (sizes[3] + 7) / 8};
  return {sizes[0], sizes[1], (sizes[2] + 7) / 8, sizes[3]};
}

void check_pool_masked_backward_args(const at::Tensor& grad, const at::Tensor& mask, int mode) {
  check_pool_args(grad);
  TORCH_CHECK(mask.scalar_type() == at::kByte, "_corner_pool_masked_backward: mask must be uint8");
  TORCH_CHECK(mask.sizes() == at::IntArrayRef(pool_mask_shape(grad.sizes(), mode)),
              "_corner_pool_masked_backward: mask must be ", at::IntArrayRef(pool_mask_shape(grad.sizes(), mode)),
              " for grad ", grad.sizes(), ", got ", mask.sizes());
  TORCH_CHECK(mask.device() == grad.device(), "_corner_pool_masked_backward: grad and mask must be on one device");
}

}  // namespace heatmaps
}  // namespace fastops
