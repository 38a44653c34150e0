// Corner pooling: CUDA kernels (thin launchers around corner_pool.h, shared with the CPU kernels).
//
// Traffic figures are for docs/heatmaps.md's workloads in float32; H100 means ~3.35 TB/s of HBM bandwidth. At
// these sizes (a few MB) every kernel is launch-bound (~3-5 us per launch) long before it is bandwidth-bound.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "corner_pool/corner_pool.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

// Scan line l of a contiguous [planes, H, W] map: its first element (in memory order), stride and length.
// top/bottom scan columns (lines = planes * W), left/right scan rows (lines = planes * H).
struct ScanLine {
  int64_t base, step;
  int len;
};

__device__ inline ScanLine scan_line(int64_t l, int H, int W, int mode) {
  if (mode == kTop || mode == kBottom) return {(l / W) * (int64_t)H * W + (l % W), W, H};
  return {l * (int64_t)W, 1, W};
}

int64_t scan_lines(const Tensor& in, int mode) {
  return in.size(0) * in.size(1) * ((mode == kTop || mode == kBottom) ? in.size(3) : in.size(2));
}

// Forward: one thread per scan line (scan_max: NaN propagates from the first NaN on). top/bottom: a thread per
// (plane, column), consecutive threads read consecutive columns (coalesced); left/right: a thread per (plane,
// row), strided by W between threads (each thread walks its own row; L1 absorbs the sector waste for W >= 32).
// Traffic: input read once, output written once: 2 x 8.4 MB for [1,128,128,128] (~5 us at H100's 3.35 TB/s).
template <typename T>
__global__ void corner_pool_kernel(int64_t lines, const T* __restrict__ in, T* __restrict__ out, int H, int W,
                                   int mode) {
  using A = acc_t<T>;
  FASTOPS_KERNEL_LOOP(l, lines) {
    const ScanLine sl = scan_line(l, H, W, mode);
    const int64_t base = sl.base, step = sl.step;
    const int len = sl.len;
    const bool rev = mode == kTop || mode == kLeft;
    int64_t pos = base + (rev ? (int64_t)(len - 1) * step : 0);
    const int64_t d = rev ? -step : step;
    A mx = (A)in[pos];
    out[pos] = in[pos];
    for (int t = 1; t < len; ++t) {
      pos += d;
      mx = scan_max(mx, (A)in[pos]);
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
  FASTOPS_KERNEL_LOOP(l, lines) {
    const ScanLine sl = scan_line(l, H, W, mode);
    const int64_t base = sl.base, step = sl.step;
    const int len = sl.len;
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
        rec = is_record((A)in[pos], (A)out[prev]);
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
  const int64_t lines = scan_lines(in, mode);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool_cuda", [&] {
    fastops::cuda::launch_1d(corner_pool_kernel<scalar_t>, lines, c10::cuda::getCurrentCUDAStream(),
        lines, in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), H, W, mode);
  });
  return out;
}

Tensor corner_pool_backward_cuda(const Tensor& grad, const Tensor& input, const Tensor& output,
                                 c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_backward_args(grad, input, output);
  c10::cuda::CUDAGuard guard(input.device());
  const Tensor in = input.contiguous(), ou = output.contiguous();
  const Tensor g = grad.to(in.scalar_type()).contiguous();
  Tensor gin = at::empty_like(in, at::MemoryFormat::Contiguous);
  if (gin.numel() == 0) return gin;
  const int H = (int)in.size(2), W = (int)in.size(3);
  const int64_t lines = scan_lines(in, mode);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool_backward_cuda", [&] {
    fastops::cuda::launch_1d(corner_pool_backward_kernel<scalar_t>, lines, c10::cuda::getCurrentCUDAStream(),
        lines, g.data_ptr<scalar_t>(), in.data_ptr<scalar_t>(), ou.data_ptr<scalar_t>(), gin.data_ptr<scalar_t>(), H,
        W, mode);
  });
  return gin;
}

// The autograd path (`_corner_pool_masked`): one thread per 8 scan lines that share the bytes of the record mask
// (corner_pool.h pool_mask_shape): top/bottom 8 adjacent columns (one 32-byte piece of each row per step),
// left/right 8 rows of a row group. Lane k of the thread is bit k of its mask bytes. Traffic: forward as
// corner_pool_kernel plus the mask (1/32 of the map); backward the gradient read and written once plus the mask:
// 2 x 8.4 MB + 0.26 MB for [1,128,128,128] (~5 us on H100) instead of 4 x 8.4 MB.
struct Lanes8 {
  int64_t base, lane, step, mbase, mstep;  // element (lane k, scan position i) at base + k * lane + i * step
  int n, len;                              // lanes (<= 8), scan length
};

