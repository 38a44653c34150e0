// Shared helpers for fastops kernels (host and device).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTOPS_HD __host__ __device__ __forceinline__
#else
#define FASTOPS_HD inline
#endif

#include <math.h>

#include <cstdint>

namespace fastops {

// Accumulation type: float for half/bfloat16/float, double for double.
template <typename T>
struct acc_type {
  using type = float;
};
template <>
struct acc_type<double> {
  using type = double;
};
template <typename T>
using acc_t = typename acc_type<T>::type;

template <typename T>
FASTOPS_HD T min_(T a, T b) { return a < b ? a : b; }
template <typename T>
FASTOPS_HD T max_(T a, T b) { return a > b ? a : b; }

// PyTorch's half-pixel source coordinate of a bilinear resize (align_corners=False), scale * (dst + 0.5) - 0.5 in
// the op-math type A, rounded once: PyTorch's vectorised CPU builds (AVX2 / AVX-512, where the compiler contracts
// the expression into one FMA) and its CUDA kernels compute it so. PyTorch's baseline build
// (ATEN_CPU_CAPABILITY=default) rounds the product first and can differ by an ulp of the coordinate, which moves the
// weights by as much: seen as a 26-ulp difference in a resized value that nearly cancels against another term.
// (fmaf / fma: an explicit fused operation whatever -ffp-contract says; libm's exact one in a baseline-ISA file.)
template <typename A>
FASTOPS_HD A half_pixel_source(int64_t dst, A scale) {
  if constexpr (sizeof(A) == sizeof(float)) {
    return fmaf(scale, static_cast<A>(dst) + A(0.5), A(-0.5));
  } else {
    return fma(scale, static_cast<A>(dst) + A(0.5), A(-0.5));
  }
}

}  // namespace fastops

// Host-side tensor helpers.
#include <ATen/core/Tensor.h>

namespace fastops {

// A 4-D tensor stored NHWC (and not also plain contiguous, as with C == 1): kernels read it in place.
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.size(1) > 1 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

}  // namespace fastops
