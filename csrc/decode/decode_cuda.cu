// Decoding keypoints: CUDA kernels (thin launchers around decode.h, shared with the CPU kernels).
//
// Traffic figures are for docs/heatmaps.md's workloads in float32; H100 means ~3.35 TB/s of HBM bandwidth. At
// these sizes (a few MB) every kernel is launch-bound (~3-5 us per launch) long before it is bandwidth-bound.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "decode/decode.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;
using fastops::cuda::block_arg_reduce;
using fastops::cuda::blocks_for;
using fastops::cuda::first_max_better;
using fastops::cuda::FirstMax;
using fastops::cuda::kThreads;
constexpr int kMapThreads = 128;  // threads per map for the per-map reductions (one block per map)

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
    if (first_max_better(v, i, bv, bi)) {
      bv = v;
      bi = i;
    }
  }
  block_arg_reduce(sv, si, bv, bi, blockDim.x, FirstMax{});
  if (threadIdx.x != 0) return;
  const A best = sv[0];
  const int64_t idx = si[0];
  A kc[kMaxBlur];
  if (refine == kDark || refine == kDarkUDP) opencv_gauss_kernel<A>(ksize, kc);
  A kx, ky;
  keypoint_from_max<T, A>(p, H, W, best, idx, refine, kc, ksize, kx, ky);
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
// L2: ~3-5 us on H100), 2 values written per map. With `probs` (the autograd path) also p = softmax(beta * h) in
// the accumulation type: a third read of the map (L2) and p written once, ~6.7 + 6.7 MB from HBM (~4-6 us).
template <typename T>
__global__ void soft_argmax_kernel(const T* __restrict__ hm, int H, int W, double beta, bool normalize,
                                   T* __restrict__ coords, acc_t<T>* __restrict__ probs) {
  using A = acc_t<T>;
  __shared__ A sh[kMapThreads];
  const int64_t m = blockIdx.x;
  const int64_t n = (int64_t)H * W;
  const T* p = hm + m * n;
  A mx, S, Sx, Sy;
  map_softmax_stats<T, A>(p, H, W, (A)beta, sh, mx, S, Sx, Sy);
  if (probs) {
    const A inv = A(1) / S;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) probs[m * n + i] = ::exp((A)beta * (A)p[i] - mx) * inv;
  }
  if (threadIdx.x == 0) {
    A cx, cy;
    soft_argmax_coords(S, Sx, Sy, H, W, normalize, cx, cy);
    coords[2 * m] = (T)cx;
    coords[2 * m + 1] = (T)cy;
  }
}

// Backward from the saved probabilities, one thread per pixel. Traffic: p read once, the gradient written once
// (2 x 6.7 MB for 32x17x64x48 float32: ~4 us on H100).
template <typename A>
__global__ void soft_argmax_probs_backward_kernel(const A* __restrict__ grad, const A* __restrict__ probs,
                                                  const A* __restrict__ coords, int64_t total, int H, int W,
                                                  double beta, bool normalize, A* __restrict__ out) {
  const int64_t n = (int64_t)H * W;
  const A ux = normalize ? A(1) / (A)W : A(1), uy = normalize ? A(1) / (A)H : A(1);
  FASTOPS_KERNEL_LOOP(i, total) {
    const int64_t m = i / n, pix = i % n;
    out[i] = soft_argmax_grad_at((A)beta * probs[i], grad[2 * m], grad[2 * m + 1], (A)(pix % W), (A)(pix / W),
                                 coords[2 * m], coords[2 * m + 1], ux, uy);
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
    out[m * n + i] = (T)soft_argmax_grad_at(f * e, gx, gy, (A)(i % W), (A)(i / W), cx, cy, ux, uy);
  }
}

// coords, and p when `probs` is given (float32, float64 for float64 maps).
void soft_argmax_launch(const Tensor& hm, double beta, bool normalize, Tensor& coords, Tensor* probs) {
  const int64_t B = hm.size(0), K = hm.size(1);
  if (B * K == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "soft_argmax_cuda", [&] {
    using A = acc_t<scalar_t>;
    soft_argmax_kernel<scalar_t><<<(unsigned)(B * K), kMapThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        hm.data_ptr<scalar_t>(), (int)hm.size(2), (int)hm.size(3), beta, normalize, coords.data_ptr<scalar_t>(),
        probs ? probs->data_ptr<A>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

Tensor soft_argmax_cuda(const Tensor& heatmaps, double beta, bool normalize) {
  check_soft_argmax_args(heatmaps, beta);
  c10::cuda::CUDAGuard guard(heatmaps.device());
  const Tensor hm = heatmaps.contiguous();
  Tensor coords = at::empty({hm.size(0), hm.size(1), 2}, hm.options());
  soft_argmax_launch(hm, beta, normalize, coords, nullptr);
  return coords;
}

std::tuple<Tensor, Tensor> soft_argmax_probs_cuda(const Tensor& heatmaps, double beta, bool normalize) {
  check_soft_argmax_args(heatmaps, beta);
  c10::cuda::CUDAGuard guard(heatmaps.device());
  const Tensor hm = heatmaps.contiguous();
  Tensor coords = at::empty({hm.size(0), hm.size(1), 2}, hm.options());
  Tensor probs = at::empty(hm.sizes(), hm.options().dtype(hm.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  soft_argmax_launch(hm, beta, normalize, coords, &probs);
  return {coords, probs};
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

Tensor soft_argmax_probs_backward_cuda(const Tensor& grad, const Tensor& probs, const Tensor& coords, double beta,
                                       bool normalize) {
  check_soft_argmax_probs_backward_args(grad, probs, coords);
  c10::cuda::CUDAGuard guard(probs.device());
  const Tensor pr = probs.contiguous();
  const Tensor g = grad.to(pr.scalar_type()).contiguous();
  const Tensor cd = coords.to(pr.scalar_type()).contiguous();
  Tensor gin = at::empty(pr.sizes(), pr.options());
  AT_DISPATCH_FLOATING_TYPES(pr.scalar_type(), "soft_argmax_probs_backward_cuda", [&] {
    fastops::cuda::launch_1d(soft_argmax_probs_backward_kernel<scalar_t>, gin.numel(),
                             c10::cuda::getCurrentCUDAStream(), g.data_ptr<scalar_t>(), pr.data_ptr<scalar_t>(),
                             cd.data_ptr<scalar_t>(), gin.numel(), (int)pr.size(2), (int)pr.size(3), beta, normalize,
                             gin.data_ptr<scalar_t>());
  });
  return gin;
}

}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  using namespace fastops::heatmaps;
  m.impl("heatmap_argmax", &heatmap_argmax_cuda);
  m.impl("soft_argmax", &soft_argmax_cuda);
  m.impl("_soft_argmax_backward", &soft_argmax_backward_cuda);
  m.impl("_soft_argmax_probs", &soft_argmax_probs_cuda);
  m.impl("_soft_argmax_probs_backward", &soft_argmax_probs_backward_cuda);
}
