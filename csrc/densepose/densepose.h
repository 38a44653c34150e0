// DensePose (densepose_chart_to_iuv, densepose_paste_iuv, roi_point_sample): the per-element math shared by the
// CPU and CUDA kernels, and the host checks both call (defined in densepose.cpp). Conventions: docs/densepose.md.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace fastops {
namespace densepose {

// Largest int box side (w or h) a detection may have: boxes are checked before any allocation.
constexpr int64_t kMaxBoxSide = int64_t(1) << 16;

// One output pixel's bilinear taps along one axis of F.interpolate(bilinear, align_corners=False) from `in` source
// cells to `out` output cells: source coordinate (o + 0.5) * in / out - 0.5 (the scale in float as ATen computes
// it), clamped at 0; i1 = i0 + 1 except at the last cell; l1 = coordinate - i0, l0 = 1 - l1.
struct Tap {
  int i0, i1;
  float l0, l1;
};

FASTOPS_HD Tap resize_tap(int o, int in, int out) {
  // ATen's AVX2 kernels fuse scale * (o + 0.5) - 0.5 into one rounding: the double product, rounded once, does
  // the same on every ISA and device
  const float scale = (float)in / (float)out;
  float src = (float)((double)scale * ((double)o + 0.5) - 0.5);
  src = src < 0.f ? 0.f : src;
  Tap t;
  t.i0 = (int)src;
  if (t.i0 > in - 1) t.i0 = in - 1;
  t.i1 = t.i0 < in - 1 ? t.i0 + 1 : t.i0;
  float l1 = src - (float)t.i0;
  l1 = l1 < 0.f ? 0.f : (l1 > 1.f ? 1.f : l1);
  t.l1 = l1;
  t.l0 = 1.f - l1;
  return t;
}

// a * b + c, fused when kFma. ATen's CPU interpolation is compiled with contraction: its AVX2 kernels compute
// t0 * w0 + t1 * w1 as fma(t0, w0, t1 * w1), its baseline kernels without FMA. The CPU kernels pass kFma = true in
// their AVX2/AVX-512 copies (chosen by the same CPU capability as ATen's), false in the baseline copy; CUDA fuses.
template <bool kFma, typename A>
FASTOPS_HD A madd(A a, A b, A c) {
  if constexpr (kFma) {
#if defined(__CUDACC__) || defined(__HIPCC__)
    return fma(a, b, c);
#else
    return std::fma(a, b, c);
#endif
  } else {
    return a * b + c;
  }
}

// F.interpolate's value at one output pixel, in its order: rows first (x weights), then the y weights.
template <bool kFma, typename A>
FASTOPS_HD A bilerp(A v00, A v01, A v10, A v11, A lx0, A lx1, A ly0, A ly1) {
  const A r0 = madd<kFma>(v00, lx0, v01 * lx1);
  const A r1 = madd<kFma>(v10, lx0, v11 * lx1);
  return madd<kFma>(r0, ly0, r1 * ly1);
}

// torch.argmax's rule, one candidate at a time: a later channel wins when strictly greater, or when it is NaN and
// the best so far is not (NaN is the maximum; the first NaN wins).
template <typename A>
FASTOPS_HD bool argmax_takes(A v, A best) {
  return (v > best) | ((v != v) & (best == best));
}

// detectron2's quantization of U or V: (x * 255).clamp(0, 255) to uint8 (truncation); NaN -> 0.
FASTOPS_HD uint8_t quantize_uv(float x) {
  float p = x * 255.f;
  if (!(p > 0.f)) return 0;  // also NaN
  if (p > 255.f) p = 255.f;
  return (uint8_t)p;
}

// detectron2's BilinearInterpolationHelper on one axis of the S-cell grid: lo = floor(g) clamped to [0, S-1],
// hi = lo + 1 clamped, weight = min(hi, g) - lo. Points are checked to lie in [0, S] beforehand.
template <typename A>
FASTOPS_HD void point_axis(A g, int S, int& lo, int& hi, A& w) {
  A f = g;
  int l = (int)f;  // g >= 0: truncation is floor
  if (l > S - 1) l = S - 1;
  if (l < 0) l = 0;
  lo = l;
  hi = l + 1 < S ? l + 1 : S - 1;
  const A gh = (A)hi < g ? (A)hi : g;
  w = gh - (A)l;
}

}  // namespace densepose
}  // namespace fastops

// host side (parsed by nvcc in both passes; used only by host code)
#include <ATen/core/Tensor.h>

namespace fastops {
namespace densepose {

// Shapes, dtypes, devices of the chart maps and the boxes; returns the int XYWH boxes [R, 4] (int64, CPU) as
// detectron2 computes them, after checking they are finite and at most kMaxBoxSide per side.
at::Tensor check_chart_args(const at::Tensor& coarse, const at::Tensor& fine, const at::Tensor& u,
                            const at::Tensor& v, const at::Tensor& boxes, const char* op);
void check_point_args(const at::Tensor& maps, const at::Tensor& roi_index, const at::Tensor& points,
                      bool check_values);

}  // namespace densepose
}  // namespace fastops
