// flow_warp: backward warping of features by a dense flow (bilinear), math shared by the CPU and CUDA kernels.
//
// Output pixel (x, y) samples the input at (ix, iy) with
//   ix = ax * x + bx * u + cx,   iy = ay * y + by * v + cy
// where (a, b, c) depend on the units and align_corners (see make_axis; d = max(size - 1, 1)):
//   pixel,      align_corners=True : ix = x + u                          (FlowNet2 Resample2d, RAFT)
//   pixel,      align_corners=False: ix = (x + u) * W / d - 0.5          (grid_sample recipe, VPSNet/mmflow)
//   normalized, align_corners=True : ix = x + u * (W - 1) / 2            (grid = linspace(-1,1) + flow)
//   normalized, align_corners=False: ix = x * W / d + u * W / 2 - 0.5    (YolactEdge)
// No normalised grid is ever built: the sample position is computed per pixel from the flow.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace fastops {
namespace flow_warp {

template <typename A>
struct Axis {
  A a, b, c;  // position = a * index + b * flow + c
};

template <typename A>
FASTOPS_HD Axis<A> make_axis(int64_t size, bool align_corners, bool normalized) {
  const A d = size > 1 ? A(size - 1) : A(1);
  if (!normalized) {
    if (align_corners) return {A(1), A(1), A(0)};
    const A s = A(size) / d;
    return {s, s, A(-0.5)};
  }
  if (align_corners) return {A(1), A(size - 1) / A(2), A(0)};
  return {A(size) / d, A(size) / A(2), A(-0.5)};
}

// One bilinear sample: the four taps (clamped so that reading them is always in bounds; taps outside the map
// have weight 0), their weights, the weights' derivatives w.r.t. the sample position, and the chain factors
// d ix / d u and d iy / d v (0 where the border mode clamped the position).
template <typename A>
struct Sample {
  int64_t x0, x1, y0, y1;  // tap coordinates, always inside [0, W-1] x [0, H-1]
  A w00, w01, w10, w11;    // bilinear weights (0 for taps outside the map); 00 = (y0, x0), 01 = (y0, x1), ...
  A dx00, dx01, dx10, dx11;  // d w / d ix
  A dy00, dy01, dy10, dy11;  // d w / d iy
  A gx, gy;                  // d ix / d u, d iy / d v
  bool valid;                // all taps with non-zero weight inside the map (from the unclamped position)
  bool xin0, xin1, yin0, yin1;  // which tap columns / rows lie inside the map
  bool any;                  // some tap lies inside the map (else the sample is exactly 0)
  bool all;                  // all four taps lie inside the map (else out-of-map taps must not be read: their
                             // clamped index aliases an in-map tap, and 0 * inf there would be NaN)
};

template <typename A>
FASTOPS_HD bool finite_(A v) {
  return v == v && v - v == A(0);  // false for NaN and +-inf
}

template <typename A>
FASTOPS_HD int64_t clamp_i(int64_t v, int64_t hi) {
  return v < 0 ? 0 : (v > hi ? hi : v);
}

template <typename A>
FASTOPS_HD void make_sample(A ix, A iy, A gx, A gy, int64_t H, int64_t W, bool border, Sample<A>& s) {
  s.x0 = s.x1 = s.y0 = s.y1 = 0;
  s.w00 = s.w01 = s.w10 = s.w11 = A(0);
  s.dx00 = s.dx01 = s.dx10 = s.dx11 = A(0);
  s.dy00 = s.dy01 = s.dy10 = s.dy11 = A(0);
  s.gx = A(0);
  s.gy = A(0);
  s.valid = false;
  s.any = false;
  s.all = false;
  s.xin0 = s.xin1 = s.yin0 = s.yin1 = false;
  // NaN/inf positions contribute nothing in either padding mode (and never reach an integer conversion).
  if (!finite_(ix) || !finite_(iy)) return;
  const A Wm1 = A(W - 1), Hm1 = A(H - 1);
  // Validity mask from the unclamped position; only evaluated on a finite, bounded position.
  if (ix >= A(-1) && ix <= A(W) && iy >= A(-1) && iy <= A(H)) {
    const A fx0 = ::floor(ix), fy0 = ::floor(iy);
    const int64_t x0 = (int64_t)fx0, y0 = (int64_t)fy0;
    const bool vx = x0 >= 0 && x0 < W && (ix == fx0 || x0 + 1 < W);
    const bool vy = y0 >= 0 && y0 < H && (iy == fy0 || y0 + 1 < H);
    s.valid = vx && vy;
  }
  if (border) {
    // PyTorch's clip_coordinates: clamp to [0, size-1]; gradient 0 where clamped, including exactly on it.
    if (ix <= A(0)) { ix = A(0); gx = A(0); } else if (ix >= Wm1) { ix = Wm1; gx = A(0); }
    if (iy <= A(0)) { iy = A(0); gy = A(0); } else if (iy >= Hm1) { iy = Hm1; gy = A(0); }
  } else if (!(ix >= A(-1) && ix <= A(W) && iy >= A(-1) && iy <= A(H))) {
    return;  // every tap outside (or on the zero-weight edge): output 0, gradients 0
  }
  const A fx0 = ::floor(ix), fy0 = ::floor(iy);
  const int64_t x0 = (int64_t)fx0, y0 = (int64_t)fy0;
  const A fx = ix - fx0, fy = iy - fy0;
  const A mx0 = (x0 >= 0 && x0 < W) ? A(1) : A(0);
  const A mx1 = (x0 + 1 >= 0 && x0 + 1 < W) ? A(1) : A(0);
  const A my0 = (y0 >= 0 && y0 < H) ? A(1) : A(0);
  const A my1 = (y0 + 1 >= 0 && y0 + 1 < H) ? A(1) : A(0);
  const A m00 = my0 * mx0, m01 = my0 * mx1, m10 = my1 * mx0, m11 = my1 * mx1;
  s.xin0 = mx0 > A(0);
  s.xin1 = mx1 > A(0);
  s.yin0 = my0 > A(0);
  s.yin1 = my1 > A(0);
  s.x0 = clamp_i<A>(x0, W - 1);
  s.x1 = clamp_i<A>(x0 + 1, W - 1);
  s.y0 = clamp_i<A>(y0, H - 1);
  s.y1 = clamp_i<A>(y0 + 1, H - 1);
  const A ex = A(1) - fx, ey = A(1) - fy;
  s.w00 = ex * ey * m00;
  s.w01 = fx * ey * m01;
  s.w10 = ex * fy * m10;
  s.w11 = fx * fy * m11;
  s.dx00 = -ey * m00;
  s.dx01 = ey * m01;
  s.dx10 = -fy * m10;
  s.dx11 = fy * m11;
  s.dy00 = -ex * m00;
  s.dy01 = -fx * m01;
  s.dy10 = ex * m10;
  s.dy11 = fx * m11;
  s.gx = gx;
  s.gy = gy;
  s.any = (m00 + m01 + m10 + m11) > A(0);
  s.all = (m00 * m11 * m01 * m10) > A(0);
}

// One channel's bilinear value reading only the taps inside the map (p: the channel plane, strides sH, sW).
// NaN/inf rule: every in-map tap is read, even at weight 0 (0 * inf = NaN, as grid_sample); out-of-map taps never.
template <typename A, typename T>
FASTOPS_HD A edge_value(const Sample<A>& s, const T* p, int64_t sH, int64_t sW) {
  A v = A(0);
  if (s.yin0 && s.xin0) v += s.w00 * A(p[s.y0 * sH + s.x0 * sW]);
  if (s.yin0 && s.xin1) v += s.w01 * A(p[s.y0 * sH + s.x1 * sW]);
  if (s.yin1 && s.xin0) v += s.w10 * A(p[s.y1 * sH + s.x0 * sW]);
  if (s.yin1 && s.xin1) v += s.w11 * A(p[s.y1 * sH + s.x1 * sW]);
  return v;
}

// The sample of output pixel (x, y) for flow (u, v).
template <typename A>
FASTOPS_HD void sample_pixel(int64_t x, int64_t y, A u, A v, const Axis<A>& axx, const Axis<A>& axy, int64_t H,
                             int64_t W, bool border, Sample<A>& s) {
  const A ix = axx.a * A(x) + axx.b * u + axx.c;
  const A iy = axy.a * A(y) + axy.b * v + axy.c;
  make_sample<A>(ix, iy, axx.b, axy.b, H, W, border, s);
}

}  // namespace flow_warp
}  // namespace fastops

