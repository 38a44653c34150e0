// Keypoint R-CNN (roi_heatmaps_to_keypoints): CPU kernel. One task per (RoI, keypoint), parallel with
// at::parallel_for; the result of a task depends on nothing else, so any thread count gives the same output.
//
// Per task, for each block of up to kCols output columns: the horizontal pass resizes the H input rows to the
// block's columns (H x cols values, 4 multiply-adds each), then every output row combines 4 of those rows
// (4 multiply-adds per pixel, vectorised over the columns) and only its maximum is kept, with the first-maximum
// rule of torch.argmax. A row whose value bound (from the 4 rows' extrema) cannot reach the best so far is
// skipped. Cost O(K (H w + h w)) per box, scratch O(H kCols); the [K, h, w] map is never stored.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "keypoint_rcnn/keypoint_rcnn.h"

namespace fastops {
namespace kprcnn {
namespace {

using at::Tensor;

constexpr int64_t kCols = 512;  // output columns per block: scratch H x kCols

// Tap tables of one axis: idx[j * n + o], w[j * n + o] for output index o and tap j.
template <typename A>
struct Axis {
  std::vector<int32_t> idx;
  std::vector<A> w;
  void build(int64_t in, int64_t out) {
    idx.resize((size_t)(4 * out));
    w.resize((size_t)(4 * out));
    int32_t ti[4];
    A tw[4];
    for (int64_t o = 0; o < out; ++o) {
      cubic_taps<A>(in, out, o, ti, tw);
      for (int j = 0; j < 4; ++j) {
        idx[(size_t)(j * out + o)] = ti[j];
        w[(size_t)(j * out + o)] = tw[j];
      }
    }
  }
};

template <typename A>
struct Best {
  A v = A(0);
  int64_t i = -1;
  void offer(A val, int64_t idx) {
    if (better(val, idx, v, i)) {
      v = val;
      i = idx;
    }
  }
};

// One row of the horizontal pass: out[c] = resized src row at output columns [c0, c0 + n).
template <typename A>
void hrow(const A* src, const Axis<A>& ax, int64_t rw, int64_t c0, int64_t n, A* out) {
  const int32_t *i0 = ax.idx.data() + c0, *i1 = i0 + rw, *i2 = i1 + rw, *i3 = i2 + rw;
  const A *w0 = ax.w.data() + c0, *w1 = w0 + rw, *w2 = w1 + rw, *w3 = w2 + rw;
  for (int64_t c = 0; c < n; ++c)
    out[c] = taps4(src[i0[c]], src[i1[c]], src[i2[c]], src[i3[c]], w0[c], w1[c], w2[c], w3[c]);
}

// out[c] = 4-row combination (vectorised over c); returns the row maximum (NaN-blind) and whether a NaN occurred.
template <typename A>
A vrow(const A* a, const A* b, const A* c, const A* d, A w0, A w1, A w2, A w3, int64_t n, A* out, bool& nan) {
  A m = -std::numeric_limits<A>::infinity();
  bool any_nan = false;
  for (int64_t x = 0; x < n; ++x) {
    const A v = taps4(a[x], b[x], c[x], d[x], w0, w1, w2, w3);
    out[x] = v;
    m = v > m ? v : m;
    any_nan |= v != v;
  }
  nan = any_nan;
  return m;
}

// max(sum_j w_j h_j) over a row from the 4 rows' extrema, in double, plus a margin covering the kernel's rounding
// (4 terms, relative error far below 1e-5 of sum |w_j| max |h_j|). NaN rows give NaN (never skipped).
template <typename A>
double row_bound(const A* lo, const A* hi, const int32_t* r, const A* w) {
  double b = 0, mag = 0;
  for (int j = 0; j < 4; ++j) {
    const double wj = (double)w[j], l = (double)lo[r[j]], h = (double)hi[r[j]];
    b += wj >= 0 ? wj * h : wj * l;
    mag += std::fabs(wj) * std::max(std::fabs(l), std::fabs(h));
  }
  return b + 1e-5 * mag;
}

struct Scratch {
  std::vector<char> buf;
  template <typename A>
  A* get(size_t n) {
    if (buf.size() < n * sizeof(A)) buf.resize(n * sizeof(A));
    return reinterpret_cast<A*>(buf.data());
  }
};

// One (RoI, keypoint): first maximum of the upsampled plane (flat index into rh x rw) and its value.
template <typename A>
Best<A> plane_argmax(const A* plane, int64_t H, int64_t W, const RoiGeom& g, const Axis<A>& ax, const Axis<A>& ay,
                     Scratch& sc) {
  const int64_t rw = g.rw, rh = g.rh, cols = std::min(rw, kCols);
  A* hb = sc.get<A>((size_t)((H + 1) * cols + 2 * H));
  A* row = hb + H * cols;
  A* lo = row + cols;
  A* hi = lo + H;
  Best<A> best;
  for (int64_t c0 = 0; c0 < rw; c0 += cols) {
    const int64_t n = std::min(cols, rw - c0);
    for (int64_t y = 0; y < H; ++y) {
      A* h = hb + y * cols;
      hrow(plane + y * W, ax, rw, c0, n, h);
      A l = h[0], u = h[0];
      bool nan = false;
      for (int64_t x = 0; x < n; ++x) {
        l = h[x] < l ? h[x] : l;
        u = h[x] > u ? h[x] : u;
        nan |= h[x] != h[x];
      }
      lo[y] = nan ? std::numeric_limits<A>::quiet_NaN() : l;  // a NaN row is never skipped
      hi[y] = nan ? std::numeric_limits<A>::quiet_NaN() : u;
    }
    for (int64_t oy = 0; oy < rh; ++oy) {
      int32_t r[4];
      A w[4];
      for (int j = 0; j < 4; ++j) {
        r[j] = ay.idx[(size_t)(j * rh + oy)];
        w[j] = ay.w[(size_t)(j * rh + oy)];
      }
      // skip rows that cannot hold a better candidate (a later block's row can tie at a lower index: strict)
      if (best.i >= 0 && best.v == best.v && row_bound(lo, hi, r, w) < (double)best.v) continue;
      bool nan;
      const A m = vrow(hb + r[0] * cols, hb + r[1] * cols, hb + r[2] * cols, hb + r[3] * cols, w[0], w[1], w[2],
                       w[3], n, row, nan);
      const int64_t base = oy * rw + c0;
      if (nan) {
        for (int64_t x = 0; x < n; ++x)
          if (row[x] != row[x]) {
            best.offer(row[x], base + x);
            break;
          }
      } else if (better(m, base, best.v, best.i)) {  // the row's first maximum can improve on the best
        for (int64_t x = 0; x < n; ++x)
          if (row[x] == m) {
            best.offer(m, base + x);
            break;
          }
      }
    }
  }
  return best;
}

template <typename A, typename G>
void heatmaps_to_keypoints_impl(const Tensor& maps, const Tensor& rois, Tensor& kps, Tensor& scores) {
  const int64_t R = maps.size(0), K = maps.size(1), H = maps.size(2), W = maps.size(3);
  const A* mp = maps.data_ptr<A>();
  const G* rp = rois.data_ptr<G>();
  float* kp = kps.data_ptr<float>();
  float* sp = scores.data_ptr<float>();
  at::parallel_for(0, R * K, 1, [&](int64_t begin, int64_t end) {
    Axis<A> ax, ay;
    Scratch sc;
    int64_t cur = -1;
    RoiGeom g{};
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / K;
      if (r != cur) {
        cur = r;
        g = roi_geometry<G>(rp + 4 * r);
        ax.build(W, g.rw);
        ay.build(H, g.rh);
      }
      const Best<A> b = plane_argmax<A>(mp + t * H * W, H, W, g, ax, ay, sc);
      kp[3 * t + 0] = keypoint_coord(b.i % g.rw, g.cw, g.ox);
      kp[3 * t + 1] = keypoint_coord(b.i / g.rw, g.ch, g.oy);
      kp[3 * t + 2] = 1.0f;
      sp[t] = (float)b.v;
    }
  });
}

std::tuple<Tensor, Tensor> roi_heatmaps_to_keypoints_cpu(const Tensor& maps_, const Tensor& rois_) {
  check_heatmaps_to_keypoints(maps_, rois_);
  const Tensor maps = maps_.contiguous(), rois = rois_.contiguous();
  const int64_t R = maps.size(0), K = maps.size(1);
  auto fo = maps.options().dtype(at::kFloat);
  Tensor kps = at::empty({R, K, 3}, fo), scores = at::empty({R, K}, fo);
  if (R * K == 0) return {kps, scores};
  AT_DISPATCH_FLOATING_TYPES(maps.scalar_type(), "roi_heatmaps_to_keypoints", [&] {
    using A = scalar_t;
    if (rois.scalar_type() == at::kDouble)
      heatmaps_to_keypoints_impl<A, double>(maps, rois, kps, scores);
    else
      heatmaps_to_keypoints_impl<A, float>(maps, rois, kps, scores);
  });
  return {kps, scores};
}

}  // namespace
}  // namespace kprcnn
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("roi_heatmaps_to_keypoints", &fastops::kprcnn::roi_heatmaps_to_keypoints_cpu);
}
