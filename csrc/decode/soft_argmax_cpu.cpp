// Decoding keypoints, soft_argmax: CPU kernels (heatmap_argmax: decode_cpu.cpp). Compiled with an AVX-512 copy
// (setup.py's AVX512_KERNELS): its exponentials run 16 lanes wide. One map per task of at::parallel_for and
// fixed-order reductions inside a map, so results do not depend on the thread count. float16/bfloat16 are
// computed in float, float64 in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu_memory.h"
#include "keypoints_vec.h"
#include "decode/decode.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

// One map of softmax(beta * h): e_i = exp(beta * h_i - max) into e (when e is non-null), and the sums
// S = sum e, Sx = sum e * x, Sy = sum e * y (fixed-order lanes).
template <typename A>
A map_max_scaled(const A* q, int64_t n, A beta) {
  if constexpr (std::is_same<A, float>::value) {
    if (beta >= A(0)) return beta * fast_max(q, n);
  }
  bool nan;
  if (beta >= A(0)) return beta * lanes_max(q, n, nan);
  A mn = q[0];
  for (int64_t i = 0; i < n; ++i) mn = q[i] < mn ? q[i] : mn;
  return beta * mn;
}

// Maximum and minimum of q[0..n) (n > 0) and whether every element is finite (no NaN, no inf), 4 vector
// accumulators: the first pass of softmax_sums (the map then stays in L1 for the exponentials).
inline float max_min_all_finite(const float* q, int64_t n, float& mn, bool& finite) {
  int64_t i = 0;
  float r = q[0], z = 0.0f;
  mn = q[0];
  if (n >= 4 * kLanes) {
    vfloat m0 = vload(q), m1 = m0, m2 = m0, m3 = m0, n0 = m0, n1 = m0, z0 = vfloat{}, z1 = vfloat{};
    for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
      const vfloat a = vload(q + i), b = vload(q + i + kLanes), c = vload(q + i + 2 * kLanes),
                   d = vload(q + i + 3 * kLanes);
      m0 = vmax(a, m0);
      m1 = vmax(b, m1);
      m2 = vmax(c, m2);
      m3 = vmax(d, m3);
      n0 = vmin(vmin(a, b), n0);
      n1 = vmin(vmin(c, d), n1);
      z0 += (a - a) + (b - b);  // NaN from the first NaN or inf on
      z1 += (c - c) + (d - d);
    }
    const vfloat m = vmax(vmax(m0, m1), vmax(m2, m3)), nn = vmin(n0, n1), zz = z0 + z1;
    r = m[0];
    mn = nn[0];
    for (int j = 1; j < kLanes; ++j) {
      r = m[j] > r ? m[j] : r;
      mn = nn[j] < mn ? nn[j] : mn;
    }
    for (int j = 0; j < kLanes; ++j) z += zz[j];
  }
  for (; i < n; ++i) {
    r = q[i] > r ? q[i] : r;
    mn = q[i] < mn ? q[i] : mn;
    z += q[i] - q[i];
  }
  finite = z == 0.0f;  // when false, r and mn are not used
  return r;
}

// vexp for lanes known to be finite and below 1 (beta * h - max of a finite map): the same operations as vexp on
// that range, hence the same values, without its NaN and overflow handling; 0 below -87.
inline vfloat vexp_nonpos(vfloat x) {
  const vint keep = x >= vsplat(-87.0f);
  const vint v = (vint)vexp_poly(vmax(x, vsplat(-87.0f))) & keep;
  vfloat out;
  std::memcpy(&out, &v, sizeof(out));
  return out;
}

// vexp_nonpos for lanes known to be in [-87, 1): vexp_poly alone (its clamp and mask are identities there).
inline vfloat vexp_inrange(vfloat x) { return vexp_poly(x); }

