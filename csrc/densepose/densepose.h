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

// One output pixel's bilinear taps along one axis of F.interpolate(bilinear, align_corners=False) from `in` source
// cells to `out` output cells, in ATen's arithmetic (opmath A: float for float/half/bfloat16, double for double):
// scale = in / out, source coordinate scale * (o + 0.5) - 0.5 (fused as ATen's AVX2 build fuses it), clamped at 0;
// i1 = i0 + 1 except at the last cell; l1 = coordinate - i0 clamped to [0, 1], l0 = 1 - l1.
template <typename A>
struct Tap {
  int i0, i1;
  A l0, l1;
};

template <bool kFma, typename A>
FASTOPS_HD Tap<A> resize_tap(int o, int in, int out) {
  const A scale = (A)in / (A)out;
  A src = madd<kFma, A>(scale, (A)o + (A)0.5, (A)-0.5);
  src = src < (A)0 ? (A)0 : src;
  Tap<A> t;
  t.i0 = (int)src;
  if (t.i0 > in - 1) t.i0 = in - 1;
  t.i1 = t.i0 < in - 1 ? t.i0 + 1 : t.i0;
  A l1 = src - (A)t.i0;
  l1 = l1 < (A)0 ? (A)0 : (l1 > (A)1 ? (A)1 : l1);
  t.l1 = l1;
  t.l0 = (A)1 - l1;
  return t;
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

// One point's four taps in an S x S plane (BilinearInterpolationHelper: point_axis on both axes) with the weights
// rounded to T, as detectron2 computes them in the maps' dtype.
template <typename T>
struct PointTaps {
  int64_t o00, o01, o10, o11;
  acc_t<T> w00, w01, w10, w11;
};

template <typename T>
FASTOPS_HD PointTaps<T> point_taps(acc_t<T> px, acc_t<T> py, int Sh, int Sw) {
  using A = acc_t<T>;
  int xl, xh, yl, yh;
  A wx, wy;
  point_axis<A>(px, Sw, xl, xh, wx);
  point_axis<A>(py, Sh, yl, yh, wy);
  PointTaps<T> t;
  t.o00 = (int64_t)yl * Sw + xl;
  t.o01 = (int64_t)yl * Sw + xh;
  t.o10 = (int64_t)yh * Sw + xl;
  t.o11 = (int64_t)yh * Sw + xh;
  t.w00 = (A)(T)(((A)1 - wx) * ((A)1 - wy));
  t.w01 = (A)(T)(wx * ((A)1 - wy));
  t.w10 = (A)(T)(((A)1 - wx) * wy);
  t.w11 = (A)(T)(wx * wy);
  return t;
}

// The sampled value of plane m at a point, summed in detectron2's order with each step rounded to T.
template <typename T>
FASTOPS_HD T sample_point(const T* m, const PointTaps<T>& t) {
  using A = acc_t<T>;
  A s = (A)(T)((A)m[t.o00] * t.w00);
  s = (A)(T)(s + (A)(T)((A)m[t.o01] * t.w01));
  s = (A)(T)(s + (A)(T)((A)m[t.o10] * t.w10));
  return (T)(s + (A)(T)((A)m[t.o11] * t.w11));
}

// Adds one point's gradient gv to its four taps of plane g (the backward of sample_point). A zero gradient adds
// nothing and is skipped: the U/V losses read one part's channel of 25, so most (point, channel) gradients are zero
// and their taps are never written (the fresh zero pages of the gradient stay untouched where no point lands).
template <typename T>
FASTOPS_HD void add_point_grad(acc_t<T>* g, const PointTaps<T>& t, acc_t<T> gv) {
  if (gv == acc_t<T>(0)) return;
  g[t.o00] += gv * t.w00;
  g[t.o01] += gv * t.w01;
  g[t.o10] += gv * t.w10;
  g[t.o11] += gv * t.w11;
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
