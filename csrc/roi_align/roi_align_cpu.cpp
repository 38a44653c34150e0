// RoIAlign CPU kernels (forward and deterministic backward), single-level and multi-level (FPN).
//
// Each RoI's bilinear sampling is turned into two sparse 1-D weight tables (rows per output row, columns per
// output column, 1/grid folded in): a bin is sum_a sum_b wy[a] wx[b] F[y_a, x_b]. That makes the cost per bin
// the number of distinct pixels the samples touch (independent of the sampling ratio) and lets the inner loop
// run over channels: contiguous (vectorised) for channels_last input, blocks of channels otherwise.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "roi_align/roi_align.h"

namespace fastops {
namespace roi_align {
namespace {

// One feature level as the kernels see it.
template <typename scalar_t>
struct Level {
  scalar_t* data;
  int64_t sN, sC, sH, sW;
  int H, W;
  double scale;
};

// Sparse separable weights of one RoI: bin p along y uses rows yi[yo[p]..yo[p+1]) with weights yw[...];
// bin q along x uses columns x0 + xi[xo[q]..xo[q+1]) with weights xw[...]. [x0, x0 + span) covers every column.
template <typename T>
struct RoiTable {
  int level = -1;  // -1: the RoI contributes nothing (output 0)
  int64_t batch = 0;
  int x0 = 0, span = 0;
  int span_pad = 0;  // span rounded up to whole vectors where the row allows it (NCHW loops run full vectors)
  int y_first = 0;   // smallest row: RoIs are visited top to bottom so neighbours share cached rows
  int ld = 0;        // row length of xd: span_pad rounded up to whole vectors
  std::vector<T> xd; // dense x weights [pw][ld] over the span (NCHW backward: vectorised AXPYs)
  std::vector<int> yo, xo, yi, xi;
  std::vector<T> yw, xw;
};

// Appends the taps of all samples of each bin along one axis, merging repeated pixels.
template <typename T>
void build_axis(T start, T bin, int pooled, int grid, int size, std::vector<int>& off, std::vector<int>& idx,
                std::vector<T>& w) {
  off.assign(pooled + 1, 0);
  idx.clear();
  w.clear();
  const T inv = T(1) / static_cast<T>(grid > 0 ? grid : 1);
  auto add = [&](int begin, int pix, T wt) {
    if (wt == T(0)) return;
    const int n = static_cast<int>(idx.size());
    // Taps arrive in non-decreasing pixel order within a bin: a repeat is one of the last two entries.
    if (n > begin && idx[n - 1] == pix) {
      w[n - 1] += wt;
    } else if (n - 1 > begin && idx[n - 2] == pix) {
      w[n - 2] += wt;
    } else {
      idx.push_back(pix);
      w.push_back(wt);
    }
  };
  for (int p = 0; p < pooled; ++p) {
    const int begin = static_cast<int>(idx.size());
    for (int i = 0; i < grid; ++i) {
      int lo, hi;
      T wlo, whi;
      if (tap1d(sample_coord(start, bin, p, i, grid), size, lo, hi, wlo, whi)) {
        add(begin, lo, wlo * inv);
        add(begin, hi, whi * inv);
      }
    }
    off[p + 1] = static_cast<int>(idx.size());
  }
}

// Dense x-weight rows are padded to whole vectors of this many lanes (one AVX-512 register of float).
constexpr int kLanes = 16;

template <typename T, typename scalar_t, typename level_t>
void build_table(RoiTable<T>& t, const scalar_t* roi, const std::vector<Level<level_t>>& levels, int ph, int pw,
                 int sampling_ratio, bool aligned, int canonical_scale, int canonical_level, int k_min, int k_max,
                 bool dense_x) {
  t.batch = static_cast<int64_t>(static_cast<T>(roi[0]));
  t.level = levels.size() == 1 ? 0 : fpn_level<T>(roi + 1, canonical_scale, canonical_level, k_min, k_max);
  t.span = 0;
  if (t.level >= static_cast<int>(levels.size())) t.level = -1;  // non-consecutive levels: no map, output 0
  if (t.level < 0) return;
  const auto& L = levels[t.level];
  const RoiBox<T> b = roi_box<T>(roi + 1, static_cast<T>(L.scale), ph, pw, sampling_ratio, aligned);
  build_axis<T>(b.start_h, b.bin_h, ph, b.grid_h, L.H, t.yo, t.yi, t.yw);
  build_axis<T>(b.start_w, b.bin_w, pw, b.grid_w, L.W, t.xo, t.xi, t.xw);
  if (!t.xi.empty()) {  // (inverted boxes with aligned=True sample right to left: take the true bounds)
    const auto [lo, hi] = std::minmax_element(t.xi.begin(), t.xi.end());
    t.x0 = *lo;
    t.span = *hi - t.x0 + 1;
    t.span_pad = std::max(t.span, std::min((t.span + kLanes - 1) / kLanes * kLanes, L.W - t.x0));
    t.y_first = t.yi.empty() ? 0 : *std::min_element(t.yi.begin(), t.yi.end());
    t.ld = (t.span_pad + kLanes - 1) / kLanes * kLanes;
    for (int& x : t.xi) x -= t.x0;
    if (!dense_x) return;  // (the forward pass reads the sparse taps: keep its tables small and cache-resident)
    t.xd.assign(static_cast<size_t>(pw) * t.ld, T(0));
    for (int q = 0; q < pw; ++q)
      for (int b = t.xo[q]; b < t.xo[q + 1]; ++b) t.xd[q * t.ld + t.xi[b]] += t.xw[b];
  }
}

// Rejects what would otherwise index out of bounds or loop on garbage: non-finite boxes, bad batch indices.
template <typename scalar_t>
void check_rois(const at::Tensor& rois, int64_t batch_size) {
  const scalar_t* r = rois.data_ptr<scalar_t>();
  for (int64_t k = 0; k < rois.size(0); ++k) {
    for (int j = 0; j < 5; ++j) {
      const double v = static_cast<double>(r[k * 5 + j]);
      TORCH_CHECK(std::isfinite(v), "roi_align: boxes must be finite, got ", v, " in row ", k);
    }
    const double b = static_cast<double>(r[k * 5]);
    TORCH_CHECK(b >= 0 && b < static_cast<double>(batch_size) && b == std::floor(b),
                "roi_align: batch index of box ", k, " must be an integer in [0, ", batch_size, "), got ", b);
  }
}

// Channels per parallel task on NCHW maps in the backward pass.
constexpr int kCB = 16;

// All RoIs' tables (built in parallel) and the order that visits them grouped by (level, image), so the
// feature plane being read stays in cache.
template <typename T, typename scalar_t, typename level_t>
void build_tables(std::vector<RoiTable<T>>& tables, std::vector<int64_t>& order, int& max_span,
                  const scalar_t* rois, int64_t K, const std::vector<Level<level_t>>& levels, int ph, int pw,
                  int sampling_ratio, bool aligned, int canonical_scale, int canonical_level, int k_min, int k_max,
                  bool dense_x) {
  tables.resize(K);
  at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      build_table<T>(tables[k], rois + k * 5, levels, ph, pw, sampling_ratio, aligned, canonical_scale,
                     canonical_level, k_min, k_max, dense_x);
  });
  order.clear();
  max_span = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (tables[k].level >= 0 && tables[k].span > 0) order.push_back(k);
    max_span = std::max(max_span, tables[k].span_pad);
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const RoiTable<T>& ta = tables[a];
    const RoiTable<T>& tb = tables[b];
    return std::make_tuple(ta.level, ta.batch, ta.y_first, ta.x0) <
           std::make_tuple(tb.level, tb.batch, tb.y_first, tb.x0);
  });
}

