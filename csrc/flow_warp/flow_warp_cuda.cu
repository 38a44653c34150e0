// flow_warp CUDA kernels. The per-pixel math (sample position, taps, weights, derivatives) is flow_warp.h,
// shared with the CPU kernels.
//
// Backward w.r.t. the input is a scatter. By default it uses float atomics (fast, order not fixed). When
// torch.use_deterministic_algorithms(True) is on it is computed as a gather instead: the (input pixel <- output
// pixel, tap) pairs are sorted once per call by input pixel (a radix sort of 64-bit keys that encode both), and
// one thread per input element sums its contributions in that fixed order: bitwise reproducible, no atomics.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "cuda_utils.cuh"
#include "flow_warp/flow_warp.h"

namespace fastops {
namespace flow_warp {
namespace {

using at::Tensor;

using cuda::launch_1d;
using cuda::unravel;

struct Dims {
  int64_t B, C, H, W;
};

struct Strides4 {
  int64_t b, c, h, w;
};

Strides4 strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// (b, c, y, x) of flat element `idx`: channel-fastest (channels_last, coalesced vectors of C per tap) or
// column-fastest (NCHW).
__device__ __forceinline__ void element_of(int64_t idx, const Dims& d, bool channel_fastest, int64_t& b,
                                           int64_t& c, int64_t& y, int64_t& x) {
  if (channel_fastest) {
    const auto i = unravel<4>(idx, {d.B, d.H, d.W, d.C});
    b = i[0], y = i[1], x = i[2], c = i[3];
  } else {
    const auto i = unravel<4>(idx, {d.B, d.C, d.H, d.W});
    b = i[0], c = i[1], y = i[2], x = i[3];
  }
}

template <typename scalar_t>
__device__ __forceinline__ void sample_of(const scalar_t* __restrict__ flow, Strides4 fs, int64_t b, int64_t y,
                                          int64_t x, const Axis<acc_t<scalar_t>>& axx,
                                          const Axis<acc_t<scalar_t>>& axy, int64_t H, int64_t W, bool border,
                                          Sample<acc_t<scalar_t>>& s) {
  using A = acc_t<scalar_t>;
  const scalar_t* f = flow + b * fs.b + y * fs.h + x * fs.w;
  sample_pixel<A>(x, y, A(f[0]), A(f[fs.c]), axx, axy, H, W, border, s);
}

// The preambles of the kernels' grid-stride loops: the coordinates of flat index `idx` and the flow sample there
// (kernels unpack them with a structured binding: `const auto [b, c, y, x, s] = element_sample<scalar_t>(...)`).
template <typename A>
struct ElementSample {
  int64_t b, c, y, x;
  Sample<A> s;
};

template <typename A>
struct PixelSample {
  int64_t b, y, x;
  Sample<A> s;
};

// Per output element (b, c, y, x), in element_of's order:
template <typename scalar_t>
__device__ __forceinline__ ElementSample<acc_t<scalar_t>> element_sample(
    int64_t idx, const Dims& d, bool channel_fastest, const scalar_t* __restrict__ flow, Strides4 fs,
    const Axis<acc_t<scalar_t>>& axx, const Axis<acc_t<scalar_t>>& axy, bool border) {
  ElementSample<acc_t<scalar_t>> e;
  element_of(idx, d, channel_fastest, e.b, e.c, e.y, e.x);
  sample_of<scalar_t>(flow, fs, e.b, e.y, e.x, axx, axy, d.H, d.W, border, e.s);
  return e;
}

// Per pixel (b, y, x) of a [B, H, W] loop:
template <typename scalar_t>
__device__ __forceinline__ PixelSample<acc_t<scalar_t>> pixel_sample(int64_t idx, const Dims& d,
                                                                     const scalar_t* __restrict__ flow, Strides4 fs,
                                                                     const Axis<acc_t<scalar_t>>& axx,
                                                                     const Axis<acc_t<scalar_t>>& axy, bool border) {
  const auto i = unravel<3>(idx, {d.B, d.H, d.W});
  PixelSample<acc_t<scalar_t>> p{i[0], i[1], i[2], {}};
  sample_of<scalar_t>(flow, fs, p.b, p.y, p.x, axx, axy, d.H, d.W, border, p.s);
  return p;
}

// Forward: one thread per output element, channel-fastest for channels_last (coalesced vectors of C per tap),
// column-fastest otherwise. Traffic: 2 flow values per pixel (cached across the pixel's channels), 4 taps per
// element (neighbouring threads share cache lines; for smooth flows ~1 compulsory read per element), 1 write.
// [1,128,256,448] fp32: ~59 MB read + 59 MB written = ~118 MB, ~35 us at H100's ~3.35 TB/s.
template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ in, Strides4 is, const scalar_t* __restrict__ flow,
                               Strides4 fs, scalar_t* __restrict__ out, Strides4 os, scalar_t* __restrict__ mask,
                               Dims d, Axis<acc_t<scalar_t>> axx, Axis<acc_t<scalar_t>> axy, bool border,
                               bool channel_fastest) {
  using A = acc_t<scalar_t>;
  FASTOPS_KERNEL_LOOP(idx, d.B * d.C * d.H * d.W) {
    const auto [b, c, y, x, s] = element_sample<scalar_t>(idx, d, channel_fastest, flow, fs, axx, axy, border);
    const scalar_t* p = in + b * is.b + c * is.c;
    // A tap outside the map: read only the in-map ones (NaN/inf rule, flow_warp.h edge_value).
    const A v = !s.all ? edge_value<A>(s, p, is.h, is.w) : s.w00 * A(p[s.y0 * is.h + s.x0 * is.w]) + s.w01 * A(p[s.y0 * is.h + s.x1 * is.w]) +
                s.w10 * A(p[s.y1 * is.h + s.x0 * is.w]) + s.w11 * A(p[s.y1 * is.h + s.x1 * is.w]);
    out[b * os.b + c * os.c + y * os.h + x * os.w] = scalar_t(v);
    if (mask != nullptr && c == 0) mask[(b * d.H + y) * d.W + x] = scalar_t(s.valid ? 1 : 0);
  }
}

// Mask only (C == 0). Traffic: 2 flow reads + 1 write per pixel (12 B fp32): 256x448 -> 1.4 MB, < 1 us on an
// H100 (~3.35 TB/s); launch-bound.
template <typename scalar_t>
__global__ void mask_kernel(const scalar_t* __restrict__ flow, Strides4 fs, scalar_t* __restrict__ mask, Dims d,
                            Axis<acc_t<scalar_t>> axx, Axis<acc_t<scalar_t>> axy, bool border) {
  FASTOPS_KERNEL_LOOP(idx, d.B * d.H * d.W) {
    mask[idx] = scalar_t(pixel_sample<scalar_t>(idx, d, flow, fs, axx, axy, border).s.valid ? 1 : 0);
  }
}

// Flow gradient: one thread per pixel reduces over the channels in a fixed order (deterministic). Traffic per
// pixel: C grad values + 4C taps (shared with neighbours) + 2 writes; [1,128,256,448] fp32: ~118 MB, ~35 us on
// an H100 (~3.35 TB/s); on NCHW the threads of a warp read consecutive columns (coalesced).
template <typename scalar_t>
__global__ void grad_flow_kernel(const scalar_t* __restrict__ grad, Strides4 gs, const scalar_t* __restrict__ in,
                                 Strides4 is, const scalar_t* __restrict__ flow, Strides4 fs,
                                 scalar_t* __restrict__ gflow, Strides4 rs, Dims d, Axis<acc_t<scalar_t>> axx,
                                 Axis<acc_t<scalar_t>> axy, bool border) {
  using A = acc_t<scalar_t>;
  FASTOPS_KERNEL_LOOP(idx, d.B * d.H * d.W) {
    const auto [b, y, x, s] = pixel_sample<scalar_t>(idx, d, flow, fs, axx, axy, border);
    A su = A(0), sv = A(0);
    if (s.any) {
      const int64_t o00 = s.y0 * is.h + s.x0 * is.w, o01 = s.y0 * is.h + s.x1 * is.w;
      const int64_t o10 = s.y1 * is.h + s.x0 * is.w, o11 = s.y1 * is.h + s.x1 * is.w;
      const scalar_t* g = grad + b * gs.b + y * gs.h + x * gs.w;
      const scalar_t* p = in + b * is.b;
      for (int64_t c = 0; c < d.C; ++c) {
        const scalar_t* pc = p + c * is.c;
        const A i00 = A(pc[o00]), i01 = A(pc[o01]), i10 = A(pc[o10]), i11 = A(pc[o11]);
        const A gv = A(g[c * gs.c]);
        su += gv * (s.dx00 * i00 + s.dx01 * i01 + s.dx10 * i10 + s.dx11 * i11);
        sv += gv * (s.dy00 * i00 + s.dy01 * i01 + s.dy10 * i10 + s.dy11 * i11);
      }
    }
    scalar_t* r = gflow + b * rs.b + y * rs.h + x * rs.w;
    r[0] = scalar_t(su * s.gx);
    r[rs.c] = scalar_t(sv * s.gy);
  }
}

// Input gradient, default (non-deterministic) mode: one thread per grad element, 4 float atomics into an
// accumulator (float for half types). Traffic: 1 grad read + 4 atomic RMWs per element (L2-resident for
// neighbouring taps); [1,128,256,448] fp32: ~59 MB + ~59 MB: ~35 us at ~3.35 TB/s,
// ~40-80 us in practice (atomics).
template <typename scalar_t>
__global__ void grad_input_atomic_kernel(const scalar_t* __restrict__ grad, Strides4 gs,
                                         const scalar_t* __restrict__ flow, Strides4 fs,
                                         acc_t<scalar_t>* __restrict__ ws, Strides4 ws_s, Dims d,
                                         Axis<acc_t<scalar_t>> axx, Axis<acc_t<scalar_t>> axy, bool border,
                                         bool channel_fastest) {
  using A = acc_t<scalar_t>;
  FASTOPS_KERNEL_LOOP(idx, d.B * d.C * d.H * d.W) {
    const auto [b, c, y, x, s] = element_sample<scalar_t>(idx, d, channel_fastest, flow, fs, axx, axy, border);
    if (!s.any) continue;
    const A gv = A(grad[b * gs.b + c * gs.c + y * gs.h + x * gs.w]);
    A* p = ws + b * ws_s.b + c * ws_s.c;
    if (s.w00 != A(0)) atomicAdd(p + s.y0 * ws_s.h + s.x0 * ws_s.w, s.w00 * gv);
    if (s.w01 != A(0)) atomicAdd(p + s.y0 * ws_s.h + s.x1 * ws_s.w, s.w01 * gv);
    if (s.w10 != A(0)) atomicAdd(p + s.y1 * ws_s.h + s.x0 * ws_s.w, s.w10 * gv);
    if (s.w11 != A(0)) atomicAdd(p + s.y1 * ws_s.h + s.x1 * ws_s.w, s.w11 * gv);
  }
}

// Deterministic mode, step 1: one key per (batch, output pixel, tap): (b * HW + target pixel) * 4HW + (p * 4 +
// tap); taps with zero weight get the target HW (past the batch's pixels) and sort last. Traffic: 2 flow reads +
// 4 key writes (32 B) per pixel; a radix sort of 4*B*HW keys follows (~1 GB/s-class passes: ~0.1 ms for 460k
// keys on an H100; the key writes, 32 B/pixel, are ~4 us per 460k keys at ~3.35 TB/s).
template <typename scalar_t>
__global__ void tap_keys_kernel(const scalar_t* __restrict__ flow, Strides4 fs, int64_t* __restrict__ keys, Dims d,
                                Axis<acc_t<scalar_t>> axx, Axis<acc_t<scalar_t>> axy, bool border) {
  using A = acc_t<scalar_t>;
  const int64_t HW = d.H * d.W;
  FASTOPS_KERNEL_LOOP(idx, d.B * HW) {
    const int64_t p = idx % HW, b = idx / HW;
    const int64_t x = p % d.W, y = p / d.W;
    Sample<A> s;
    sample_of<scalar_t>(flow, fs, b, y, x, axx, axy, d.H, d.W, border, s);
    const A w[4] = {s.w00, s.w01, s.w10, s.w11};
    const int64_t t[4] = {s.y0 * d.W + s.x0, s.y0 * d.W + s.x1, s.y1 * d.W + s.x0, s.y1 * d.W + s.x1};
    for (int k = 0; k < 4; ++k) {
      const int64_t target = w[k] != A(0) ? t[k] : HW;
      keys[idx * 4 + k] = ((b * (HW + 1)) + target) * (4 * HW) + (p * 4 + k);
    }
  }
}

// Deterministic mode, step 2: one thread per input element sums, in key order, grad[output pixel] * tap weight
// over its segment [off[t], off[t+1]) of the sorted keys (weights recomputed from the flow). Traffic per input
// element: its k contributions (k = 4 on average): k key reads (shared across channels, cached), k grad reads,
// k flow reads (cached); [1,128,256,448] fp32: ~60 MB grad + 59 MB written: ~36 us at
// H100's ~3.35 TB/s, ~50 us with the segment walks.
template <typename scalar_t>
__global__ void grad_input_gather_kernel(const scalar_t* __restrict__ grad, Strides4 gs,
                                         const scalar_t* __restrict__ flow, Strides4 fs,
                                         const int64_t* __restrict__ keys, const int64_t* __restrict__ offsets,
                                         scalar_t* __restrict__ gin, Strides4 gi, Dims d, Axis<acc_t<scalar_t>> axx,
                                         Axis<acc_t<scalar_t>> axy, bool border, bool channel_fastest) {
  using A = acc_t<scalar_t>;
  const int64_t HW = d.H * d.W;
  FASTOPS_KERNEL_LOOP(idx, d.B * d.C * HW) {
    int64_t b, c, y, x;
    element_of(idx, d, channel_fastest, b, c, y, x);
    const int64_t t = y * d.W + x;
    const int64_t seg = b * (HW + 1) + t;
    A acc = A(0);
    for (int64_t e = offsets[seg]; e < offsets[seg + 1]; ++e) {
      const int64_t low = keys[e] % (4 * HW);
      const int64_t p = low / 4;
      const int k = static_cast<int>(low % 4);
      const int64_t x = p % d.W, y = p / d.W;
      Sample<A> s;
      sample_of<scalar_t>(flow, fs, b, y, x, axx, axy, d.H, d.W, border, s);
      const A w = k == 0 ? s.w00 : (k == 1 ? s.w01 : (k == 2 ? s.w10 : s.w11));
      acc += w * A(grad[b * gs.b + c * gs.c + y * gs.h + x * gs.w]);
    }
    gin[b * gi.b + c * gi.c + y * gi.h + x * gi.w] = scalar_t(acc);
  }
}

std::tuple<Tensor, Tensor> flow_warp_cuda(const Tensor& input, const Tensor& flow, c10::string_view padding_mode,
                                          bool align_corners, c10::string_view units, bool return_mask) {
  c10::cuda::CUDAGuard guard(input.device());
  auto [o, out, mask] = prepare_forward(input, flow, padding_mode, align_corners, units, return_mask);
  const Dims d{input.size(0), input.size(1), input.size(2), input.size(3)};
  if (d.B * d.H * d.W == 0) return {out, mask};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_cuda", [&] {
    using A = acc_t<scalar_t>;
    const auto [axx, axy] = axes_of<A>(d.H, d.W, o);
    scalar_t* mp = return_mask ? mask.data_ptr<scalar_t>() : nullptr;
    if (d.C > 0) {
      const bool cf = is_channels_last(input) && is_channels_last(out);
      launch_1d(forward_kernel<scalar_t>, d.B * d.C * d.H * d.W, stream,
          input.const_data_ptr<scalar_t>(), strides_of(input), flow.const_data_ptr<scalar_t>(), strides_of(flow),
          out.data_ptr<scalar_t>(), strides_of(out), mp, d, axx, axy, o.border, cf);
    } else if (mp != nullptr) {
      launch_1d(mask_kernel<scalar_t>, d.B * d.H * d.W, stream,
          flow.const_data_ptr<scalar_t>(), strides_of(flow), mp, d, axx, axy, o.border);
    }
  });
  return {out, mask};
}

