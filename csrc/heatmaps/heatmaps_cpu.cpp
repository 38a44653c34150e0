// Heatmaps and keypoints: schemas (all of the family's ops) and CPU kernels.
//
// Every kernel works map by map (one (b, k) or (b, c) plane per task of at::parallel_for), so results do not
// depend on the thread count. float16/bfloat16 are computed in float, float64 in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <queue>
#include <string>
#include <vector>

#include "heatmaps/heatmaps.h"
#include "heatmaps/heatmaps_common.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("render_gaussian_heatmaps(Tensor keypoints, Tensor? visible, int height, int width, float sigma, "
        "str mode, str kernel) -> (Tensor, Tensor)");
  m.def("render_center_heatmap(Tensor centers, Tensor radii, Tensor labels, int num_classes, int height, "
        "int width) -> Tensor");
  m.def("gaussian_radius(Tensor heights, Tensor widths, float min_overlap, str variant) -> Tensor");
  m.def("heatmap_argmax(Tensor heatmaps, str refine, int blur_kernel) -> (Tensor, Tensor)");
  m.def("soft_argmax(Tensor heatmaps, float beta, bool normalize) -> Tensor");
  m.def("_soft_argmax_backward(Tensor grad, Tensor heatmaps, Tensor coords, float beta, bool normalize) -> Tensor");
  m.def("heatmap_peaks(Tensor heatmaps, int k, int kernel) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("centernet_decode(Tensor heat, Tensor wh, Tensor? reg, int k) -> Tensor");
  m.def("corner_pool(Tensor input, str mode) -> Tensor");
  m.def("_corner_pool_backward(Tensor grad, Tensor input, Tensor output, str mode) -> Tensor");
}

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

// exp for float that gcc vectorises (Cephes' expf polynomial, ~1 ulp); 0 below -87 (no denormal results).
inline float fast_expf(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
}
inline double fast_exp(double x) { return std::exp(x); }
inline float fast_exp(float x) { return fast_expf(x); }

// Reductions in kLanes independent accumulators (combined in a fixed order at the end), so the result does not
// depend on the thread count. float uses GCC vector extensions (16 lanes: one AVX-512 register, or several
// narrower ones on a portable build): gcc does not vectorise float reductions or the exp below on its own
// without -ffast-math.
constexpr int kLanes = 16;
typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));

inline vf16 vload(const float* p) {
  vf16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline vf16 vsplat(float x) { return vf16{} + x; }
inline vf16 viota(float x0) {
  return vf16{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} + x0;
}
inline float vsum(vf16 v) {
  float r = 0;
  for (int j = 0; j < kLanes; ++j) r += v[j];
  return r;
}

// Cephes' expf for 16 lanes (~1 ulp); 0 below -87. Round-to-nearest by the 1.5 * 2^23 trick.
inline vf16 vexp(vf16 x) {
  const vi16 under = x < vsplat(-87.0f);
  vf16 xc = under ? vsplat(-87.0f) : x;
  xc = xc > vsplat(88.0f) ? vsplat(88.0f) : xc;
  const vf16 magic = vsplat(12582912.0f);
  const vf16 n = (xc * 1.44269504088896341f + magic) - magic;
  const vf16 r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  vf16 p = vsplat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi16 e = (__builtin_convertvector(n, vi16) + 127) << 23;
  vf16 scale;
  std::memcpy(&scale, &e, sizeof(scale));
  const vf16 out = p * scale;
  return under ? vsplat(0.0f) : out;
}

// Maximum of p[0..n) (n > 0) and whether any element is NaN.
template <typename T>
T lanes_max(const T* p, int64_t n, bool& has_nan) {
  T r = p[0];
  int f = 0;
  int64_t i = 0;
  if constexpr (std::is_same<T, float>::value) {
    if (n >= kLanes) {
      vf16 m = vload(p);
      vi16 nf = vi16{};
      for (; i + kLanes <= n; i += kLanes) {
        const vf16 v = vload(p + i);
        m = v > m ? v : m;
        nf |= (v != v);
      }
      r = m[0];
      for (int j = 0; j < kLanes; ++j) {
        r = m[j] > r ? m[j] : r;
        f |= nf[j];
      }
    }
  }
  for (; i < n; ++i) {
    const T v = p[i];
    r = v > r ? v : r;
    f |= (int)(v != v);
  }
  has_nan = f != 0;
  return r;
}

// Index of the first element equal to v (searching kLanes at a time).
template <typename T>
int64_t first_equal(const T* p, int64_t n, T v) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    int any = 0;
    for (int j = 0; j < kLanes; ++j) any |= (int)(p[i + j] == v);
    if (any)
      for (int j = 0; j < kLanes; ++j)
        if (p[i + j] == v) return i + j;
  }
  for (; i < n; ++i)
    if (p[i] == v) return i;
  return -1;
}

template <typename T>
int64_t first_nan(const T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (p[i] != p[i]) return i;
  return 0;
}

// ---- rendering --------------------------------------------------------------------------------------------------

