// Rendering targets: CUDA kernels (thin launchers around render.h, shared with the CPU kernels).
//
// Traffic figures are for docs/heatmaps.md's workloads in float32; H100 means ~3.35 TB/s of HBM bandwidth. At
// these sizes (a few MB) every kernel is launch-bound (~3-5 us per launch) long before it is bandwidth-bound.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "render/render.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

// One thread per output pixel; loops over the N instances of its keypoint (window test in double, as the CPU).
// Traffic: the [B,K,H,W] output written once (6.7 MB for 32x17x64x48: ~2 us on H100) + keypoints (L2 hits).
template <typename T>
__global__ void render_kernel(int64_t total, const T* __restrict__ kp, const T* __restrict__ vis, int64_t N,
                              int64_t K, int H, int W, double sigma, int mode, int kern, T* __restrict__ out) {
  using A = acc_t<T>;
  const A inv2s2 = (A)(1.0 / (2.0 * sigma * sigma));
  FASTOPS_KERNEL_LOOP(idx, total) {
    const int x = (int)(idx % W);
    const int y = (int)((idx / W) % H);
    const int64_t m = idx / ((int64_t)H * W);
    const int64_t b = m / K, k = m % K;
    A best = A(0);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = (b * N + n) * K + k;
      if (vis && !((A)vis[i] >= A(0.5))) continue;
      RenderWin w;
      if (!render_window<A>((A)kp[2 * i], (A)kp[2 * i + 1], sigma, mode, H, W, w)) continue;
      if (x < w.x0 || x >= w.x1 || y < w.y0 || y >= w.y1) continue;
      const A dx = (A)(x - w.cx), dy = (A)(y - w.cy);
      const A v = kern == kGaussian ? gauss1d<A>(dx, inv2s2) * gauss1d<A>(dy, inv2s2)
                                    : cauchy<A>(dx * dx + dy * dy, (A)sigma);
      best = v > best ? v : best;
    }
    out[idx] = (T)best;
  }
}

// One thread per (b, n, k). Traffic: 3 values read, 1 written per keypoint (negligible).
template <typename T>
__global__ void render_weights_kernel(int64_t total, const T* __restrict__ kp, const T* __restrict__ vis, int H,
                                      int W, double sigma, int mode, T* __restrict__ wt) {
  using A = acc_t<T>;
  FASTOPS_KERNEL_LOOP(i, total) {
    const A v = vis ? (A)vis[i] : A(1);
    RenderWin w;
    const bool drawn = v >= A(0.5) && render_window<A>((A)kp[2 * i], (A)kp[2 * i + 1], sigma, mode, H, W, w);
    wt[i] = drawn ? (T)v : (T)0;
  }
}

std::tuple<Tensor, Tensor> render_gaussian_heatmaps_cuda(const Tensor& keypoints,
                                                         const c10::optional<Tensor>& visible, int64_t height,
                                                         int64_t width, double sigma, c10::string_view mode_s,
                                                         c10::string_view kernel_s) {
  c10::cuda::CUDAGuard guard(keypoints.device());
  const auto [mode, kern, kp, vis, heatmaps, weights] =
      prepare_render(keypoints, visible, height, width, sigma, mode_s, kernel_s);
  const int64_t B = kp.size(0), N = kp.size(1), K = kp.size(2);
  const int H = (int)height, W = (int)width;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kp.scalar_type(), "render_gaussian_heatmaps_cuda", [&] {
    const scalar_t* vp = vis.defined() ? vis.data_ptr<scalar_t>() : nullptr;
    if (weights.numel() > 0) {
      fastops::cuda::launch_1d(render_weights_kernel<scalar_t>, weights.numel(), stream,
        weights.numel(), kp.data_ptr<scalar_t>(), vp, H, W, sigma, mode, weights.data_ptr<scalar_t>());
    }
    if (heatmaps.numel() > 0) {
      fastops::cuda::launch_1d(render_kernel<scalar_t>, heatmaps.numel(), stream,
        heatmaps.numel(), kp.data_ptr<scalar_t>(), vp, N, K, H, W, sigma, mode, kern, heatmaps.data_ptr<scalar_t>());
    }
  });
  return {heatmaps, weights};
}

