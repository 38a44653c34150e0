// flow_warp CPU kernels: the tiling helpers shared by the forward (flow_warp_cpu.cpp) and the backward
// (flow_warp_backward_cpu.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "flow_warp/flow_warp.h"

namespace fastops {
namespace flow_warp {
namespace cpu {

// Rows per tile in the NCHW paths: about 4096 pixels, so that the tile's taps (32 B/pixel) stay in L2.
inline int64_t tile_rows(int64_t W) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1)); }

// Taps of a tile of pixels, structure of arrays: offsets and weights (or weight derivatives) per tap.
template <typename A>
struct TapTable {
  int64_t n;
  std::vector<int64_t> off;  // [4][n]
  std::vector<A> w;          // [4][n] weights (forward) or d/dix (flow gradient)
  std::vector<A> d;          // [4][n] d/diy (flow gradient only)
  explicit TapTable(int64_t n_, bool grads = false)
      : n(n_), off(4 * n_), w(4 * n_), d(grads ? 4 * n_ : 0) {}
  void set(int64_t p, const Sample<A>& s, int64_t sH, int64_t sW, bool grads) {
    off[p] = s.y0 * sH + s.x0 * sW;
    off[n + p] = s.y0 * sH + s.x1 * sW;
    off[2 * n + p] = s.y1 * sH + s.x0 * sW;
    off[3 * n + p] = s.y1 * sH + s.x1 * sW;
    if (!grads) {
      w[p] = s.w00; w[n + p] = s.w01; w[2 * n + p] = s.w10; w[3 * n + p] = s.w11;
    } else {
      w[p] = s.dx00; w[n + p] = s.dx01; w[2 * n + p] = s.dx10; w[3 * n + p] = s.dx11;
      d[p] = s.dy00; d[n + p] = s.dy01; d[2 * n + p] = s.dy10; d[3 * n + p] = s.dy11;
    }
  }
};

// Rows per parallel_for grain in the per-row (channels_last) paths: about 16k elements.
inline int64_t row_grain(int64_t W, int64_t C) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W * std::max<int64_t>(C, 1)));
}

}  // namespace cpu
}  // namespace flow_warp
}  // namespace fastops