// One axis of a separable window: exp(-d^2 / (2 sigma^2)) (gaussian) or d^2 (cauchy) for i in [i0, i1). In float,
// factors below 1.1e-19 are flushed to 0 so that products of two factors never become denormal (slow on x86);
// this changes values by less than 1.1e-19 of the peak.
template <typename A>
void fill_axis(A* g, int i0, int i1, double c, double inv2s2, int kern) {
  if (kern != kGaussian) {
    for (int i = i0; i < i1; ++i) {
      const double d = i - c;
      g[i] = (A)(d * d);
    }
    return;
  }
  const A cc = (A)c, f = (A)inv2s2;
  const double cr = c - (double)cc;  // keeps the centre's low bits for float
  for (int i = i0; i < i1; ++i) {
    const A d = ((A)i - cc) - (A)cr;
    const A v = fast_exp(-d * d * f);
    g[i] = (std::is_same<A, float>::value && v < A(1.1e-19)) ? A(0) : v;
  }
}

std::tuple<Tensor, Tensor> render_gaussian_heatmaps_cpu(const Tensor& keypoints, const c10::optional<Tensor>& visible,
                                                        int64_t height, int64_t width, double sigma,
                                                        c10::string_view mode_s, c10::string_view kernel_s) {
  const int mode = parse_render_mode(mode_s);
  const int kern = parse_render_kernel(kernel_s);
  check_render_args(keypoints, visible, height, width, sigma);
  const Tensor kp = keypoints.contiguous();
  const int64_t B = kp.size(0), N = kp.size(1), K = kp.size(2);
  const int H = (int)height, W = (int)width;
  Tensor vis;
  if (visible.has_value()) vis = visible->to(kp.scalar_type()).contiguous();
  Tensor heatmaps = at::empty({B, K, H, W}, kp.options());
  Tensor weights = at::empty({B, N, K}, kp.options());
  if (heatmaps.numel() == 0 && weights.numel() == 0) return {heatmaps, weights};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kp.scalar_type(), "render_gaussian_heatmaps", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* kpp = kp.data_ptr<scalar_t>();
    const scalar_t* visp = vis.defined() ? vis.data_ptr<scalar_t>() : nullptr;
    scalar_t* hm = heatmaps.data_ptr<scalar_t>();
    scalar_t* wt = weights.data_ptr<scalar_t>();
    // weights [B, N, K]: visibility (1 when not given) where drawn, else 0
    for (int64_t i = 0; i < B * N * K; ++i) {
      const A v = visp ? (A)visp[i] : A(1);
      RenderWin w;
      const bool drawn = v >= A(0.5) && render_window<A>((A)kpp[2 * i], (A)kpp[2 * i + 1], sigma, mode, H, W, w);
      wt[i] = drawn ? (scalar_t)v : (scalar_t)0;
    }
    const int64_t plane = (int64_t)H * W;
    if (plane == 0) return;
    const double inv2s2 = 1.0 / (2.0 * sigma * sigma);
    const A sig = (A)sigma;
    at::parallel_for(0, B * K, 4, [&](int64_t begin, int64_t end) {
      std::vector<A> tx((size_t)N * W), ty((size_t)N * H), row((size_t)W);
      std::vector<RenderWin> wins((size_t)N);
      for (int64_t m = begin; m < end; ++m) {
        const int64_t b = m / K, k = m % K;
        int cnt = 0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t i = (b * N + n) * K + k;
          if (visp && !((A)visp[i] >= A(0.5))) continue;
          RenderWin w;
          if (!render_window<A>((A)kpp[2 * i], (A)kpp[2 * i + 1], sigma, mode, H, W, w)) continue;
          A* gx = tx.data() + (size_t)cnt * W;
          A* gy = ty.data() + (size_t)cnt * H;
          fill_axis<A>(gx, w.x0, w.x1, w.cx, inv2s2, kern);
          fill_axis<A>(gy, w.y0, w.y1, w.cy, inv2s2, kern);
          if (kern == kGaussian) {
            // exact zeros at the ends (DARK's whole-map windows far from the keypoint) contribute nothing to a
            // max with 0: shrink the window to the non-zero span (the unwritten pixels stay 0)
            while (w.x1 > w.x0 && gx[w.x1 - 1] == A(0)) --w.x1;
            while (w.x1 > w.x0 && gx[w.x0] == A(0)) ++w.x0;
            while (w.y1 > w.y0 && gy[w.y1 - 1] == A(0)) --w.y1;
            while (w.y1 > w.y0 && gy[w.y0] == A(0)) ++w.y0;
            if (w.x1 <= w.x0 || w.y1 <= w.y0) continue;  // drawn (weight kept) but all zeros here
          }
          wins[cnt++] = w;
        }
        scalar_t* out = hm + m * plane;
        if (cnt == 0) {
          std::fill(out, out + plane, (scalar_t)0);
          continue;
        }
        if (cnt == 1 && kern == kGaussian) {
          const RenderWin& w = wins[0];
          const A* gx = tx.data();
          for (int y = 0; y < H; ++y) {
            scalar_t* o = out + (int64_t)y * W;
            if (y < w.y0 || y >= w.y1) {
              std::fill(o, o + W, (scalar_t)0);
              continue;
            }
            const A g = ty[y];
            for (int x = 0; x < w.x0; ++x) o[x] = (scalar_t)0;
            for (int x = w.x0; x < w.x1; ++x) o[x] = (scalar_t)(g * gx[x]);
            for (int x = w.x1; x < W; ++x) o[x] = (scalar_t)0;
          }
          continue;
        }
        for (int y = 0; y < H; ++y) {
          std::fill(row.begin(), row.end(), A(0));
          for (int c = 0; c < cnt; ++c) {
            const RenderWin& w = wins[c];
            if (y < w.y0 || y >= w.y1) continue;
            const A* gx = tx.data() + (size_t)c * W;
            const A g = ty[(size_t)c * H + y];
            if (kern == kGaussian) {
              for (int x = w.x0; x < w.x1; ++x) row[x] = std::max(row[x], g * gx[x]);
            } else {
              for (int x = w.x0; x < w.x1; ++x) row[x] = std::max(row[x], cauchy<A>(g + gx[x], sig));
            }
          }
          scalar_t* o = out + (int64_t)y * W;
          for (int x = 0; x < W; ++x) o[x] = (scalar_t)row[x];
        }
      }
    });
  });
  return {heatmaps, weights};
}

