// RoIAlign per-element math shared by the CPU and CUDA kernels (torchvision's conventions to the letter).
//
// Average RoIAlign is separable: a bin's value is sum_y sum_x wy(y) wx(x) F[y, x] / count, with the 1-D
// bilinear weights of each sample row/column. Both kernels build their weights from the functions below.
#pragma once

#include <cmath>

#include "common.h"

namespace fastops {
namespace roi_align {

// Geometry of one RoI on its feature map (in feature pixels).
template <typename T>
struct RoiBox {
  T start_h, start_w;  // top-left corner
  T bin_h, bin_w;      // bin size
  int grid_h, grid_w;  // samples per bin side
};

// `roi` points at (x1, y1, x2, y2) in input-image coordinates.
template <typename T, typename R>
FASTOPS_HD RoiBox<T> roi_box(const R* roi, T spatial_scale, int pooled_h, int pooled_w, int sampling_ratio,
                             bool aligned) {
  using std::ceil;
  const T offset = aligned ? T(0.5) : T(0);
  RoiBox<T> b;
  b.start_w = static_cast<T>(roi[0]) * spatial_scale - offset;
  b.start_h = static_cast<T>(roi[1]) * spatial_scale - offset;
  const T end_w = static_cast<T>(roi[2]) * spatial_scale - offset;
  const T end_h = static_cast<T>(roi[3]) * spatial_scale - offset;
  T roi_w = end_w - b.start_w;
  T roi_h = end_h - b.start_h;
  if (!aligned) {  // legacy behaviour: malformed RoIs are forced to 1x1
    roi_w = max_(roi_w, T(1));
    roi_h = max_(roi_h, T(1));
  }
  b.bin_h = roi_h / static_cast<T>(pooled_h);
  b.bin_w = roi_w / static_cast<T>(pooled_w);
  // Non-finite sizes never index anything (the CPU kernel rejects them before, CUDA/Triton produce zeros).
  const bool finite = roi_h == roi_h && roi_w == roi_w && roi_h < T(1e30) && roi_w < T(1e30) &&
                      b.start_h == b.start_h && b.start_w == b.start_w;
  if (!finite) {
    b.grid_h = b.grid_w = 0;
    return b;
  }
  b.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_h / static_cast<T>(pooled_h)));
  b.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_w / static_cast<T>(pooled_w)));
  if (b.grid_h < 0) b.grid_h = 0;  // aligned=True with an inverted box
  if (b.grid_w < 0) b.grid_w = 0;
  return b;
}

// Coordinate of sample `i` (0 <= i < grid) of bin `p` along one axis.
template <typename T>
FASTOPS_HD T sample_coord(T start, T bin, int p, int i, int grid) {
  return start + static_cast<T>(p) * bin + static_cast<T>(i + T(0.5)) * bin / static_cast<T>(grid);
}

// 1-D bilinear taps of coordinate `y` on an axis of `size` pixels (torchvision/Caffe2 rule): returns false
// when the sample lies beyond one pixel outside the map (it contributes 0); otherwise the two taps and weights.
template <typename T>
FASTOPS_HD bool tap1d(T y, int size, int& lo, int& hi, T& w_lo, T& w_hi) {
  if (y < T(-1) || y > static_cast<T>(size)) return false;
  if (y <= T(0)) y = T(0);
  lo = static_cast<int>(y);
  if (lo >= size - 1) {
    lo = hi = size - 1;
    y = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  const T l = y - static_cast<T>(lo);
  w_lo = T(1) - l;
  w_hi = l;
  return true;
}

// FPN level of a RoI (FPN eq. 1, torchvision's LevelMapper), 0-based within [k_min, k_max]; -1 for none.
template <typename T, typename R>
FASTOPS_HD int fpn_level(const R* roi, int canonical_scale, int canonical_level, int k_min, int k_max) {
  using std::floor;
  using std::log2;
  using std::sqrt;
  const T w = static_cast<T>(roi[2]) - static_cast<T>(roi[0]);
  const T h = static_cast<T>(roi[3]) - static_cast<T>(roi[1]);
  const T s = sqrt(w * h);
  T k = floor(static_cast<T>(canonical_level) + log2(s / static_cast<T>(canonical_scale)) + static_cast<T>(1e-6));
  if (k != k) return -1;  // negative area: torchvision assigns the RoI to no level (its output stays 0)
  if (k < static_cast<T>(k_min)) k = static_cast<T>(k_min);
  if (k > static_cast<T>(k_max)) k = static_cast<T>(k_max);
  return static_cast<int>(k) - k_min;
}

// Range [k_min, k_max] of FPN levels spanned by the feature maps, from the first and last spatial scales
// (torchvision's MultiScaleRoIAlign: k = -log2(scale)). Host side.
inline void fpn_level_range(double first_scale, double last_scale, int& k_min, int& k_max) {
  k_min = static_cast<int>(std::lround(-std::log2(first_scale)));
  k_max = static_cast<int>(std::lround(-std::log2(last_scale)));
}

}  // namespace roi_align
}  // namespace fastops