// One RoI, one channel, NCHW plane: for each output row p, V = sum_a wy[a] * F[y_a, x0 : x0 + span] (a
// contiguous, vectorised AXPY), then out[p, q] = sum_b wx[b] * V[x_b] (a few taps per bin).
template <bool kUnitW, typename T, typename scalar_t>
inline void forward_plane(const RoiTable<T>& t, const scalar_t* __restrict__ plane, int64_t sH, int64_t sW,
                          scalar_t* __restrict__ out, int64_t oH, int64_t oW, int ph, int pw, T* __restrict__ V) {
  const int span = kUnitW ? t.span_pad : t.span;  // padded columns are never read by the x step
  const int64_t sw = kUnitW ? 1 : sW;
  for (int p = 0; p < ph; ++p) {
    const int a0 = t.yo[p], a1 = t.yo[p + 1];
    if (a0 == a1) continue;  // the output was zero-initialised
    {
      const scalar_t* row = plane + t.yi[a0] * sH + t.x0 * sw;
      const T w = t.yw[a0];
      for (int s = 0; s < span; ++s) V[s] = w * static_cast<T>(row[s * sw]);
    }
    for (int a = a0 + 1; a < a1; ++a) {
      const scalar_t* row = plane + t.yi[a] * sH + t.x0 * sw;
      const T w = t.yw[a];
      for (int s = 0; s < span; ++s) V[s] += w * static_cast<T>(row[s * sw]);
    }
    for (int q = 0; q < pw; ++q) {
      T acc = T(0);
      for (int b = t.xo[q]; b < t.xo[q + 1]; ++b) acc += t.xw[b] * V[t.xi[b]];
      out[p * oH + q * oW] = static_cast<scalar_t>(acc);
    }
  }
}

