// Peaks (heatmap_peaks, centernet_decode): the per-element math shared by the CPU and CUDA kernels, and the host
// checks both call (defined in peaks.cpp). CenterNet's _nms + _topk (docs/heatmaps.md).
#pragma once

#include "keypoints_common.h"

namespace fastops {
namespace heatmaps {

// Order of candidates: higher score first, then lower flat index (c, y, x).
template <typename A>
FASTOPS_HD bool cand_before(A sa, int64_t ia, A sb, int64_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Max that propagates NaN (as max_pool2d).
template <typename A>
FASTOPS_HD A nanmax(A a, A b) {
  const bool c = (a > b) | (a != a);  // no short-circuit: vectorisable
  return c ? a : b;
}

// CenterNet _nms: a pixel keeps its value when it equals the max of its kernel x kernel neighbourhood (outside the
// map never wins, a NaN in the window makes every pixel of it a non-peak); others score 0 (heat * keep). A NaN
// pixel scores 0.
template <typename T, typename A>
FASTOPS_HD A peak_score(const T* plane, int H, int W, int y, int x, int pad) {
  const A v = (A)plane[(int64_t)y * W + x];
  const int ya = y - pad < 0 ? 0 : y - pad, yb = y + pad >= H ? H - 1 : y + pad;
  const int xa = x - pad < 0 ? 0 : x - pad, xb = x + pad >= W ? W - 1 : x + pad;
  A m = v;
  for (int yy = ya; yy <= yb; ++yy)
    for (int xx = xa; xx <= xb; ++xx) m = nanmax(m, (A)plane[(int64_t)yy * W + xx]);
  return (m == v) ? v : A(0);
}

// NCHW strides of a map read in place (centernet_decode's wh and reg heads).
struct MapStrides {
  int64_t b, c, y, x;
};

// CenterNet's box of the peak (b, label, y, x) with score s: centre (x, y) plus the reg head's offset (0.5 without a
// reg head: reg == nullptr), half sides from the wh head; d = [x1, y1, x2, y2, score, label].
template <typename T, typename A>
FASTOPS_HD void centernet_box(const T* wh, MapStrides ws, const T* reg, MapStrides rs, int64_t b, int64_t label,
                              int64_t y, int64_t x, A s, T* d) {
  A cx, cy;
  if (reg) {
    const T* r = reg + b * rs.b + y * rs.y + x * rs.x;
    cx = (A)x + (A)r[0];
    cy = (A)y + (A)r[rs.c];
  } else {
    cx = (A)x + A(0.5);
    cy = (A)y + A(0.5);
  }
  const T* w = wh + b * ws.b + y * ws.y + x * ws.x;
  const A hw = (A)w[0] / A(2), hh = (A)w[ws.c] / A(2);
  d[0] = (T)(cx - hw);
  d[1] = (T)(cy - hh);
  d[2] = (T)(cx + hw);
  d[3] = (T)(cy + hh);
  d[4] = (T)s;
  d[5] = (T)(A)label;
}

}  // namespace heatmaps
}  // namespace fastops

// host side (parsed by nvcc in both passes; used only by host code)
#include <ATen/core/Tensor.h>

namespace fastops {
namespace heatmaps {

// (centernet_decode: wh and reg read in place)
inline MapStrides map_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// kernel is clamped to the map (a window wider than 2 max(H, W) + 1 sees the same pixels), so any int64 is safe.
void check_peaks_args(const at::Tensor& hm, int64_t k, int64_t kernel, const char* name);
void check_decode_args(const at::Tensor& heat, const at::Tensor& wh, const c10::optional<at::Tensor>& reg,
                       int64_t k);
// Half-width of the kernel x kernel window, clamped to the map.
inline int peak_pad(int64_t kernel, int64_t H, int64_t W) {
  const int64_t pad = (kernel - 1) / 2, side = H > W ? H : W;
  return (int)(pad < side ? pad : side);
}

}  // namespace heatmaps
}  // namespace fastops
