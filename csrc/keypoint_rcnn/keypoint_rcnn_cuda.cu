// Keypoint R-CNN (roi_heatmaps_to_keypoints): CUDA kernel, a thin launcher around keypoint_rcnn.h (the math the
// CPU kernel uses, so CUDA gives the CPU's bits: ATen's AVX2 evaluation order; torchvision's own CUDA bicubic
// kernel orders its sums differently and can differ from both in the last bit, docs/keypoint_rcnn.md).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "keypoint_rcnn/keypoint_rcnn.h"

namespace fastops {
namespace kprcnn {
namespace {

using at::Tensor;

constexpr int kBlock = 256;

// One block per (RoI, keypoint); each thread walks the ceil(h) x ceil(w) upsampled map with stride kBlock in
// flat (row-major) order, evaluates each pixel from the 4 x 4 taps (4 horizontal sums, then the vertical one, in
// ATen's order: the same value as the CPU kernel's separable passes), keeps its first maximum, and the block
// reduces the threads' candidates with torch.argmax's order. Nothing is stored but one (value, index) per task.
// Traffic: the [H, W] plane is read once from HBM (12.5 KB for 56 x 56 float32; later reads hit L1/L2) and 16 B
// written per task: 21 MB for 100 RoIs x 17 keypoints (~6 us at H100's 3.35 TB/s). The kernel is compute-bound
// instead: ~40 flops per upsampled pixel (4.7 M pixels per 100 RoIs of 216 px mean side: ~0.2 GFLOP, tens of us).
template <typename A, typename G>
__global__ void heatmaps_to_keypoints_kernel(const A* __restrict__ maps, const G* __restrict__ rois, int64_t K,
                                             int64_t H, int64_t W, float* __restrict__ kps,
                                             float* __restrict__ scores) {
  __shared__ A sv[kBlock];
  __shared__ int64_t si[kBlock];
  const int64_t t = blockIdx.x;
  const RoiGeom g = roi_geometry<G>(rois + 4 * (t / K));
  const A* plane = maps + t * H * W;
  const int64_t n = g.rw * g.rh;
  A bv = A(0);
  int64_t bi = -1;
  for (int64_t o = threadIdx.x; o < n; o += kBlock) {
    const int64_t oy = o / g.rw, ox = o % g.rw;
    int32_t xi[4], yi[4];
    A wx[4], wy[4];
    cubic_taps<A>(W, g.rw, ox, xi, wx);
    cubic_taps<A>(H, g.rh, oy, yi, wy);
    A h[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const A* row = plane + (int64_t)yi[j] * W;
      h[j] = taps4(row[xi[0]], row[xi[1]], row[xi[2]], row[xi[3]], wx[0], wx[1], wx[2], wx[3]);
    }
    const A v = taps4(h[0], h[1], h[2], h[3], wy[0], wy[1], wy[2], wy[3]);
    if (better(v, o, bv, bi)) {
      bv = v;
      bi = o;
    }
  }
  // a thread without a candidate (bi < 0) never wins
  fastops::cuda::block_arg_reduce(sv, si, bv, bi, kBlock,
                                  [](A v, int64_t i, A w, int64_t j) { return i >= 0 && better(v, i, w, j); });
  if (threadIdx.x == 0) {
    const int64_t i = si[0];
    kps[3 * t + 0] = keypoint_coord(i % g.rw, g.cw, g.ox);
    kps[3 * t + 1] = keypoint_coord(i / g.rw, g.ch, g.oy);
    kps[3 * t + 2] = 1.0f;
    scores[t] = (float)sv[0];
  }
}

std::tuple<Tensor, Tensor> roi_heatmaps_to_keypoints_cuda(const Tensor& maps_, const Tensor& rois_) {
  check_heatmaps_to_keypoints(maps_, rois_);  // reads the RoIs on the host (finite, sides <= kMaxRoiSide)
  c10::cuda::CUDAGuard guard(maps_.device());
  const Tensor maps = maps_.contiguous(), rois = rois_.contiguous();
  const int64_t R = maps.size(0), K = maps.size(1), H = maps.size(2), W = maps.size(3);
  auto fo = maps.options().dtype(at::kFloat);
  Tensor kps = at::empty({R, K, 3}, fo), scores = at::empty({R, K}, fo);
  if (R * K == 0) return {kps, scores};
  TORCH_CHECK(R * K < (int64_t(1) << 31), "roi_heatmaps_to_keypoints: R * K must be < 2^31 on CUDA");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(maps.scalar_type(), "roi_heatmaps_to_keypoints_cuda", [&] {
    if (rois.scalar_type() == at::kDouble)
      heatmaps_to_keypoints_kernel<scalar_t, double><<<R * K, kBlock, 0, stream>>>(
          maps.data_ptr<scalar_t>(), rois.data_ptr<double>(), K, H, W, kps.data_ptr<float>(),
          scores.data_ptr<float>());
    else
      heatmaps_to_keypoints_kernel<scalar_t, float><<<R * K, kBlock, 0, stream>>>(
          maps.data_ptr<scalar_t>(), rois.data_ptr<float>(), K, H, W, kps.data_ptr<float>(),
          scores.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {kps, scores};
}

}  // namespace
}  // namespace kprcnn
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("roi_heatmaps_to_keypoints", &fastops::kprcnn::roi_heatmaps_to_keypoints_cuda);
}
