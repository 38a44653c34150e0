// Instance mask assembly: shared host/device math for yolact_masks, yolact_mask_loss and paste_masks.
//
// Everything here reproduces the reference's arithmetic step by step (in the dtype the reference computes in),
// so that crop rectangles, truncated boxes and bilinear taps match YOLACT / torchvision exactly.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace fastops {
namespace masks {

using std::ceil;
using std::exp;
using std::floor;
using std::log;
using std::log1p;

template <typename T>
FASTOPS_HD bool is_nan_(T v) {
  return !(v == v);
}

// First integer c in [0, size] with T(c) >= bound (T(c) is non-decreasing in c; exact for the usual sizes).
template <typename T>
FASTOPS_HD int64_t first_ge(acc_t<T> bound, int64_t size) {
  using A = acc_t<T>;
  A g = ceil(bound);
  g = min_(max_(g, A(0)), static_cast<A>(size));
  int64_t c = static_cast<int64_t>(g);
  while (c > 0 && static_cast<A>(static_cast<T>(static_cast<A>(c - 1))) >= bound) --c;
  while (c < size && static_cast<A>(static_cast<T>(static_cast<A>(c))) < bound) ++c;
  return c;
}

// YOLACT's sanitize_coordinates(_x1, _x2, size, padding=1, cast=False) followed by crop()'s test
// `lo <= c < hi` for integer proto coordinates c, all in the boxes' dtype T (YOLACT's tensor arithmetic):
//   lo = clamp(min(a*size, b*size) - 1, min=0), hi = clamp(max(a*size, b*size) + 1, max=size).
// Returns the kept range [c0, c1) clipped to [0, size) (c1 <= c0 when empty; NaN gives empty).
template <typename T>
FASTOPS_HD void yolact_crop_range(T a, T b, int64_t size, int64_t& c0, int64_t& c1) {
  using A = acc_t<T>;
  const A fs = static_cast<A>(size);
  const T sa = static_cast<T>(static_cast<A>(a) * fs);
  const T sb = static_cast<T>(static_cast<A>(b) * fs);
  if (is_nan_(static_cast<A>(sa)) || is_nan_(static_cast<A>(sb))) {
    c0 = 0;
    c1 = 0;
    return;
  }
  const A lo_in = min_(static_cast<A>(sa), static_cast<A>(sb));
  const A hi_in = max_(static_cast<A>(sa), static_cast<A>(sb));
  A lo = static_cast<A>(static_cast<T>(lo_in - A(1)));
  A hi = static_cast<A>(static_cast<T>(hi_in + A(1)));
  lo = max_(lo, A(0));
  hi = min_(hi, fs);
  c0 = first_ge<T>(lo, size);
  c1 = first_ge<T>(hi, size);
  if (c1 < c0) c1 = c0;
}

// PyTorch's bilinear (align_corners=False) source taps for destination index `dst` (upsample_bilinear2d):
// real = max(scale * (dst + 0.5) - 0.5, 0) (rounded once: half_pixel_source) with scale = in / out in the op-math
// type A; i0 = min(floor(real), in-1); lambda = clamp(real - i0, 0, 1); i1 = i0 + (i0 < in-1).
template <typename A>
struct Taps {
  int64_t i0, i1;
  A w0, w1;
};

template <typename A>
FASTOPS_HD Taps<A> linear_taps(int64_t dst, A scale, int64_t in_size) {
  A real = half_pixel_source(dst, scale);
  real = real < A(0) ? A(0) : real;
  int64_t i0 = static_cast<int64_t>(floor(real));
  i0 = i0 > in_size - 1 ? in_size - 1 : i0;
  A lam = real - static_cast<A>(i0);
  lam = lam < A(0) ? A(0) : (lam > A(1) ? A(1) : lam);
  Taps<A> t;
  t.i0 = i0;
  t.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  t.w0 = A(1) - lam;
  t.w1 = lam;
  return t;
}

template <typename A>
FASTOPS_HD A area_scale(int64_t in_size, int64_t out_size) {
  return static_cast<A>(in_size) / static_cast<A>(out_size);
}

// torchvision's expand_boxes(boxes, scale).to(int64) for one box, in the boxes' dtype T:
//   w_half = (x2 - x1) * 0.5 * scale; x_c = (x2 + x1) * 0.5; x1' = trunc(x_c - w_half); x2' = trunc(x_c + w_half).
// Non-finite or absurdly large results give `valid = false` (the box pastes nothing) instead of torch's
// undefined float->int64 conversion.
template <typename T>
FASTOPS_HD void paste_expand_box(const T* b, acc_t<T> scale, int64_t out[4], bool& valid) {
  using A = acc_t<T>;
  const A half = A(0.5);
  const T w_half0 = static_cast<T>(static_cast<A>(static_cast<T>(static_cast<A>(b[2]) - static_cast<A>(b[0]))) * half);
  const T h_half0 = static_cast<T>(static_cast<A>(static_cast<T>(static_cast<A>(b[3]) - static_cast<A>(b[1]))) * half);
  const T x_c = static_cast<T>(static_cast<A>(static_cast<T>(static_cast<A>(b[2]) + static_cast<A>(b[0]))) * half);
  const T y_c = static_cast<T>(static_cast<A>(static_cast<T>(static_cast<A>(b[3]) + static_cast<A>(b[1]))) * half);
  const T w_half = static_cast<T>(static_cast<A>(w_half0) * scale);
  const T h_half = static_cast<T>(static_cast<A>(h_half0) * scale);
  const A e[4] = {static_cast<A>(static_cast<T>(static_cast<A>(x_c) - static_cast<A>(w_half))),
                  static_cast<A>(static_cast<T>(static_cast<A>(y_c) - static_cast<A>(h_half))),
                  static_cast<A>(static_cast<T>(static_cast<A>(x_c) + static_cast<A>(w_half))),
                  static_cast<A>(static_cast<T>(static_cast<A>(y_c) + static_cast<A>(h_half)))};
  valid = true;
  for (int k = 0; k < 4; ++k) {
    // |e| < 2^40 keeps every later int64 computation exact and overflow-free
    if (!(e[k] > A(-1099511627776.0) && e[k] < A(1099511627776.0))) {
      valid = false;
      out[k] = 0;
    } else {
      out[k] = static_cast<int64_t>(e[k]);  // truncation toward zero, as Tensor.to(int64)
    }
  }
}

// Pasting geometry of one expanded box: resized mask size (bh, bw) and its visible window in the image.
struct PasteGeom {
  int64_t x0, y0;        // expanded box origin (image pixels)
  int64_t bw, bh;        // resized mask size: max(x1 - x0 + 1, 1), likewise rows
  int64_t xa, xb, ya, yb;  // visible image window [ya, yb) x [xa, xb) (empty when xb <= xa or yb <= ya)
};

FASTOPS_HD PasteGeom paste_geometry(const int64_t e[4], bool valid, int64_t H, int64_t W) {
  PasteGeom g;
  g.x0 = e[0];
  g.y0 = e[1];
  g.bw = max_(e[2] - e[0] + 1, int64_t(1));
  g.bh = max_(e[3] - e[1] + 1, int64_t(1));
  g.xa = max_(e[0], int64_t(0));
  g.xb = min_(e[2] + 1, W);
  g.ya = max_(e[1], int64_t(0));
  g.yb = min_(e[3] + 1, H);
  if (!valid || g.xb <= g.xa || g.yb <= g.ya) {
    g.xa = g.xb = g.ya = g.yb = 0;
  }
  return g;
}

// The sigmoid as PyTorch computes it, in the accumulation type.
template <typename A>
FASTOPS_HD A sigmoid_(A x) {
  return A(1) / (A(1) + exp(-x));
}

// F.binary_cross_entropy(p, t) per element: -(t * max(log p, -100) + (1 - t) * max(log1p(-p), -100)).
// log(1 - p) stands in for log1p(-p): 1 - p is exact for p >= 0.5 and the difference below is < 1e-7 absolute
// (glibc's log1pf is several times slower than logf).
template <typename A>
FASTOPS_HD A bce_(A p, A t) {
  const A lp = max_(static_cast<A>(log(p)), A(-100));
  const A lq = max_(static_cast<A>(log(A(1) - p)), A(-100));
  return -(t * lp + (A(1) - t) * lq);
}

// d bce(clamp(sigmoid(x))) / dx as PyTorch's autograd evaluates it:
// BCE backward (p - t) / max((1 - p) p, 1e-12), clamp passes, sigmoid backward * (1 - p) * p.
template <typename A>
FASTOPS_HD A bce_sigmoid_grad_(A p, A t) {
  const A s = (A(1) - p) * p;
  const A g = (p - t) / max_(s, A(1e-12));
  return g * (A(1) - p) * p;
}

}  // namespace masks
}  // namespace fastops

