// Corner pooling (CornerNet's TopPool / BottomPool / LeftPool / RightPool): what the CPU and CUDA kernels share,
// and the host checks both call (defined in corner_pool.cpp).
//
// Forward: a running max along the scan. NaN rule (that of torch.cummax and CornerNet's at::max): from the first
// NaN of a scan on, the output is NaN. Backward (CornerNet's): each gradient goes to the element the running max
// came from; on ties to the element met first in the scan; after a NaN, to that first NaN.
#pragma once

#include "keypoints_common.h"

namespace fastops {
namespace heatmaps {

// Mirrored in fastops/registrations/corner_pool.py (tests/test_corner_pool.py compares them).
enum PoolMode : int { kTop = 0, kBottom = 1, kLeft = 2, kRight = 3 };

// Running max step that propagates NaN: the new value wins when larger, or when it is the first NaN.
template <typename A>
FASTOPS_HD A scan_max(A m, A v) { return (v > m || (v != v && m == m)) ? v : m; }

// "Record" of the backward: v (at scan position t > 0) takes the gradients accumulated since the last record when
// it is where the running max came from, i.e. it is strictly above the previous output, or the first NaN.
template <typename A>
FASTOPS_HD bool is_record(A v, A prev_out) { return v > prev_out || (v != v && prev_out == prev_out); }

}  // namespace heatmaps
}  // namespace fastops

// host side (parsed by nvcc in both passes; used only by host code)
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <vector>

namespace fastops {
namespace heatmaps {

int parse_pool_mode(c10::string_view s);
void check_pool_args(const at::Tensor& x);
void check_pool_backward_args(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& output);
// Shape of the record mask of `_corner_pool_masked` for an input of `sizes`: one bit per element, packed by 8 along
// the axis across the scan (top/bottom [B, C, H, ceil(W / 8)], left/right [B, C, ceil(H / 8), W]).
std::vector<int64_t> pool_mask_shape(at::IntArrayRef sizes, int mode);
void check_pool_masked_backward_args(const at::Tensor& grad, const at::Tensor& mask, int mode);

}  // namespace heatmaps
}  // namespace fastops