// One map's exponentials and sums (see softmax_sums below), with `EXP` the vector exp.
// `pf` (may be null): the next map of the same size, prefetched row by row while this one's exponentials run (the
// max pass that reads a map first is otherwise stalled on L2/L3 for the whole map).
template <vfloat (*EXP)(vfloat)>
inline void softmax_sums_with(const float* q, int H, int W, float beta, float mx, float* e, float& S, float& Sx,
                              float& Sy, const float* pf) {
  vfloat s = vfloat{}, sx = vfloat{}, sy = vfloat{};
  const vfloat vb = vsplat(beta), nvm = vsplat(-mx);
  const int full = W - W % kLanes;
  float tail[kLanes];
  for (int y = 0; y < H; ++y) {
    const float* r = q + (int64_t)y * W;
    float* er = e ? e + (int64_t)y * W : nullptr;
    if (pf) {
      const float* pr = pf + (int64_t)y * W;
      for (int k = 0; k < W; k += 16) __builtin_prefetch(pr + k);
      __builtin_prefetch(pr + W - 1);
    }
    vfloat rs = vfloat{}, rx = vfloat{}, vx = viota(0.0f);
    int x = 0;
    for (; x < full; x += kLanes) {
      const vfloat v = EXP(vfma(vb, vload(r + x), nvm));
      if (er) vstore(er + x, v);
      rs += v;
      rx = vfma(v, vx, rx);
      vx += (float)kLanes;
    }
    if (x < W) {
      const int n = W - x;
      for (int j = 0; j < kLanes; ++j) tail[j] = j < n ? r[x + j] : 0.0f;
      vfloat v = vexp(vfma(vb, vload(tail), nvm));
      for (int j = n; j < kLanes; ++j) v[j] = 0.0f;
      if (er) {
        for (int j = 0; j < n; ++j) er[x + j] = v[j];
      }
      rs += v;
      rx = vfma(v, vx, rx);
    }
    s += rs;
    sx += rx;
    sy = vfma(rs, vsplat((float)y), sy);
  }
  S = vsum(s);
  Sx = vsum(sx);
  Sy = vsum(sy);
}

// float: the exponentials in fused multiply-adds, one row's sums in registers, the lane x positions carried as a
// vector. Maps are small (one stays in L1 between the max pass and this one). A finite map with beta >= 0 (the
// usual case) takes vexp_nonpos (same values, fewer operations per pixel); NaN/inf maps and beta < 0 take vexp.
inline void softmax_sums(const float* q, int H, int W, float beta, float* e, float& S, float& Sx, float& Sy,
                         const float* pf = nullptr) {
  if (beta >= 0.0f) {
    bool finite;
    float mn;
    const float m = max_min_all_finite(q, (int64_t)H * W, mn, finite);
    // |beta * m| < 2^24: the rounding of beta * m (what beta * h - mx can exceed 0 by) stays below 1
    if (finite && std::fabs(beta * m) < 16777216.0f) {
      const float mx = beta * m;
      // the exponent fma(beta, h, -mx) is non-decreasing in h (beta >= 0): its value at the minimum bounds them all
      if (std::fma(beta, mn, -mx) >= -87.0f)
        return softmax_sums_with<vexp_inrange>(q, H, W, beta, mx, e, S, Sx, Sy, pf);
      return softmax_sums_with<vexp_nonpos>(q, H, W, beta, mx, e, S, Sx, Sy, pf);
    }
  }
  softmax_sums_with<vexp>(q, H, W, beta, map_max_scaled(q, (int64_t)H * W, beta), e, S, Sx, Sy, pf);
}

// d coord / d h_i = beta * p_i * (pos_i - coord) for one map, from e_i = exp(beta * h_i - max) and S = sum e.
inline void soft_argmax_grad_map(const float* e, int H, int W, float f, float gx, float gy, float cx, float cy,
                                 float ux, float uy, float* o) {
  const int full = W - W % kLanes;
  const vfloat vf = vsplat(f);
  for (int y = 0; y < H; ++y) {
    const float ty = gy * ((float)y * uy - cy);
    const float* er = e + (int64_t)y * W;
    float* orow = o + (int64_t)y * W;
    vfloat vx = viota(0.0f);
    int x = 0;
    for (; x < full; x += kLanes) {
      vstore(orow + x, vf * vload(er + x) * (vsplat(gx) * (vx * ux - cx) + ty));
      vx += (float)kLanes;
    }
    for (; x < W; ++x) orow[x] = f * er[x] * (gx * ((float)x * ux - cx) + ty);
  }
}

