// DensePose: CUDA kernels (thin launchers around densepose.h, shared with the CPU kernels).
//
// Traffic figures are for docs/densepose.md's workloads in float32; H100 means ~3.35 TB/s of HBM bandwidth.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "densepose/densepose.h"

namespace fastops {
namespace densepose {
namespace {

using at::Tensor;

// Interpolated value of channel plane `p` at the taps (ATen's order, fused as nvcc fuses).
template <typename T, typename A>
__device__ __forceinline__ A sample(const T* __restrict__ p, int Sw, const Tap<A>& ty, const Tap<A>& tx) {
  const int64_t r0 = (int64_t)ty.i0 * Sw, r1 = (int64_t)ty.i1 * Sw;
  return (A)(T)bilerp<true, A>((A)p[r0 + tx.i0], (A)p[r0 + tx.i1], (A)p[r1 + tx.i0], (A)p[r1 + tx.i1], tx.l0,
                               tx.l1, ty.l0, ty.l1);
}

// Label, U, V of pixel (py, px) of a detection's int box (w x h): argmaxes over the channels as they are formed.
template <typename T>
__device__ __forceinline__ uint8_t pixel_iuv(const T* __restrict__ coarse, const T* __restrict__ fine,
                                             const T* __restrict__ u, const T* __restrict__ v, int Kc, int K, int Sh,
                                             int Sw, int w, int h, int py, int px, float& uo, float& vo) {
  using A = acc_t<T>;
  const Tap<A> ty = resize_tap<true, A>(py, Sh, h), tx = resize_tap<true, A>(px, Sw, w);
  const int64_t plane = (int64_t)Sh * Sw;
  A best = sample<T, A>(coarse, Sw, ty, tx);
  int arg = 0;
  for (int c = 1; c < Kc; ++c) {
    const A s = sample<T, A>(coarse + c * plane, Sw, ty, tx);
    if (argmax_takes(s, best)) best = s, arg = c;
  }
  uo = vo = 0.f;
  if (arg == 0) return 0;
  best = sample<T, A>(fine, Sw, ty, tx);
  arg = 0;
  for (int c = 1; c < K; ++c) {
    const A s = sample<T, A>(fine + c * plane, Sw, ty, tx);
    if (argmax_takes(s, best)) best = s, arg = c;
  }
  if (arg == 0) return 0;
  uo = (float)sample<T, A>(u + arg * plane, Sw, ty, tx);
  vo = (float)sample<T, A>(v + arg * plane, Sw, ty, tx);
  return (uint8_t)arg;
}

// One thread per output pixel of the packed buffer; its detection by binary search in offsets. Traffic: the four
// taps of Kc + K + 2 channels per pixel come from L1/L2 (a detection's maps, 2 x 25 x 112^2 x 4 B = 2.5 MB, are
// read from HBM once); writes 9 B per pixel: 100 boxes of ~200^2 px -> ~36 MB written, ~11 us on H100 (the L2
// gathers, ~2 x 27 x 4 loads per pixel, dominate: compute-bound around ~100 us).
template <typename T>
__global__ void chart_kernel(int64_t N, int64_t R, const int64_t* __restrict__ offsets,
                             const int64_t* __restrict__ ib, const T* __restrict__ coarse, const T* __restrict__ fine,
                             const T* __restrict__ u, const T* __restrict__ v, int Kc, int K, int Sh, int Sw,
                             uint8_t* __restrict__ labels, float* __restrict__ uv) {
  FASTOPS_KERNEL_LOOP(i, N) {
    int64_t lo = 0, hi = R - 1;  // last r with offsets[r] <= i
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (offsets[mid] <= i) lo = mid; else hi = mid - 1;
    }
    const int64_t r = lo, q = i - offsets[r];
    const int w = (int)ib[r * 4 + 2], h = (int)ib[r * 4 + 3];
    const int64_t plane = (int64_t)Sh * Sw;
    float uo, vo;
    labels[i] = pixel_iuv<T>(coarse + r * Kc * plane, fine + r * K * plane, u + r * K * plane, v + r * K * plane,
                             Kc, K, Sh, Sw, w, h, (int)(q / w), (int)(q % w), uo, vo);
    float* o = uv + 2 * offsets[r] + q;
    o[0] = uo;
    o[(int64_t)w * h] = vo;
  }
}

// One thread per image pixel: every detection whose box covers it, in index order; the highest score among those
// with a foreground label wins (ties: the lower index). Traffic: 3 B written per image pixel plus the taps of the
// covering detections (L2-resident maps): a 1333 x 800 image is 3.2 MB written (~1 us on H100) + gathers.
template <typename T>
__global__ void paste_kernel(int64_t HW, int W, int64_t R, const int64_t* __restrict__ ib,
                             const double* __restrict__ scores, const T* __restrict__ coarse,
                             const T* __restrict__ fine, const T* __restrict__ u, const T* __restrict__ v, int Kc,
                             int K, int Sh, int Sw, uint8_t* __restrict__ out) {
  FASTOPS_KERNEL_LOOP(i, HW) {
    const int y = (int)(i / W), x = (int)(i % W);
    const int64_t plane = (int64_t)Sh * Sw;
    bool taken = false;
    double best = 0.0;
    uint8_t bl = 0;
    float bu = 0.f, bv = 0.f;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t bx = ib[r * 4], by = ib[r * 4 + 1], w = ib[r * 4 + 2], h = ib[r * 4 + 3];
      if (x < bx || x >= bx + w || y < by || y >= by + h) continue;
      if (taken && !(scores[r] > best)) continue;
      float uo, vo;
      const uint8_t l = pixel_iuv<T>(coarse + r * Kc * plane, fine + r * K * plane, u + r * K * plane,
                                     v + r * K * plane, Kc, K, Sh, Sw, (int)w, (int)h, (int)(y - by), (int)(x - bx),
                                     uo, vo);
      if (l == 0) continue;
      taken = true;
      best = scores[r];
      bl = l, bu = uo, bv = vo;
    }
    out[i] = bl;
    out[HW + i] = quantize_uv(bu);
    out[2 * HW + i] = quantize_uv(bv);
  }
}

// One thread per (point, channel): 4 gathered reads, 1 write. 64 RoIs x 196 points x 25 channels: 1.25 MB written
// (<1 us on H100; launch-bound).
template <typename T>
__global__ void point_fwd_kernel(int64_t total, int64_t C, int Sh, int Sw, const T* __restrict__ maps,
                                 const int64_t* __restrict__ ri, const T* __restrict__ pts, T* __restrict__ out) {
  using A = acc_t<T>;
  FASTOPS_KERNEL_LOOP(i, total) {
    const int64_t p = i / C, c = i % C;
    const PointTaps<T> t = point_taps<T>((A)pts[2 * p], (A)pts[2 * p + 1], Sh, Sw);
    out[i] = sample_point(maps + (ri[p] * C + c) * (int64_t)Sh * Sw, t);
  }
}

// Deterministic backward: one thread per (RoI, channel) owns that plane of the gradient and adds its RoI's points
// in point order (order / start: a stable sort by roi_index). No atomics. Traffic: grad [R, C, S, S] written once
// (64 x 25 x 112^2 x 4 B = 80 MB, ~24 us on H100) plus P x C x 4 read-modify-writes from L1/L2.
template <typename T>
__global__ void point_bwd_kernel(int64_t total, int64_t C, int Sh, int Sw, const T* __restrict__ grad,
                                 const int64_t* __restrict__ order, const int64_t* __restrict__ start,
                                 const T* __restrict__ pts, acc_t<T>* __restrict__ gmaps) {
  using A = acc_t<T>;
  FASTOPS_KERNEL_LOOP(i, total) {
    const int64_t r = i / C, c = i % C;
    A* g = gmaps + i * (int64_t)Sh * Sw;
    for (int64_t k = start[r]; k < start[r + 1]; ++k) {
      const int64_t p = order[k];
      add_point_grad(g, point_taps<T>((A)pts[2 * p], (A)pts[2 * p + 1], Sh, Sw), (A)grad[p * C + c]);
    }
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> chart_to_iuv_cuda(const Tensor& coarse_, const Tensor& fine_,
                                                             const Tensor& u_, const Tensor& v_, const Tensor& boxes) {
  c10::cuda::CUDAGuard guard(fine_.device());
  const Tensor ib_cpu = check_chart_args(coarse_, fine_, u_, v_, boxes, "densepose_chart_to_iuv");
  const int64_t R = fine_.size(0);
  Tensor offs_cpu = at::zeros({R + 1}, ib_cpu.options());
  if (R > 0) offs_cpu.narrow(0, 1, R).copy_((ib_cpu.select(1, 2) * ib_cpu.select(1, 3)).cumsum(0));
  const int64_t N = offs_cpu[R].item<int64_t>();
  const Tensor ib = ib_cpu.to(fine_.device()), offsets = offs_cpu.to(fine_.device());
  Tensor labels = at::empty({N}, fine_.options().dtype(at::kByte));
  Tensor uv = at::empty({2 * N}, fine_.options().dtype(at::kFloat));
  if (N == 0) return {labels, uv, offsets, ib};
  const Tensor coarse = coarse_.contiguous(), fine = fine_.contiguous(), u = u_.contiguous(), v = v_.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fine.scalar_type(), "densepose_chart_to_iuv", [&] {
    fastops::cuda::launch_1d(chart_kernel<scalar_t>, N, stream, N, R, offsets.data_ptr<int64_t>(),
                             ib.data_ptr<int64_t>(), coarse.data_ptr<scalar_t>(), fine.data_ptr<scalar_t>(),
                             u.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), (int)coarse.size(1), (int)fine.size(1),
                             (int)fine.size(2), (int)fine.size(3), labels.data_ptr<uint8_t>(), uv.data_ptr<float>());
  });
  return {labels, uv, offsets, ib};
}

Tensor paste_iuv_cuda(const Tensor& coarse_, const Tensor& fine_, const Tensor& u_, const Tensor& v_,
                      const Tensor& boxes, const Tensor& scores_, int64_t height, int64_t width) {
  c10::cuda::CUDAGuard guard(fine_.device());
  const Tensor ib_cpu = check_chart_args(coarse_, fine_, u_, v_, boxes, "densepose_paste_iuv");
  const int64_t R = fine_.size(0);
  TORCH_CHECK(scores_.dim() == 1 && scores_.size(0) == R, "densepose_paste_iuv: scores must be [R], got ",
              scores_.sizes());
  TORCH_CHECK(height >= 0 && width >= 0 && height <= kMaxBoxSide * 4 && width <= kMaxBoxSide * 4,
              "densepose_paste_iuv: height and width must be in [0, 2^18], got ", height, ", ", width);
  const Tensor scores = scores_.to(at::kDouble).contiguous();
  TORCH_CHECK(!at::isnan(scores).any().item<bool>(), "densepose_paste_iuv: scores must not be NaN");
  Tensor out = at::zeros({3, height, width}, fine_.options().dtype(at::kByte));
  const int64_t HW = height * width;
  if (HW == 0 || R == 0) return out;
  const Tensor ib = ib_cpu.to(fine_.device());
  const Tensor coarse = coarse_.contiguous(), fine = fine_.contiguous(), u = u_.contiguous(), v = v_.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fine.scalar_type(), "densepose_paste_iuv", [&] {
    fastops::cuda::launch_1d(paste_kernel<scalar_t>, HW, stream, HW, (int)width, R, ib.data_ptr<int64_t>(),
                             scores.data_ptr<double>(), coarse.data_ptr<scalar_t>(), fine.data_ptr<scalar_t>(),
                             u.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), (int)coarse.size(1), (int)fine.size(1),
                             (int)fine.size(2), (int)fine.size(3), out.data_ptr<uint8_t>());
  });
  return out;
}