// Host side: the argument checks both the CPU and the CUDA entry points call (defined in flow_warp.cpp).
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace fastops {
namespace flow_warp {

struct Options {
  bool border;
  bool align_corners;
  bool normalized;
};

// The x and y sampling axes (make_axis) of an H x W map under the options.
template <typename A>
struct Axes {
  Axis<A> x, y;
};
template <typename A>
inline Axes<A> axes_of(int64_t H, int64_t W, const Options& o) {
  return {make_axis<A>(W, o.align_corners, o.normalized), make_axis<A>(H, o.align_corners, o.normalized)};
}

// padding_mode / units strings -> Options (RuntimeError naming the argument otherwise).
Options parse_options(c10::string_view padding_mode, bool align_corners, c10::string_view units);
// input [B, C, H, W] floating point, flow [B, 2, H, W] of the same dtype and device.
void check_inputs(const at::Tensor& input, const at::Tensor& flow);
// The above, plus grad_output of the input's shape and dtype.
void check_backward_inputs(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& flow);

// What the forward / backward entry points of both devices do before their kernels (call under the device
// guard): check the inputs, parse the options, allocate the outputs -- forward: out (input's layout) and mask
// [B, 1, H, W] (or [0] without return_mask); backward: grad_input and grad_flow in the layouts of input and flow
// (or [0] when not needed).
struct ForwardArgs {
  Options o;
  at::Tensor out, mask;
};
ForwardArgs prepare_forward(const at::Tensor& input, const at::Tensor& flow, c10::string_view padding_mode,
                            bool align_corners, c10::string_view units, bool return_mask);
struct BackwardArgs {
  Options o;
  at::Tensor gin, gflow;
};
BackwardArgs prepare_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& flow,
                              c10::string_view padding_mode, bool align_corners, c10::string_view units,
                              bool need_input, bool need_flow);

}  // namespace flow_warp
}  // namespace fastops
