// Keypoint families (render, decode, peaks, corner_pool): what their kernels and host checks share.
#pragma once

#include <stdint.h>

#include <cmath>

#include "common.h"

namespace fastops {
namespace heatmaps {

// true for finite values (portable host/device; no fast-math in this project)
FASTOPS_HD bool finite_(double v) { return v - v == 0.0; }

// Largest map side the kernels accept (pixel indices stay far from int overflow).
constexpr int64_t kMaxSide = int64_t(1) << 20;

}  // namespace heatmaps
}  // namespace fastops

// host side (parsed by nvcc in both passes; used only by host code)
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastops {
namespace heatmaps {

inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_map_size(int64_t height, int64_t width, const char* op) {
  TORCH_CHECK(height >= 0 && width >= 0 && height < kMaxSide && width < kMaxSide, op,
              ": heatmap_size must be non-negative and < 2^20, got (", height, ", ", width, ")");
}

}  // namespace heatmaps
}  // namespace fastops