Tensor roi_point_sample_cuda(const Tensor& maps_, const Tensor& ri_, const Tensor& points_) {
  c10::cuda::CUDAGuard guard(maps_.device());
  check_point_args(maps_, ri_, points_, true);
  const Tensor maps = maps_.contiguous(), ri = ri_.contiguous();
  const Tensor pts = points_.to(maps.scalar_type()).contiguous();
  const int64_t P = ri.size(0), C = maps.size(1);
  Tensor out = at::empty({P, C}, maps.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps.scalar_type(), "roi_point_sample", [&] {
    fastops::cuda::launch_1d(point_fwd_kernel<scalar_t>, P * C, stream, P * C, C, (int)maps.size(2),
                             (int)maps.size(3), maps.data_ptr<scalar_t>(), ri.data_ptr<int64_t>(),
                             pts.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

Tensor roi_point_sample_backward_cuda(const Tensor& grad_, const Tensor& maps, const Tensor& ri_,
                                      const Tensor& points_) {
  c10::cuda::CUDAGuard guard(maps.device());
  check_point_args(maps, ri_, points_, true);
  const int64_t P = ri_.size(0), C = maps.size(1), R = maps.size(0);
  TORCH_CHECK(grad_.dim() == 2 && grad_.size(0) == P && grad_.size(1) == C,
              "_roi_point_sample_backward: grad must be [P, C], got ", grad_.sizes());
  const Tensor grad = grad_.to(maps.scalar_type()).contiguous();
  const Tensor pts = points_.to(maps.scalar_type()).contiguous();
  const at::ScalarType acc = maps.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor gacc = at::zeros(maps.sizes(), maps.options().dtype(acc));
  if (P * C == 0 || R == 0) return gacc.to(maps.scalar_type());
  const Tensor order = std::get<1>(at::sort(ri_, /*stable=*/true, 0, false)).contiguous();
  Tensor start = at::zeros({R + 1}, ri_.options());
  start.narrow(0, 1, R).copy_(at::bincount(ri_, {}, R).cumsum(0));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps.scalar_type(), "roi_point_sample_backward", [&] {
    fastops::cuda::launch_1d(point_bwd_kernel<scalar_t>, R * C, stream, R * C, C, (int)maps.size(2),
                             (int)maps.size(3), grad.data_ptr<scalar_t>(), order.data_ptr<int64_t>(),
                             start.data_ptr<int64_t>(), pts.data_ptr<scalar_t>(), gacc.data_ptr<acc_t<scalar_t>>());
  });
  return gacc.to(maps.scalar_type());
}

}  // namespace
}  // namespace densepose
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  using namespace fastops::densepose;
  m.impl("densepose_chart_to_iuv", &chart_to_iuv_cuda);
  m.impl("densepose_paste_iuv", &paste_iuv_cuda);
  m.impl("roi_point_sample", &roi_point_sample_cuda);
  m.impl("_roi_point_sample_backward", &roi_point_sample_backward_cuda);
}
