// Keypoint R-CNN (roi_heatmaps_to_keypoints): CPU kernel. One task per (RoI, block of up to kPlanes keypoints),
// largest RoIs first, taken dynamically by the threads; the result of a task depends on nothing else, so any
// thread count gives the same output.
//
// Per task, for each block of up to kCols output columns: the horizontal pass resizes the H input rows to the
// block's columns (H x cols values, 4 multiply-adds each, vectorised over the columns: within a run of columns
// sharing their 4 source taps the source values are broadcast, no gathers), then every output row combines 4 of
// those rows (4 multiply-adds per pixel, vectorised over the columns with keypoints_vec.h's lanes, the same
// fused/unfused operations lane by lane as the scalar taps4) and only its maximum is kept, with the first-maximum
// rule of torch.argmax. A row whose value bound (from the 4 rows' extrema) cannot reach the best so far is
// skipped. Cost O(K (H w + h w)) per box, scratch O(H kCols); the [K, h, w] map is never stored.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "keypoint_rcnn/keypoint_rcnn.h"
#include "cpu_parallel.h"
#include "keypoints_vec.h"

namespace fastops {
namespace kprcnn {
namespace {

using at::Tensor;

constexpr int64_t kCols = 512;  // output columns per block: scratch H x kCols
constexpr int64_t kPlanes = 6;  // keypoint planes per work item

// Tap tables of one axis: idx[j * stride + o], w[j * stride + o] for output index o and tap j (stride = out +
// kLanes: a vector load at any o < out stays inside the table), and the runs of consecutive outputs that share all
// 4 source taps (run[k] .. run[k + 1]; upsampling by s gives runs of about s outputs).
template <typename A>
struct Axis {
  std::vector<int32_t> idx, run;
  std::vector<A> w;
  int64_t stride = 0;
  void build(int64_t in, int64_t out) {
    stride = out + heatmaps::kLanes;
    idx.assign((size_t)(4 * stride), 0);
    w.assign((size_t)(4 * stride), A(0));
    run.clear();
    int32_t ti[4];
    A tw[4];
    for (int64_t o = 0; o < out; ++o) {
      cubic_taps<A>(in, out, o, ti, tw);
      bool same = o > 0;
      for (int j = 0; j < 4; ++j) {
        same = same && idx[(size_t)(j * stride + o - 1)] == ti[j];
        idx[(size_t)(j * stride + o)] = ti[j];
        w[(size_t)(j * stride + o)] = tw[j];
      }
      if (!same) run.push_back((int32_t)o);
    }
    run.push_back((int32_t)out);
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

// One row of the horizontal pass: out[c - c0] = resized src row at output columns [c0, c0 + n). float: per run
// of columns sharing their 4 taps, the 4 source values are broadcast and the weights loaded kLanes columns at a
// time (a run's last vector spills into the next run's columns, which that run then overwrites, or into the
// kLanes of padding after out[n - 1]); the same multiply-adds per column as the scalar taps4.
template <typename A>
void hrow(const A* src, const Axis<A>& ax, int64_t c0, int64_t n, A* out) {
  const int64_t s = ax.stride;
  const int32_t *i0 = ax.idx.data(), *i1 = i0 + s, *i2 = i1 + s, *i3 = i2 + s;
  const A *w0 = ax.w.data(), *w1 = w0 + s, *w2 = w1 + s, *w3 = w2 + s;
  if constexpr (std::is_same<A, float>::value) {
    using heatmaps::vfloat;
    const int32_t* run = ax.run.data();
    size_t k = (size_t)(std::upper_bound(ax.run.begin(), ax.run.end(), (int32_t)c0) - ax.run.begin()) - 1;
    for (; run[k] < c0 + n; ++k) {
      const int64_t a = std::max<int64_t>(run[k], c0), b = std::min<int64_t>(run[k + 1], c0 + n);
      const vfloat v0 = heatmaps::vsplat(src[i0[a]]), v1 = heatmaps::vsplat(src[i1[a]]),
                   v2 = heatmaps::vsplat(src[i2[a]]), v3 = heatmaps::vsplat(src[i3[a]]);
      for (int64_t c = a; c < b; c += heatmaps::kLanes) {
        vfloat t = heatmaps::vfma(v0, heatmaps::vload(w0 + c), v1 * heatmaps::vload(w1 + c));
        t = heatmaps::vfma(v2, heatmaps::vload(w2 + c), t);
        heatmaps::vstore(out + (c - c0), heatmaps::vfma(v3, heatmaps::vload(w3 + c), t));
      }
    }
  } else {
    for (int64_t c = c0; c < c0 + n; ++c)
      out[c - c0] = taps4(src[i0[c]], src[i1[c]], src[i2[c]], src[i3[c]], w0[c], w1[c], w2[c], w3[c]);
  }
}

// Minimum and maximum of h[0..n) (NaN-blind) and whether a NaN occurred.
template <typename A>
void row_range(const A* h, int64_t n, A& lo, A& hi, bool& nan) {
  A l = h[0], u = h[0];
  bool f = false;
  int64_t x = 0;
  if constexpr (std::is_same<A, float>::value) {
    using heatmaps::vfloat;
    if (n >= heatmaps::kLanes) {
      vfloat vl = heatmaps::vload(h), vu = vl;
      heatmaps::vint vn = vl != vl;
      for (; x + heatmaps::kLanes <= n; x += heatmaps::kLanes) {
        const vfloat v = heatmaps::vload(h + x);
        vl = heatmaps::vmin(v, vl);  // x86 min/max return the second operand for NaN: NaN lanes never enter
        vu = heatmaps::vmax(v, vu);
        vn |= v != v;
      }
      for (int j = 0; j < heatmaps::kLanes; ++j) {
        l = vl[j] < l ? vl[j] : l;
        u = vu[j] > u ? vu[j] : u;
        f |= vn[j] != 0;
      }
    }
  }
  for (; x < n; ++x) {
    l = h[x] < l ? h[x] : l;
    u = h[x] > u ? h[x] : u;
    f |= h[x] != h[x];
  }
  lo = l, hi = u, nan = f;
}

// out[x] = 4-row combination (vectorised over x); returns the row maximum (NaN-blind) and whether a NaN occurred.
template <typename A>
A vrow(const A* a, const A* b, const A* c, const A* d, A w0, A w1, A w2, A w3, int64_t n, A* out, bool& nan) {
  A m = -std::numeric_limits<A>::infinity();
  bool any_nan = false;
  int64_t x = 0;
  if constexpr (std::is_same<A, float>::value) {
    using heatmaps::vfloat;
    const vfloat W0 = heatmaps::vsplat(w0), W1 = heatmaps::vsplat(w1), W2 = heatmaps::vsplat(w2),
                 W3 = heatmaps::vsplat(w3);
    vfloat vm = heatmaps::vsplat(m);
    heatmaps::vint vn = heatmaps::vint{};
    for (; x + heatmaps::kLanes <= n; x += heatmaps::kLanes) {
      vfloat v = heatmaps::vfma(heatmaps::vload(a + x), W0, heatmaps::vload(b + x) * W1);
      v = heatmaps::vfma(heatmaps::vload(c + x), W2, v);
      v = heatmaps::vfma(heatmaps::vload(d + x), W3, v);
      heatmaps::vstore(out + x, v);
      vm = heatmaps::vmax(v, vm);
      vn |= v != v;
    }
    for (int j = 0; j < heatmaps::kLanes; ++j) {
      m = vm[j] > m ? vm[j] : m;
      any_nan |= vn[j] != 0;
    }
  }
  for (; x < n; ++x) {
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
  const int64_t ld = cols + heatmaps::kLanes;  // row stride of the horizontal pass (vector spill room)
  A* hb = sc.get<A>((size_t)((H + 1) * ld + 2 * H));
  A* row = hb + H * ld;
  A* lo = row + ld;
  A* hi = lo + H;
  const int64_t sy = ay.stride;
  Best<A> best;
  for (int64_t c0 = 0; c0 < rw; c0 += cols) {
    const int64_t n = std::min(cols, rw - c0);
    for (int64_t y = 0; y < H; ++y) {
      A* h = hb + y * ld;
      hrow(plane + y * W, ax, c0, n, h);
      bool nan;
      row_range(h, n, lo[y], hi[y], nan);
      if (nan) lo[y] = hi[y] = std::numeric_limits<A>::quiet_NaN();  // a NaN row is never skipped
    }
    for (int64_t oy = 0; oy < rh; ++oy) {
      int32_t r[4];
      A w[4];
      for (int j = 0; j < 4; ++j) {
        r[j] = ay.idx[(size_t)(j * sy + oy)];
        w[j] = ay.w[(size_t)(j * sy + oy)];
      }
      // skip rows that cannot hold a better candidate (a later block's row can tie at a lower index: strict)
      if (best.i >= 0 && best.v == best.v && row_bound(lo, hi, r, w) < (double)best.v) continue;
      bool nan;
      const A m = vrow(hb + r[0] * ld, hb + r[1] * ld, hb + r[2] * ld, hb + r[3] * ld, w[0], w[1], w[2], w[3], n,
                       row, nan);
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
  // Work items: (RoI, block of up to kPlanes keypoints; the block's planes share the tap tables), largest
  // upsampled map first, taken dynamically (cpu_parallel.h): RoI costs differ ~150x between 32 and 400 px boxes.
  const int64_t nb = (K + kPlanes - 1) / kPlanes;
  std::vector<RoiGeom> geo((size_t)R);
  std::vector<int64_t> order((size_t)R);
  for (int64_t r = 0; r < R; ++r) {
    geo[(size_t)r] = roi_geometry<G>(rp + 4 * r);
    order[(size_t)r] = r;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return geo[(size_t)a].rw * geo[(size_t)a].rh > geo[(size_t)b].rw * geo[(size_t)b].rh;
  });
  struct State {
    Axis<A> ax, ay;
    Scratch sc;
  };
  dynamic_for(R * nb, [] { return State(); }, [&](int64_t item, State& st) {
    const int64_t r = order[(size_t)(item / nb)], k0 = item % nb * kPlanes;
    const RoiGeom& g = geo[(size_t)r];
    st.ax.build(W, g.rw);
    st.ay.build(H, g.rh);
    for (int64_t t = r * K + k0; t < r * K + std::min(K, k0 + kPlanes); ++t) {
      const Best<A> b = plane_argmax<A>(mp + t * H * W, H, W, g, st.ax, st.ay, st.sc);
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
