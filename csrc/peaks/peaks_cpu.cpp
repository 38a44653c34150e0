// Peaks (heatmap_peaks, centernet_decode): CPU kernels. The result does not depend on how planes are split
// between threads (see peaks_impl). float16/bfloat16 are computed in float, float64 in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <vector>

#include "keypoints_vec.h"
#include "peaks/peaks.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

template <typename A>
struct Cand {
  A s;
  int64_t i;
};

// Row kernels of CenterNet's _nms (NaN-propagating maxima, as max_pool2d). float runs kLanes (one native vector) at a time.
template <typename A>
void rows_max3(const A* r0, const A* r1, const A* r2, A* out, int W) {
  int x = 0;
  if constexpr (std::is_same<A, float>::value) {
    for (; x + kLanes <= W; x += kLanes) {
      const vfloat v = vnanmax(vnanmax(vload(r0 + x), vload(r1 + x)), vload(r2 + x));
      std::memcpy(out + x, &v, sizeof(v));
    }
  }
  for (; x < W; ++x) out[x] = nanmax(nanmax(r0[x], r1[x]), r2[x]);
}

// sc[x] = cur[x] when it equals max(vm[x-1], vm[x], vm[x+1]) (clipped at the ends), else 0.
template <typename A>
void row_keep3(const A* vm, const A* cur, A* sc, int W) {
  if (W == 1) {
    sc[0] = vm[0] == cur[0] ? cur[0] : A(0);
    return;
  }
  sc[0] = nanmax(vm[0], vm[1]) == cur[0] ? cur[0] : A(0);
  int x = 1;
  if constexpr (std::is_same<A, float>::value) {
    for (; x + kLanes <= W - 1; x += kLanes) {
      const vfloat c = vload(cur + x);
      const vfloat m = vnanmax(vnanmax(vload(vm + x - 1), vload(vm + x)), vload(vm + x + 1));
      const vfloat r = (m == c) ? c : vfloat{};
      std::memcpy(sc + x, &r, sizeof(r));
    }
  }
  for (; x < W - 1; ++x) {
    const A m = nanmax(nanmax(vm[x - 1], vm[x]), vm[x + 1]);
    sc[x] = m == cur[x] ? cur[x] : A(0);
  }
  sc[W - 1] = nanmax(vm[W - 2], vm[W - 1]) == cur[W - 1] ? cur[W - 1] : A(0);
}

// Running top-k of (score, flat index) candidates: a max-heap on "worse", so its front is the current k-th best.
template <typename A>
struct TopK {
  std::vector<Cand<A>> heap;
  int64_t k = 0;
  A thr = -std::numeric_limits<A>::infinity();
  bool full = false;
  static bool worse(const Cand<A>& a, const Cand<A>& b) { return cand_before(a.s, a.i, b.s, b.i); }
  void reset(int64_t k_) {
    heap.clear();
    k = k_;
    thr = -std::numeric_limits<A>::infinity();
    full = k == 0;
  }
  // candidates arrive in increasing index order within a plane, and planes in increasing order: an equal score
  // never beats the heap's worst
  void push(A s, int64_t i) {
    if (!full) {
      heap.push_back({s, i});
      std::push_heap(heap.begin(), heap.end(), worse);
      if ((int64_t)heap.size() == k) {
        full = true;
        thr = heap.front().s;
      }
    } else if (s > thr) {
      std::pop_heap(heap.begin(), heap.end(), worse);
      heap.back() = {s, i};
      std::push_heap(heap.begin(), heap.end(), worse);
      thr = heap.front().s;
    }
  }
};

// Scans one plane (score = heat * keep) into the running top-k. Row by row: once the heap is full, a row whose
// raw maximum cannot beat the heap's worst (and whose zeros cannot either) is skipped before any peak test; else
// the vertical then horizontal window maxima and the row's scores are computed vectorised.
template <typename A>
void plane_topk(const A* p, int H, int W, int pad, int64_t base, TopK<A>& top, std::vector<A>& work) {
  work.resize((size_t)2 * W);
  A* vm = work.data();
  A* sc = vm + W;
  bool nan;
  for (int y = 0; y < H; ++y) {
    const A* cur = p + (int64_t)y * W;
    if (top.full && !(A(0) > top.thr)) {
      const A rm = lanes_max(cur, W, nan);
      if (!(rm > top.thr) && !nan) continue;
    }
    const int ya = std::max(0, y - pad), yb = std::min(H - 1, y + pad);
    if (pad == 1) {
      rows_max3(p + (int64_t)ya * W, cur, p + (int64_t)yb * W, vm, W);
      row_keep3(vm, cur, sc, W);
    } else {
      std::copy(p + (int64_t)ya * W, p + (int64_t)ya * W + W, vm);
      for (int yy = ya + 1; yy <= yb; ++yy) {
        const A* r = p + (int64_t)yy * W;
        for (int x = 0; x < W; ++x) vm[x] = nanmax(vm[x], r[x]);
      }
      for (int x = 0; x < W; ++x) {
        const int xa = std::max(0, x - pad), xb = std::min(W - 1, x + pad);
        A m = vm[xa];
        for (int xx = xa + 1; xx <= xb; ++xx) m = nanmax(m, vm[xx]);
        sc[x] = m == cur[x] ? cur[x] : A(0);
      }
    }
    if (top.full && !(lanes_max(sc, W, nan) > top.thr)) continue;  // scores are never NaN
    const int64_t rb = base + (int64_t)y * W;
    for (int x = 0; x < W; ++x) top.push(sc[x], rb + x);
  }
}