// forward_plane for NC unit-stride planes at once (same tables, NC accumulators): the table walk, not the
// arithmetic, dominates small bins, so sharing it between channels is the main saving on NCHW input.
template <int NC, typename T, typename scalar_t>
inline void forward_planes(const RoiTable<T>& t, const scalar_t* __restrict__ plane, int64_t sC, int64_t sH,
                           scalar_t* __restrict__ out, int64_t oC, int64_t oH, int64_t oW, int ph, int pw,
                           T* __restrict__ V, int64_t ldv) {
  const int span = t.span_pad;
  for (int p = 0; p < ph; ++p) {
    const int a0 = t.yo[p], a1 = t.yo[p + 1];
    if (a0 == a1) continue;
    for (int a = a0; a < a1; ++a) {
      const int64_t off = t.yi[a] * sH + t.x0;
      const T w = t.yw[a];
      for (int j = 0; j < NC; ++j) {
        const scalar_t* __restrict__ r = plane + j * sC + off;
        T* __restrict__ v = V + j * ldv;
        if (a == a0) {
          for (int s = 0; s < span; ++s) v[s] = w * static_cast<T>(r[s]);
        } else {
          for (int s = 0; s < span; ++s) v[s] += w * static_cast<T>(r[s]);
        }
      }
    }
    for (int q = 0; q < pw; ++q) {
      T acc[NC] = {};
      for (int b = t.xo[q]; b < t.xo[q + 1]; ++b) {
        const T w = t.xw[b];
        const int i = t.xi[b];
        for (int j = 0; j < NC; ++j) acc[j] += w * V[j * ldv + i];
      }
      for (int j = 0; j < NC; ++j) out[j * oC + p * oH + q * oW] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// One RoI, nc contiguous channels of a channels_last map: the same two steps, vectorised over channels
// (V is [span][nc]; a row segment of a channels_last map is one contiguous run).
template <typename T, typename scalar_t>
inline void forward_cl(const RoiTable<T>& t, const scalar_t* __restrict__ base, int nc, int64_t sH, int64_t sW,
                       scalar_t* __restrict__ out, int64_t oC, int64_t oH, int64_t oW, int ph, int pw,
                       T* __restrict__ V, T* __restrict__ acc) {
  const int span = t.span;
  for (int p = 0; p < ph; ++p) {
    const int a0 = t.yo[p], a1 = t.yo[p + 1];
    if (a0 == a1) continue;  // the output was zero-initialised
    for (int a = a0; a < a1; ++a) {
      const scalar_t* row = base + t.yi[a] * sH + t.x0 * sW;
      const T w = t.yw[a];
      for (int s = 0; s < span; ++s) {
        const scalar_t* src = row + s * sW;
        T* v = V + static_cast<int64_t>(s) * nc;
        if (a == a0) {
          for (int c = 0; c < nc; ++c) v[c] = w * static_cast<T>(src[c]);
        } else {
          for (int c = 0; c < nc; ++c) v[c] += w * static_cast<T>(src[c]);
        }
      }
    }
    for (int q = 0; q < pw; ++q) {
      for (int c = 0; c < nc; ++c) acc[c] = T(0);
      for (int b = t.xo[q]; b < t.xo[q + 1]; ++b) {
        const T w = t.xw[b];
        const T* v = V + static_cast<int64_t>(t.xi[b]) * nc;
        for (int c = 0; c < nc; ++c) acc[c] += w * v[c];
      }
      scalar_t* dst = out + p * oH + q * oW;
      if (oC == 1) {
        for (int c = 0; c < nc; ++c) dst[c] = static_cast<scalar_t>(acc[c]);
      } else {
        for (int c = 0; c < nc; ++c) dst[c * oC] = static_cast<scalar_t>(acc[c]);
      }
    }
  }
}

// Backward of forward_plane: U = sum_q g[p, q] * xd[q] (dense AXPYs over the span), then
// grad[y_a, x0 : x0 + span] += wy[a] * U (a contiguous AXPY).
template <bool kUnitW, typename T, typename scalar_t, typename G>
inline void backward_plane(const RoiTable<T>& t, G* __restrict__ plane, int64_t sH, int64_t sW,
                           const scalar_t* __restrict__ g, int64_t gH, int64_t gW, int ph, int pw,
                           T* __restrict__ U) {
  const int span = kUnitW ? t.span_pad : t.span;  // padded columns receive U = 0 (same row, same thread)
  const int ld = t.ld;
  const int64_t sw = kUnitW ? 1 : sW;
  for (int p = 0; p < ph; ++p) {
    const int a0 = t.yo[p], a1 = t.yo[p + 1];
    if (a0 == a1) continue;
    for (int s = 0; s < ld; ++s) U[s] = T(0);
    for (int q = 0; q < pw; ++q) {
      const T gv = static_cast<T>(g[p * gH + q * gW]);
      const T* xq = t.xd.data() + static_cast<int64_t>(q) * ld;
      // Only the true span: padded columns keep U = 0 even for a non-finite gradient.
      for (int s = 0; s < t.span; ++s) U[s] += gv * xq[s];
    }
    for (int a = a0; a < a1; ++a) {
      G* row = plane + t.yi[a] * sH + t.x0 * sw;
      const T w = t.yw[a];
      for (int s = 0; s < span; ++s) row[s * sw] += static_cast<G>(w * U[s]);
    }
  }
}

template <typename T, typename scalar_t, typename G>
inline void backward_cl(const RoiTable<T>& t, G* __restrict__ base, int nc, int64_t sH, int64_t sW,
                        const scalar_t* __restrict__ g, int64_t gC, int64_t gH, int64_t gW, int ph, int pw,
                        T* __restrict__ U, T* __restrict__ gv) {
  const int span = t.span;
  for (int p = 0; p < ph; ++p) {
    const int a0 = t.yo[p], a1 = t.yo[p + 1];
    if (a0 == a1) continue;
    for (int64_t s = 0; s < static_cast<int64_t>(span) * nc; ++s) U[s] = T(0);
    for (int q = 0; q < pw; ++q) {
      const scalar_t* src = g + p * gH + q * gW;
      if (gC == 1) {
        for (int c = 0; c < nc; ++c) gv[c] = static_cast<T>(src[c]);
      } else {
        for (int c = 0; c < nc; ++c) gv[c] = static_cast<T>(src[c * gC]);
      }
      for (int b = t.xo[q]; b < t.xo[q + 1]; ++b) {
        const T w = t.xw[b];
        T* u = U + static_cast<int64_t>(t.xi[b]) * nc;
        for (int c = 0; c < nc; ++c) u[c] += w * gv[c];
      }
    }
    for (int a = a0; a < a1; ++a) {
      G* row = base + t.yi[a] * sH + t.x0 * sW;
      const T w = t.yw[a];
      for (int s = 0; s < span; ++s) {
        G* dst = row + s * sW;
        const T* u = U + static_cast<int64_t>(s) * nc;
        for (int c = 0; c < nc; ++c) dst[c] += static_cast<G>(w * u[c]);
      }
    }
  }
}

template <typename scalar_t>
std::vector<Level<scalar_t>> make_levels(const std::vector<at::Tensor>& feats, const std::vector<double>& scales) {
  std::vector<Level<scalar_t>> levels;
  for (size_t i = 0; i < feats.size(); ++i) {
    const at::Tensor& f = feats[i];
    levels.push_back({f.data_ptr<scalar_t>(), f.stride(0), f.stride(1), f.stride(2), f.stride(3),
                      static_cast<int>(f.size(2)), static_cast<int>(f.size(3)), scales[i]});
  }
  return levels;
}

// Forward: channel blocks in parallel (each output element is computed by exactly one thread, so the result
// does not depend on the thread count); within a block the RoIs are visited grouped by (level, image).
at::Tensor forward_impl(const std::vector<at::Tensor>& feats, const at::Tensor& rois_in,
                        const std::vector<double>& scales, int64_t ph, int64_t pw, int64_t sampling_ratio,
                        bool aligned, int64_t canonical_scale, int64_t canonical_level) {
  check_forward(feats, rois_in, scales, ph, pw, sampling_ratio, canonical_scale, canonical_level);
  const at::Tensor& f0 = feats[0];
  const at::Tensor rois = rois_in.contiguous();
  const int64_t K = rois.size(0), C = f0.size(1), N = f0.size(0);
  // at::zeros ignores the memory format in its options: allocate with it, then zero.
  at::Tensor out = at::empty({K, C, ph, pw}, f0.options().memory_format(
                                                 is_channels_last(f0) ? at::MemoryFormat::ChannelsLast
                                                                      : at::MemoryFormat::Contiguous)).zero_();
  if (K == 0 || C == 0) return out;
  int k_min = 0, k_max = 0;
  fpn_level_range(scales.front(), scales.back(), k_min, k_max);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(), "fastops_roi_align_cpu", [&] {
    using T = acc_t<scalar_t>;
    check_rois<scalar_t>(rois, N);
    const auto levels = make_levels<scalar_t>(feats, scales);
    std::vector<RoiTable<T>> tables;
    std::vector<int64_t> order;
    int max_span = 0;
    build_tables<T>(tables, order, max_span, rois.data_ptr<scalar_t>(), K, levels, ph, pw, sampling_ratio, aligned,
                    canonical_scale, canonical_level, k_min, k_max, /*dense_x=*/false);
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t oK = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
    bool any_cl = false, any_plane = false;
    for (const auto& L : levels) (L.sC == 1 && C > 1 ? any_cl : any_plane) = true;
    if (any_plane) {
      // NCHW levels: channel outer, so one plane is read by all RoIs while it sits in cache.
      // Channels go in groups of kGroup: one walk over a RoI's tables serves kGroup planes.
      constexpr int kGroup = 4;
      at::parallel_for(0, (C + kGroup - 1) / kGroup, 1, [&](int64_t g0, int64_t g1) {
        const int64_t ldv = static_cast<int64_t>(max_span) + kLanes;
        std::vector<T> V(kGroup * ldv);
        for (int64_t g = g0; g < g1; ++g) {
          const int64_t c = g * kGroup;
          const int nc = static_cast<int>(std::min<int64_t>(kGroup, C - c));
          for (int64_t k : order) {
            const RoiTable<T>& t = tables[k];
            const Level<scalar_t>& L = levels[t.level];
            if (L.sC == 1 && C > 1) continue;
            const scalar_t* plane = L.data + t.batch * L.sN + c * L.sC;
            scalar_t* dst = o + k * oK + c * oC;
            if (L.sW == 1 && nc == kGroup) {
              forward_planes<kGroup>(t, plane, L.sC, L.sH, dst, oC, oH, oW, ph, pw, V.data(), ldv);
            } else {
              for (int j = 0; j < nc; ++j) {
                if (L.sW == 1)
                  forward_plane<true>(t, plane + j * L.sC, L.sH, L.sW, dst + j * oC, oH, oW, ph, pw, V.data());
                else
                  forward_plane<false>(t, plane + j * L.sC, L.sH, L.sW, dst + j * oC, oH, oW, ph, pw, V.data());
              }
            }
          }
        }
      });
    }
    if (any_cl) {
      // channels_last levels: RoIs in parallel, all channels at once (row segments are contiguous runs).
      at::parallel_for(0, static_cast<int64_t>(order.size()), 1, [&](int64_t i0, int64_t i1) {
        std::vector<T> V(static_cast<size_t>(max_span) * C + 1), acc(C);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t k = order[i];
          const RoiTable<T>& t = tables[k];
          const Level<scalar_t>& L = levels[t.level];
          if (!(L.sC == 1 && C > 1)) continue;
          forward_cl(t, L.data + t.batch * L.sN, static_cast<int>(C), L.sH, L.sW, o + k * oK, oC, oH, oW, ph, pw,
                     V.data(), acc.data());
        }
      });
    }
  });
  return out;
}

// Deterministic backward: the same channel blocks in parallel, each visiting the RoIs in a fixed order, so
// every gradient element is accumulated by one thread in one order whatever the thread count.
std::vector<at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& rois_in,
                                      const std::vector<double>& scales, int64_t ph, int64_t pw, int64_t N,
                                      int64_t C, const std::vector<int64_t>& sizes, int64_t sampling_ratio,
                                      bool aligned, int64_t canonical_scale, int64_t canonical_level,
                                      const std::vector<bool>& channels_last) {
  check_backward(grad, rois_in, scales, ph, pw, N, C, sizes, sampling_ratio, canonical_scale, canonical_level,
                 channels_last.size());
  const at::Tensor rois = rois_in.contiguous();
  const int64_t K = rois.size(0);
  const size_t L = scales.size();
  const auto dtype = grad.scalar_type();
  // half/bfloat16 gradients accumulate in float32 and are cast once at the end.
  const auto acc_dtype = (dtype == at::kHalf || dtype == at::kBFloat16) ? at::kFloat : dtype;
  std::vector<at::Tensor> grads;
  for (size_t l = 0; l < L; ++l) {
    grads.push_back(at::empty({N, C, sizes[2 * l], sizes[2 * l + 1]},
                              grad.options().dtype(acc_dtype).memory_format(
                                  channels_last[l] ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous))
                        .zero_());
  }
  if (K > 0 && C > 0) {
    int k_min = 0, k_max = 0;
    fpn_level_range(scales.front(), scales.back(), k_min, k_max);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastops_roi_align_backward_cpu", [&] {
      using T = acc_t<scalar_t>;
      using G = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      check_rois<scalar_t>(rois, N);
      std::vector<Level<G>> levels;
      for (size_t l = 0; l < L; ++l) {
        const at::Tensor& g = grads[l];
        levels.push_back({g.data_ptr<G>(), g.stride(0), g.stride(1), g.stride(2), g.stride(3),
                          static_cast<int>(g.size(2)), static_cast<int>(g.size(3)), scales[l]});
      }
      std::vector<RoiTable<T>> tables;
      std::vector<int64_t> order;
      int max_span = 0;
      build_tables<T>(tables, order, max_span, rois.data_ptr<scalar_t>(), K, levels, ph, pw, sampling_ratio,
                      aligned, canonical_scale, canonical_level, k_min, k_max, /*dense_x=*/true);
      const scalar_t* gp = grad.data_ptr<scalar_t>();
      const int64_t gK = grad.stride(0), gC = grad.stride(1), gH = grad.stride(2), gW = grad.stride(3);
      // Channel chunks: one per thread for channels_last levels (long contiguous runs), kCB for NCHW planes.
      bool any_cl = false;
      for (const auto& lv : levels) any_cl |= lv.sC == 1 && C > 1;
      const int64_t threads = at::get_num_threads();
      const int64_t chunk = any_cl ? std::max<int64_t>(kCB, (C + threads - 1) / threads) : kCB;
      const int64_t nblocks = (C + chunk - 1) / chunk;
      at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
        std::vector<T> U(static_cast<size_t>(max_span + kLanes) * chunk), gv(chunk);
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t c0 = blk * chunk;
          const int nc = static_cast<int>(std::min<int64_t>(chunk, C - c0));
          for (int c = 0; c < nc; ++c) {
            for (int64_t k : order) {
              const RoiTable<T>& t = tables[k];
              const Level<G>& lv = levels[t.level];
              if (lv.sC == 1 && C > 1) continue;
              G* plane = lv.data + t.batch * lv.sN + (c0 + c) * lv.sC;
              const scalar_t* g = gp + k * gK + (c0 + c) * gC;
              if (lv.sW == 1)
                backward_plane<true>(t, plane, lv.sH, lv.sW, g, gH, gW, ph, pw, U.data());
              else
                backward_plane<false>(t, plane, lv.sH, lv.sW, g, gH, gW, ph, pw, U.data());
            }
          }
          for (int64_t k : order) {
            const RoiTable<T>& t = tables[k];
            const Level<G>& lv = levels[t.level];
            if (!(lv.sC == 1 && C > 1)) continue;
            backward_cl(t, lv.data + t.batch * lv.sN + c0, nc, lv.sH, lv.sW, gp + k * gK + c0 * gC, gC, gH, gW, ph,
                        pw, U.data(), gv.data());
          }
        }
      });
    });
  }
  if (acc_dtype != dtype) {
    for (size_t l = 0; l < L; ++l) {
      grads[l] = grads[l].to(dtype, /*non_blocking=*/false, /*copy=*/false,
                             channels_last[l] ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    }
  }
  return grads;
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t ph,
                         int64_t pw, int64_t sampling_ratio, bool aligned) {
  return forward_impl({input}, rois, {spatial_scale}, ph, pw, sampling_ratio, aligned, 224, 4);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t ph,
                                  int64_t pw, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sampling_ratio,
                                  bool aligned, bool channels_last) {
  return backward_impl(grad, rois, {spatial_scale}, ph, pw, N, C, {H, W}, sampling_ratio, aligned, 224, 4,
                       {channels_last})[0];
}

