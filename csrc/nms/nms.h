// NMS family: the per-pair math shared by the CPU and CUDA kernels (see docs/nms.md).
//
// Boxes are (x1, y1, x2, y2); area = (x2 - x1) * (y2 - y1) (no +1); IoU = inter / ((area_a + area_b) - inter),
// evaluated in exactly this order so that float results are bit-identical to torchvision's and YOLACT's.
// A NaN coordinate makes the area NaN, hence the IoU NaN: comparisons with it are false, which is what the
// references do (`iou > thr` never suppresses, `iou <= thr` never keeps).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace fastops {
namespace nms {

// ---- constants shared with Python (fastops/registrations/nms.py mirrors them; tests/test_nms.py compares them
// with `torch.ops.fastops._nms_constants()`, which returns kConstants in this order) ----------------------------

// torchvision.ops.batched_nms switches to its per-class path above this boxes.numel(): its unstable final sort
// then decides the order of tied scores, which every impl reproduces (see docs/nms.md).
constexpr int64_t kTorchvisionVanillaNumelCpu = 4000;
constexpr int64_t kTorchvisionVanillaNumelCuda = 100000;
// soft_nms `method` codes (the schema takes the name; kernels switch on the code).
constexpr int64_t kSoftNaive = 0;
constexpr int64_t kSoftLinear = 1;
constexpr int64_t kSoftGaussian = 2;
constexpr int64_t kConstants[] = {kTorchvisionVanillaNumelCpu, kTorchvisionVanillaNumelCuda, kSoftNaive, kSoftLinear,
                                  kSoftGaussian};

template <typename A>
FASTOPS_HD A box_area(A x1, A y1, A x2, A y2) {
  return (x2 - x1) * (y2 - y1);
}

// IoU of box a (with area aa) and box b (area ab); widths clamped at 0 like torchvision's std::max(0, .).
template <typename A>
FASTOPS_HD A iou(A ax1, A ay1, A ax2, A ay2, A aa, A bx1, A by1, A bx2, A by2, A ab) {
  const A w = max_(A(0), min_(ax2, bx2) - max_(ax1, bx1));
  const A h = max_(A(0), min_(ay2, by2) - max_(ay1, by1));
  const A inter = w * h;
  return inter / ((aa + ab) - inter);
}

// torchvision compares a float IoU with a double threshold (`ovr > iou_threshold`, promoted to double).
// For any float x: x > t (in double) <=> x > floor_to_float(t), the largest float <= t. Lets the kernels
// compare in float (SIMD) with the exact same outcome.
inline float floor_to_float(double t) {
  float f = static_cast<float>(t);
  if (static_cast<double>(f) > t) f = std::nextafter(f, -INFINITY);
  return f;
}

// The IoU threshold of `iou > thr` in the compute type A (float: floored, see above; double: as is).
template <typename A>
inline A iou_thr_for(double t) {
  if constexpr (sizeof(A) == sizeof(float)) {
    return floor_to_float(t);
  } else {
    return static_cast<A>(t);
  }
}

// Sort key (ascending order of the key = descending order of the score), float scores: NaN first (torch.sort
// puts NaN above +inf), -0.0 equal to +0.0. Ties are broken by the caller (position in the low bits).
FASTOPS_HD uint32_t desc_key(float v) {
  // branch-free (vectorisable): v + 0 turns -0.0 into +0.0; flip all bits of negatives, the sign of positives
  const float z = v + 0.0f;
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(z);
#else
  std::memcpy(&u, &z, sizeof(u));
#endif
  u ^= static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u;
  return (v != v) ? 0u : ~u;
}

FASTOPS_HD uint64_t desc_key(double v) {
  if (v != v) return 0ull;
  if (v == 0.0) v = 0.0;
  uint64_t u;
#if defined(__CUDA_ARCH__)
  u = static_cast<uint64_t>(__double_as_longlong(v));
#else
  std::memcpy(&u, &v, sizeof(u));
#endif
  u = (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
  return ~u;
}

// ---- host-side checks (csrc/nms/nms.cpp), called by the CPU and the CUDA entry points --------------------------
// Each raises (TORCH_CHECK) with a message naming the op and the argument.
void check_boxes_scores(const at::Tensor& boxes, const at::Tensor& scores, const char* op);
void check_batched(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs);
void check_multiclass(const at::Tensor& boxes, const at::Tensor& scores, int64_t max_det, bool pad);
void check_fast_nms(const at::Tensor& boxes, const at::Tensor& scores);
// soft_nms: checks the inputs and returns the method code (kSoftNaive / kSoftLinear / kSoftGaussian).
int64_t check_soft_nms(const at::Tensor& boxes, const at::Tensor& scores, double sigma, c10::string_view method);

}  // namespace nms
}  // namespace fastops
