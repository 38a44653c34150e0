// RoIAlign, device-neutral part: the op schemas and the host-side argument checks that the CPU and the CUDA
// entry points both call (the kernels can then assume well-formed shapes and int32-sized arguments).
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "roi_align/roi_align.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned, bool channels_last) -> Tensor");
  m.def(
      "multi_scale_roi_align(Tensor[] features, Tensor rois, float[] spatial_scales, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio, bool aligned, int canonical_scale, int canonical_level) -> Tensor");
  m.def(
      "_multi_scale_roi_align_backward(Tensor grad, Tensor rois, float[] spatial_scales, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt[] sizes, int sampling_ratio, bool aligned, "
      "int canonical_scale, int canonical_level, bool[] channels_last) -> Tensor[]");
}

namespace fastops {
namespace roi_align {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

void check_range(const char* name, int64_t v, int64_t low, int64_t high = kInt32Max) {
  TORCH_CHECK_VALUE(v >= low && v <= high, "roi_align: ", name, " must be in [", low, ", ", high, "], got ", v);
}

// What forward and backward share: pooled size, sampling ratio, FPN constants, scales, the RoI tensor.
void check_common(const at::Tensor& rois, const at::Tensor& like, at::ArrayRef<double> scales, int64_t ph,
                  int64_t pw, int64_t sampling_ratio, int64_t canonical_scale, int64_t canonical_level) {
  check_range("pooled_height", ph, 1);
  check_range("pooled_width", pw, 1);
  check_range("sampling_ratio", sampling_ratio, -kInt32Max, kMaxGrid);  // (<= 0: adaptive)
  check_range("canonical_scale", canonical_scale, 1);
  check_range("canonical_level", canonical_level, -kInt32Max);
  TORCH_CHECK_VALUE(!scales.empty(), "roi_align: need at least one feature level");
  for (double s : scales)
    TORCH_CHECK_VALUE(s > 0 && std::isfinite(s), "roi_align: spatial scales must be positive and finite, got ", s);
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, "roi_align: rois must have shape [K, 5], got ",
                    rois.sizes());
  TORCH_CHECK_VALUE(rois.scalar_type() == like.scalar_type(), "roi_align: rois must have dtype ",
                    like.scalar_type(), ", got ", rois.scalar_type());
  TORCH_CHECK_VALUE(rois.device() == like.device(), "roi_align: rois must be on ", like.device(), ", got ",
                    rois.device());
}

}  // namespace

void check_forward(at::TensorList feats, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t ph,
                   int64_t pw, int64_t sampling_ratio, int64_t canonical_scale, int64_t canonical_level) {
  TORCH_CHECK_VALUE(!feats.empty() && feats.size() == scales.size(),
                    "roi_align: need one spatial scale per feature level, got ", feats.size(), " levels and ",
                    scales.size(), " scales");
  const at::Tensor& f0 = feats[0];
  for (const at::Tensor& f : feats) {
    TORCH_CHECK_VALUE(f.dim() == 4, "roi_align: input must be [N, C, H, W], got ", f.sizes());
    TORCH_CHECK_VALUE(f.size(0) == f0.size(0) && f.size(1) == f0.size(1) && f.scalar_type() == f0.scalar_type() &&
                          f.device() == f0.device(),
                      "roi_align: all levels must share batch size, channels, dtype and device");
    TORCH_CHECK_VALUE(f.size(2) <= kInt32Max && f.size(3) <= kInt32Max, "roi_align: H and W must be < 2^31, got ",
                      f.sizes());
  }
  check_common(rois, f0, scales, ph, pw, sampling_ratio, canonical_scale, canonical_level);
}

void check_backward(const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t ph,
                    int64_t pw, int64_t N, int64_t C, at::IntArrayRef sizes, int64_t sampling_ratio,
                    int64_t canonical_scale, int64_t canonical_level, size_t num_channels_last) {
  check_common(rois, grad, scales, ph, pw, sampling_ratio, canonical_scale, canonical_level);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == C && grad.size(2) == ph &&
                        grad.size(3) == pw,
                    "roi_align backward: grad must be [K, C, ph, pw] = [", rois.size(0), ", ", C, ", ", ph, ", ",
                    pw, "], got ", grad.sizes());
  TORCH_CHECK_VALUE(N >= 0 && C >= 0, "roi_align backward: batch size and channels must be >= 0, got ", N, ", ", C);
  TORCH_CHECK_VALUE(sizes.size() == 2 * scales.size() && num_channels_last == scales.size(),
                    "roi_align backward: sizes/channels_last must match the ", scales.size(), " levels");
  for (int64_t s : sizes)
    TORCH_CHECK_VALUE(s >= 0 && s <= kInt32Max, "roi_align backward: level sizes must be in [0, 2^31), got ", s);
}

}  // namespace roi_align
}  // namespace fastops
