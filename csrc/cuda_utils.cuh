// Launch helpers shared by every fastops CUDA kernel (include from .cu files only).
//
//   FASTOPS_KERNEL_LOOP(i, n)        grid-stride loop over int64 indices [0, n)
//   blocks_for(n)                    blocks for a 1-D launch of n threads' work at kThreads per block, capped:
//                                    the grid-stride loop covers the rest, so any n launches (n == 0 gives 0)
//   launch_1d(kernel, n, stream, ...) skips empty launches, checks the launch
//   unravel(i, sizes...)             row-major index decomposition
//   first_max_better(v1, i1, v2, i2) numpy/torch argmax order of (value, index) candidates
//   block_arg_reduce(sv, si, ...)    fixed-order shared-memory (value, index) tree reduction of a block
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cstdint>

namespace fastops {
namespace cuda {

constexpr int kThreads = 256;
// 65535 x 256 threads is far more than any GPU keeps resident; a grid-stride loop does the rest.
constexpr int64_t kMaxBlocks = 65535;

inline int blocks_for(int64_t n, int threads = kThreads) {
  if (n <= 0) return 0;
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < kMaxBlocks ? b : kMaxBlocks);
}

// Launch kernel<<<blocks_for(n), kThreads, 0, stream>>>(args...) when n > 0, then check the launch.
template <typename Kernel, typename... Args>
inline void launch_1d(Kernel kernel, int64_t n, cudaStream_t stream, Args... args) {
  if (n <= 0) return;
  kernel<<<blocks_for(n), kThreads, 0, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Row-major decomposition of a flat index: unravel(i, {a, b, c}) -> (i / (b*c), (i / c) % b, i % c).
template <int N>
struct Index {
  int64_t v[N];
  __host__ __device__ __forceinline__ int64_t operator[](int k) const { return v[k]; }
};

template <int N>
__host__ __device__ __forceinline__ Index<N> unravel(int64_t i, const int64_t (&sizes)[N]) {
  Index<N> out;
#pragma unroll
  for (int k = N - 1; k >= 0; --k) {
    out.v[k] = i % sizes[k];
    i /= sizes[k];
  }
  return out;
}

// (value, index) order of numpy's / torch's first maximum: a NaN beats every number (the first NaN wins), then the
// larger value, then the lower index.
template <typename A>
__device__ __forceinline__ bool first_max_better(A v1, int64_t i1, A v2, int64_t i2) {
  const bool n1 = v1 != v1, n2 = v2 != v2;
  if (n1 || n2) return n1 && (!n2 || i1 < i2);
  return v1 > v2 || (v1 == v2 && i1 < i2);
}
struct FirstMax {  // first_max_better as a functor, for block_arg_reduce
  template <typename A>
  __device__ __forceinline__ bool operator()(A v1, int64_t i1, A v2, int64_t i2) const {
    return first_max_better(v1, i1, v2, i2);
  }
};

// Block-wide (value, index) reduction in a fixed tree order (deterministic): every thread of the block passes its
// candidate (v, i); afterwards sv[0], si[0] hold the winner, where better(v, i, bv, bi) says whether (v, i) replaces
// (bv, bi). sv and si are __shared__ arrays of `threads` = blockDim.x (a power of 2) entries; every thread must call.
template <typename A, typename Better>
__device__ __forceinline__ void block_arg_reduce(A* sv, int64_t* si, A v, int64_t i, int threads, Better better) {
  sv[threadIdx.x] = v;
  si[threadIdx.x] = i;
  __syncthreads();
  for (int s = threads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s && better(sv[threadIdx.x + s], si[threadIdx.x + s], sv[threadIdx.x], si[threadIdx.x])) {
      sv[threadIdx.x] = sv[threadIdx.x + s];
      si[threadIdx.x] = si[threadIdx.x + s];
    }
    __syncthreads();
  }
}

}  // namespace cuda
}  // namespace fastops

// Grid-stride loop over int64 indices: no int32 overflow past 2^31 elements.
#define FASTOPS_KERNEL_LOOP(i, n)                                                                  \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, _fastops_n = (n); \
       i < _fastops_n; i += static_cast<int64_t>(blockDim.x) * gridDim.x)