std::tuple<Tensor, Tensor> flow_warp_backward_cuda(const Tensor& grad_output, const Tensor& input,
                                                   const Tensor& flow, c10::string_view padding_mode,
                                                   bool align_corners, c10::string_view units, bool need_input,
                                                   bool need_flow) {
  c10::cuda::CUDAGuard guard(input.device());
  auto [o, gin, gflow] =
      prepare_backward(grad_output, input, flow, padding_mode, align_corners, units, need_input, need_flow);
  const Dims d{input.size(0), input.size(1), input.size(2), input.size(3)};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t HW = d.H * d.W;
  if (need_flow && gflow.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_grad_flow_cuda",
                                    [&] {
      using A = acc_t<scalar_t>;
      const auto [axx, axy] = axes_of<A>(d.H, d.W, o);
      launch_1d(grad_flow_kernel<scalar_t>, d.B * HW, stream,
          grad_output.const_data_ptr<scalar_t>(), strides_of(grad_output), input.const_data_ptr<scalar_t>(),
          strides_of(input), flow.const_data_ptr<scalar_t>(), strides_of(flow), gflow.data_ptr<scalar_t>(),
          strides_of(gflow), d, axx, axy, o.border);
    });
  }
  if (need_input && gin.numel() > 0) {
    const bool cf = is_channels_last(input);
    if (at::globalContext().deterministicAlgorithms()) {
      TORCH_CHECK(d.B * (HW + 1) < (int64_t(1) << 62) / (4 * HW),
                  "flow_warp: the map is too large for the deterministic CUDA backward");
      Tensor keys = at::empty({d.B * HW * 4}, input.options().dtype(at::kLong));
      Tensor offsets;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_keys_cuda", [&] {
        using A = acc_t<scalar_t>;
        const auto [axx, axy] = axes_of<A>(d.H, d.W, o);
        launch_1d(tap_keys_kernel<scalar_t>, d.B * HW, stream,
            flow.const_data_ptr<scalar_t>(), strides_of(flow), keys.data_ptr<int64_t>(), d, axx, axy, o.border);
      });
      Tensor sorted = std::get<0>(at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false));
      // Segment boundaries: the first key of every (batch, target) pair, including the past-the-end targets.
      Tensor bounds = at::arange(d.B * (HW + 1) + 1, keys.options());
      bounds.mul_(c10::Scalar(4 * HW));
      offsets = at::searchsorted(sorted, bounds);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_gather_cuda", [&] {
        using A = acc_t<scalar_t>;
        const auto [axx, axy] = axes_of<A>(d.H, d.W, o);
        launch_1d(grad_input_gather_kernel<scalar_t>, d.B * d.C * HW, stream,
            grad_output.const_data_ptr<scalar_t>(), strides_of(grad_output), flow.const_data_ptr<scalar_t>(),
            strides_of(flow), sorted.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(),
            gin.data_ptr<scalar_t>(), strides_of(gin), d, axx, axy, o.border, cf);
      });
    } else {
      const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      Tensor ws = input.scalar_type() == acc ? gin : at::empty_like(input, input.options().dtype(acc),
                                                                     at::MemoryFormat::Preserve);
      ws.zero_();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_atomic_cuda", [&] {
        using A = acc_t<scalar_t>;
        const auto [axx, axy] = axes_of<A>(d.H, d.W, o);
        launch_1d(grad_input_atomic_kernel<scalar_t>, d.B * d.C * HW, stream,
            grad_output.const_data_ptr<scalar_t>(), strides_of(grad_output), flow.const_data_ptr<scalar_t>(),
            strides_of(flow), ws.data_ptr<A>(), strides_of(ws), d, axx, axy, o.border, cf);
      });
      if (!ws.is_same(gin)) gin.copy_(ws);
    }
  }
  return {gin, gflow};
}

}  // namespace
}  // namespace flow_warp
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("flow_warp", &fastops::flow_warp::flow_warp_cuda);
  m.impl("_flow_warp_backward", &fastops::flow_warp::flow_warp_backward_cuda);
}