// ---- host-side argument checks (csrc/masks/masks.cpp), called by the CPU and the CUDA entry points ----------
#include <ATen/core/Tensor.h>

namespace fastops {
namespace masks {

// paste_masks' largest padding (fastops/ops/masks.py checks the same bound): keeps the padded row buffers small
// and every size computed from it exact.
constexpr int64_t kMaxPadding = int64_t(1) << 20;

// numel of an output of `sizes` elements of `dtype`, with a clear error naming `arg` when it (or its byte size)
// exceeds 2^62 or overflows int64.
int64_t checked_output_numel(at::IntArrayRef sizes, at::ScalarType dtype, const char* op, const char* arg);
void check_yolact_masks_args(const at::Tensor& protos, const at::Tensor& coeffs, const at::Tensor& boxes,
                             int64_t out_h, int64_t out_w, bool thresholded);
void check_loss_args(const at::Tensor& protos, const at::Tensor& coeffs, const at::Tensor& boxes,
                     const at::Tensor& gt);
void check_loss_backward_args(const at::Tensor& grad, const at::Tensor& protos, const at::Tensor& coeffs,
                              const at::Tensor& boxes, const at::Tensor& gt);
void check_paste_args(const at::Tensor& masks, const at::Tensor& boxes, int64_t H, int64_t W, int64_t padding,
                      bool thresholded);

}  // namespace masks
}  // namespace fastops