inline void softmax_sums(const double* q, int H, int W, double beta, double* e, double& S, double& Sx, double& Sy,
                         const double* = nullptr) {
  const double mx = map_max_scaled(q, (int64_t)H * W, beta);
  S = Sx = Sy = 0;
  for (int y = 0; y < H; ++y) {
    double rs = 0, rx = 0;
    for (int x = 0; x < W; ++x) {
      const double v = std::exp(beta * q[(int64_t)y * W + x] - mx);
      if (e) e[(int64_t)y * W + x] = v;
      rs += v;
      rx += v * x;
    }
    S += rs;
    Sx += rx;
    Sy += rs * y;
  }
}

// The vector path for float maps; false (nothing written) for the other dtypes.
template <typename A, typename T>
bool grad_map(const A* e, int H, int W, A f, A gx, A gy, A cx, A cy, A ux, A uy, T* o) {
  if constexpr (std::is_same<A, float>::value && std::is_same<T, float>::value) {
    soft_argmax_grad_map(e, H, W, f, gx, gy, cx, cy, ux, uy, o);
    return true;
  }
  return false;
}

// Forward; with `probs` defined (float32 or float64, [B, K, H, W]) also writes p = e / S there (the map is still
// in L1 when it is scaled).
void soft_argmax_maps(const Tensor& hm, double beta, bool normalize, Tensor& coords, Tensor* probs) {
  const int64_t B = hm.size(0), K = hm.size(1);
  const int H = (int)hm.size(2), W = (int)hm.size(3);
  if (B * K == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "soft_argmax", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* hp = hm.data_ptr<scalar_t>();
    scalar_t* cp = coords.data_ptr<scalar_t>();
    A* pp = probs ? probs->data_ptr<A>() : nullptr;
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, B * K, 8, [&](int64_t begin, int64_t end) {
      std::vector<A> buf;
      for (int64_t m = begin; m < end; ++m) {
        const A* q = as_acc<scalar_t, A>(hp + m * plane, plane, buf);
        A* e = pp ? pp + m * plane : nullptr;
        A s, sx, sy, cx, cy;
        // float maps: the next map prefetched during this one's exponentials
        const A* next = nullptr;
        if constexpr (std::is_same<scalar_t, A>::value) next = m + 1 < end ? q + plane : nullptr;
        softmax_sums(q, H, W, (A)beta, e, s, sx, sy, next);
        soft_argmax_coords(s, sx, sy, H, W, normalize, cx, cy);
        if (e) {
          const A inv = A(1) / s;
          for (int64_t i = 0; i < plane; ++i) e[i] *= inv;
        }
        cp[2 * m] = (scalar_t)cx;
        cp[2 * m + 1] = (scalar_t)cy;
      }
    });
  });
}

Tensor soft_argmax_cpu(const Tensor& heatmaps, double beta, bool normalize) {
  check_soft_argmax_args(heatmaps, beta);
  const Tensor hm = heatmaps.contiguous();
  Tensor coords = at::empty({hm.size(0), hm.size(1), 2}, hm.options());
  soft_argmax_maps(hm, beta, normalize, coords, nullptr);
  return coords;
}

std::tuple<Tensor, Tensor> soft_argmax_probs_cpu(const Tensor& heatmaps, double beta, bool normalize) {
  check_soft_argmax_args(heatmaps, beta);
  const Tensor hm = heatmaps.contiguous();
  Tensor coords = at::empty({hm.size(0), hm.size(1), 2}, hm.options());
  // probs (saved for the backward) and the backward's gradient: one per training step, so on the block cache
  // (cpu_memory.h): glibc returned them to the OS between steps depending on its heap's history (~160 page faults
  // per call measured in the slow state).
  Tensor probs = cpu_memory::empty_cached(hm.sizes(), hm.scalar_type() == at::kDouble ? at::kDouble : at::kFloat,
                                          at::MemoryFormat::Contiguous);
  soft_argmax_maps(hm, beta, normalize, coords, &probs);
  return {coords, probs};
}

