// Instance mask assembly: CUDA launchers (same math as the CPU kernels, from masks.h; schemas and argument checks
// in masks.cpp, launch helpers from cuda_utils.cuh).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>

#include "cuda_utils.cuh"
#include "masks/masks.h"

namespace fastops {
namespace masks {
namespace {

using at::Tensor;
using cuda::kThreads;
using cuda::launch_1d;

constexpr int kChunk = 8;  // P-chunk of the backward accumulators held in registers

// ---- per-detection geometry --------------------------------------------------------------------------------
// yolact_prep: crop rectangles (int32 [N,4]: cx0, cx1, cy0, cy1) and the loss normaliser's box sizes
// (float64 [N,2]: box_w * Wp, box_h * Hp), in the boxes' dtype B. Traffic: 16 B read + 32 B written per box.
template <typename B>
__global__ void yolact_prep_kernel(const B* __restrict__ boxes, int64_t s0, int64_t s1, int64_t N, int64_t Hp,
                                   int64_t Wp, bool crop, int32_t* __restrict__ crops, double* __restrict__ dims) {
  using A = acc_t<B>;
  FASTOPS_KERNEL_LOOP(n, N) {
  const B* b = boxes + n * s0;
  int64_t c[4] = {0, Wp, 0, Hp};
  if (crop) {
    yolact_crop_range<B>(b[0], b[2 * s1], Wp, c[0], c[1]);
    yolact_crop_range<B>(b[s1], b[3 * s1], Hp, c[2], c[3]);
  }
  for (int k = 0; k < 4; ++k) crops[4 * n + k] = static_cast<int32_t>(c[k]);
  if (dims != nullptr) {
    const B w = static_cast<B>(static_cast<A>(b[2 * s1]) - static_cast<A>(b[0]));
    const B h = static_cast<B>(static_cast<A>(b[3 * s1]) - static_cast<A>(b[s1]));
    dims[2 * n] = static_cast<double>(static_cast<B>(static_cast<A>(w) * static_cast<A>(Wp)));
    dims[2 * n + 1] = static_cast<double>(static_cast<B>(static_cast<A>(h) * static_cast<A>(Hp)));
  }
  }
}

void launch_prep(const Tensor& boxes, int64_t Hp, int64_t Wp, bool crop, Tensor& crops, Tensor* dims) {
  const int64_t N = boxes.size(0);
  if (N == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "yolact_prep", [&] {
    launch_1d(yolact_prep_kernel<scalar_t>, N, stream, boxes.data_ptr<scalar_t>(), boxes.stride(0), boxes.stride(1),
              N, Hp, Wp, crop, crops.data_ptr<int32_t>(), dims ? dims->data_ptr<double>() : nullptr);
  });
}

template <typename T, typename A>
__device__ __forceinline__ A tap_prob(const T* __restrict__ pr, int64_t sY, int64_t sX, int64_t sP,
                                      const T* __restrict__ c, int64_t cs, int64_t P, int64_t y, int64_t x) {
  const T* px = pr + y * sY + x * sX;
  A s = A(0);
  for (int64_t p = 0; p < P; ++p) s += static_cast<A>(px[p * sP]) * static_cast<A>(c[p * cs]);
  return sigmoid_<A>(s);
}

// ---- yolact_masks ------------------------------------------------------------------------------------------
// One thread per output pixel of [N, h, w]; pixels whose bilinear taps miss the detection's crop write 0 without
// reading anything, the others evaluate the (up to 4) in-crop taps: a P-long dot product each from the protos
// (L2-resident: 138*138*32*4 B = 2.4 MB), a sigmoid, and the blend.
// Traffic: the output once (N*h*w bytes for bool: 207 MB at 100 x 1080 x 1920 -> ~70 us at H100's ~3.35 TB/s; 30 MB
// at 550x550 -> ~10 us); proto reads hit L2. Compute: 4*P FMAs per in-box pixel (~2.4 GFLOP at 1080p, ~9% in box).
template <typename T, typename O>
__global__ void yolact_masks_kernel(const T* __restrict__ pr, int64_t sY, int64_t sX, int64_t sP,
                                    const T* __restrict__ cf, int64_t cs0, int64_t cs1, const int32_t* __restrict__ crops,
                                    int64_t N, int64_t Hp, int64_t Wp, int64_t P, int64_t out_h, int64_t out_w,
                                    bool thresholded, acc_t<T> thr, O* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t total = N * out_h * out_w;
  const A sy = area_scale<A>(Hp, out_h), sx = area_scale<A>(Wp, out_w);
  FASTOPS_KERNEL_LOOP(idx, total) {
    const int64_t j = idx % out_w;
    const int64_t i = (idx / out_w) % out_h;
    const int64_t n = idx / (out_w * out_h);
    const int32_t cx0 = crops[4 * n], cx1 = crops[4 * n + 1], cy0 = crops[4 * n + 2], cy1 = crops[4 * n + 3];
    const Taps<A> ty = linear_taps<A>(i, sy, Hp);
    const Taps<A> tx = linear_taps<A>(j, sx, Wp);
    const bool y0in = ty.i0 >= cy0 && ty.i0 < cy1, y1in = ty.i1 >= cy0 && ty.i1 < cy1;
    const bool x0in = tx.i0 >= cx0 && tx.i0 < cx1, x1in = tx.i1 >= cx0 && tx.i1 < cx1;
    A v = A(0);
    if ((y0in || y1in) && (x0in || x1in)) {
      const T* c = cf + n * cs0;
      // vertical blend per tap column, then horizontal (the CPU kernel's order)
      A t0 = A(0), t1 = A(0);
      if (x0in) {
        const A a = y0in ? tap_prob<T, A>(pr, sY, sX, sP, c, cs1, P, ty.i0, tx.i0) : A(0);
        const A b = y1in ? tap_prob<T, A>(pr, sY, sX, sP, c, cs1, P, ty.i1, tx.i0) : A(0);
        t0 = y0in && y1in ? a * ty.w0 + b * ty.w1 : (y0in ? a * ty.w0 : b * ty.w1);
      }
      if (x1in) {
        const A a = y0in ? tap_prob<T, A>(pr, sY, sX, sP, c, cs1, P, ty.i0, tx.i1) : A(0);
        const A b = y1in ? tap_prob<T, A>(pr, sY, sX, sP, c, cs1, P, ty.i1, tx.i1) : A(0);
        t1 = y0in && y1in ? a * ty.w0 + b * ty.w1 : (y0in ? a * ty.w0 : b * ty.w1);
      }
      v = t0 * tx.w0 + t1 * tx.w1;
    }
    if constexpr (std::is_same_v<O, bool>) {
      out[idx] = v > thr;
    } else {
      out[idx] = static_cast<O>(v);
    }
  }
}

Tensor yolact_masks_cuda(const Tensor& protos, const Tensor& coeffs, const Tensor& boxes, int64_t out_h,
                         int64_t out_w, bool crop, std::optional<double> threshold) {
  check_yolact_masks_args(protos, coeffs, boxes, out_h, out_w, threshold.has_value());
  c10::cuda::CUDAGuard guard(protos.device());
  const int64_t N = coeffs.size(0), Hp = protos.size(0), Wp = protos.size(1), P = protos.size(2);
  const bool thresholded = threshold.has_value();
  Tensor out = at::empty({N, out_h, out_w}, protos.options().dtype(thresholded ? at::kBool : protos.scalar_type()));
  if (out.numel() == 0) return out;
  Tensor crops = at::empty({N, 4}, protos.options().dtype(at::kInt));
  launch_prep(boxes, Hp, Wp, crop, crops, nullptr);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(), "yolact_masks_cuda", [&] {
    using A = acc_t<scalar_t>;
    const A thr = static_cast<A>(threshold.value_or(0.0));
    if (thresholded) {
      launch_1d(yolact_masks_kernel<scalar_t, bool>, out.numel(), stream, protos.data_ptr<scalar_t>(),
                protos.stride(0), protos.stride(1), protos.stride(2), coeffs.data_ptr<scalar_t>(), coeffs.stride(0),
                coeffs.stride(1), crops.data_ptr<int32_t>(), N, Hp, Wp, P, out_h, out_w, true, thr,
                out.data_ptr<bool>());
    } else {
      launch_1d(yolact_masks_kernel<scalar_t, scalar_t>, out.numel(), stream, protos.data_ptr<scalar_t>(),
                protos.stride(0), protos.stride(1), protos.stride(2), coeffs.data_ptr<scalar_t>(), coeffs.stride(0),
                coeffs.stride(1), crops.data_ptr<int32_t>(), N, Hp, Wp, P, out_h, out_w, false, thr,
                out.data_ptr<scalar_t>());
    }
  });
  return out;
}

// ---- yolact_mask_loss --------------------------------------------------------------------------------------
// Forward: one block per detection; its threads stride over the Hp*Wp plane: BCE(sigmoid(dot)) inside the crop,
// 100 * gt outside (PyTorch's clamped BCE(0, t)); fixed-shape tree reduction (deterministic).
// Traffic: gt once (N*Hp*Wp*4 B = 7.6 MB -> ~2.5 us on H100) + crop-area proto reads from L2; P FMAs per crop pixel.
template <typename T>
__global__ void mask_loss_fwd_kernel(const T* __restrict__ pr, int64_t sY, int64_t sX, int64_t sP,
                                     const T* __restrict__ cf, int64_t cs0, int64_t cs1, const T* __restrict__ gt,
                                     int64_t g0, int64_t g1, int64_t g2, const int32_t* __restrict__ crops,
                                     const double* __restrict__ dims, int64_t Hp, int64_t Wp, int64_t P,
                                     T* __restrict__ loss) {
  using A = acc_t<T>;
  __shared__ A red[kThreads];
  const int64_t n = blockIdx.x;
  const int32_t cx0 = crops[4 * n], cx1 = crops[4 * n + 1], cy0 = crops[4 * n + 2], cy1 = crops[4 * n + 3];
  const T* c = cf + n * cs0;
  A acc = A(0);
  for (int64_t k = threadIdx.x; k < Hp * Wp; k += blockDim.x) {
    const int64_t y = k / Wp, x = k % Wp;
    const A t = static_cast<A>(gt[n * g0 + y * g1 + x * g2]);
    if (y >= cy0 && y < cy1 && x >= cx0 && x < cx1) {
      acc += bce_<A>(tap_prob<T, A>(pr, sY, sX, sP, c, cs1, P, y, x), t);
    } else {
      acc += A(100) * t;
    }
  }
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    loss[n] = static_cast<T>(red[0] / static_cast<A>(dims[2 * n]) / static_cast<A>(dims[2 * n + 1]) *
                             static_cast<A>(Hp * Wp));
  }
}

// d loss[n] / d logit at an in-crop pixel, times the incoming gradient.
template <typename T, typename A>
__device__ __forceinline__ A loss_dlogit(const T* __restrict__ pr, int64_t sY, int64_t sX, int64_t sP,
                                         const T* __restrict__ c, int64_t cs1, int64_t P, A t, A Gn, int64_t y,
                                         int64_t x) {
  return Gn * bce_sigmoid_grad_<A>(tap_prob<T, A>(pr, sY, sX, sP, c, cs1, P, y, x), t);
}

// Backward, grad_coeffs: one block per (detection, chunk of kChunk coefficients); threads stride over the crop,
// recompute the logit (P FMAs) and accumulate kChunk products in registers; fixed tree reduction.
// Traffic: crop-area gt + protos (L2) per chunk; output N*P values. ~(P/kChunk)*2*P FMAs per crop pixel.
template <typename T>
__global__ void mask_loss_bwd_coeffs_kernel(const T* __restrict__ grad, int64_t gs, const T* __restrict__ pr,
                                            int64_t sY, int64_t sX, int64_t sP, const T* __restrict__ cf,
                                            int64_t cs0, int64_t cs1, const T* __restrict__ gt, int64_t g0,
                                            int64_t g1, int64_t g2, const int32_t* __restrict__ crops,
                                            const double* __restrict__ dims, int64_t Hp, int64_t Wp, int64_t P,
                                            T* __restrict__ gcoeffs) {
  using A = acc_t<T>;
  __shared__ A red[kChunk][kThreads];
  const int64_t n = blockIdx.x;
  const int64_t p0 = static_cast<int64_t>(blockIdx.y) * kChunk;
  const int32_t cx0 = crops[4 * n], cx1 = crops[4 * n + 1], cy0 = crops[4 * n + 2], cy1 = crops[4 * n + 3];
  const int64_t cw = cx1 > cx0 ? cx1 - cx0 : 0, ch = cy1 > cy0 ? cy1 - cy0 : 0;
  const A Gn = static_cast<A>(grad[n * gs]) / static_cast<A>(dims[2 * n]) / static_cast<A>(dims[2 * n + 1]) *
               static_cast<A>(Hp * Wp);
  const T* c = cf + n * cs0;
  A acc[kChunk];
#pragma unroll
  for (int q = 0; q < kChunk; ++q) acc[q] = A(0);
  for (int64_t k = threadIdx.x; k < cw * ch; k += blockDim.x) {
    const int64_t y = cy0 + k / cw, x = cx0 + k % cw;
    const A d = loss_dlogit<T, A>(pr, sY, sX, sP, c, cs1, P, static_cast<A>(gt[n * g0 + y * g1 + x * g2]), Gn, y, x);
    const T* px = pr + y * sY + x * sX;
#pragma unroll
    for (int q = 0; q < kChunk; ++q) {
      if (p0 + q < P) acc[q] += d * static_cast<A>(px[(p0 + q) * sP]);
    }
  }
#pragma unroll
  for (int q = 0; q < kChunk; ++q) red[q][threadIdx.x] = acc[q];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
#pragma unroll
      for (int q = 0; q < kChunk; ++q) red[q][threadIdx.x] += red[q][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x < kChunk && p0 + threadIdx.x < P) gcoeffs[n * P + p0 + threadIdx.x] = static_cast<T>(red[threadIdx.x][0]);
}

// Backward, grad_protos: one thread per (proto pixel, chunk of kChunk channels); loops over the detections in
// order (deterministic), recomputing the logit of those whose crop holds the pixel.
// Traffic: writes Hp*Wp*P values once (2.4 MB); reads gt at crop pixels and coeffs (L1/L2). N*(P + kChunk) FMAs
// per (pixel, chunk) at most: ~0.3 GFLOP for 100 full-image detections -> tens of microseconds on H100.
template <typename T>
__global__ void mask_loss_bwd_protos_kernel(const T* __restrict__ grad, int64_t gs, const T* __restrict__ pr,
                                            int64_t sY, int64_t sX, int64_t sP, const T* __restrict__ cf,
                                            int64_t cs0, int64_t cs1, const T* __restrict__ gt, int64_t g0,
                                            int64_t g1, int64_t g2, const int32_t* __restrict__ crops,
                                            const double* __restrict__ dims, int64_t N, int64_t Hp, int64_t Wp,
                                            int64_t P, T* __restrict__ gprotos) {
  using A = acc_t<T>;
  const int64_t chunks = (P + kChunk - 1) / kChunk;
  const int64_t total = Hp * Wp * chunks;
  FASTOPS_KERNEL_LOOP(idx, total) {
    const int64_t ck = idx % chunks;
    const int64_t pix = idx / chunks;
    const int64_t y = pix / Wp, x = pix % Wp;
    const int64_t p0 = ck * kChunk;
    A acc[kChunk];
#pragma unroll
    for (int q = 0; q < kChunk; ++q) acc[q] = A(0);
    for (int64_t n = 0; n < N; ++n) {
      const int32_t cx0 = crops[4 * n], cx1 = crops[4 * n + 1], cy0 = crops[4 * n + 2], cy1 = crops[4 * n + 3];
      if (!(y >= cy0 && y < cy1 && x >= cx0 && x < cx1)) continue;
      const A Gn = static_cast<A>(grad[n * gs]) / static_cast<A>(dims[2 * n]) / static_cast<A>(dims[2 * n + 1]) *
                   static_cast<A>(Hp * Wp);
      const T* c = cf + n * cs0;
      const A d = loss_dlogit<T, A>(pr, sY, sX, sP, c, cs1, P, static_cast<A>(gt[n * g0 + y * g1 + x * g2]), Gn, y, x);
#pragma unroll
      for (int q = 0; q < kChunk; ++q) {
        if (p0 + q < P) acc[q] += d * static_cast<A>(c[(p0 + q) * cs1]);
      }
    }
#pragma unroll
    for (int q = 0; q < kChunk; ++q) {
      if (p0 + q < P) gprotos[pix * P + p0 + q] = static_cast<T>(acc[q]);
    }
  }
}

Tensor yolact_mask_loss_cuda(const Tensor& protos, const Tensor& coeffs, const Tensor& boxes, const Tensor& gt) {
  check_loss_args(protos, coeffs, boxes, gt);
  c10::cuda::CUDAGuard guard(protos.device());
  const int64_t N = coeffs.size(0), Hp = protos.size(0), Wp = protos.size(1), P = protos.size(2);
  Tensor loss = at::empty({N}, protos.options());
  if (N == 0) return loss;
  Tensor crops = at::empty({N, 4}, protos.options().dtype(at::kInt));
  Tensor dims = at::empty({N, 2}, protos.options().dtype(at::kDouble));
  launch_prep(boxes, Hp, Wp, true, crops, &dims);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(), "yolact_mask_loss_cuda", [&] {
    mask_loss_fwd_kernel<scalar_t><<<N, kThreads, 0, stream>>>(
        protos.data_ptr<scalar_t>(), protos.stride(0), protos.stride(1), protos.stride(2),
        coeffs.data_ptr<scalar_t>(), coeffs.stride(0), coeffs.stride(1), gt.data_ptr<scalar_t>(), gt.stride(0),
        gt.stride(1), gt.stride(2), crops.data_ptr<int32_t>(), dims.data_ptr<double>(), Hp, Wp, P,
        loss.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return loss;
}

std::tuple<Tensor, Tensor> yolact_mask_loss_backward_cuda(const Tensor& grad, const Tensor& protos,
                                                          const Tensor& coeffs, const Tensor& boxes,
                                                          const Tensor& gt) {
  check_loss_backward_args(grad, protos, coeffs, boxes, gt);
  c10::cuda::CUDAGuard guard(protos.device());
  const int64_t N = coeffs.size(0), Hp = protos.size(0), Wp = protos.size(1), P = protos.size(2);
  Tensor gprotos = at::zeros({Hp, Wp, P}, protos.options());
  Tensor gcoeffs = at::zeros({N, P}, protos.options());
  if (N == 0 || P == 0) return {gprotos, gcoeffs};
  const Tensor g = grad.scalar_type() == protos.scalar_type() ? grad : grad.to(protos.scalar_type());
  Tensor crops = at::empty({N, 4}, protos.options().dtype(at::kInt));
  Tensor dims = at::empty({N, 2}, protos.options().dtype(at::kDouble));
  launch_prep(boxes, Hp, Wp, true, crops, &dims);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t chunks = (P + kChunk - 1) / kChunk;
  TORCH_CHECK(chunks <= 65535, "yolact_mask_loss backward: too many prototypes (", P, ")");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(), "yolact_mask_loss_bwd_cuda", [&] {
    mask_loss_bwd_coeffs_kernel<scalar_t><<<dim3(N, chunks), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), g.stride(0), protos.data_ptr<scalar_t>(), protos.stride(0), protos.stride(1),
        protos.stride(2), coeffs.data_ptr<scalar_t>(), coeffs.stride(0), coeffs.stride(1), gt.data_ptr<scalar_t>(),
        gt.stride(0), gt.stride(1), gt.stride(2), crops.data_ptr<int32_t>(), dims.data_ptr<double>(), Hp, Wp, P,
        gcoeffs.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_1d(mask_loss_bwd_protos_kernel<scalar_t>, Hp * Wp * chunks, stream, g.data_ptr<scalar_t>(), g.stride(0),
              protos.data_ptr<scalar_t>(), protos.stride(0), protos.stride(1), protos.stride(2),
              coeffs.data_ptr<scalar_t>(), coeffs.stride(0), coeffs.stride(1), gt.data_ptr<scalar_t>(), gt.stride(0),
              gt.stride(1), gt.stride(2), crops.data_ptr<int32_t>(), dims.data_ptr<double>(), N, Hp, Wp, P,
              gprotos.data_ptr<scalar_t>());
  });
  return {gprotos, gcoeffs};
}

// ---- paste_masks -------------------------------------------------------------------------------------------
// paste_prep: torchvision's expanded, int64-truncated box and its visible window per mask (int64 [N, 8]).
// Traffic: 16 B read + 64 B written per box (negligible: launch-bound).
template <typename B>
__global__ void paste_prep_kernel(const B* __restrict__ boxes, int64_t s0, int64_t s1, int64_t N, acc_t<B> scale,
                                  int64_t H, int64_t W, int64_t* __restrict__ geo) {
  FASTOPS_KERNEL_LOOP(n, N) {
  B bb[4];
  for (int k = 0; k < 4; ++k) bb[k] = boxes[n * s0 + k * s1];
  int64_t e[4];
  bool valid;
  paste_expand_box<B>(bb, scale, e, valid);
  const PasteGeom g = paste_geometry(e, valid, H, W);
  int64_t* o = geo + 8 * n;
  o[0] = g.x0, o[1] = g.y0, o[2] = g.bw, o[3] = g.bh, o[4] = g.xa, o[5] = g.xb, o[6] = g.ya, o[7] = g.yb;
  }
}

// One thread per output pixel of [N, 1, H, W]: outside the box's visible window it writes 0, inside it blends
// the 4 bilinear taps of the zero-padded mask (taps in the padding read nothing).
// Traffic: the output once (100 x 800 x 1216 float = 389 MB -> ~130 us at ~3.35 TB/s; 97 MB as bool); masks read
// from L2 (100 x 28 x 28 x 4 B = 0.3 MB).
template <typename T, typename O>
__global__ void paste_kernel(const T* __restrict__ masks, int64_t m0, int64_t m1, int64_t m2, int64_t Mh,
                             int64_t Mw, int64_t padding, const int64_t* __restrict__ geo, int64_t N, int64_t H,
                             int64_t W, bool thresholded, acc_t<T> thr, O* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t total = N * H * W;
  const int64_t Ph = Mh + 2 * padding, Pw = Mw + 2 * padding;
  FASTOPS_KERNEL_LOOP(idx, total) {
    const int64_t x = idx % W;
    const int64_t y = (idx / W) % H;
    const int64_t n = idx / (W * H);
    const int64_t* g = geo + 8 * n;
    A v = A(0);
    if (x >= g[4] && x < g[5] && y >= g[6] && y < g[7]) {
      const Taps<A> ty = linear_taps<A>(y - g[1], area_scale<A>(Ph, g[3]), Ph);
      const Taps<A> tx = linear_taps<A>(x - g[0], area_scale<A>(Pw, g[2]), Pw);
      const T* mn = masks + n * m0;
      auto at = [&](int64_t r, int64_t c) -> A {
        r -= padding;
        c -= padding;
        return (r >= 0 && r < Mh && c >= 0 && c < Mw) ? static_cast<A>(mn[r * m1 + c * m2]) : A(0);
      };
      const A t0 = at(ty.i0, tx.i0) * ty.w0 + at(ty.i1, tx.i0) * ty.w1;
      const A t1 = at(ty.i0, tx.i1) * ty.w0 + at(ty.i1, tx.i1) * ty.w1;
      v = t0 * tx.w0 + t1 * tx.w1;
    }
    if constexpr (std::is_same_v<O, bool>) {
      out[idx] = v > thr;
    } else {
      out[idx] = static_cast<O>(v);
    }
  }
}

Tensor paste_masks_cuda(const Tensor& masks, const Tensor& boxes, int64_t H, int64_t W, int64_t padding,
                        std::optional<double> threshold) {
  check_paste_args(masks, boxes, H, W, padding, threshold.has_value());
  c10::cuda::CUDAGuard guard(masks.device());
  const int64_t N = masks.size(0);
  const bool thresholded = threshold.has_value();
  Tensor out = at::empty({N, 1, H, W}, masks.options().dtype(thresholded ? at::kBool : masks.scalar_type()));
  if (out.numel() == 0) return out;
  Tensor geo = at::empty({N, 8}, masks.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const double scale = static_cast<double>(masks.size(2) + 2 * padding) / static_cast<double>(masks.size(2));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "paste_prep", [&] {
    launch_1d(paste_prep_kernel<scalar_t>, N, stream, boxes.data_ptr<scalar_t>(), boxes.stride(0), boxes.stride(1), N,
              static_cast<acc_t<scalar_t>>(scale), H, W, geo.data_ptr<int64_t>());
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_cuda", [&] {
    using A = acc_t<scalar_t>;
    const A thr = static_cast<A>(threshold.value_or(0.0));
    if (thresholded) {
      launch_1d(paste_kernel<scalar_t, bool>, out.numel(), stream, masks.data_ptr<scalar_t>(), masks.stride(0),
                masks.stride(1), masks.stride(2), masks.size(1), masks.size(2), padding, geo.data_ptr<int64_t>(), N,
                H, W, true, thr, out.data_ptr<bool>());
    } else {
      launch_1d(paste_kernel<scalar_t, scalar_t>, out.numel(), stream, masks.data_ptr<scalar_t>(), masks.stride(0),
                masks.stride(1), masks.stride(2), masks.size(1), masks.size(2), padding, geo.data_ptr<int64_t>(), N,
                H, W, false, thr, out.data_ptr<scalar_t>());
    }
  });
  return out;
}

}  // namespace
}  // namespace masks
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("yolact_masks", &fastops::masks::yolact_masks_cuda);
  m.impl("yolact_mask_loss", &fastops::masks::yolact_mask_loss_cuda);
  m.impl("_yolact_mask_loss_backward", &fastops::masks::yolact_mask_loss_backward_cuda);
  m.impl("paste_masks", &fastops::masks::paste_masks_cuda);
}