Tensor render_center_heatmap_cpu(const Tensor& centers, const Tensor& radii, const Tensor& labels, int64_t num_classes,
                                 int64_t height, int64_t width) {
  check_center_args(centers, radii, labels, num_classes, height, width);
  const Tensor ct = centers.contiguous();
  const Tensor rd = radii.contiguous();
  const Tensor lb = labels.contiguous();
  const int64_t B = ct.size(0), N = ct.size(1), C = num_classes;
  const int H = (int)height, W = (int)width;
  const int64_t* lp = lb.data_ptr<int64_t>();
  for (int64_t i = 0; i < B * N; ++i)
    TORCH_CHECK(lp[i] < C, "render_center_heatmap: labels must be < num_classes (", C, "), got ", lp[i]);
  Tensor out = at::empty({B, C, H, W}, ct.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ct.scalar_type(), "render_center_heatmap", [&] {
    const scalar_t* cp = ct.data_ptr<scalar_t>();
    const int64_t* rp = rd.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, B * C, 4, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const int64_t b = m / C, c = m % C;
        scalar_t* o = op + m * plane;
        std::fill(o, o + plane, (scalar_t)0);
        for (int64_t n = 0; n < N; ++n) {
          if (lp[b * N + n] != c) continue;
          CenterWin w;
          if (!center_window((double)cp[2 * (b * N + n)], (double)cp[2 * (b * N + n) + 1], rp[b * N + n], H, W, w))
            continue;
          for (int y = w.y0; y < w.y1; ++y)
            for (int x = w.x0; x < w.x1; ++x) {
              const double v = umich_value<double>((double)(x - w.cx), (double)(y - w.cy), (double)w.r);
              scalar_t& d = o[(int64_t)y * W + x];
              if (v > (double)d) d = (scalar_t)v;
            }
        }
      }
    });
  });
  return out;
}

Tensor gaussian_radius_cpu(const Tensor& heights, const Tensor& widths, double min_overlap, c10::string_view variant_s) {
  const int variant = parse_radius_variant(variant_s);
  TORCH_CHECK(heights.sizes() == widths.sizes(), "gaussian_radius: heights and widths must have the same shape");
  const Tensor h = heights.contiguous(), w = widths.to(heights.scalar_type()).contiguous();
  Tensor out = at::empty_like(h, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "gaussian_radius", [&] {
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, h.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        op[i] = (scalar_t)gaussian_radius_one((double)hp[i], (double)wp[i], min_overlap, variant);
    });
  });
  return out;
}

// ---- heatmap_argmax ---------------------------------------------------------------------------------------------

// First maximum of a contiguous run (numpy's argmax: the first NaN if there is one). `buf` converts
// float16/bfloat16 maps to float first.
template <typename T, typename A>
int64_t argmax_fast(const T* p, int64_t n, A& best, std::vector<A>& buf) {
  const A* q;
  if constexpr (std::is_same<T, A>::value) {
    q = p;
  } else {
    buf.resize((size_t)n);
    for (int64_t i = 0; i < n; ++i) buf[i] = (A)p[i];
    q = buf.data();
  }
  bool nan;
  const A m = lanes_max(q, n, nan);
  if (nan) {
    const int64_t i = first_nan(q, n);
    best = q[i];
    return i;
  }
  best = m;
  const int64_t i = first_equal(q, n, m);
  return i < 0 ? 0 : i;
}