// d coord / d h_i = beta * p_i * (pos_i - coord) from the saved probabilities: one read of p, one write.
Tensor soft_argmax_probs_backward_cpu(const Tensor& grad, const Tensor& probs, const Tensor& coords, double beta,
                                     bool normalize) {
  check_soft_argmax_probs_backward_args(grad, probs, coords);
  const Tensor pr = probs.contiguous();
  const Tensor g = grad.to(pr.scalar_type()).contiguous();
  const Tensor cd = coords.to(pr.scalar_type()).contiguous();
  const int64_t B = pr.size(0), K = pr.size(1);
  const int H = (int)pr.size(2), W = (int)pr.size(3);
  Tensor gin = cpu_memory::empty_cached(pr.sizes(), pr.scalar_type(), at::MemoryFormat::Contiguous);
  if (gin.numel() == 0) return gin;
  AT_DISPATCH_FLOATING_TYPES(pr.scalar_type(), "soft_argmax_probs_backward", [&] {
    using A = scalar_t;
    const A* pp = pr.data_ptr<A>();
    const A* gp = g.data_ptr<A>();
    const A* cp = cd.data_ptr<A>();
    A* op = gin.data_ptr<A>();
    const int64_t plane = (int64_t)H * W;
    const A ux = normalize ? A(1) / (A)W : A(1), uy = normalize ? A(1) / (A)H : A(1);
    at::parallel_for(0, B * K, 8, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const A gx = gp[2 * m], gy = gp[2 * m + 1], cx = cp[2 * m], cy = cp[2 * m + 1];
        const A* p = pp + m * plane;
        A* o = op + m * plane;
        if (m + 1 < end) {  // the next map's p, a few lines ahead of the hardware prefetcher
          const char* nx = (const char*)(p + plane);
          for (int64_t b = 0; b < plane * (int64_t)sizeof(A); b += 256) __builtin_prefetch(nx + b);
        }
        if (grad_map(p, H, W, (A)beta, gx, gy, cx, cy, ux, uy, o)) continue;
        for (int y = 0; y < H; ++y)
          for (int x = 0; x < W; ++x)
            o[(int64_t)y * W + x] =
                soft_argmax_grad_at((A)beta * p[(int64_t)y * W + x], gx, gy, (A)x, (A)y, cx, cy, ux, uy);
      }
    });
  });
  return gin;
}

Tensor soft_argmax_backward_cpu(const Tensor& grad, const Tensor& heatmaps, const Tensor& coords, double beta,
                                bool normalize) {
  const Tensor hm = heatmaps.contiguous();
  const Tensor g = grad.to(hm.scalar_type()).contiguous();
  const Tensor cd = coords.to(hm.scalar_type()).contiguous();
  const int64_t B = hm.size(0), K = hm.size(1);
  const int H = (int)hm.size(2), W = (int)hm.size(3);
  Tensor gin = at::empty({B, K, H, W}, hm.options());
  if (gin.numel() == 0) return gin;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "soft_argmax_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* hp = hm.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* cp = cd.data_ptr<scalar_t>();
    scalar_t* op = gin.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, B * K, 8, [&](int64_t begin, int64_t end) {
      std::vector<A> buf, ebuf((size_t)plane);
      for (int64_t m = begin; m < end; ++m) {
        const A* q = as_acc<scalar_t, A>(hp + m * plane, plane, buf);
        A* e = ebuf.data();
        A s, sx_, sy_;
        softmax_sums(q, H, W, (A)beta, e, s, sx_, sy_);
        // d coord / d h_i = beta * p_i * (pos_i - coord); pos in pixels, or divided by W / H when normalised
        const A ux = normalize ? A(1) / (A)W : A(1), uy = normalize ? A(1) / (A)H : A(1);
        const A gx = (A)gp[2 * m], gy = (A)gp[2 * m + 1];
        const A cx = (A)cp[2 * m], cy = (A)cp[2 * m + 1];
        const A f = (A)beta / s;
        scalar_t* o = op + m * plane;
        if (grad_map(e, H, W, f, gx, gy, cx, cy, ux, uy, o)) continue;
        for (int y = 0; y < H; ++y)
          for (int x = 0; x < W; ++x)
            o[(int64_t)y * W + x] =
                (scalar_t)soft_argmax_grad_at(f * e[(int64_t)y * W + x], gx, gy, (A)x, (A)y, cx, cy, ux, uy);
      }
    });
  });
  return gin;
}

}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  using namespace fastops::heatmaps;
  m.impl("soft_argmax", &soft_argmax_cpu);
  m.impl("_soft_argmax_backward", &soft_argmax_backward_cpu);
  m.impl("_soft_argmax_probs", &soft_argmax_probs_cpu);
  m.impl("_soft_argmax_probs_backward", &soft_argmax_probs_backward_cpu);
}
