// Rendering targets (render_gaussian_heatmaps, render_center_heatmap, gaussian_radius): the per-element math
// shared by the CPU and CUDA kernels, and the host checks both call (defined in render.cpp).
//
// Conventions (docs/heatmaps.md): coordinates (x, y) in heatmap pixels, pixel i has its value at i. Rendering
// follows mmpose's MSRAHeatmap / UDPHeatmap / MSRAHeatmap(unbiased) encoders and CenterNet's draw_umich_gaussian.
#pragma once

#include "keypoints_common.h"

namespace fastops {
namespace heatmaps {

// Mirrored in fastops/registrations/render.py (tests/test_render.py compares them).
enum RenderMode : int { kMSRA = 0, kUDP = 1, kDARK = 2 };
enum RenderKernel : int { kGaussian = 0, kCauchy = 1 };
enum RadiusVariant : int { kCenterNet = 0, kCornerNet = 1 };

// sigma range accepted by render_gaussian_heatmaps (below 1e-3 px, 1 / (2 sigma^2) overflows float's range of
// useful values and the Cauchy peak 1 / sigma^2 overflows half precision).
constexpr double kMinSigma = 1e-3;
constexpr double kMaxSigma = 1e6;

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

// draw_umich_gaussian value at offset (dx, dy) from the integer centre for radius r (|dx|, |dy| <= r): sigma =
// (2r + 1) / 6; values below DBL_EPSILON * max (max = 1) are zeroed as gaussian2D does.
template <typename C>
FASTOPS_HD C umich_value(C dx, C dy, C r) {
  const C sigma = (C(2) * r + C(1)) / C(6);
  const C v = ::exp(-(dx * dx + dy * dy) / (C(2) * sigma * sigma));
  return v < C(2.220446049250313e-16) ? C(0) : v;
}

// Integer centre trunc(center), radius max(0, r), window clipped to the map; false when nothing is drawn. The
// centre stays in double (a centre of 1e19 with a radius of 1e20 still touches the map: no int64 cast of it).
struct CenterWin {
  int x0, x1, y0, y1;
  double cx, cy, r;
};

FASTOPS_HD bool center_window(double fx, double fy, int64_t radius, int H, int W, CenterWin& w) {
  if (!(finite_(fx) && finite_(fy))) return false;
  const double x = ::trunc(fx), y = ::trunc(fy);
  const double r = radius < 0 ? 0.0 : (double)radius;
  if (x - r >= W || x + r < 0 || y - r >= H || y + r < 0) return false;
  w.cx = x;
  w.cy = y;
  w.r = r;
  w.x0 = x - r < 0 ? 0 : (int)(x - r);
  w.y0 = y - r < 0 ? 0 : (int)(y - r);
  w.x1 = x + r + 1 > W ? W : (int)(x + r + 1);
  w.y1 = y + r + 1 > H ? H : (int)(y + r + 1);
  return w.x1 > w.x0 && w.y1 > w.y0;
}

// CenterNet's gaussian_radius (kCenterNet, the published roots of xingyizhou/CenterNet) and CornerNet's corrected
// roots (kCornerNet). Computed in double.
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
  if (variant == kCenterNet) {
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

}  // namespace heatmaps
}  // namespace fastops

// host side (parsed by nvcc in both passes; used only by host code)
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace fastops {
namespace heatmaps {

int parse_render_mode(c10::string_view s);
int parse_render_kernel(c10::string_view s);
int parse_radius_variant(c10::string_view s);
void check_render_args(const at::Tensor& kp, const c10::optional<at::Tensor>& visible, int64_t height, int64_t width,
                       double sigma);
void check_center_args(const at::Tensor& centers, const at::Tensor& radii, const at::Tensor& labels,
                       int64_t num_classes, int64_t height, int64_t width);
void check_radius_args(const at::Tensor& heights, const at::Tensor& widths, double min_overlap);

// What render_gaussian_heatmaps does on either device before its kernels (call it under the device guard): parse and
// check the arguments; the keypoints contiguous, the visibility (when given) contiguous in their dtype; the outputs
// allocated (heatmaps [B, K, height, width], weights [B, N, K]).
struct RenderArgs {
  int mode, kern;
  at::Tensor kp, vis, heatmaps, weights;
};
RenderArgs prepare_render(const at::Tensor& keypoints, const c10::optional<at::Tensor>& visible, int64_t height,
                          int64_t width, double sigma, c10::string_view mode, c10::string_view kernel);

// gaussian_radius's: parse and check; heights contiguous, widths contiguous in their dtype, the output allocated.
struct RadiusArgs {
  int variant;
  at::Tensor h, w, out;
};
RadiusArgs prepare_radius(const at::Tensor& heights, const at::Tensor& widths, double min_overlap,
                          c10::string_view variant);

}  // namespace heatmaps
}  // namespace fastops
