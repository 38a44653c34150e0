// RoIAlign per-element math shared by the CPU and CUDA kernels (torchvision's conventions to the letter).
//
// Average RoIAlign is separable: a bin's value is sum_y sum_x wy(y) wx(x) F[y, x] / count, with the 1-D
// bilinear weights of each sample row/column. Both kernels build their weights from the functions below.
#pragma once

#include <torch/library.h>

#include <cmath>
#include <vector>

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

// Largest number of samples per bin side: the sampling_ratio limit (checked on the host) and the cap of the
// adaptive grid ceil(roi_size / pooled), so that grid_h * grid_w fits an int and a huge box costs a bounded
// loop. Boxes larger than kMaxGrid x the pooled size (~229k feature pixels for 7x7) sample on the capped grid.
constexpr int kMaxGrid = 1 << 15;

// Adaptive samples per bin side, ceil(roi_size / pooled) in [0, kMaxGrid]; 0 for an inverted box (aligned=True).
template <typename T>
FASTOPS_HD int adaptive_grid(T roi_size, int pooled) {
  using std::ceil;
  const T g = ceil(roi_size / static_cast<T>(pooled));
  if (!(g > T(0))) return 0;
  return g < static_cast<T>(kMaxGrid) ? static_cast<int>(g) : kMaxGrid;
}

// `roi` points at (x1, y1, x2, y2) in input-image coordinates.
template <typename T, typename R>
FASTOPS_HD RoiBox<T> roi_box(const R* roi, T spatial_scale, int pooled_h, int pooled_w, int sampling_ratio,
                             bool aligned) {
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
  b.grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_h, pooled_h);
  b.grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_w, pooled_w);
  return b;
}

// Coordinate of sample `i` (0 <= i < grid) of bin `p` along one axis.
template <typename T>
FASTOPS_HD T sample_coord(T start, T bin, int p, int i, int grid) {
  return start + static_cast<T>(p) * bin + static_cast<T>(i + T(0.5)) * bin / static_cast<T>(grid);
}

// 1-D bilinear taps of coordinate `y` on an axis of `size` pixels (torchvision/Caffe2 rule): returns false
// when the sample lies beyond one pixel outside the map (it contributes 0); otherwise the two taps and weights
// (w_lo > 0 always; when w_hi == 0 both taps name the same pixel, so no zero-weight pixel is ever read).
template <typename T>
FASTOPS_HD bool tap1d(T y, int size, int& lo, int& hi, T& w_lo, T& w_hi) {
  if (size <= 0 || y < T(-1) || y > static_cast<T>(size)) return false;  // (an empty axis has no pixel to read)
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
  if (l == T(0)) hi = lo;  // NaN/inf rule: a sample reads only the pixels it gives a non-zero weight
  return true;
}

// FPN level of a RoI (FPN eq. 1, torchvision's LevelMapper), 0-based within [k_min, k_max]; -1 for none.
// With non-consecutive levels (e.g. scales 1/4, 1/32) the result can exceed the number of feature maps: the
// caller treats such a RoI as having no level (output 0), as torchvision and the reference do.
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

// Host-side argument and shape checks (roi_align.cpp), called by the CPU and CUDA entry points before any
// kernel runs. Data-dependent checks (box values, batch indices) stay with the kernels.
void check_forward(at::TensorList feats, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t ph,
                   int64_t pw, int64_t sampling_ratio, int64_t canonical_scale, int64_t canonical_level);
void check_backward(const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t ph,
                    int64_t pw, int64_t N, int64_t C, at::IntArrayRef sizes, int64_t sampling_ratio,
                    int64_t canonical_scale, int64_t canonical_level, size_t num_channels_last);

// The four ops' entry points over one device's multi-level forward and backward (Forward / Backward: the CPU's
// forward_impl / backward_impl or the CUDA launchers, which run the checks above). The single-level ops are the
// multi-level ones with one level; torchvision's FPN constants (224, 4) then play no part.
template <auto Forward, auto Backward>
struct EntryPoints {
  // for the device's TORCH_LIBRARY_IMPL block
  static void register_impls(torch::Library& m) {
    m.impl("roi_align", &roi_align);
    m.impl("_roi_align_backward", &roi_align_backward);
    m.impl("multi_scale_roi_align", &multi_scale_roi_align);
    m.impl("_multi_scale_roi_align_backward", &multi_scale_roi_align_backward);
  }

  static at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t ph,
                              int64_t pw, int64_t sampling_ratio, bool aligned) {
    return Forward({input}, rois, {spatial_scale}, ph, pw, sampling_ratio, aligned, 224, 4);
  }

  static at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                       int64_t ph, int64_t pw, int64_t N, int64_t C, int64_t H, int64_t W,
                                       int64_t sampling_ratio, bool aligned, bool channels_last) {
    return Backward(grad, rois, {spatial_scale}, ph, pw, N, C, {H, W}, sampling_ratio, aligned, 224, 4,
                    {channels_last})[0];
  }

  static at::Tensor multi_scale_roi_align(at::TensorList features, const at::Tensor& rois,
                                          at::ArrayRef<double> scales, int64_t ph, int64_t pw, int64_t sampling_ratio,
                                          bool aligned, int64_t canonical_scale, int64_t canonical_level) {
    return Forward(features.vec(), rois, scales.vec(), ph, pw, sampling_ratio, aligned, canonical_scale,
                   canonical_level);
  }

  static std::vector<at::Tensor> multi_scale_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                                                                at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                                                                int64_t N, int64_t C, at::IntArrayRef sizes,
                                                                int64_t sampling_ratio, bool aligned,
                                                                int64_t canonical_scale, int64_t canonical_level,
                                                                const c10::List<bool>& channels_last) {
    return Backward(grad, rois, scales.vec(), ph, pw, N, C, sizes.vec(), sampling_ratio, aligned, canonical_scale,
                    canonical_level, std::vector<bool>(channels_last.begin(), channels_last.end()));
  }
};

}  // namespace roi_align
}  // namespace fastops
