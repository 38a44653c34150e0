// Rendering targets: CPU kernels. Every kernel works map by map (one (b, k) or (b, c) plane per task of
// at::parallel_for), so results do not depend on the thread count. float16/bfloat16 are computed in float,
// float64 in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "keypoints_vec.h"
#include "render/render.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

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
  const auto [mode, kern, kp, vis, heatmaps, weights] =
      prepare_render(keypoints, visible, height, width, sigma, mode_s, kernel_s);
  const int64_t B = kp.size(0), N = kp.size(1), K = kp.size(2);
  const int H = (int)height, W = (int)width;
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
              const double v = umich_value<double>((double)x - w.cx, (double)y - w.cy, w.r);
              scalar_t& d = o[(int64_t)y * W + x];
              if (v > (double)d) d = (scalar_t)v;
            }
        }
      }
    });
  });
  return out;
}

Tensor gaussian_radius_cpu(const Tensor& heights, const Tensor& widths, double min_overlap,
                          c10::string_view variant_s) {
  const auto [variant, h, w, out] = prepare_radius(heights, widths, min_overlap, variant_s);
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
}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  using namespace fastops::heatmaps;
  m.impl("render_gaussian_heatmaps", &render_gaussian_heatmaps_cpu);
  m.impl("render_center_heatmap", &render_center_heatmap_cpu);
  m.impl("gaussian_radius", &gaussian_radius_cpu);
}