// Top-k per image over all its planes. Each task keeps one running top-k per image over its planes; the union of
// the tasks' lists holds the image's top-k, which a final sort by the strict (score, index) order extracts: the
// result does not depend on how the planes were split between threads.
template <typename T, typename A>
void peaks_impl(const Tensor& hm, int64_t k, int64_t kernel, std::vector<Cand<A>>& result) {
  const int64_t B = hm.size(0), C = hm.size(1);
  const int H = (int)hm.size(2), W = (int)hm.size(3);
  const int64_t plane = (int64_t)H * W;
  const int pad = peak_pad(kernel, H, W);
  std::vector<std::vector<Cand<A>>> per_image((size_t)B);
  std::mutex mu;
  const T* hp = hm.data_ptr<T>();
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> work, conv;
    TopK<A> top;
    int64_t cur_b = -1;
    auto flush = [&]() {
      if (cur_b < 0) return;
      std::lock_guard<std::mutex> lock(mu);
      auto& v = per_image[(size_t)cur_b];
      v.insert(v.end(), top.heap.begin(), top.heap.end());
    };
    for (int64_t m = begin; m < end; ++m) {
      const int64_t b = m / C;
      if (b != cur_b) {
        flush();
        cur_b = b;
        top.reset(k);
      }
      const A* q = as_acc<T, A>(hp + m * plane, plane, conv);
      plane_topk<A>(q, H, W, pad, (m % C) * plane, top, work);
    }
    flush();
  });
  result.resize((size_t)(B * k));
  for (int64_t b = 0; b < B; ++b) {
    auto& v = per_image[(size_t)b];
    std::partial_sort(v.begin(), v.begin() + k, v.end(),
                      [](const Cand<A>& a, const Cand<A>& c) { return cand_before(a.s, a.i, c.s, c.i); });
    std::copy(v.begin(), v.begin() + k, result.begin() + b * k);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> heatmap_peaks_cpu(const Tensor& heatmaps, int64_t k, int64_t kernel) {
  check_peaks_args(heatmaps, k, kernel, "heatmaps");
  const Tensor hm = heatmaps.contiguous();
  const int64_t B = hm.size(0), C = hm.size(1), H = hm.size(2), W = hm.size(3);
  const int64_t ke = std::min<int64_t>(k, C * H * W);
  Tensor scores = at::empty({B, ke}, hm.options());
  auto lo = hm.options().dtype(at::kLong);
  Tensor labels = at::empty({B, ke}, lo), ys = at::empty({B, ke}, lo), xs = at::empty({B, ke}, lo);
  if (B * ke == 0) return {scores, labels, ys, xs};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "heatmap_peaks", [&] {
    using A = acc_t<scalar_t>;
    std::vector<Cand<A>> res;
    peaks_impl<scalar_t, A>(hm, ke, kernel, res);
    scalar_t* sp = scores.data_ptr<scalar_t>();
    int64_t *lp = labels.data_ptr<int64_t>(), *yp = ys.data_ptr<int64_t>(), *xp = xs.data_ptr<int64_t>();
    for (int64_t i = 0; i < B * ke; ++i) {
      sp[i] = (scalar_t)res[i].s;
      const int64_t idx = res[i].i;
      lp[i] = idx / (H * W);
      yp[i] = (idx % (H * W)) / W;
      xp[i] = idx % W;
    }
  });
  return {scores, labels, ys, xs};
}

Tensor centernet_decode_cpu(const Tensor& heat, const Tensor& wh, const c10::optional<Tensor>& reg, int64_t k) {
  check_decode_args(heat, wh, reg, k);
  const Tensor hm = heat.contiguous();
  const int64_t B = hm.size(0), C = hm.size(1), H = hm.size(2), W = hm.size(3);
  const int64_t ke = std::min<int64_t>(k, C * H * W);
  Tensor dets = at::empty({B, ke, 6}, hm.options());
  if (B * ke == 0) return dets;
  const bool has_reg = reg.has_value();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hm.scalar_type(), "centernet_decode", [&] {
    using A = acc_t<scalar_t>;
    std::vector<Cand<A>> res;
    peaks_impl<scalar_t, A>(hm, ke, 3, res);
    // wh / reg are read in place through their strides (no permute copy)
    const MapStrides ws = map_strides(wh), rs = has_reg ? map_strides(*reg) : MapStrides{0, 0, 0, 0};
    const scalar_t* rgp = has_reg ? reg->data_ptr<scalar_t>() : nullptr;
    scalar_t* dp = dets.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < ke; ++j) {
        const Cand<A>& c = res[b * ke + j];
        const int64_t label = c.i / (H * W), y = (c.i % (H * W)) / W, x = c.i % W;
        centernet_box<scalar_t, A>(wh.data_ptr<scalar_t>(), ws, rgp, rs, b, label, y, x, c.s, dp + (b * ke + j) * 6);
      }
  });
  return dets;
}

}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  using namespace fastops::heatmaps;
  m.impl("heatmap_peaks", &heatmap_peaks_cpu);
  m.impl("centernet_decode", &centernet_decode_cpu);
}
