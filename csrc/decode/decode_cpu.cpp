// Decoding keypoints, heatmap_argmax: CPU kernels (soft_argmax: soft_argmax_cpu.cpp, a separate file because it
// has an AVX-512 copy and heatmap_argmax does not; setup.py's AVX512_KERNELS). One map per task of
// at::parallel_for and fixed-order reductions inside a map, so results do not depend on the thread count.
// float16/bfloat16 are computed in float, float64 in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "keypoints_vec.h"
#include "decode/decode.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

// First maximum of a contiguous run (numpy's argmax: the first NaN if there is one). `buf` converts
// float16/bfloat16 maps to float first.
template <typename T, typename A>
int64_t argmax_fast(const T* p, int64_t n, A& best, std::vector<A>& buf) {
  const A* q;
  if constexpr (std::is_same<T, A>::value) {
    q = p;
  } else {
    buf.resize((size_t)n);
    for (int64_t i = 0; i < n; ++i) buf[i] = (A)p[i];
    q = buf.data();
  }
  if constexpr (std::is_same<A, float>::value) return argmax_first(q, n, best);
  bool nan;
  const A m = lanes_max(q, n, nan);
  if (nan) {
    const int64_t i = first_nan(q, n);
    best = q[i];
    return i;
  }
  best = m;
  const int64_t i = first_equal(q, n, m);
  return i < 0 ? 0 : i;
}

std::tuple<Tensor, Tensor> heatmap_argmax_cpu(const Tensor& heatmaps, c10::string_view refine_s, int64_t blur_kernel) {
  const int refine = parse_refine(refine_s);
  check_argmax_args(heatmaps, refine, blur_kernel);
  const Tensor hm = heatmaps.contiguous();
  const int64_t B = hm.size(0), K = hm.size(1);
  const int H = (int)hm.size(2), W = (int)hm.size(3);
  Tensor coords = at::empty({B, K, 2}, hm.options());
  Tensor scores = at::empty({B, K}, hm.options());
  if (B * K == 0) return {coords, scores};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "heatmap_argmax", [&] {
    using A = acc_t<scalar_t>;
    A kc[kMaxBlur];
    if (refine == kDark || refine == kDarkUDP) opencv_gauss_kernel<A>((int)blur_kernel, kc);
    const scalar_t* hp = hm.data_ptr<scalar_t>();
    scalar_t* cp = coords.data_ptr<scalar_t>();
    scalar_t* sp = scores.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, B * K, 8, [&](int64_t begin, int64_t end) {
      std::vector<A> buf;
      for (int64_t m = begin; m < end; ++m) {
        const scalar_t* p = hp + m * plane;
        A best;
        const int64_t idx = argmax_fast<scalar_t, A>(p, plane, best, buf);
        A kx, ky;
        keypoint_from_max<scalar_t, A>(p, H, W, best, idx, refine, kc, (int)blur_kernel, kx, ky);
        cp[2 * m] = (scalar_t)kx;
        cp[2 * m + 1] = (scalar_t)ky;
        sp[m] = (scalar_t)best;
      }
    });
  });
  return {coords, scores};
}

}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  using namespace fastops::heatmaps;
  m.impl("heatmap_argmax", &heatmap_argmax_cpu);
}