std::tuple<Tensor, Tensor> heatmap_argmax_cpu(const Tensor& heatmaps, c10::string_view refine_s, int64_t blur_kernel) {
  const int refine = parse_refine(refine_s);
  check_argmax_args(heatmaps, refine, blur_kernel);
  const Tensor hm = heatmaps.contiguous();
  const int64_t B = hm.size(0), K = hm.size(1);
  const int H = (int)hm.size(2), W = (int)hm.size(3);
  Tensor coords = at::empty({B, K, 2}, hm.options());
  Tensor scores = at::empty({B, K}, hm.options());
  if (B * K == 0) return {coords, scores};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "heatmap_argmax", [&] {
    using A = acc_t<scalar_t>;
    A kc[kMaxBlur];
    if (refine == kDark || refine == kDarkUDP) opencv_gauss_kernel<A>((int)blur_kernel, kc);
    const scalar_t* hp = hm.data_ptr<scalar_t>();
    scalar_t* cp = coords.data_ptr<scalar_t>();
    scalar_t* sp = scores.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, B * K, 8, [&](int64_t begin, int64_t end) {
      std::vector<A> buf;
      for (int64_t m = begin; m < end; ++m) {
        const scalar_t* p = hp + m * plane;
        A best;
        const int64_t idx = argmax_fast<scalar_t, A>(p, plane, best, buf);
        A kx, ky;
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
          case kQuarter: refine_quarter<scalar_t, A>(p, H, W, x, y, kx, ky); break;
          case kHourglass: refine_hourglass<scalar_t, A>(p, H, W, x, y, best, kx, ky); break;
          case kDark: refine_dark<scalar_t, A>(p, H, W, x, y, best, kc, (int)blur_kernel, kx, ky); break;
          case kDarkUDP: refine_dark_udp<scalar_t, A>(p, H, W, x, y, best, kc, (int)blur_kernel, kx, ky); break;
          default: break;
        }
        cp[2 * m] = (scalar_t)kx;
        cp[2 * m + 1] = (scalar_t)ky;
        sp[m] = (scalar_t)best;
      }
    });
  });
  return {coords, scores};
}

// ---- soft_argmax ------------------------------------------------------------------------------------------------

// One map of softmax(beta * h): e_i = exp(beta * h_i - max) into e (when e is non-null), and the sums
// S = sum e, Sx = sum e * x, Sy = sum e * y (fixed-order lanes).
template <typename A>
A map_max_scaled(const A* q, int64_t n, A beta) {
  bool nan;
  if (beta >= A(0)) return beta * lanes_max(q, n, nan);
  A mn = q[0];
  for (int64_t i = 0; i < n; ++i) mn = q[i] < mn ? q[i] : mn;
  return beta * mn;
}

inline void softmax_sums(const float* q, int H, int W, float beta, float* e, float& S, float& Sx, float& Sy) {
  const float mx = map_max_scaled(q, (int64_t)H * W, beta);
  vf16 s = vf16{}, sx = vf16{}, sy = vf16{};
  const vf16 vb = vsplat(beta), vm = vsplat(mx);
  float tail[kLanes];
  for (int y = 0; y < H; ++y) {
    const float* r = q + (int64_t)y * W;
    float* er = e ? e + (int64_t)y * W : nullptr;
    const vf16 fy = vsplat((float)y);
    for (int x = 0; x < W; x += kLanes) {
      const int n = std::min(kLanes, W - x);
      vf16 v;
      if (n == kLanes) {
        v = vexp(vb * vload(r + x) - vm);
      } else {
        for (int j = 0; j < kLanes; ++j) tail[j] = j < n ? r[x + j] : 0.0f;
        v = vexp(vb * vload(tail) - vm);
        for (int j = n; j < kLanes; ++j) v[j] = 0.0f;
      }
      if (er) {
        if (n == kLanes) {
          std::memcpy(er + x, &v, sizeof(v));
        } else {
          for (int j = 0; j < n; ++j) er[x + j] = v[j];
        }
      }
      s += v;
      sx += v * viota((float)x);
      sy += v * fy;
    }
  }
  S = vsum(s);
  Sx = vsum(sx);
  Sy = vsum(sy);
}

inline void softmax_sums(const double* q, int H, int W, double beta, double* e, double& S, double& Sx, double& Sy) {
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

template <typename T, typename A>
const A* as_acc(const T* p, int64_t n, std::vector<A>& buf) {
  if constexpr (std::is_same<T, A>::value) {
    return p;
  } else {
    buf.resize((size_t)n);
    for (int64_t i = 0; i < n; ++i) buf[i] = (A)p[i];
    return buf.data();
  }
}

Tensor soft_argmax_cpu(const Tensor& heatmaps, double beta, bool normalize) {
  check_soft_argmax_args(heatmaps);
  const Tensor hm = heatmaps.contiguous();
  const int64_t B = hm.size(0), K = hm.size(1);
  const int H = (int)hm.size(2), W = (int)hm.size(3);
  Tensor coords = at::empty({B, K, 2}, hm.options());
  if (B * K == 0) return coords;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "soft_argmax", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* hp = hm.data_ptr<scalar_t>();
    scalar_t* cp = coords.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, B * K, 8, [&](int64_t begin, int64_t end) {
      std::vector<A> buf;
      for (int64_t m = begin; m < end; ++m) {
        const A* q = as_acc<scalar_t, A>(hp + m * plane, plane, buf);
        A s, sx, sy;
        softmax_sums(q, H, W, (A)beta, nullptr, s, sx, sy);
        A cx = sx / s, cy = sy / s;
        if (normalize) {
          cx /= (A)W;
          cy /= (A)H;
        }
        cp[2 * m] = (scalar_t)cx;
        cp[2 * m + 1] = (scalar_t)cy;
      }
    });
  });
  return coords;
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
        for (int y = 0; y < H; ++y) {
          const A ty = gy * ((A)y * uy - cy);
          const A* er = e + (int64_t)y * W;
          scalar_t* orow = o + (int64_t)y * W;
          for (int x = 0; x < W; ++x) orow[x] = (scalar_t)(f * er[x] * (gx * ((A)x * ux - cx) + ty));
        }
      }
    });
  });
  return gin;
}

