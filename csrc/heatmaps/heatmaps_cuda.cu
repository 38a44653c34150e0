// Heatmaps and keypoints: CUDA kernels (thin launchers around heatmaps.h, shared with the CPU kernels).
//
// Traffic figures are for the spec's workloads in float32; "H100" means ~3 TB/s of HBM bandwidth. At these sizes
// (a few MB) every kernel is launch-bound (~3-5 us per launch) long before it is bandwidth-bound.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "heatmaps/heatmaps.h"
#include "heatmaps/heatmaps_common.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;
constexpr int kThreads = 256;
constexpr int kMapThreads = 128;  // threads per map for the per-map reductions

inline int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return (int)(b < 65535 * 8 ? (b < 1 ? 1 : b) : 65535 * 8);
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// ---- rendering -------------------------------------------------------------------------------------------------

// One thread per output pixel; loops over the N instances of its keypoint (window test in double, as the CPU).
// Traffic: the [B,K,H,W] output written once (6.7 MB for 32x17x64x48: ~2 us on H100) + keypoints (L2 hits).
template <typename T>
__global__ void render_kernel(int64_t total, const T* __restrict__ kp, const T* __restrict__ vis, int64_t N,
                              int64_t K, int H, int W, double sigma, int mode, int kern, T* __restrict__ out) {
  using A = acc_t<T>;
  const A inv2s2 = (A)(1.0 / (2.0 * sigma * sigma));
  GRID_STRIDE(idx, total) {
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
  GRID_STRIDE(i, total) {
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
  const int mode = parse_render_mode(mode_s);
  const int kern = parse_render_kernel(kernel_s);
  check_render_args(keypoints, visible, height, width, sigma);
  c10::cuda::CUDAGuard guard(keypoints.device());
  const Tensor kp = keypoints.contiguous();
  const int64_t B = kp.size(0), N = kp.size(1), K = kp.size(2);
  const int H = (int)height, W = (int)width;
  Tensor vis;
  if (visible.has_value()) vis = visible->to(kp.scalar_type()).contiguous();
  Tensor heatmaps = at::empty({B, K, H, W}, kp.options());
  Tensor weights = at::empty({B, N, K}, kp.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kp.scalar_type(), "render_gaussian_heatmaps_cuda", [&] {
    const scalar_t* vp = vis.defined() ? vis.data_ptr<scalar_t>() : nullptr;
    if (weights.numel() > 0) {
      render_weights_kernel<scalar_t><<<blocks_for(weights.numel()), kThreads, 0, stream>>>(
          weights.numel(), kp.data_ptr<scalar_t>(), vp, H, W, sigma, mode, weights.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (heatmaps.numel() > 0) {
      render_kernel<scalar_t><<<blocks_for(heatmaps.numel()), kThreads, 0, stream>>>(
          heatmaps.numel(), kp.data_ptr<scalar_t>(), vp, N, K, H, W, sigma, mode, kern,
          heatmaps.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  GRID_STRIDE(idx, total) {
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
      const double v = umich_value<double>((double)(x - w.cx), (double)(y - w.cy), (double)w.r);
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
  if (lb.numel() > 0)
    TORCH_CHECK(!(lb >= num_classes).any().item<bool>(), "render_center_heatmap: labels must be < num_classes (",
                num_classes, ")");
  const int64_t B = ct.size(0), N = ct.size(1);
  Tensor out = at::empty({B, num_classes, height, width}, ct.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ct.scalar_type(), "render_center_heatmap_cuda", [&] {
    center_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        out.numel(), ct.data_ptr<scalar_t>(), rd.data_ptr<int64_t>(), lb.data_ptr<int64_t>(), N, num_classes,
        (int)height, (int)width, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// Elementwise, double math. Traffic: 2 reads + 1 write per box (negligible).
template <typename T>
__global__ void radius_kernel(int64_t n, const T* __restrict__ h, const T* __restrict__ w, double o, int variant,
                              T* __restrict__ out) {
  GRID_STRIDE(i, n) { out[i] = (T)gaussian_radius_one((double)h[i], (double)w[i], o, variant); }
}

Tensor gaussian_radius_cuda(const Tensor& heights, const Tensor& widths, double min_overlap,
                            c10::string_view variant_s) {
  const int variant = parse_radius_variant(variant_s);
  TORCH_CHECK(heights.sizes() == widths.sizes(), "gaussian_radius: heights and widths must have the same shape");
  c10::cuda::CUDAGuard guard(heights.device());
  const Tensor h = heights.contiguous(), w = widths.to(heights.scalar_type()).contiguous();
  Tensor out = at::empty_like(h, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "gaussian_radius_cuda", [&] {
    radius_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        out.numel(), h.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), min_overlap, variant,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ---- per-map reductions ----------------------------------------------------------------------------------------

// (value, index) "better" for numpy's argmax: NaN first (lowest index), then larger, then lower index.
template <typename A>
__device__ __forceinline__ bool arg_better(A v1, int64_t i1, A v2, int64_t i2) {
  const bool n1 = v1 != v1, n2 = v2 != v2;
  if (n1 || n2) return n1 && (!n2 || i1 < i2);
  return v1 > v2 || (v1 == v2 && i1 < i2);
}

// One block of kMapThreads per map: strided first-maximum scan, shared-memory tree reduction (fixed order:
// deterministic), then thread 0 refines (DARK blurs only the 13 (7 for dark_udp) values it needs, 121 taps each
// for an 11x11 kernel). Traffic: each map read once (6.7 MB for 32x17x64x48: ~2 us on H100) + 2-3 values
// written per map.
template <typename T>
__global__ void argmax_kernel(const T* __restrict__ hm, int H, int W, int refine, int ksize, T* __restrict__ coords,
                              T* __restrict__ scores) {
  using A = acc_t<T>;
  __shared__ A sv[kMapThreads];
  __shared__ int64_t si[kMapThreads];
  const int64_t m = blockIdx.x;
  const int64_t n = (int64_t)H * W;
  const T* p = hm + m * n;
  A bv = (A)p[0];
  int64_t bi = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A v = (A)p[i];
    if (arg_better(v, i, bv, bi)) {
      bv = v;
      bi = i;
    }
  }
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s && arg_better(sv[threadIdx.x + s], si[threadIdx.x + s], sv[threadIdx.x], si[threadIdx.x])) {
      sv[threadIdx.x] = sv[threadIdx.x + s];
      si[threadIdx.x] = si[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  const A best = sv[0];
  const int64_t idx = si[0];
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
  if (refine == kQuarter) {
    refine_quarter<T, A>(p, H, W, x, y, kx, ky);
  } else if (refine == kHourglass) {
    refine_hourglass<T, A>(p, H, W, x, y, best, kx, ky);
  } else if (refine == kDark || refine == kDarkUDP) {
    A kc[kMaxBlur];
    opencv_gauss_kernel<A>(ksize, kc);
    if (refine == kDark)
      refine_dark<T, A>(p, H, W, x, y, best, kc, ksize, kx, ky);
    else
      refine_dark_udp<T, A>(p, H, W, x, y, best, kc, ksize, kx, ky);
  }
  coords[2 * m] = (T)kx;
  coords[2 * m + 1] = (T)ky;
  scores[m] = (T)best;
}

std::tuple<Tensor, Tensor> heatmap_argmax_cuda(const Tensor& heatmaps, c10::string_view refine_s,
                                               int64_t blur_kernel) {
  const int refine = parse_refine(refine_s);
  check_argmax_args(heatmaps, refine, blur_kernel);
  c10::cuda::CUDAGuard guard(heatmaps.device());
  const Tensor hm = heatmaps.contiguous();
  const int64_t B = hm.size(0), K = hm.size(1);
  Tensor coords = at::empty({B, K, 2}, hm.options());
  Tensor scores = at::empty({B, K}, hm.options());
  if (B * K == 0) return {coords, scores};
  TORCH_CHECK(B * K < (int64_t(1) << 31), "heatmap_argmax: too many maps");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "heatmap_argmax_cuda", [&] {
    argmax_kernel<scalar_t><<<(unsigned)(B * K), kMapThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        hm.data_ptr<scalar_t>(), (int)hm.size(2), (int)hm.size(3), refine, (int)blur_kernel,
        coords.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {coords, scores};
}

// Block-wide sum / max over kMapThreads (fixed tree: deterministic).
template <typename A>
__device__ A block_sum(A v, A* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const A r = sh[0];
  __syncthreads();
  return r;
}

template <typename A>
__device__ A block_max(A v, A* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] = fastops::max_(sh[threadIdx.x], sh[threadIdx.x + s]);
    __syncthreads();
  }
  const A r = sh[0];
  __syncthreads();
  return r;
}

// Softmax statistics of one map: max of beta*h, then S, Sx, Sy. Two reads of the map (second from L2).
template <typename T, typename A>
__device__ void map_softmax_stats(const T* p, int H, int W, A beta, A* sh, A& mx, A& S, A& Sx, A& Sy) {
  const int64_t n = (int64_t)H * W;
  A m = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fastops::max_(m, beta * (A)p[i]);
  mx = block_max(m, sh);
  A s = 0, sx = 0, sy = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A e = ::exp(beta * (A)p[i] - mx);
    s += e;
    sx += e * (A)(i % W);
    sy += e * (A)(i / W);
  }
  S = block_sum(s, sh);
  Sx = block_sum(sx, sh);
  Sy = block_sum(sy, sh);
}

// Forward: one block per map. Traffic: the maps read twice (2 x 6.7 MB for 32x17x64x48, the second mostly from
// L2: ~3-5 us on H100), 2 values written per map.
template <typename T>
__global__ void soft_argmax_kernel(const T* __restrict__ hm, int H, int W, double beta, bool normalize,
                                   T* __restrict__ coords) {
  using A = acc_t<T>;
  __shared__ A sh[kMapThreads];
  const int64_t m = blockIdx.x;
  A mx, S, Sx, Sy;
  map_softmax_stats<T, A>(hm + m * (int64_t)H * W, H, W, (A)beta, sh, mx, S, Sx, Sy);
  if (threadIdx.x == 0) {
    A cx = Sx / S, cy = Sy / S;
    if (normalize) {
      cx /= (A)W;
      cy /= (A)H;
    }
    coords[2 * m] = (T)cx;
    coords[2 * m + 1] = (T)cy;
  }
}

// Backward: one block per map; recomputes max and S, then writes beta * p * (g . (pos - coord)). Traffic: maps
// read 3x (L2 after the first), grad maps written once: ~13 MB from DRAM for 32x17x64x48 (~5 us on H100).
template <typename T>
__global__ void soft_argmax_backward_kernel(const T* __restrict__ grad, const T* __restrict__ hm,
                                            const T* __restrict__ coords, int H, int W, double beta, bool normalize,
                                            T* __restrict__ out) {
  using A = acc_t<T>;
  __shared__ A sh[kMapThreads];
  const int64_t m = blockIdx.x;
  const int64_t n = (int64_t)H * W;
  const T* p = hm + m * n;
  A mx, S, Sx, Sy;
  map_softmax_stats<T, A>(p, H, W, (A)beta, sh, mx, S, Sx, Sy);
  const A ux = normalize ? A(1) / (A)W : A(1), uy = normalize ? A(1) / (A)H : A(1);
  const A gx = (A)grad[2 * m], gy = (A)grad[2 * m + 1];
  const A cx = (A)coords[2 * m], cy = (A)coords[2 * m + 1];
  const A f = (A)beta / S;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A e = ::exp((A)beta * (A)p[i] - mx);
    out[m * n + i] = (T)(f * e * (gx * ((A)(i % W) * ux - cx) + gy * ((A)(i / W) * uy - cy)));
  }
}

Tensor soft_argmax_cuda(const Tensor& heatmaps, double beta, bool normalize) {
  check_soft_argmax_args(heatmaps);
  c10::cuda::CUDAGuard guard(heatmaps.device());
  const Tensor hm = heatmaps.contiguous();
  const int64_t B = hm.size(0), K = hm.size(1);
  Tensor coords = at::empty({B, K, 2}, hm.options());
  if (B * K == 0) return coords;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "soft_argmax_cuda", [&] {
    soft_argmax_kernel<scalar_t><<<(unsigned)(B * K), kMapThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        hm.data_ptr<scalar_t>(), (int)hm.size(2), (int)hm.size(3), beta, normalize, coords.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return coords;
}

Tensor soft_argmax_backward_cuda(const Tensor& grad, const Tensor& heatmaps, const Tensor& coords, double beta,
                                 bool normalize) {
  c10::cuda::CUDAGuard guard(heatmaps.device());
  const Tensor hm = heatmaps.contiguous();
  const Tensor g = grad.to(hm.scalar_type()).contiguous();
  const Tensor cd = coords.to(hm.scalar_type()).contiguous();
  const int64_t B = hm.size(0), K = hm.size(1);
  Tensor gin = at::empty(hm.sizes(), hm.options());
  if (gin.numel() == 0) return gin;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "soft_argmax_backward_cuda", [&] {
    soft_argmax_backward_kernel<scalar_t><<<(unsigned)(B * K), kMapThreads, 0,
                                            c10::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<scalar_t>(), hm.data_ptr<scalar_t>(), cd.data_ptr<scalar_t>(), (int)hm.size(2),
        (int)hm.size(3), beta, normalize, gin.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gin;
}

// ---- peaks / CenterNet decode ------------------------------------------------------------------------------------

// Score of every pixel (heat * keep, CenterNet's _nms) packed with its flat index into one int64 key whose order is
// (score descending, index ascending): the top-k of the keys is the spec's order, ties included, with no
// dependence on the selection algorithm. float scores only (half/bfloat16 widen exactly); float64 goes through
// a stable sort instead. Traffic: the heat read once (+ its 3x3 neighbours from L1/L2) and 8 bytes written per
// pixel: 5.2 + 10.5 MB for [1,80,128,128] (~5 us on H100), then at::topk over the keys.
__device__ __forceinline__ int64_t score_key(float s, int64_t idx) {
  uint32_t b = __float_as_uint(s);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // monotone unsigned image of the float order
  const uint64_t key = ((uint64_t)b << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)idx);
  return (int64_t)(key ^ 0x8000000000000000ull);  // unsigned order -> signed order
}

__device__ __forceinline__ float key_score(int64_t key) {
  uint32_t b = (uint32_t)(((uint64_t)key ^ 0x8000000000000000ull) >> 32);
  b = (b & 0x80000000u) ? (b & 0x7FFFFFFFu) : ~b;
  return __uint_as_float(b);
}

__device__ __forceinline__ int64_t key_index(int64_t key) {
  return (int64_t)(0xFFFFFFFFu - (uint32_t)((uint64_t)key & 0xFFFFFFFFull));
}

template <typename T>
__global__ void peak_keys_kernel(int64_t total, const T* __restrict__ heat, int64_t CHW, int H, int W, int pad,
                                 int64_t* __restrict__ keys) {
  GRID_STRIDE(idx, total) {
    const int64_t b = idx / CHW, f = idx % CHW;
    const int64_t plane = f / ((int64_t)H * W);
    const int y = (int)((f / W) % H), x = (int)(f % W);
    const float s = peak_score<T, float>(heat + (b * CHW + plane * (int64_t)H * W), H, W, y, x, pad);
    keys[idx] = score_key(s + 0.0f, f);  // +0.0f: -0 sorts with +0
  }
}

template <typename T>
__global__ void peak_scores_kernel(int64_t total, const T* __restrict__ heat, int64_t CHW, int H, int W, int pad,
                                   T* __restrict__ scores) {
  using A = acc_t<T>;
  GRID_STRIDE(idx, total) {
    const int64_t b = idx / CHW, f = idx % CHW;
    const int64_t plane = f / ((int64_t)H * W);
    const int y = (int)((f / W) % H), x = (int)(f % W);
    scores[idx] = (T)peak_score<T, A>(heat + (b * CHW + plane * (int64_t)H * W), H, W, y, x, pad);
  }
}

// One thread per selected peak: unpacks it and (decode) gathers wh / reg straight from NCHW through their strides.
// Traffic: k x (1 key + 4 gathered values + 6 written) per image (negligible).
template <typename T>
__global__ void peaks_out_kernel(int64_t total, int64_t ke, const int64_t* __restrict__ keys,
                                 const int64_t* __restrict__ order, const T* __restrict__ sorted_scores, int H,
                                 int W, T* __restrict__ scores, int64_t* __restrict__ labels, int64_t* __restrict__ ys,
                                 int64_t* __restrict__ xs, const T* __restrict__ wh, int64_t wsb, int64_t wsc,
                                 int64_t wsy, int64_t wsx, const T* __restrict__ reg, int64_t rsb, int64_t rsc,
                                 int64_t rsy, int64_t rsx, T* __restrict__ dets) {
  using A = acc_t<T>;
  GRID_STRIDE(i, total) {
    const int64_t b = i / ke;
    int64_t f;
    A s;
    if (keys) {
      f = key_index(keys[i]);
      s = (A)key_score(keys[i]);
    } else {
      f = order[i];
      s = (A)sorted_scores[i];
    }
    const int64_t label = f / ((int64_t)H * W);
    const int64_t y = (f / W) % H, x = f % W;
    if (dets == nullptr) {
      scores[i] = (T)s;
      labels[i] = label;
      ys[i] = y;
      xs[i] = x;
      continue;
    }
    A cx, cy;
    if (reg) {
      const T* r = reg + b * rsb + y * rsy + x * rsx;
      cx = (A)x + (A)r[0];
      cy = (A)y + (A)r[rsc];
    } else {
      cx = (A)x + A(0.5);
      cy = (A)y + A(0.5);
    }
    const T* w = wh + b * wsb + y * wsy + x * wsx;
    const A hw = (A)w[0] / A(2), hh = (A)w[wsc] / A(2);
    T* d = dets + i * 6;
    d[0] = (T)(cx - hw);
    d[1] = (T)(cy - hh);
    d[2] = (T)(cx + hw);
    d[3] = (T)(cy + hh);
    d[4] = (T)s;
    d[5] = (T)(A)label;
  }
}

// Shared by heatmap_peaks and centernet_decode (dets defined => decode).
void peaks_cuda_impl(const Tensor& hm, int64_t ke, int64_t kernel, Tensor* scores, Tensor* labels, Tensor* ys,
                     Tensor* xs, const Tensor* wh, const c10::optional<Tensor>* reg, Tensor* dets) {
  const int64_t B = hm.size(0), C = hm.size(1);
  const int H = (int)hm.size(2), W = (int)hm.size(3);
  const int64_t CHW = C * H * W;
  TORCH_CHECK(CHW < (int64_t(1) << 32), "heatmap_peaks: C*H*W must be < 2^32 on CUDA");
  const int pad = (int)(kernel - 1) / 2;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = B * CHW;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "heatmap_peaks_cuda", [&] {
    Tensor keys_top, order, sorted;
    if (!std::is_same<scalar_t, double>::value) {
      Tensor keys = at::empty({B, CHW}, hm.options().dtype(at::kLong));
      peak_keys_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(total, hm.data_ptr<scalar_t>(), CHW, H,
                                                                              W, pad, keys.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      keys_top = std::get<0>(at::topk(keys, ke, 1, true, true)).contiguous();
    } else {
      Tensor sc = at::empty({B, CHW}, hm.options());
      peak_scores_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(total, hm.data_ptr<scalar_t>(), CHW,
                                                                                H, W, pad, sc.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      auto res = at::sort(sc, /*stable=*/true, /*dim=*/1, /*descending=*/true);
      sorted = std::get<0>(res).narrow(1, 0, ke).contiguous();
      order = std::get<1>(res).narrow(1, 0, ke).contiguous();
    }
    const bool decode = dets != nullptr;
    const bool has_reg = decode && reg->has_value();
    const Tensor& r = has_reg ? reg->value() : hm;
    peaks_out_kernel<scalar_t><<<blocks_for(B * ke), kThreads, 0, stream>>>(
        B * ke, ke, keys_top.defined() ? keys_top.data_ptr<int64_t>() : nullptr,
        order.defined() ? order.data_ptr<int64_t>() : nullptr,
        sorted.defined() ? sorted.data_ptr<scalar_t>() : nullptr, H, W,
        decode ? nullptr : scores->data_ptr<scalar_t>(), decode ? nullptr : labels->data_ptr<int64_t>(),
        decode ? nullptr : ys->data_ptr<int64_t>(), decode ? nullptr : xs->data_ptr<int64_t>(),
        decode ? wh->data_ptr<scalar_t>() : nullptr, decode ? wh->stride(0) : 0, decode ? wh->stride(1) : 0,
        decode ? wh->stride(2) : 0, decode ? wh->stride(3) : 0, has_reg ? r.data_ptr<scalar_t>() : nullptr,
        has_reg ? r.stride(0) : 0, has_reg ? r.stride(1) : 0, has_reg ? r.stride(2) : 0, has_reg ? r.stride(3) : 0,
        decode ? dets->data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> heatmap_peaks_cuda(const Tensor& heatmaps, int64_t k, int64_t kernel) {
  check_peaks_args(heatmaps, k, kernel, "heatmaps");
  c10::cuda::CUDAGuard guard(heatmaps.device());
  const Tensor hm = heatmaps.contiguous();
  const int64_t B = hm.size(0);
  const int64_t ke = std::min<int64_t>(k, hm.size(1) * hm.size(2) * hm.size(3));
  Tensor scores = at::empty({B, ke}, hm.options());
  auto lo = hm.options().dtype(at::kLong);
  Tensor labels = at::empty({B, ke}, lo), ys = at::empty({B, ke}, lo), xs = at::empty({B, ke}, lo);
  if (B * ke == 0) return {scores, labels, ys, xs};
  peaks_cuda_impl(hm, ke, kernel, &scores, &labels, &ys, &xs, nullptr, nullptr, nullptr);
  return {scores, labels, ys, xs};
}

Tensor centernet_decode_cuda(const Tensor& heat, const Tensor& wh, const c10::optional<Tensor>& reg, int64_t k) {
  check_decode_args(heat, wh, reg, k);
  c10::cuda::CUDAGuard guard(heat.device());
  const Tensor hm = heat.contiguous();
  const int64_t B = hm.size(0);
  const int64_t ke = std::min<int64_t>(k, hm.size(1) * hm.size(2) * hm.size(3));
  Tensor dets = at::empty({B, ke, 6}, hm.options());
  if (B * ke == 0) return dets;
  peaks_cuda_impl(hm, ke, 3, nullptr, nullptr, nullptr, nullptr, &wh, &reg, &dets);
  return dets;
}

// ---- corner pooling ----------------------------------------------------------------------------------------------

// Forward: one thread per scan line. top/bottom: a thread per (plane, column), consecutive threads read
// consecutive columns (coalesced); left/right: a thread per (plane, row), strided by W between threads (each
// thread walks its own row; L1 absorbs the sector waste for W >= 32). Traffic: input read once, output written
// once: 2 x 8.4 MB for [1,128,128,128] (~6 us on H100).
template <typename T>
__global__ void corner_pool_kernel(int64_t lines, const T* __restrict__ in, T* __restrict__ out, int H, int W,
                                   int mode) {
  using A = acc_t<T>;
  GRID_STRIDE(l, lines) {
    int64_t base, step;
    int len;
    bool vertical = mode == kTop || mode == kBottom;
    if (vertical) {
      const int64_t plane = l / W;
      base = plane * (int64_t)H * W + (l % W);
      step = W;
      len = H;
    } else {
      base = l * (int64_t)W;
      step = 1;
      len = W;
    }
    const bool rev = mode == kTop || mode == kLeft;
    int64_t pos = base + (rev ? (int64_t)(len - 1) * step : 0);
    const int64_t d = rev ? -step : step;
    A mx = (A)in[pos];
    out[pos] = in[pos];
    for (int t = 1; t < len; ++t) {
      pos += d;
      const A v = (A)in[pos];
      if (v > mx) mx = v;
      out[pos] = (T)mx;
    }
  }
}

// Backward: one thread per scan line, walking against the scan; a "record" (first of the scan, or strictly above
// the previous output) takes the gradients accumulated since the last record (CornerNet's tie rule).
// Deterministic, no atomics. Traffic: input, output and grad read once, grad_input written once: 4 x 8.4 MB for
// [1,128,128,128] (~11 us on H100).
template <typename T>
__global__ void corner_pool_backward_kernel(int64_t lines, const T* __restrict__ grad, const T* __restrict__ in,
                                            const T* __restrict__ out, T* __restrict__ gin, int H, int W, int mode) {
  using A = acc_t<T>;
  GRID_STRIDE(l, lines) {
    int64_t base, step;
    int len;
    const bool vertical = mode == kTop || mode == kBottom;
    if (vertical) {
      const int64_t plane = l / W;
      base = plane * (int64_t)H * W + (l % W);
      step = W;
      len = H;
    } else {
      base = l * (int64_t)W;
      step = 1;
      len = W;
    }
    const bool rev = mode == kTop || mode == kLeft;  // scan starts at the far end
    // scan position t (0 = first of the scan) lives at base + idx(t) * step
    A acc = A(0);
    for (int t = len - 1; t >= 0; --t) {
      const int64_t i = rev ? (int64_t)(len - 1 - t) : (int64_t)t;
      const int64_t pos = base + i * step;
      acc += (A)grad[pos];
      bool rec = t == 0;
      if (!rec) {
        const int64_t prev = pos + (rev ? step : -step);
        rec = (A)in[pos] > (A)out[prev];
      }
      gin[pos] = (T)(rec ? acc : A(0));
      if (rec) acc = A(0);
    }
  }
}

Tensor corner_pool_cuda(const Tensor& input, c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_args(input);
  c10::cuda::CUDAGuard guard(input.device());
  const Tensor in = input.contiguous();
  Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int H = (int)in.size(2), W = (int)in.size(3);
  const int64_t lines = in.size(0) * in.size(1) * ((mode == kTop || mode == kBottom) ? W : H);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool_cuda", [&] {
    corner_pool_kernel<scalar_t><<<blocks_for(lines), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        lines, in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), H, W, mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor corner_pool_backward_cuda(const Tensor& grad, const Tensor& input, const Tensor& output,
                                 c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  c10::cuda::CUDAGuard guard(input.device());
  const Tensor in = input.contiguous(), ou = output.contiguous();
  const Tensor g = grad.to(in.scalar_type()).contiguous();
  Tensor gin = at::empty_like(in, at::MemoryFormat::Contiguous);
  if (gin.numel() == 0) return gin;
  const int H = (int)in.size(2), W = (int)in.size(3);
  const int64_t lines = in.size(0) * in.size(1) * ((mode == kTop || mode == kBottom) ? W : H);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool_backward_cuda", [&] {
    corner_pool_backward_kernel<scalar_t><<<blocks_for(lines), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        lines, g.data_ptr<scalar_t>(), in.data_ptr<scalar_t>(), ou.data_ptr<scalar_t>(), gin.data_ptr<scalar_t>(), H,
        W, mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gin;
}

}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  using namespace fastops::heatmaps;
  m.impl("render_gaussian_heatmaps", &render_gaussian_heatmaps_cuda);
  m.impl("render_center_heatmap", &render_center_heatmap_cuda);
  m.impl("gaussian_radius", &gaussian_radius_cuda);
  m.impl("heatmap_argmax", &heatmap_argmax_cuda);
  m.impl("soft_argmax", &soft_argmax_cuda);
  m.impl("_soft_argmax_backward", &soft_argmax_backward_cuda);
  m.impl("heatmap_peaks", &heatmap_peaks_cuda);
  m.impl("centernet_decode", &centernet_decode_cuda);
  m.impl("corner_pool", &corner_pool_cuda);
  m.impl("_corner_pool_backward", &corner_pool_backward_cuda);
}
