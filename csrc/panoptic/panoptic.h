// panoptic_fuse: UPSNet's test-time panoptic head, fused; math shared by the CPU and CUDA kernels.
//
// Channels of the (never materialised) panoptic logits at output pixel p:
//   [0, S)        stuff:     X[c](p)
//   S + i         instance:  X[S + k_i - 1](p) + mask_i(p) inside instance i's box (seg region), 0 outside
//   S + N         void:      max_k X[S + k](p) - max_i seg_i(p)   (seg_i = X[S+k_i-1] inside the box, 0 outside;
//                            with N = 0 UPSNet's SegTerm gives a constant -10 instead)
// id = argmax (first index on ties), void -> 255. X is the semantic logits, optionally upsampled bilinearly
// (align_corners=False) on the fly.
//
// Box rasterisation (UPSNet SegTerm / MaskTerm, boxes in output pixels):
//   seg region:  y in [trunc(y1), rint(y2) + 1), x in [trunc(x1), rint(x2) + 1)  (clamped to the map)
//   mask:        mask_logits_i resized (half-pixel bilinear) to (trunc(y2) - trunc(y1) + 1) x (trunc(x2) -
//                trunc(x1) + 1) (at least 1), pasted at (trunc(y1), trunc(x1)), clipped to the map.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>

#include "common.h"

namespace fastops {
namespace panoptic {

constexpr int32_t kVoidId = 255;  // mirrored as VOID_ID in fastops/registrations/panoptic.py (tested)

// NaN/inf rule: the reference's torch.argmax over the panoptic logits, where NaN beats every number and the
// first NaN channel wins; torch.max (the void term) propagates NaN. Interpolated logits follow PyTorch's
// bilinear resize (0 * inf = NaN at a zero-weight tap).
template <typename A>
FASTOPS_HD bool beats(A v, A best) {
  return v > best || (v != v && best == best);
}
template <typename A>
FASTOPS_HD A nanmax(A a, A b) {
  return (b > a || b != b) ? b : a;
}
template <typename A>
FASTOPS_HD bool finite(A v) {
  return v - v == A(0);  // false for NaN and +-inf
}

// One output index of a half-pixel (align_corners=False) bilinear resize, as PyTorch's upsample_bilinear2d.
template <typename A>
struct Lerp {
  int64_t i0, i1;
  A l0, l1;
};

// The upsampled logit from the four taps a, b (source row i0, columns i0 / i1) and d, e (row i1), in the one
// operation order every kernel uses (rows first, no contraction): the same bits on the CPU (scalar and vector
// lanes: W and V may be GCC vector types) and CUDA.
template <typename W, typename V>
FASTOPS_HD auto bilerp(W y0, W y1, W x0, W x1, V a, V b, V d, V e) {
  return y0 * (x0 * a + x1 * b) + y1 * (x0 * d + x1 * e);
}

template <typename A>
FASTOPS_HD Lerp<A> resize_lerp(int64_t dst, int64_t in_size, int64_t out_size) {
  Lerp<A> r;
  if (in_size == out_size) {
    r.i0 = r.i1 = dst;
    r.l0 = A(1);
    r.l1 = A(0);
    return r;
  }
  const A scale = A(in_size) / A(out_size);
  A src = half_pixel_source(dst, scale);
  if (src < A(0)) src = A(0);
  int64_t i0 = (int64_t)::floor(src);
  if (i0 > in_size - 1) i0 = in_size - 1;
  A l1 = src - A(i0);
  l1 = l1 < A(0) ? A(0) : (l1 > A(1) ? A(1) : l1);
  r.i0 = i0;
  r.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  r.l1 = l1;
  r.l0 = A(1) - l1;
  return r;
}

// An instance's regions in output pixels. Empty regions have hi <= lo.
struct Inst {
  int64_t sy0, sy1, sx0, sx1;  // seg region (semantic channel added, void's max), clamped to the map
  int64_t my0, my1, mx0, mx1;  // pasted mask region, clamped to the map
  int64_t by0, bx0;            // unclamped mask origin
  int64_t mh, mw;              // size the mask logits are resized to
  int64_t ch;                  // semantic channel S + k - 1
};

FASTOPS_HD int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Box coordinates bounded before the integer conversions (NaN -> empty region); larger boxes are clipped anyway.
FASTOPS_HD double bound_coord(double v) {
  const double lim = 1099511627776.0;  // 2^40
  if (!(v == v)) return -lim;
  return v < -lim ? -lim : (v > lim ? lim : v);
}

FASTOPS_HD Inst make_inst(double x1, double y1, double x2, double y2, int64_t label, int64_t num_stuff, int64_t H,
                          int64_t W) {
  const bool nan = !(x1 == x1 && y1 == y1 && x2 == x2 && y2 == y2);
  x1 = bound_coord(x1);
  y1 = bound_coord(y1);
  x2 = bound_coord(x2);
  y2 = bound_coord(y2);
  Inst r;
  const int64_t bx0 = (int64_t)x1, by0 = (int64_t)y1;  // truncation toward zero, like int() / .long()
  const int64_t bx2 = (int64_t)x2, by2 = (int64_t)y2;
  const int64_t rx2 = (int64_t)::rint(x2), ry2 = (int64_t)::rint(y2);  // round half to even, like np.round
  r.sx0 = clamp64(bx0, 0, W);
  r.sx1 = clamp64(rx2 + 1, 0, W);
  r.sy0 = clamp64(by0, 0, H);
  r.sy1 = clamp64(ry2 + 1, 0, H);
  r.mx0 = clamp64(bx0, 0, W);
  r.mx1 = clamp64(bx2 + 1, 0, W);
  r.my0 = clamp64(by0, 0, H);
  r.my1 = clamp64(by2 + 1, 0, H);
  r.bx0 = bx0;
  r.by0 = by0;
  r.mw = bx2 - bx0 + 1 > 1 ? bx2 - bx0 + 1 : 1;
  r.mh = by2 - by0 + 1 > 1 ? by2 - by0 + 1 : 1;
  r.ch = num_stuff + label - 1;
  if (nan) {
    r.sy1 = r.sy0;
    r.my1 = r.my0;
  }
  return r;
}

// Inst is 13 int64 fields: the Triton kernel reads the same table (INST_FIELDS in registrations/panoptic.py).
constexpr int64_t kInstFields = 13;
static_assert(sizeof(Inst) == kInstFields * sizeof(int64_t), "Inst layout");

}  // namespace panoptic
}  // namespace fastops

// Host side: the argument checks both the CPU and the CUDA entry points call (defined in panoptic.cpp).
#include <ATen/core/Tensor.h>

namespace fastops {
namespace panoptic {

// Shapes, dtypes, devices and num_stuff / output_size ranges; returns the output size (H, W).
std::pair<int64_t, int64_t> check_args(const at::Tensor& sem, const at::Tensor& masks, const at::Tensor& boxes,
                                       const at::Tensor& labels, int64_t num_stuff,
                                       at::OptionalIntArrayRef output_size, bool with_void);

}  // namespace panoptic
}  // namespace fastops