at::Tensor multi_scale_roi_align_cpu(at::TensorList features, const at::Tensor& rois, at::ArrayRef<double> scales,
                                     int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                     int64_t canonical_scale, int64_t canonical_level) {
  return forward_impl(features.vec(), rois, scales.vec(), ph, pw, sampling_ratio, aligned, canonical_scale,
                      canonical_level);
}

std::vector<at::Tensor> multi_scale_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                                           at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                                                           int64_t N, int64_t C, at::IntArrayRef sizes,
                                                           int64_t sampling_ratio, bool aligned,
                                                           int64_t canonical_scale, int64_t canonical_level,
                                                           const c10::List<bool>& channels_last) {
  return backward_impl(grad, rois, scales.vec(), ph, pw, N, C, sizes.vec(), sampling_ratio, aligned,
                       canonical_scale, canonical_level, std::vector<bool>(channels_last.begin(), channels_last.end()));
}

}  // namespace
}  // namespace roi_align
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("roi_align", &fastops::roi_align::roi_align_cpu);
  m.impl("_roi_align_backward", &fastops::roi_align::roi_align_backward_cpu);
  m.impl("multi_scale_roi_align", &fastops::roi_align::multi_scale_roi_align_cpu);
  m.impl("_multi_scale_roi_align_backward", &fastops::roi_align::multi_scale_roi_align_backward_cpu);
}
