// Peaks: the schemas and the host-side checks that the CPU and CUDA entry points both call.
// The Python wrappers (fastops/ops/peaks.py) raise ValueError first; these TORCH_CHECKs guard direct torch.ops
// calls.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "peaks/peaks.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("heatmap_peaks(Tensor heatmaps, int k, int kernel) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("centernet_decode(Tensor heat, Tensor wh, Tensor? reg, int k) -> Tensor");
}

namespace fastops {
namespace heatmaps {

void check_peaks_args(const at::Tensor& hm, int64_t k, int64_t kernel, const char* name) {
  TORCH_CHECK(hm.dim() == 4, name, " must be [B, C, H, W], got ", hm.sizes());
  TORCH_CHECK(is_float_type(hm.scalar_type()), name, " must be floating point");
  TORCH_CHECK(hm.size(0) * hm.size(1) == 0 || (hm.size(2) > 0 && hm.size(3) > 0), name,
              " must have H, W > 0, got ", hm.sizes());
  TORCH_CHECK(hm.size(2) < kMaxSide && hm.size(3) < kMaxSide, name, " must have H, W < 2^20, got ", hm.sizes());
  TORCH_CHECK(k >= 0, "k must be >= 0, got ", k);
  TORCH_CHECK(kernel >= 1 && kernel % 2 == 1, "kernel must be a positive odd int, got ", kernel);
  TORCH_CHECK(hm.size(1) * hm.size(2) * hm.size(3) < (int64_t(1) << 40), name, " too large");
}

void check_decode_args(const at::Tensor& heat, const at::Tensor& wh, const c10::optional<at::Tensor>& reg,
                       int64_t k) {
  check_peaks_args(heat, k, 3, "heat");
  TORCH_CHECK(wh.dim() == 4 && wh.size(0) == heat.size(0) && wh.size(1) == 2 && wh.size(2) == heat.size(2) &&
                  wh.size(3) == heat.size(3),
              "centernet_decode: wh must be [B, 2, H, W] like heat, got ", wh.sizes());
  TORCH_CHECK(wh.scalar_type() == heat.scalar_type() && wh.device() == heat.device(),
              "centernet_decode: wh must have heat's dtype and device");
  if (reg.has_value()) {
    TORCH_CHECK(reg->dim() == 4 && reg->size(0) == heat.size(0) && reg->size(1) == 2 &&
                    reg->size(2) == heat.size(2) && reg->size(3) == heat.size(3),
                "centernet_decode: reg must be [B, 2, H, W] like heat, got ", reg->sizes());
    TORCH_CHECK(reg->scalar_type() == heat.scalar_type() && reg->device() == heat.device(),
                "centernet_decode: reg must have heat's dtype and device");
  }
}

}  // namespace heatmaps
}  // namespace fastops
