// Decoding keypoints (heatmap_argmax, soft_argmax): the per-element math shared by the CPU and CUDA kernels, and
// the host checks both call (defined in decode.cpp).
//
// Decoding follows mmpose's get_heatmap_maximum + refine_keypoints(_dark, _dark_udp) and the stacked-hourglass
// parser (docs/heatmaps.md). NaN/inf rule: the first NaN counts as the maximum (numpy's argmax / amax); a refined
// coordinate that is not finite (a NaN or inf in what the refinement reads) falls back to the integer location.
#pragma once

#include "keypoints_common.h"

namespace fastops {
namespace heatmaps {

// Mirrored in fastops/registrations/decode.py (tests/test_decode.py compares them).
enum Refine : int { kNone = 0, kQuarter = 1, kHourglass = 2, kDark = 3, kDarkUDP = 4 };

// largest blur_kernel accepted (coefficients live in a fixed-size array)
constexpr int kMaxBlur = 31;

// OpenCV getGaussianKernel(ksize, 0) for float images: fixed tables up to 7 taps, else the sigma formula.
// Fills k[0..ksize) (ksize odd, <= kMaxBlur).
template <typename A>
FASTOPS_HD void opencv_gauss_kernel(int ksize, A* k) {
  if (ksize == 1) { k[0] = A(1); return; }
  if (ksize == 3) { k[0] = A(0.25); k[1] = A(0.5); k[2] = A(0.25); return; }
  if (ksize == 5) { k[0] = A(0.0625); k[1] = A(0.25); k[2] = A(0.375); k[3] = A(0.25); k[4] = A(0.0625); return; }
  if (ksize == 7) {
    k[0] = A(0.03125); k[1] = A(0.109375); k[2] = A(0.21875); k[3] = A(0.28125);
    k[4] = A(0.21875); k[5] = A(0.109375); k[6] = A(0.03125);
    return;
  }
  const double sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8;
  const double scale = -0.5 / (sigma * sigma);
  double t[kMaxBlur];
  double sum = 0;
  for (int i = 0; i < ksize; ++i) {
    const double x = i - (ksize - 1) * 0.5;
    t[i] = ::exp(scale * x * x);
    sum += t[i];
  }
  for (int i = 0; i < ksize; ++i) k[i] = A(t[i] / sum);
}

// Blurred value at (y, x) of a map with zeros outside (mmpose pads by the kernel radius before cv2.GaussianBlur).
// Row pass then column pass, as OpenCV's separable filter.
template <typename T, typename A>
FASTOPS_HD A blur_at(const T* h, int H, int W, int y, int x, const A* k, int ksize) {
  const int r = ksize / 2;
  A acc = A(0);
  const int i0 = y - r < 0 ? r - y : 0;
  const int i1 = y + r >= H ? H - y + r : ksize;
  const int j0 = x - r < 0 ? r - x : 0;
  const int j1 = x + r >= W ? W - x + r : ksize;
  for (int i = i0; i < i1; ++i) {
    const T* row = h + (int64_t)(y + i - r) * W + (x - r);
    A s = A(0);
    for (int j = j0; j < j1; ++j) s += k[j] * (A)row[j];
    acc += k[i] * s;
  }
  return acc;
}

// Maximum of the whole blurred map (only needed when clamping makes mmpose's rescale matter; see refine_dark).
template <typename T, typename A>
FASTOPS_HD A blur_max(const T* h, int H, int W, const A* k, int ksize) {
  A m = blur_at(h, H, W, 0, 0, k, ksize);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const A v = blur_at(h, H, W, y, x, k, ksize);
      m = v > m ? v : m;
    }
  return m;
}

template <typename A>
FASTOPS_HD A sign_quarter(A d) {
  if (d != d) return d;
  return d > A(0) ? A(0.25) : (d < A(0) ? A(-0.25) : A(0));
}

// mmpose refine_keypoints on the integer maximum (x, y) (both -1 when the score is <= 0).
template <typename T, typename A>
FASTOPS_HD void refine_quarter(const T* h, int H, int W, int x, int y, A& kx, A& ky) {
  A dx = A(0), dy = A(0);
  if (1 < x && x < W - 1 && 0 < y && y < H) dx = (A)h[(int64_t)y * W + x + 1] - (A)h[(int64_t)y * W + x - 1];
  if (1 < y && y < H - 1 && 0 < x && x < W) dy = (A)h[(int64_t)(y + 1) * W + x] - (A)h[(int64_t)(y - 1) * W + x];
  kx += sign_quarter(dx);
  ky += sign_quarter(dy);
}

// Stacked-hourglass HeatmapParser.adjust: +-0.25 towards the larger neighbour (clamped at the border; ties go
// down), then +0.5; only where the score is > 0.
template <typename T, typename A>
FASTOPS_HD void refine_hourglass(const T* h, int H, int W, int x, int y, A score, A& kx, A& ky) {
  if (!(score > A(0))) return;
  const int64_t row = (int64_t)y * W;
  const A right = (A)h[row + (x + 1 < W ? x + 1 : W - 1)];
  const A left = (A)h[row + (x - 1 > 0 ? x - 1 : 0)];
  const A down = (A)h[(int64_t)(y + 1 < H ? y + 1 : H - 1) * W + x];
  const A up = (A)h[(int64_t)(y - 1 > 0 ? y - 1 : 0) * W + x];
  kx += (right > left ? A(0.25) : A(-0.25)) + A(0.5);
  ky += (down > up ? A(0.25) : A(-0.25)) + A(0.5);
}

// mmpose refine_keypoints_dark. The blurred map is rescaled to the original maximum before log(max(., 1e-10)); the
// rescale adds a constant to the log, which cancels in every difference below as long as no value near the
// maximum is clamped. The 13 blurred values needed are computed from the raw map directly (121 taps each for an
// 11x11 kernel); only if one of them is below 1e-10 is the exact rescale factor computed (a full-map blur).
template <typename T, typename A>
FASTOPS_HD void refine_dark(const T* h, int H, int W, int x, int y, A origin_max, const A* k, int ksize, A& kx,
                            A& ky) {
  if (!(1 < x && x < W - 2 && 1 < y && y < H - 2)) return;
  // offsets (dx, dy) of the values used
  const int ox[13] = {0, 1, -1, 0, 0, 2, -2, 0, 0, 1, 1, -1, -1};
  const int oy[13] = {0, 0, 0, 1, -1, 0, 0, 2, -2, 1, -1, 1, -1};
  A v[13];
  bool clamped = false;
  for (int i = 0; i < 13; ++i) {
    v[i] = blur_at(h, H, W, y + oy[i], x + ox[i], k, ksize);
    clamped |= !(v[i] >= A(1e-10));
  }
  if (clamped) {
    const A s = origin_max / blur_max(h, H, W, k, ksize);
    for (int i = 0; i < 13; ++i) {
      const A t = v[i] * s;
      v[i] = ::log(t > A(1e-10) || t != t ? t : A(1e-10));
    }
  } else {
    for (int i = 0; i < 13; ++i) v[i] = ::log(v[i]);
  }
  const A c = v[0];
  const A dx = A(0.5) * (v[1] - v[2]);
  const A dy = A(0.5) * (v[3] - v[4]);
  const A dxx = A(0.25) * (v[5] - A(2) * c + v[6]);
  const A dxy = A(0.25) * (v[9] - v[10] - v[11] + v[12]);
  const A dyy = A(0.25) * (v[7] - A(2) * c + v[8]);
  const A det = dxx * dyy - dxy * dxy;
  if (det != A(0)) {
    // offset = -H^{-1} g
    kx -= (dyy * dx - dxy * dy) / det;
    ky -= (dxx * dy - dxy * dx) / det;
  }
}

// mmpose refine_keypoints_dark_udp: same blur, clip(1e-3, 50), log, edge padding, step-1 differences,
// (Hessian + FLT_EPSILON I)^{-1} in double. The rescale cancels unless a value is clipped (checked as above).
template <typename T, typename A>
FASTOPS_HD void refine_dark_udp(const T* h, int H, int W, int x, int y, A origin_max, const A* k, int ksize, A& kx,
                                A& ky) {
  if (x < 0 || y < 0) return;  // score <= 0
  const int xm = x - 1 < 0 ? 0 : x - 1, xp = x + 1 >= W ? W - 1 : x + 1;
  const int ym = y - 1 < 0 ? 0 : y - 1, yp = y + 1 >= H ? H - 1 : y + 1;
  // i_, ix1, iy1, ix1y1, ix1_y1_, ix1_, iy1_
  const int px[7] = {x, xp, x, xp, xm, xm, x};
  const int py[7] = {y, y, yp, yp, ym, y, ym};
  A v[7];
  bool clipped = !(origin_max <= A(50));
  for (int i = 0; i < 7; ++i) {
    v[i] = blur_at(h, H, W, py[i], px[i], k, ksize);
    clipped |= !(v[i] >= A(1e-3));
  }
  if (clipped) {
    const A s = origin_max / blur_max(h, H, W, k, ksize);
    for (int i = 0; i < 7; ++i) {
      A t = v[i] * s;
      t = t < A(1e-3) ? A(1e-3) : (t > A(50) ? A(50) : t);
      v[i] = ::log(t);
    }
  } else {
    for (int i = 0; i < 7; ++i) v[i] = ::log(v[i]);
  }
  const A i_ = v[0], ix1 = v[1], iy1 = v[2], ix1y1 = v[3], ix1_y1_ = v[4], ix1_ = v[5], iy1_ = v[6];
  const double dx = 0.5 * (double)(ix1 - ix1_);
  const double dy = 0.5 * (double)(iy1 - iy1_);
  const double eps = 1.1920928955078125e-07;
  const double dxx = (double)(ix1 - A(2) * i_ + ix1_) + eps;
  const double dyy = (double)(iy1 - A(2) * i_ + iy1_) + eps;
  const double dxy = 0.5 * (double)(ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_);
  const double det = dxx * dyy - dxy * dxy;
  if (det != 0) {
    kx -= (A)((dyy * dx - dxy * dy) / det);
    ky -= (A)((dxx * dy - dxy * dx) / det);
  }
}

// soft_argmax: coordinates of one map from S = sum e, Sx = sum e * x, Sy = sum e * y (e = exp(beta * h - max)).
template <typename A>
FASTOPS_HD void soft_argmax_coords(A S, A Sx, A Sy, int H, int W, bool normalize, A& cx, A& cy) {
  cx = Sx / S;
  cy = Sy / S;
  if (normalize) {
    cx /= (A)W;
    cy /= (A)H;
  }
}

// soft_argmax backward at one pixel (x, y): d/dh of gx * cx + gy * cy = f * e * (gx * (x ux - cx) + gy * (y uy - cy))
// with f * e = beta * p (p the softmax probability); ux, uy = 1 (pixels) or 1/W, 1/H (normalize).
template <typename A>
FASTOPS_HD A soft_argmax_grad_at(A fe, A gx, A gy, A x, A y, A cx, A cy, A ux, A uy) {
  return fe * (gx * (x * ux - cx) + gy * (y * uy - cy));
}

// The NaN/inf rule of the refinements: a coordinate that is not finite falls back to the integer location.
template <typename A>
FASTOPS_HD void keep_finite(int x, int y, A& kx, A& ky) {
  if (!finite_((double)kx)) kx = (A)x;
  if (!finite_((double)ky)) ky = (A)y;
}

// One map's keypoint from its first maximum `best` at flat index idx: the integer location (-1, -1 when best <= 0),
// refined by `refine` (kc: the blur kernel of ksize taps, read by the dark refinements only), then keep_finite.
template <typename T, typename A>
FASTOPS_HD void keypoint_from_max(const T* p, int H, int W, A best, int64_t idx, int refine, const A* kc, int ksize,
                                  A& kx, A& ky) {
  int x, y;
  if (best <= A(0)) {
    kx = ky = A(-1);
    x = y = -1;
  } else {
    x = (int)(idx % W);
    y = (int)(idx / W);
    kx = (A)x;
    ky = (A)y;
  }
  switch (refine) {
    case kQuarter: refine_quarter<T, A>(p, H, W, x, y, kx, ky); break;
    case kHourglass: refine_hourglass<T, A>(p, H, W, x, y, best, kx, ky); break;
    case kDark: refine_dark<T, A>(p, H, W, x, y, best, kc, ksize, kx, ky); break;
    case kDarkUDP: refine_dark_udp<T, A>(p, H, W, x, y, best, kc, ksize, kx, ky); break;
    default: break;
  }
  keep_finite(x, y, kx, ky);
}

}  // namespace heatmaps
}  // namespace fastops

// host side (parsed by nvcc in both passes; used only by host code)
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace fastops {
namespace heatmaps {

int parse_refine(c10::string_view s);
void check_argmax_args(const at::Tensor& hm, int refine, int64_t blur_kernel);
void check_soft_argmax_args(const at::Tensor& hm, double beta);
void check_soft_argmax_probs_backward_args(const at::Tensor& grad, const at::Tensor& probs, const at::Tensor& coords);

}  // namespace heatmaps
}  // namespace fastops
