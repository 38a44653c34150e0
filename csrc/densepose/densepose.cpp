// DensePose: the schemas and the host-side checks that the CPU and CUDA entry points both call.
// The Python wrappers (fastops/ops/densepose.py) raise ValueError first; these TORCH_CHECKs guard direct torch.ops
// calls.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "densepose/densepose.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("densepose_chart_to_iuv(Tensor coarse, Tensor fine, Tensor u, Tensor v, Tensor boxes) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  m.def("densepose_paste_iuv(Tensor coarse, Tensor fine, Tensor u, Tensor v, Tensor boxes, Tensor scores, "
        "int height, int width) -> Tensor");
  m.def("roi_point_sample(Tensor maps, Tensor roi_index, Tensor points) -> Tensor");
  m.def("_roi_point_sample_backward(Tensor grad, Tensor maps, Tensor roi_index, Tensor points) -> Tensor");
}

namespace fastops {
namespace densepose {

namespace {
bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
}  // namespace

at::Tensor check_chart_args(const at::Tensor& coarse, const at::Tensor& fine, const at::Tensor& u,
                            const at::Tensor& v, const at::Tensor& boxes, const char* op) {
  TORCH_CHECK(fine.dim() == 4, op, ": fine must be [R, K, S, S], got ", fine.sizes());
  const int64_t R = fine.size(0), K = fine.size(1), H = fine.size(2), W = fine.size(3);
  TORCH_CHECK(is_float(fine.scalar_type()), op, ": fine must be floating point");
  TORCH_CHECK(K >= 1 && H >= 1 && W >= 1, op, ": fine must have K, S >= 1, got ", fine.sizes());
  TORCH_CHECK(H < (1 << 20) && W < (1 << 20) && K < (1 << 20), op, ": fine too large, got ", fine.sizes());
  TORCH_CHECK(coarse.dim() == 4 && coarse.size(0) == R && coarse.size(1) >= 1 && coarse.size(2) == H &&
                  coarse.size(3) == W && coarse.size(1) < (1 << 20),
              op, ": coarse must be [R, Kc, S, S] with fine's R and S, got ", coarse.sizes(), " and fine ",
              fine.sizes());
  TORCH_CHECK(u.sizes() == fine.sizes() && v.sizes() == fine.sizes(), op,
              ": u and v must have fine's shape ", fine.sizes(), ", got ", u.sizes(), " and ", v.sizes());
  for (const at::Tensor* t : {&coarse, &u, &v})
    TORCH_CHECK(t->scalar_type() == fine.scalar_type() && t->device() == fine.device(), op,
                ": coarse, u and v must have fine's dtype and device");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(0) == R && boxes.size(1) == 4, op, ": boxes must be [R, 4] with R = ",
              R, ", got ", boxes.sizes());
  TORCH_CHECK(is_float(boxes.scalar_type()) && boxes.device() == fine.device(), op,
              ": boxes must be floating point on fine's device");
  // detectron2: XYWH in the boxes' dtype, .long() (truncation), w, h >= 1
  const at::Tensor b = boxes.to(at::kCPU);
  const at::Tensor xywh = at::stack({b.select(1, 0), b.select(1, 1), b.select(1, 2) - b.select(1, 0),
                                     b.select(1, 3) - b.select(1, 1)}, 1).to(at::kDouble);
  TORCH_CHECK(at::isfinite(xywh).all().item<bool>(), op, ": boxes must be finite");
  const double lim = (double)(int64_t(1) << 40);
  TORCH_CHECK((xywh.abs() < lim).all().item<bool>(), op, ": box coordinates must be below 2^40 in magnitude");
  at::Tensor ib = xywh.to(at::kLong);
  auto a = ib.accessor<int64_t, 2>();
  for (int64_t r = 0; r < R; ++r) {
    for (int k = 2; k < 4; ++k) a[r][k] = a[r][k] < 1 ? 1 : a[r][k];
    TORCH_CHECK(a[r][2] <= kMaxBoxSide && a[r][3] <= kMaxBoxSide, op, ": box ", r, " is ", a[r][2], " x ",
                a[r][3], " pixels; at most ", kMaxBoxSide, " per side");
  }
  return ib;
}

void check_point_args(const at::Tensor& maps, const at::Tensor& roi_index, const at::Tensor& points,
                      bool check_values) {
  TORCH_CHECK(maps.dim() == 4, "roi_point_sample: maps must be [R, C, S, S], got ", maps.sizes());
  TORCH_CHECK(is_float(maps.scalar_type()), "roi_point_sample: maps must be floating point");
  TORCH_CHECK(maps.size(2) >= 1 && maps.size(3) >= 1 && maps.size(2) < (1 << 20) && maps.size(3) < (1 << 20),
              "roi_point_sample: maps must have 1 <= S < 2^20, got ", maps.sizes());
  TORCH_CHECK(roi_index.dim() == 1 && roi_index.scalar_type() == at::kLong && roi_index.device() == maps.device(),
              "roi_point_sample: roi_index must be [P] int64 on maps' device, got ", roi_index.sizes(), " ",
              roi_index.scalar_type());
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 2 && points.size(0) == roi_index.size(0),
              "roi_point_sample: points must be [P, 2] with roi_index's P, got ", points.sizes());
  TORCH_CHECK(is_float(points.scalar_type()) && points.device() == maps.device(),
              "roi_point_sample: points must be floating point on maps' device");
  if (!check_values || roi_index.numel() == 0) return;
  const int64_t R = maps.size(0);
  const at::Tensor ri = roi_index.to(at::kCPU);
  TORCH_CHECK(((ri >= 0) & (ri < R)).all().item<bool>(), "roi_point_sample: roi_index out of range [0, ", R, ")");
  const at::Tensor p = points.to(at::kCPU).to(at::kDouble);
  const at::Tensor px = p.select(1, 0), py = p.select(1, 1);
  TORCH_CHECK(((px >= 0) & (px <= (double)maps.size(3)) & (py >= 0) & (py <= (double)maps.size(2))).all().item<bool>(),
              "roi_point_sample: points must be finite and inside the RoI grid [0, S] (x in [0, ", maps.size(3),
              "], y in [0, ", maps.size(2), "]); filter points outside the box first");
}

}  // namespace densepose
}  // namespace fastops