// ---- peaks / CenterNet decode -----------------------------------------------------------------------------------

template <typename A>
struct Cand {
  A s;
  int64_t i;
};

// Row kernels of CenterNet's _nms (NaN-propagating maxima, as max_pool2d). float runs 16 lanes at a time.
inline vf16 vnanmax(vf16 a, vf16 b) {
  const vi16 c = (a > b) | (a != a);
  return c ? a : b;
}

template <typename A>
void rows_max3(const A* r0, const A* r1, const A* r2, A* out, int W) {
  int x = 0;
  if constexpr (std::is_same<A, float>::value) {
    for (; x + kLanes <= W; x += kLanes) {
      const vf16 v = vnanmax(vnanmax(vload(r0 + x), vload(r1 + x)), vload(r2 + x));
      std::memcpy(out + x, &v, sizeof(v));
    }
  }
  for (; x < W; ++x) out[x] = nanmax(nanmax(r0[x], r1[x]), r2[x]);
}

// sc[x] = cur[x] when it equals max(vm[x-1], vm[x], vm[x+1]) (clipped at the ends), else 0.
template <typename A>
void row_keep3(const A* vm, const A* cur, A* sc, int W) {
  if (W == 1) {
    sc[0] = vm[0] == cur[0] ? cur[0] : A(0);
    return;
  }
  sc[0] = nanmax(vm[0], vm[1]) == cur[0] ? cur[0] : A(0);
  int x = 1;
  if constexpr (std::is_same<A, float>::value) {
    for (; x + kLanes <= W - 1; x += kLanes) {
      const vf16 c = vload(cur + x);
      const vf16 m = vnanmax(vnanmax(vload(vm + x - 1), vload(vm + x)), vload(vm + x + 1));
      const vf16 r = (m == c) ? c : vf16{};
      std::memcpy(sc + x, &r, sizeof(r));
    }
  }
  for (; x < W - 1; ++x) {
    const A m = nanmax(nanmax(vm[x - 1], vm[x]), vm[x + 1]);
    sc[x] = m == cur[x] ? cur[x] : A(0);
  }
  sc[W - 1] = nanmax(vm[W - 2], vm[W - 1]) == cur[W - 1] ? cur[W - 1] : A(0);
}

// Running top-k of (score, flat index) candidates: a max-heap on "worse", so its front is the current k-th best.
template <typename A>
struct TopK {
  std::vector<Cand<A>> heap;
  int64_t k = 0;
  A thr = -std::numeric_limits<A>::infinity();
  bool full = false;
  static bool worse(const Cand<A>& a, const Cand<A>& b) { return cand_before(a.s, a.i, b.s, b.i); }
  void reset(int64_t k_) {
    heap.clear();
    k = k_;
    thr = -std::numeric_limits<A>::infinity();
    full = k == 0;
  }
  // candidates arrive in increasing index order within a plane, and planes in increasing order: an equal score
  // never beats the heap's worst
  void push(A s, int64_t i) {
    if (!full) {
      heap.push_back({s, i});
      std::push_heap(heap.begin(), heap.end(), worse);
      if ((int64_t)heap.size() == k) {
        full = true;
        thr = heap.front().s;
      }
    } else if (s > thr) {
      std::pop_heap(heap.begin(), heap.end(), worse);
      heap.back() = {s, i};
      std::push_heap(heap.begin(), heap.end(), worse);
      thr = heap.front().s;
    }
  }
};

