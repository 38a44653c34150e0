// Heatmaps and keypoints: the per-element math shared by the CPU and CUDA kernels.
//
// Conventions (see docs/heatmaps.md): coordinates (x, y) in heatmap pixels, pixel i has its value at i.
// Rendering follows mmpose's MSRAHeatmap / UDPHeatmap / MSRAHeatmap(unbiased) encoders and CenterNet's
// draw_umich_gaussian; decoding follows mmpose's get_heatmap_maximum + refine_keypoints(_dark, _dark_udp), the
// stacked-hourglass parser, CenterNet's _nms/_topk and CornerNet's pooling.
#pragma once

#include <stdint.h>

#include <cmath>

#include "common.h"

namespace fastops {
namespace heatmaps {

enum RenderMode : int { kMSRA = 0, kUDP = 1, kDARK = 2 };
enum RenderKernel : int { kGaussian = 0, kCauchy = 1 };
enum Refine : int { kNone = 0, kQuarter = 1, kHourglass = 2, kDark = 3, kDarkUDP = 4 };
enum PoolMode : int { kTop = 0, kBottom = 1, kLeft = 2, kRight = 3 };

constexpr int kMaxBlur = 31;

// true for finite values (portable host/device; no fast-math in this project)
FASTOPS_HD bool finite_(double v) { return v - v == 0.0; }  // largest blur_kernel accepted (coefficients live in a fixed-size array)

// ---- rendering -----------------------------------------------------------------------------------------------

// Window [x0, x1) x [y0, y1) clipped to the map and the Gaussian centre (cx, cy) of one keypoint; false when the
// keypoint is not drawn (non-finite, or its window misses the map). mmpose's arithmetic: mu = trunc(kp + 0.5) in
// the keypoint's precision, window [trunc(mu - 3s), trunc(mu + 3s + 1)), patch centre left + floor((6s + 1) / 2)
// (= mu whenever 3s is an integer), plus the sub-pixel remainder kp - mu for UDP. DARK: whole map, centre kp.
struct RenderWin {
  int x0, x1, y0, y1;
  double cx, cy;
};

template <typename A>
FASTOPS_HD bool render_window(A kx, A ky, double sigma, int mode, int H, int W, RenderWin& w) {
  if (!(finite_((double)kx) && finite_((double)ky))) return false;
  const double radius = 3.0 * sigma;
  if (mode == kDARK) {
    const double left = (double)kx - radius, top = (double)ky - radius;
    const double right = (double)kx + radius + 1.0, bottom = (double)ky + radius + 1.0;
    if (left >= W || top >= H || right < 0 || bottom < 0) return false;
    w.x0 = 0; w.x1 = W; w.y0 = 0; w.y1 = H;
    w.cx = (double)kx; w.cy = (double)ky;
    return true;
  }
  const A hx = kx + A(0.5), hy = ky + A(0.5);
  if (::fabs((double)hx) > 1e9 || ::fabs((double)hy) > 1e9) return false;  // far outside any map
  const double mux = ::trunc((double)hx), muy = ::trunc((double)hy);
  const double left = ::trunc(mux - radius), top = ::trunc(muy - radius);
  const double right = ::trunc(mux + radius + 1.0), bottom = ::trunc(muy + radius + 1.0);
  if (left >= W || top >= H || right < 0 || bottom < 0) return false;
  const double c0 = ::floor((2.0 * radius + 1.0) / 2.0);
  w.cx = left + c0;
  w.cy = top + c0;
  if (mode == kUDP) {
    w.cx += (double)kx - mux;
    w.cy += (double)ky - muy;
  }
  w.x0 = left < 0 ? 0 : (int)left;
  w.y0 = top < 0 ? 0 : (int)top;
  w.x1 = right > W ? W : (int)right;
  w.y1 = bottom > H ? H : (int)bottom;
  return w.x1 > w.x0 && w.y1 > w.y0;
}

// Separable factor of the Gaussian along one axis: exp(-d^2 / (2 s^2)).
template <typename A>
FASTOPS_HD A gauss1d(A d, A inv2s2) { return ::exp(-d * d * inv2s2); }

// Cauchy kernel sigma / (d^2 + sigma^2)^1.5.
template <typename A>
FASTOPS_HD A cauchy(A d2, A sigma) {
  const A s = d2 + sigma * sigma;
  return sigma / (s * ::sqrt(s));
}

// ---- CenterNet targets -----------------------------------------------------------------------------------------

// draw_umich_gaussian value at offset (dx, dy) from the integer centre for radius r (|dx|, |dy| <= r): sigma =
// (2r + 1) / 6; values below DBL_EPSILON * max (max = 1) are zeroed as gaussian2D does.
template <typename C>
FASTOPS_HD C umich_value(C dx, C dy, C r) {
  const C sigma = (C(2) * r + C(1)) / C(6);
  const C v = ::exp(-(dx * dx + dy * dy) / (C(2) * sigma * sigma));
  return v < C(2.220446049250313e-16) ? C(0) : v;
}

// Integer centre trunc(center), radius max(0, r), window clipped to the map; false when nothing is drawn.
struct CenterWin {
  int x0, x1, y0, y1;
  int64_t cx, cy, r;
};

FASTOPS_HD bool center_window(double fx, double fy, int64_t radius, int H, int W, CenterWin& w) {
  if (!(finite_(fx) && finite_(fy))) return false;
  const double x = ::trunc(fx), y = ::trunc(fy);
  const double r = radius < 0 ? 0.0 : (double)radius;
  if (x - r >= W || x + r < 0 || y - r >= H || y + r < 0) return false;
  w.cx = (int64_t)x;
  w.cy = (int64_t)y;
  w.r = radius < 0 ? 0 : radius;
  w.x0 = x - r < 0 ? 0 : (int)(x - r);
  w.y0 = y - r < 0 ? 0 : (int)(y - r);
  w.x1 = x + r + 1 > W ? W : (int)(x + r + 1);
  w.y1 = y + r + 1 > H ? H : (int)(y + r + 1);
  return w.x1 > w.x0 && w.y1 > w.y0;
}

// CenterNet's gaussian_radius (variant 0, the published roots of xingyizhou/CenterNet) and CornerNet's corrected
// roots (variant 1). Computed in double.
FASTOPS_HD double gaussian_radius_one(double height, double width, double o, int variant) {
  const double b1 = height + width;
  const double c1 = width * height * (1 - o) / (1 + o);
  const double sq1 = ::sqrt(b1 * b1 - 4 * c1);
  const double b2 = 2 * (height + width);
  const double c2 = (1 - o) * width * height;
  const double sq2 = ::sqrt(b2 * b2 - 16 * c2);
  const double a3 = 4 * o;
  const double b3 = -2 * o * (height + width);
  const double c3 = (o - 1) * width * height;
  const double sq3 = ::sqrt(b3 * b3 - 4 * a3 * c3);
  double r1, r2, r3;
  if (variant == 0) {
    r1 = (b1 + sq1) / 2;
    r2 = (b2 + sq2) / 2;
    r3 = (b3 + sq3) / 2;
  } else {
    r1 = (b1 - sq1) / 2;
    r2 = (b2 - sq2) / 8;
    r3 = (b3 + sq3) / (2 * a3);
  }
  // Python's min(): NaN only wins in the first position
  double m = r1;
  if (r2 < m) m = r2;
  if (r3 < m) m = r3;
  return m;
}

// ---- decoding --------------------------------------------------------------------------------------------------

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

// First maximum in row-major order (the first NaN if there is one), as numpy's argmax / amax.
template <typename T, typename A>
FASTOPS_HD int64_t first_argmax(const T* h, int64_t n, A& best) {
  int64_t bi = 0;
  best = (A)h[0];
  if (best != best) return 0;
  for (int64_t i = 1; i < n; ++i) {
    const A v = (A)h[i];
    if (v != v) { best = v; return i; }
    if (v > best) { best = v; bi = i; }
  }
  return bi;
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

// ---- peaks ----------------------------------------------------------------------------------------------------

// Order of candidates: higher score first, then lower flat index (c, y, x).
template <typename A>
FASTOPS_HD bool cand_before(A sa, int64_t ia, A sb, int64_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Max that propagates NaN (as max_pool2d).
template <typename A>
FASTOPS_HD A nanmax(A a, A b) {
  const bool c = (a > b) | (a != a);  // no short-circuit: vectorisable
  return c ? a : b;
}

// CenterNet _nms: a pixel keeps its value when it equals the max of its kernel x kernel neighbourhood (outside the
// map never wins, a NaN in the window makes every pixel of it a non-peak); others score 0 (heat * keep). A NaN
// pixel scores 0.
template <typename T, typename A>
FASTOPS_HD A peak_score(const T* plane, int H, int W, int y, int x, int pad) {
  const A v = (A)plane[(int64_t)y * W + x];
  const int ya = y - pad < 0 ? 0 : y - pad, yb = y + pad >= H ? H - 1 : y + pad;
  const int xa = x - pad < 0 ? 0 : x - pad, xb = x + pad >= W ? W - 1 : x + pad;
  A m = v;
  for (int yy = ya; yy <= yb; ++yy)
    for (int xx = xa; xx <= xb; ++xx) m = nanmax(m, (A)plane[(int64_t)yy * W + xx]);
  return (m == v) ? v : A(0);
}

}  // namespace heatmaps
}  // namespace fastops
