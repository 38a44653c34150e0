// Shared helpers for fastops kernels (host and device).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTOPS_HD __host__ __device__ __forceinline__
#else
#define FASTOPS_HD inline
#endif

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

}  // namespace fastops

// Host-side tensor helpers.
#include <ATen/core/Tensor.h>

namespace fastops {

// A 4-D tensor stored NHWC (and not also plain contiguous, as with C == 1): kernels read it in place.
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.size(1) > 1 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

}  // namespace fastops