// Scans one plane (score = heat * keep) into the running top-k. Row by row: once the heap is full, a row whose
// raw maximum cannot beat the heap's worst (and whose zeros cannot either) is skipped before any peak test; else
// the vertical then horizontal window maxima and the row's scores are computed vectorised.
template <typename A>
void plane_topk(const A* p, int H, int W, int pad, int64_t base, TopK<A>& top, std::vector<A>& work) {
  work.resize((size_t)2 * W);
  A* vm = work.data();
  A* sc = vm + W;
  bool nan;
  for (int y = 0; y < H; ++y) {
    const A* cur = p + (int64_t)y * W;
    if (top.full && !(A(0) > top.thr)) {
      const A rm = lanes_max(cur, W, nan);
      if (!(rm > top.thr) && !nan) continue;
    }
    const int ya = std::max(0, y - pad), yb = std::min(H - 1, y + pad);
    if (pad == 1) {
      rows_max3(p + (int64_t)ya * W, cur, p + (int64_t)yb * W, vm, W);
      row_keep3(vm, cur, sc, W);
    } else {
      std::copy(p + (int64_t)ya * W, p + (int64_t)ya * W + W, vm);
      for (int yy = ya + 1; yy <= yb; ++yy) {
        const A* r = p + (int64_t)yy * W;
        for (int x = 0; x < W; ++x) vm[x] = nanmax(vm[x], r[x]);
      }
      for (int x = 0; x < W; ++x) {
        const int xa = std::max(0, x - pad), xb = std::min(W - 1, x + pad);
        A m = vm[xa];
        for (int xx = xa + 1; xx <= xb; ++xx) m = nanmax(m, vm[xx]);
        sc[x] = m == cur[x] ? cur[x] : A(0);
      }
    }
    if (top.full && !(lanes_max(sc, W, nan) > top.thr)) continue;  // scores are never NaN
    const int64_t rb = base + (int64_t)y * W;
    for (int x = 0; x < W; ++x) top.push(sc[x], rb + x);
  }
}

// Top-k per image over all its planes. Each task keeps one running top-k per image over its planes; the union of
// the tasks' lists holds the image's top-k, which a final sort by the strict (score, index) order extracts: the
// result does not depend on how the planes were split between threads.
template <typename T, typename A>
void peaks_impl(const Tensor& hm, int64_t k, int64_t kernel, std::vector<Cand<A>>& result) {
  const int64_t B = hm.size(0), C = hm.size(1);
  const int H = (int)hm.size(2), W = (int)hm.size(3);
  const int64_t plane = (int64_t)H * W;
  const int pad = (int)(kernel - 1) / 2;
  std::vector<std::vector<Cand<A>>> per_image((size_t)B);
  std::mutex mu;
  const T* hp = hm.data_ptr<T>();
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> work, conv;
    TopK<A> top;
    int64_t cur_b = -1;
    auto flush = [&]() {
      if (cur_b < 0) return;
      std::lock_guard<std::mutex> lock(mu);
      auto& v = per_image[(size_t)cur_b];
      v.insert(v.end(), top.heap.begin(), top.heap.end());
    };
    for (int64_t m = begin; m < end; ++m) {
      const int64_t b = m / C;
      if (b != cur_b) {
        flush();
        cur_b = b;
        top.reset(k);
      }
      const A* q = as_acc<T, A>(hp + m * plane, plane, conv);
      plane_topk<A>(q, H, W, pad, (m % C) * plane, top, work);
    }
    flush();
  });
  result.resize((size_t)(B * k));
  for (int64_t b = 0; b < B; ++b) {
    auto& v = per_image[(size_t)b];
    std::partial_sort(v.begin(), v.begin() + k, v.end(),
                      [](const Cand<A>& a, const Cand<A>& c) { return cand_before(a.s, a.i, c.s, c.i); });
    std::copy(v.begin(), v.begin() + k, result.begin() + b * k);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> heatmap_peaks_cpu(const Tensor& heatmaps, int64_t k, int64_t kernel) {
  check_peaks_args(heatmaps, k, kernel, "heatmaps");
  const Tensor hm = heatmaps.contiguous();
  const int64_t B = hm.size(0), C = hm.size(1), H = hm.size(2), W = hm.size(3);
  const int64_t ke = std::min<int64_t>(k, C * H * W);
  Tensor scores = at::empty({B, ke}, hm.options());
  auto lo = hm.options().dtype(at::kLong);
  Tensor labels = at::empty({B, ke}, lo), ys = at::empty({B, ke}, lo), xs = at::empty({B, ke}, lo);
  if (B * ke == 0) return {scores, labels, ys, xs};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "heatmap_peaks", [&] {
    using A = acc_t<scalar_t>;
    std::vector<Cand<A>> res;
    peaks_impl<scalar_t, A>(hm, ke, kernel, res);
    scalar_t* sp = scores.data_ptr<scalar_t>();
    int64_t *lp = labels.data_ptr<int64_t>(), *yp = ys.data_ptr<int64_t>(), *xp = xs.data_ptr<int64_t>();
    for (int64_t i = 0; i < B * ke; ++i) {
      sp[i] = (scalar_t)res[i].s;
      const int64_t idx = res[i].i;
      lp[i] = idx / (H * W);
      yp[i] = (idx % (H * W)) / W;
      xp[i] = idx % W;
    }
  });
  return {scores, labels, ys, xs};
}