__device__ inline Lanes8 lanes8(int64_t l, int H, int W, int mode) {
  if (mode == kTop || mode == kBottom) {
    const int64_t mw = (W + 7) / 8, p = l / mw, k = l % mw;
    return {p * H * W + 8 * k, 1, W, p * H * mw + k, mw, (int)min((int64_t)8, W - 8 * k), H};
  }
  const int64_t mh = (H + 7) / 8, p = l / mh, k = l % mh;
  return {p * H * W + 8 * k * W, W, 1, (p * mh + k) * W, 1, (int)min((int64_t)8, H - 8 * k), W};
}

template <typename T>
__global__ void corner_pool_masked_kernel(int64_t groups, const T* __restrict__ in, T* __restrict__ out,
                                          uint8_t* __restrict__ mask, int H, int W, int mode) {
  using A = acc_t<T>;
  FASTOPS_KERNEL_LOOP(l, groups) {
    const Lanes8 g = lanes8(l, H, W, mode);
    const bool rev = mode == kTop || mode == kLeft;
    A mx[8];
    for (int t = 0; t < g.len; ++t) {
      const int64_t i = rev ? g.len - 1 - t : t;
      unsigned bits = 0;
      for (int k = 0; k < g.n; ++k) {
        const int64_t pos = g.base + k * g.lane + i * g.step;
        const A v = (A)in[pos];
        const bool rec = t == 0 || is_record(v, mx[k]);
        if (rec) mx[k] = v;
        bits |= (unsigned)rec << k;
        out[pos] = (T)mx[k];
      }
      mask[g.mbase + i * g.mstep] = (uint8_t)bits;
    }
  }
}

template <typename T>
__global__ void corner_pool_masked_backward_kernel(int64_t groups, const T* __restrict__ grad,
                                                   const uint8_t* __restrict__ mask, T* __restrict__ gin, int H,
                                                   int W, int mode) {
  using A = acc_t<T>;
  FASTOPS_KERNEL_LOOP(l, groups) {
    const Lanes8 g = lanes8(l, H, W, mode);
    const bool rev = mode == kTop || mode == kLeft;
    A acc[8] = {A(0), A(0), A(0), A(0), A(0), A(0), A(0), A(0)};
    for (int t = g.len - 1; t >= 0; --t) {  // against the scan
      const int64_t i = rev ? g.len - 1 - t : t;
      const unsigned bits = mask[g.mbase + i * g.mstep];
      for (int k = 0; k < g.n; ++k) {
        const int64_t pos = g.base + k * g.lane + i * g.step;
        const A s = acc[k] + (A)grad[pos];
        const bool rec = (bits >> k) & 1u;
        gin[pos] = (T)(rec ? s : A(0));
        acc[k] = rec ? A(0) : s;
      }
    }
  }
}

int64_t mask_groups(const Tensor& mask, int mode) {
  return mask.size(0) * mask.size(1) * ((mode == kTop || mode == kBottom) ? mask.size(3) : mask.size(2));
}

std::tuple<Tensor, Tensor> corner_pool_masked_cuda(const Tensor& input, c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_args(input);
  c10::cuda::CUDAGuard guard(input.device());
  const Tensor in = input.contiguous();
  Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  Tensor mask = at::empty(pool_mask_shape(in.sizes(), mode), in.options().dtype(at::kByte));
  if (out.numel() == 0) return {out, mask.zero_()};
  const int H = (int)in.size(2), W = (int)in.size(3);
  const int64_t groups = mask_groups(mask, mode);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool_masked_cuda", [&] {
    fastops::cuda::launch_1d(corner_pool_masked_kernel<scalar_t>, groups, c10::cuda::getCurrentCUDAStream(), groups,
        in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), mask.data_ptr<uint8_t>(), H, W, mode);
  });
  return {out, mask};
}

Tensor corner_pool_masked_backward_cuda(const Tensor& grad, const Tensor& mask, c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_masked_backward_args(grad, mask, mode);
  c10::cuda::CUDAGuard guard(grad.device());
  const Tensor g = grad.contiguous(), mk = mask.contiguous();
  Tensor gin = at::empty_like(g, at::MemoryFormat::Contiguous);
  if (gin.numel() == 0) return gin;
  const int H = (int)g.size(2), W = (int)g.size(3);
  const int64_t groups = mask_groups(mk, mode);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "corner_pool_masked_backward_cuda", [&] {
    fastops::cuda::launch_1d(corner_pool_masked_backward_kernel<scalar_t>, groups, c10::cuda::getCurrentCUDAStream(),
        groups, g.data_ptr<scalar_t>(), mk.data_ptr<uint8_t>(), gin.data_ptr<scalar_t>(), H, W, mode);
  });
  return gin;
}

}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  using namespace fastops::heatmaps;
  m.impl("corner_pool", &corner_pool_cuda);
  m.impl("_corner_pool_backward", &corner_pool_backward_cuda);
  m.impl("_corner_pool_masked", &corner_pool_masked_cuda);
  m.impl("_corner_pool_masked_backward", &corner_pool_masked_backward_cuda);
}
