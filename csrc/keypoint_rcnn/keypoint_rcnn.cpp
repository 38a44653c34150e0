// Keypoint R-CNN: the schemas and the host-side checks that the CPU and CUDA entry points both call.
// The Python wrapper (fastops/ops/keypoint_rcnn.py) raises ValueError first for shapes and dtypes; the RoI values
// (finite, not too large) are checked here, on the host, before any kernel runs.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "keypoint_rcnn/keypoint_rcnn.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("roi_heatmaps_to_keypoints(Tensor maps, Tensor rois) -> (Tensor, Tensor)");
}

namespace fastops {
namespace kprcnn {

void check_heatmaps_to_keypoints(const at::Tensor& maps, const at::Tensor& rois) {
  TORCH_CHECK_VALUE(maps.dim() == 4, "roi_heatmaps_to_keypoints: maps must be [R, K, H, W], got ", maps.sizes());
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 4, "roi_heatmaps_to_keypoints: rois must be [R, 4], got ",
                    rois.sizes());
  TORCH_CHECK_VALUE(rois.size(0) == maps.size(0), "roi_heatmaps_to_keypoints: maps has ", maps.size(0),
                    " RoIs but rois has ", rois.size(0));
  TORCH_CHECK_VALUE(maps.scalar_type() == at::kFloat || maps.scalar_type() == at::kDouble,
                    "roi_heatmaps_to_keypoints: maps must be float32 or float64 (the Python function converts "
                    "float16/bfloat16), got ", maps.scalar_type());
  TORCH_CHECK_VALUE(rois.scalar_type() == at::kFloat || rois.scalar_type() == at::kDouble,
                    "roi_heatmaps_to_keypoints: rois must be float32 or float64, got ", rois.scalar_type());
  TORCH_CHECK_VALUE(rois.device() == maps.device(), "roi_heatmaps_to_keypoints: rois must be on maps' device");
  const int64_t R = maps.size(0), K = maps.size(1), H = maps.size(2), W = maps.size(3);
  TORCH_CHECK_VALUE(R * K == 0 || (H > 0 && W > 0), "roi_heatmaps_to_keypoints: maps must have H, W > 0, got ",
                    maps.sizes());
  TORCH_CHECK_VALUE(H < (int64_t(1) << 20) && W < (int64_t(1) << 20),
                    "roi_heatmaps_to_keypoints: maps must have H, W < 2^20, got ", maps.sizes());
  if (R == 0) return;
  // Data-dependent checks on the host (torchvision reads every box with .item() too).
  const at::Tensor r = rois.to(at::kCPU, at::kDouble).contiguous();
  const double* p = r.data_ptr<double>();
  for (int64_t i = 0; i < R; ++i) {
    const double* b = p + 4 * i;
    TORCH_CHECK_VALUE(std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) && std::isfinite(b[3]),
                      "roi_heatmaps_to_keypoints: rois must be finite, RoI ", i, " is (", b[0], ", ", b[1], ", ",
                      b[2], ", ", b[3], ")");
    // ceil(max(x2 - x1, 1)) <= kMaxRoiSide  <=>  x2 - x1 <= kMaxRoiSide (in double, hence in the RoI dtype too)
    TORCH_CHECK_VALUE(b[2] - b[0] <= (double)kMaxRoiSide && b[3] - b[1] <= (double)kMaxRoiSide,
                      "roi_heatmaps_to_keypoints: RoI ", i, " is ", b[2] - b[0], " x ", b[3] - b[1], " px; at most ",
                      kMaxRoiSide, " px a side (torchvision would allocate a [K, h, w] map for it)");
  }
}

}  // namespace kprcnn
}  // namespace fastops