Tensor centernet_decode_cpu(const Tensor& heat, const Tensor& wh, const c10::optional<Tensor>& reg, int64_t k) {
  check_decode_args(heat, wh, reg, k);
  const Tensor hm = heat.contiguous();
  const int64_t B = hm.size(0), C = hm.size(1), H = hm.size(2), W = hm.size(3);
  const int64_t ke = std::min<int64_t>(k, C * H * W);
  Tensor dets = at::empty({B, ke, 6}, hm.options());
  if (B * ke == 0) return dets;
  const bool has_reg = reg.has_value();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "centernet_decode", [&] {
    using A = acc_t<scalar_t>;
    std::vector<Cand<A>> res;
    peaks_impl<scalar_t, A>(hm, ke, 3, res);
    // wh / reg are read in place through their strides (no permute copy)
    const scalar_t* whp = wh.data_ptr<scalar_t>();
    const int64_t wsb = wh.stride(0), wsc = wh.stride(1), wsy = wh.stride(2), wsx = wh.stride(3);
    const scalar_t* rgp = has_reg ? reg->data_ptr<scalar_t>() : nullptr;
    const int64_t rsb = has_reg ? reg->stride(0) : 0, rsc = has_reg ? reg->stride(1) : 0;
    const int64_t rsy = has_reg ? reg->stride(2) : 0, rsx = has_reg ? reg->stride(3) : 0;
    scalar_t* dp = dets.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < ke; ++j) {
        const Cand<A>& c = res[b * ke + j];
        const int64_t label = c.i / (H * W), y = (c.i % (H * W)) / W, x = c.i % W;
        A cx, cy;
        if (has_reg) {
          const scalar_t* r = rgp + b * rsb + y * rsy + x * rsx;
          cx = (A)x + (A)r[0];
          cy = (A)y + (A)r[rsc];
        } else {
          cx = (A)x + A(0.5);
          cy = (A)y + A(0.5);
        }
        const scalar_t* w = whp + b * wsb + y * wsy + x * wsx;
        const A hw = (A)w[0] / A(2), hh = (A)w[wsc] / A(2);
        scalar_t* d = dp + (b * ke + j) * 6;
        d[0] = (scalar_t)(cx - hw);
        d[1] = (scalar_t)(cy - hh);
        d[2] = (scalar_t)(cx + hw);
        d[3] = (scalar_t)(cy + hh);
        d[4] = (scalar_t)c.s;
        d[5] = (scalar_t)(A)label;
      }
  });
  return dets;
}

// ---- corner pooling ---------------------------------------------------------------------------------------------

// top/bottom: the scan runs over the plane's rows with the W lanes contiguous, so every step is a vectorised row
// operation. left/right: the scan runs along the contiguous axis; kRows rows go together (independent chains).

// out[t] = in[t] if in[t] > out[t-1] else out[t-1], t in scan order (rev: from row L-1 down).
template <typename T, typename A>
void scan_fwd_rows(const T* in, T* out, int L, int n, int64_t ld, bool rev) {
  const int first = rev ? L - 1 : 0, step = rev ? -1 : 1;
  std::copy(in + (int64_t)first * ld, in + (int64_t)first * ld + n, out + (int64_t)first * ld);
  for (int t = 1; t < L; ++t) {
    const int64_t y = first + step * t;
    const T* r = in + y * ld;
    const T* pr = out + (y - step) * ld;
    T* o = out + y * ld;
    int x = 0;
    if constexpr (std::is_same<T, float>::value) {
      for (; x + kLanes <= n; x += kLanes) {
        const vf16 a = vload(r + x), b = vload(pr + x);
        const vf16 v = a > b ? a : b;
        std::memcpy(o + x, &v, sizeof(v));
      }
    }
    for (; x < n; ++x) o[x] = (A)r[x] > (A)pr[x] ? r[x] : pr[x];
  }
}

// CornerNet's backward along the same rows: walking against the scan, gradients accumulate until a "record" (first
// of the scan, or strictly above the running max before it, i.e. the previous output) takes them.
template <typename T, typename A>
void scan_bwd_rows(const T* g, const T* in, const T* out, T* gin, int L, int n, int64_t ld, bool rev, A* acc) {
  const int first = rev ? L - 1 : 0, step = rev ? -1 : 1;
  std::fill(acc, acc + n, A(0));
  for (int t = L - 1; t >= 0; --t) {
    const int64_t y = first + step * t;
    const T* ar = in + y * ld;
    const T* gr = g + y * ld;
    T* rr = gin + y * ld;
    if (t == 0) {
      for (int x = 0; x < n; ++x) rr[x] = (T)(acc[x] + (A)gr[x]);
    } else {
      const T* pr = out + (y - step) * ld;
      int x = 0;
      if constexpr (std::is_same<T, float>::value) {
        for (; x + kLanes <= n; x += kLanes) {
          const vf16 sv = vload(acc + x) + vload(gr + x);
          const vi16 rec = vload(ar + x) > vload(pr + x);
          const vf16 gv = rec ? sv : vf16{};
          const vf16 av = rec ? vf16{} : sv;
          std::memcpy(rr + x, &gv, sizeof(gv));
          std::memcpy(acc + x, &av, sizeof(av));
        }
      }
      for (; x < n; ++x) {
        const A s = acc[x] + (A)gr[x];
        const bool rec = (A)ar[x] > (A)pr[x];
        rr[x] = (T)(rec ? s : A(0));
        acc[x] = rec ? A(0) : s;
      }
    }
  }
}

