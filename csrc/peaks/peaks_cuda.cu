// Peaks: CUDA kernels (thin launchers around peaks.h, shared with the CPU kernels).
//
// Traffic figures are for docs/heatmaps.md's workloads in float32; H100 means ~3.35 TB/s of HBM bandwidth. At
// these sizes (a few MB) every kernel is launch-bound (~3-5 us per launch) long before it is bandwidth-bound.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "peaks/peaks.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

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
  FASTOPS_KERNEL_LOOP(idx, total) {
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
  FASTOPS_KERNEL_LOOP(idx, total) {
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
                                 int64_t* __restrict__ xs, const T* __restrict__ wh, MapStrides ws,
                                 const T* __restrict__ reg, MapStrides rs, T* __restrict__ dets) {
  using A = acc_t<T>;
  FASTOPS_KERNEL_LOOP(i, total) {
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
    centernet_box<T, A>(wh, ws, reg, rs, b, label, y, x, s, dets + i * 6);
  }
}

// Shared by heatmap_peaks and centernet_decode (dets defined => decode).
void peaks_cuda_impl(const Tensor& hm, int64_t ke, int64_t kernel, Tensor* scores, Tensor* labels, Tensor* ys,
                     Tensor* xs, const Tensor* wh, const c10::optional<Tensor>* reg, Tensor* dets) {
  const int64_t B = hm.size(0), C = hm.size(1);
  const int H = (int)hm.size(2), W = (int)hm.size(3);
  const int64_t CHW = C * H * W;
  TORCH_CHECK(CHW < (int64_t(1) << 32), "heatmap_peaks: C*H*W must be < 2^32 on CUDA");
  const int pad = peak_pad(kernel, H, W);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = B * CHW;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "heatmap_peaks_cuda", [&] {
    Tensor keys_top, order, sorted;
    if (!std::is_same<scalar_t, double>::value) {
      Tensor keys = at::empty({B, CHW}, hm.options().dtype(at::kLong));
      fastops::cuda::launch_1d(peak_keys_kernel<scalar_t>, total, stream,
        total, hm.data_ptr<scalar_t>(), CHW, H, W, pad, keys.data_ptr<int64_t>());
      keys_top = std::get<0>(at::topk(keys, ke, 1, true, true)).contiguous();
    } else {
      Tensor sc = at::empty({B, CHW}, hm.options());
      fastops::cuda::launch_1d(peak_scores_kernel<scalar_t>, total, stream,
        total, hm.data_ptr<scalar_t>(), CHW, H, W, pad, sc.data_ptr<scalar_t>());
      auto res = at::sort(sc, /*stable=*/true, /*dim=*/1, /*descending=*/true);
      sorted = std::get<0>(res).narrow(1, 0, ke).contiguous();
      order = std::get<1>(res).narrow(1, 0, ke).contiguous();
    }
    const bool decode = dets != nullptr;
    const bool has_reg = decode && reg->has_value();
    fastops::cuda::launch_1d(peaks_out_kernel<scalar_t>, B * ke, stream,
        B * ke, ke, keys_top.defined() ? keys_top.data_ptr<int64_t>() : nullptr,
        order.defined() ? order.data_ptr<int64_t>() : nullptr,
        sorted.defined() ? sorted.data_ptr<scalar_t>() : nullptr, H, W,
        decode ? nullptr : scores->data_ptr<scalar_t>(), decode ? nullptr : labels->data_ptr<int64_t>(),
        decode ? nullptr : ys->data_ptr<int64_t>(), decode ? nullptr : xs->data_ptr<int64_t>(),
        decode ? wh->data_ptr<scalar_t>() : nullptr, decode ? map_strides(*wh) : MapStrides{0, 0, 0, 0},
        has_reg ? reg->value().data_ptr<scalar_t>() : nullptr,
        has_reg ? map_strides(reg->value()) : MapStrides{0, 0, 0, 0},
        decode ? dets->data_ptr<scalar_t>() : nullptr);
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

}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  using namespace fastops::heatmaps;
  m.impl("heatmap_peaks", &heatmap_peaks_cuda);
  m.impl("centernet_decode", &centernet_decode_cuda);
}