// One thread per output pixel (b, c, y, x); loops over the image's N objects, drawing those of class c (double
// math, as the CPU kernel, so both give the same bits). Traffic: the [B,C,H,W] output written once (21 MB for
// 4x80x128x128: ~7 us on H100) + centres/radii/labels (L2 hits).
template <typename T>
__global__ void center_kernel(int64_t total, const T* __restrict__ ct, const int64_t* __restrict__ rd,
                              const int64_t* __restrict__ lb, int64_t N, int64_t C, int H, int W,
                              T* __restrict__ out) {
  FASTOPS_KERNEL_LOOP(idx, total) {
    const int x = (int)(idx % W);
    const int y = (int)((idx / W) % H);
    const int64_t m = idx / ((int64_t)H * W);
    const int64_t b = m / C, c = m % C;
    double best = 0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = b * N + n;
      if (lb[i] != c) continue;
      CenterWin w;
      if (!center_window((double)ct[2 * i], (double)ct[2 * i + 1], rd[i], H, W, w)) continue;
      if (x < w.x0 || x >= w.x1 || y < w.y0 || y >= w.y1) continue;
      const double v = umich_value<double>((double)x - w.cx, (double)y - w.cy, w.r);
      best = v > best ? v : best;
    }
    out[idx] = (T)best;
  }
}

Tensor render_center_heatmap_cuda(const Tensor& centers, const Tensor& radii, const Tensor& labels,
                                  int64_t num_classes, int64_t height, int64_t width) {
  check_center_args(centers, radii, labels, num_classes, height, width);
  c10::cuda::CUDAGuard guard(centers.device());
  const Tensor ct = centers.contiguous(), rd = radii.contiguous(), lb = labels.contiguous();
  const int64_t B = ct.size(0), N = ct.size(1);
  Tensor out = at::empty({B, num_classes, height, width}, ct.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ct.scalar_type(), "render_center_heatmap_cuda", [&] {
    fastops::cuda::launch_1d(center_kernel<scalar_t>, out.numel(), c10::cuda::getCurrentCUDAStream(),
        out.numel(), ct.data_ptr<scalar_t>(), rd.data_ptr<int64_t>(), lb.data_ptr<int64_t>(), N, num_classes,
        (int)height, (int)width, out.data_ptr<scalar_t>());
  });
  return out;
}

// Elementwise, double math. Traffic: 2 reads + 1 write per box (negligible).
template <typename T>
__global__ void radius_kernel(int64_t n, const T* __restrict__ h, const T* __restrict__ w, double o, int variant,
                              T* __restrict__ out) {
  FASTOPS_KERNEL_LOOP(i, n) { out[i] = (T)gaussian_radius_one((double)h[i], (double)w[i], o, variant); }
}

Tensor gaussian_radius_cuda(const Tensor& heights, const Tensor& widths, double min_overlap,
                            c10::string_view variant_s) {
  c10::cuda::CUDAGuard guard(heights.device());
  const auto [variant, h, w, out] = prepare_radius(heights, widths, min_overlap, variant_s);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "gaussian_radius_cuda", [&] {
    fastops::cuda::launch_1d(radius_kernel<scalar_t>, out.numel(), c10::cuda::getCurrentCUDAStream(),
        out.numel(), h.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), min_overlap, variant,
        out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  using namespace fastops::heatmaps;
  m.impl("render_gaussian_heatmaps", &render_gaussian_heatmaps_cuda);
  m.impl("render_center_heatmap", &render_center_heatmap_cuda);
  m.impl("gaussian_radius", &gaussian_radius_cuda);
}