// left/right: kRows rows scanned together along their contiguous axis; the rows' dependency chains are
// independent, so the core overlaps them (no transposes, no gathers).
constexpr int kRows = 8;

template <typename T, typename A>
void scan_fwd_interleaved(const T* in, T* out, int W, int nr, bool rev) {
  A m[kRows];
  const int first = rev ? W - 1 : 0, d = rev ? -1 : 1;
  for (int r = 0; r < kRows; ++r) {
    const int rr = r < nr ? r : 0;
    m[r] = (A)in[(int64_t)rr * W + first];
  }
  for (int r = 0; r < nr; ++r) out[(int64_t)r * W + first] = in[(int64_t)r * W + first];
  int x = first;
  for (int t = 1; t < W; ++t) {
    x += d;
    if (nr == kRows) {
      for (int r = 0; r < kRows; ++r) {
        const A v = (A)in[(int64_t)r * W + x];
        m[r] = v > m[r] ? v : m[r];
        out[(int64_t)r * W + x] = (T)m[r];
      }
    } else {
      for (int r = 0; r < nr; ++r) {
        const A v = (A)in[(int64_t)r * W + x];
        m[r] = v > m[r] ? v : m[r];
        out[(int64_t)r * W + x] = (T)m[r];
      }
    }
  }
}

template <typename T, typename A>
void scan_bwd_interleaved(const T* g, const T* in, const T* out, T* gin, int W, int nr, bool rev) {
  A acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = A(0);
  for (int j = 0; j < W; ++j) {
    const int x = rev ? j : W - 1 - j;  // walk against the scan
    const bool first_of_scan = rev ? x == W - 1 : x == 0;
    const int xp = rev ? x + 1 : x - 1;
    for (int r = 0; r < nr; ++r) {
      const int64_t o = (int64_t)r * W;
      const A s = acc[r] + (A)g[o + x];
      const bool rec = first_of_scan || (A)in[o + x] > (A)out[o + xp];
      gin[o + x] = (T)(rec ? s : A(0));
      acc[r] = rec ? A(0) : s;
    }
  }
}

Tensor corner_pool_cpu(const Tensor& input, c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_args(input);
  const Tensor in = input.contiguous();
  const int64_t BC = in.size(0) * in.size(1);
  const int H = (int)in.size(2), W = (int)in.size(3);
  Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* ip = in.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, BC, 1, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const scalar_t* a = ip + m * plane;
        scalar_t* o = op + m * plane;
        if (mode == kTop || mode == kBottom) {
          scan_fwd_rows<scalar_t, A>(a, o, H, W, W, mode == kTop);
          continue;
        }
        for (int r0 = 0; r0 < H; r0 += kRows) {
          const int nr = std::min(kRows, H - r0);
          scan_fwd_interleaved<scalar_t, A>(a + (int64_t)r0 * W, o + (int64_t)r0 * W, W, nr, mode == kLeft);
        }
      }
    });
  });
  return out;
}

Tensor corner_pool_backward_cpu(const Tensor& grad, const Tensor& input, const Tensor& output,
                                c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  const Tensor in = input.contiguous();
  const Tensor ou = output.contiguous();
  const Tensor g = grad.to(in.scalar_type()).contiguous();
  const int64_t BC = in.size(0) * in.size(1);
  const int H = (int)in.size(2), W = (int)in.size(3);
  Tensor gin = at::empty_like(in, at::MemoryFormat::Contiguous);
  if (gin.numel() == 0) return gin;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* ip = in.data_ptr<scalar_t>();
    const scalar_t* opp = ou.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* rp = gin.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, BC, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> acc((size_t)W);
      for (int64_t m = begin; m < end; ++m) {
        const scalar_t* a = ip + m * plane;
        const scalar_t* o = opp + m * plane;
        const scalar_t* gg = gp + m * plane;
        scalar_t* r = rp + m * plane;
        if (mode == kTop || mode == kBottom) {
          scan_bwd_rows<scalar_t, A>(gg, a, o, r, H, W, W, mode == kTop, acc.data());
          continue;
        }
        for (int r0 = 0; r0 < H; r0 += kRows) {
          const int nr = std::min(kRows, H - r0);
          const int64_t off = (int64_t)r0 * W;
          scan_bwd_interleaved<scalar_t, A>(gg + off, a + off, o + off, r + off, W, nr, mode == kLeft);
        }
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
  m.impl("render_gaussian_heatmaps", &render_gaussian_heatmaps_cpu);
  m.impl("render_center_heatmap", &render_center_heatmap_cpu);
  m.impl("gaussian_radius", &gaussian_radius_cpu);
  m.impl("heatmap_argmax", &heatmap_argmax_cpu);
  m.impl("soft_argmax", &soft_argmax_cpu);
  m.impl("_soft_argmax_backward", &soft_argmax_backward_cpu);
  m.impl("heatmap_peaks", &heatmap_peaks_cpu);
  m.impl("centernet_decode", &centernet_decode_cpu);
  m.impl("corner_pool", &corner_pool_cpu);
  m.impl("_corner_pool_backward", &corner_pool_backward_cpu);
}
