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
#include <atomic>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FASTOPS_ROI_FAST 1
#else
#define FASTOPS_ROI_FAST 0
#endif

#include "avx2_transpose.h"  // transpose8 (AVX builds)
#include "cpu_isa.h"
#include "cpu_memory.h"
#include "roi_align/roi_align.h"

namespace fastops {
namespace roi_align {
namespace {

// The float32 NCHW forward's AVX-512 step (fast_roi512) runs when torch's CPU capability is AVX512, so
// ATEN_CPU_CAPABILITY=avx2 turns it off as it does ATen's own and our other AVX-512 kernels. It is compiled into
// the AVX2 copy of this file as target("avx512...") functions: a whole-file AVX-512 copy measured no gain on
// the rest (and 5-10% slower NCHW backward), so roi_align_cpu.cpp is not in setup.py's AVX512_KERNELS.
inline bool use_avx512_step() {
#if FASTOPS_ROI_FAST
  static const bool on = cpu_isa_among(0b111) == 2;
  return on;
#else
  return false;
#endif
}

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
  int y_last = -1;   // largest row
  int ld = 0;        // row length of xd: span_pad rounded up to whole vectors
  std::vector<T> xd; // dense x weights [pw][ld] over the span (NCHW backward: vectorised AXPYs)
  std::vector<int> yo, xo, yi, xi;
  std::vector<T> yw, xw;
  // Packed float32 NCHW forward (pack_table): nt taps per output row (padded with zero weights), rows read as
  // nvec whole vectors from column xs, then dense x weights [ns columns from xs + slo][8 bins] per bin block.
  int nt = 0, nvec = 0, xs = 0, slo = 0, ns = 0, tail = 8;  // tail: valid lanes of the last row vector
  // Split x step (pack_split, 5 <= pw <= 8): bins 0-3 read columns xl + [0, 8 nv2), bins 4.. read xr + [0, 8 nv2);
  // the y step stores the two segments' columns as interleaved pairs, the x step takes one pair per FMA.
  int nv2 = 0, xl = 0, xr = 0, ulo = 0, nu = 0;
  size_t x2off = 0;
  // Transposed x step (pack_xt, ph and pw <= 8): the y step's rows are transposed in registers into columns
  // (8 output rows per vector), then each bin sums only its ntx taps: [ntx][pw] column offsets, [ntx][pw] weights
  // (tap-major: tap i of all bins is one AVX-512 load).
  // ntx > 0: the taps table is built; xt: the AVX2 kernel takes the transposed x step (the AVX-512 step,
  // fast_roi512, takes the RoIs with a taps table whose window and tap counts it handles).
  int ntx = 0;
  bool xt = false;
  size_t xtoff = 0;
  std::vector<float> pk;  // [ph][nt] row offsets (int32 bits), [ph][nt] weights, [nqb][ns][8] x weights,
                          // then (split) [nu][8] pair weights
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

// Packs a float32 table for the vectorised NCHW forward (fast_plane): fixed taps per row and whole-vector row
// reads let the kernel run without data-dependent branches. Returns false (table left unpacked) when a row
// offset would not fit an int.
constexpr int kVec = 8;  // floats per AVX2 register

// Pair slot k of an 8-pair group holds pair kPairSlot[k] (the order _mm256_unpacklo/hi_ps leave the pairs in);
// the permutation is its own inverse.
constexpr int kPairSlot[8] = {0, 1, 4, 5, 2, 3, 6, 7};

// The split x step: the dense x step costs one 8-bin FMA per window column and output row, though a column feeds
// one or two bins. Bins 0-3 and 4-7 read two segments of the window; their columns, interleaved as pairs
// (left, right), make one FMA per pair: even lanes bins 0-3 of the left column, odd lanes bins 4-7 of the right
// one. Chosen when the estimated work (y-step vectors per tap + x-step FMAs) drops by 10% or more.
inline void pack_split(RoiTable<float>& t, int pw, int W) {
  t.nv2 = 0;
  if (pw < 5 || pw > kVec || t.nt > 4) return;
  int l0 = INT32_MAX, l1 = -1, r0 = INT32_MAX, r1 = -1;
  for (int q = 0; q < pw; ++q)
    for (int b = t.xo[q]; b < t.xo[q + 1]; ++b) {
      const int c = t.xi[b] + t.x0;
      if (q < 4) {
        l0 = std::min(l0, c);
        l1 = std::max(l1, c);
      } else {
        r0 = std::min(r0, c);
        r1 = std::max(r1, c);
      }
    }
  if (l1 < 0 || r1 < 0) return;
  const int n = std::max(l1 - l0 + 1, r1 - r0 + 1);
  const int nv2 = (n + kVec - 1) / kVec;
  if (nv2 > 16 || kVec * nv2 > W) return;
  const int xl = std::min(l0, W - kVec * nv2), xr = std::min(r0, W - kVec * nv2);
  std::vector<float> X2(static_cast<size_t>(nv2) * kVec * kVec, 0.f);
  for (int q = 0; q < pw; ++q)
    for (int b = t.xo[q]; b < t.xo[q + 1]; ++b) {
      const int i = t.xi[b] + t.x0 - (q < 4 ? xl : xr);  // pair index, in [0, 8 nv2)
      const int u = i / kVec * kVec + kPairSlot[i % kVec];
      X2[static_cast<size_t>(u) * kVec + (q < 4 ? 2 * q : 2 * (q - 4) + 1)] += t.xw[b];
    }
  int ulo = INT32_MAX, uhi = -1;
  for (int u = 0; u < nv2 * kVec; ++u)
    for (int l = 0; l < kVec; ++l)
      if (X2[static_cast<size_t>(u) * kVec + l] != 0.f) {
        ulo = std::min(ulo, u);
        uhi = std::max(uhi, u + 1);
      }
  if (uhi < 0) return;
  const int old_cost = t.nt * t.nvec + t.ns, new_cost = 2 * t.nt * nv2 + (uhi - ulo) + nv2 + 1;
  if (10 * new_cost > 9 * old_cost) return;
  t.nv2 = nv2;
  t.xl = xl;
  t.xr = xr;
  t.ulo = ulo;
  t.nu = uhi - ulo;
  t.x2off = (t.pk.size() + kVec - 1) / kVec * kVec;
  t.pk.resize(t.x2off + static_cast<size_t>(t.nu) * kVec, 0.f);
  std::copy(X2.begin() + static_cast<size_t>(ulo) * kVec, X2.begin() + static_cast<size_t>(uhi) * kVec,
            t.pk.begin() + t.x2off);
}

// The transposed x step: the dense x step costs one FMA per window column and output row, though a bin has
// only a few taps (<= 4 columns with sampling_ratio 2). With the y step's output transposed in registers (8x8
// blocks: 24 shuffles per 8 window columns), a bin's 8 output rows are one vector per tap: pw * ntx FMAs per
// plane instead of ph * ns, plus a transpose of the results. The taps are the dense weights' non-zero columns in
// ascending order, so each result is the same sum of the same products as the dense step's (which only adds
// zero products besides: the same bits up to the sign of a zero). Chosen when its estimated work is below the
// dense or split step's (the shuffles are counted as one instruction per row and vector: they overlap the y
// step's row loads, which dominate; perf put ~1% of the pooler's samples on them).
inline void pack_xt(RoiTable<float>& t, int ph, int pw) {
  t.ntx = 0;
  t.xt = false;
  if (ph > kVec || pw > kVec) return;
  const size_t ytab = static_cast<size_t>(ph) * t.nt;
  const float* X = t.pk.data() + (2 * ytab + kVec - 1) / kVec * kVec;
  int ntx = 1;
  for (int q = 0; q < pw; ++q) {
    int n = 0;
    for (int s = 0; s < t.ns; ++s) n += X[s * kVec + q] != 0.f;
    ntx = std::max(ntx, n);
  }
  // Work per output row, in vector instructions: y step loads/FMAs, transposes, x-step FMAs, output transpose
  // (weighing the shuffles 3x measured no better: pooler 46.0-47.6 ms against 44.9-46.2 at 1 thread).
  const int dense = t.nv2 > 0 ? 2 * t.nt * t.nv2 + t.nu + t.nv2 + 1 : t.nt * t.nvec + t.ns;
  const int xt = t.nt * t.nvec + t.nvec + (pw * ntx + ph - 1) / ph + 1;
  t.xt = xt < dense;
  if (!t.xt && !(use_avx512_step() && (t.nvec - 1) * kVec + t.tail <= 128)) return;
  t.ntx = ntx;
  if (t.xt) t.nv2 = 0;
  t.xtoff = (t.pk.size() + kVec - 1) / kVec * kVec;
  t.pk.resize(t.xtoff + 2 * static_cast<size_t>(pw) * ntx, 0.f);
  X = t.pk.data() + (2 * ytab + kVec - 1) / kVec * kVec;
  int32_t* col = reinterpret_cast<int32_t*>(t.pk.data() + t.xtoff);
  float* wt = t.pk.data() + t.xtoff + static_cast<size_t>(pw) * ntx;
  for (int q = 0; q < pw; ++q) {
    int n = 0, last = t.slo;
    for (int s = 0; s < t.ns; ++s)
      if (X[s * kVec + q] != 0.f) {
        last = t.slo + s;
        col[n * pw + q] = last * kVec;  // offset of the column's vector in the transposed rows
        wt[n * pw + q] = X[s * kVec + q];
        ++n;
      }
    for (; n < ntx; ++n) {  // padding: weight 0 on the bin's last column (a non-finite value there is in the sum)
      col[n * pw + q] = last * kVec;
      wt[n * pw + q] = 0.f;
    }
  }
}

inline bool pack_table(RoiTable<float>& t, int ph, int pw, int W, int H, int64_t sH) {
  t.nvec = 0;
  if (t.span <= 0 || static_cast<int64_t>(H) * sH >= (int64_t(1) << 31)) return false;
  t.nvec = (t.span + kVec - 1) / kVec;
  const int win = t.nvec * kVec;
  // Shift the window left so whole vectors stay inside the row; a map narrower than the window masks the tail.
  t.xs = std::max(0, std::min(t.x0, W - win));
  t.tail = std::min(kVec, W - t.xs - (t.nvec - 1) * kVec);
  int nt = 1;
  for (int p = 0; p < ph; ++p) nt = std::max(nt, t.yo[p + 1] - t.yo[p]);
  t.nt = nt;
  int lo = INT32_MAX, hi = -1;
  for (int x : t.xi) {
    lo = std::min(lo, x + t.x0 - t.xs);
    hi = std::max(hi, x + t.x0 - t.xs + 1);
  }
  t.slo = lo;
  t.ns = hi - lo;
  const int nqb = (pw + kVec - 1) / kVec;
  const size_t ytab = static_cast<size_t>(ph) * nt;
  const size_t xoff = (2 * ytab + kVec - 1) / kVec * kVec;
  t.pk.assign(xoff + static_cast<size_t>(nqb) * t.ns * kVec, 0.f);
  int32_t* rows = reinterpret_cast<int32_t*>(t.pk.data());
  float* w = t.pk.data() + ytab;
  for (int p = 0; p < ph; ++p) {
    const int a0 = t.yo[p], n = t.yo[p + 1] - a0;
    for (int j = 0; j < nt; ++j) {
      // Padding taps repeat the bin's first row (or row 0 for a bin without taps) with weight 0.
      rows[p * nt + j] = static_cast<int32_t>((n > 0 ? t.yi[a0 + (j < n ? j : 0)] : 0) * sH);
      w[p * nt + j] = j < n ? t.yw[a0 + j] : 0.f;
    }
  }
  float* X = t.pk.data() + xoff;
  for (int q = 0; q < pw; ++q)
    for (int b = t.xo[q]; b < t.xo[q + 1]; ++b)
      X[(static_cast<size_t>(q / kVec) * t.ns + (t.xi[b] + t.x0 - t.xs - t.slo)) * kVec + q % kVec] += t.xw[b];
  pack_split(t, pw, W);
  pack_xt(t, ph, pw);
  return true;
}

template <typename T, typename scalar_t, typename level_t>
void build_table(RoiTable<T>& t, const scalar_t* roi, const std::vector<Level<level_t>>& levels, int ph, int pw,
                 int sampling_ratio, bool aligned, int canonical_scale, int canonical_level, int k_min, int k_max,
                 bool dense_x, bool pack) {
  t.batch = static_cast<int64_t>(static_cast<T>(roi[0]));
  t.level = levels.size() == 1 ? 0 : fpn_level<T>(roi + 1, canonical_scale, canonical_level, k_min, k_max);
  t.span = 0;
  if (t.level >= static_cast<int>(levels.size())) t.level = -1;  // non-consecutive levels: no map, output 0
  if (t.level < 0) return;
  const auto& L = levels[t.level];
  if (L.H <= 0 || L.W <= 0) {  // an empty map has no pixel to read (and its strides say nothing): output 0
    t.level = -1;
    return;
  }
  const RoiBox<T> b = roi_box<T>(roi + 1, static_cast<T>(L.scale), ph, pw, sampling_ratio, aligned);
  build_axis<T>(b.start_h, b.bin_h, ph, b.grid_h, L.H, t.yo, t.yi, t.yw);
  build_axis<T>(b.start_w, b.bin_w, pw, b.grid_w, L.W, t.xo, t.xi, t.xw);
  if (!t.xi.empty()) {  // (inverted boxes with aligned=True sample right to left: take the true bounds)
    const auto [lo, hi] = std::minmax_element(t.xi.begin(), t.xi.end());
    t.x0 = *lo;
    t.span = *hi - t.x0 + 1;
    t.span_pad = std::max(t.span, std::min((t.span + kLanes - 1) / kLanes * kLanes, L.W - t.x0));
    t.y_first = t.yi.empty() ? 0 : *std::min_element(t.yi.begin(), t.yi.end());
    t.y_last = t.yi.empty() ? -1 : *std::max_element(t.yi.begin(), t.yi.end());
    t.ld = (t.span_pad + kLanes - 1) / kLanes * kLanes;
    for (int& x : t.xi) x -= t.x0;
    if constexpr (std::is_same_v<T, float>) {
      if (pack && L.sW == 1) pack_table(t, ph, pw, L.W, L.H, L.sH);
    }
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

// How many rows below a RoI's top the row band reaches (forward: prefetched, prefetch_band; backward: zeroed
// before accumulating), from a byte budget for the band's nc rows: it stays well inside the 2 MB L2 beside
// the RoIs' own rows. Workload A (nc = 16 planes of 304 floats, windows up to 29 rows): 39 rows forward, 23
// backward. Forward, 1 thread: 19 rows 39.5 ms (the band must reach below the tallest windows), 26 rows 29.1,
// 39 rows 28.3, 52 rows 32.8, 78 rows 34.3; backward: 16 to 24 rows below the top best.
constexpr int64_t kFwdBandBytes = 768 << 10, kBwdBandBytes = 448 << 10;
inline int band_rows(int64_t row_bytes, int nc, int64_t budget) {
  return static_cast<int>(std::clamp<int64_t>(budget / std::max<int64_t>(1, row_bytes * nc), 1, 1 << 20));
}

// Channels per parallel task on NCHW maps in the backward pass.
constexpr int kCB = 16;
// Channels per block of the vectorised float32 forward (forward_fast; the AVX-512 step's output buffer).
constexpr int64_t kFastCB = 16;

// All RoIs' tables (built in parallel) and the order that visits them grouped by (level, image), so the
// feature plane being read stays in cache.
template <typename T, typename scalar_t, typename level_t>
void build_tables(std::vector<RoiTable<T>>& tables, std::vector<int64_t>& order, int& max_span,
                  const scalar_t* rois, int64_t K, const std::vector<Level<level_t>>& levels, int ph, int pw,
                  int sampling_ratio, bool aligned, int canonical_scale, int canonical_level, int k_min, int k_max,
                  bool dense_x, bool pack = false) {
  tables.resize(K);
  at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      build_table<T>(tables[k], rois + k * 5, levels, ph, pw, sampling_ratio, aligned, canonical_scale,
                     canonical_level, k_min, k_max, dense_x, pack);
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

#if defined(__AVX2__) && defined(__FMA__)
// Vectorised float32 NCHW forward of one RoI on one plane, from its packed table (pack_table):
//   y step: V[p] = sum_j w[p][j] * F[row[p][j], xs : xs + 8 nvec], nt taps and nvec vectors fixed per RoI
//   (templates unroll the common sizes, so no branch depends on the data);
//   x step: out[p][8 bins] = sum_s V[p][slo + s] * X[s][8 bins], the dense x weights of 8 bins per register;
//   or (pack_split) on interleaved column pairs; or (pack_xt) per bin over its taps on the transposed rows.
// Padding taps and x weights are zeros: a NaN/inf read by them (outside the bin's pixels) would leak as 0 * inf,
// so any non-finite result is reported and the caller recomputes the plane with the exact sparse walk.
template <int NV, int NT>
inline void fast_ystep(const float* __restrict__ base, const int32_t* __restrict__ rows,
                       const float* __restrict__ w, int ph, float* __restrict__ V, int ldv) {
  for (int p = 0; p < ph; ++p) {
    const int32_t* r = rows + p * NT;
    const float* wp = w + p * NT;
    __m256 acc[NV];
    const __m256 w0 = _mm256_broadcast_ss(wp);
    for (int j = 0; j < NV; ++j) acc[j] = _mm256_mul_ps(w0, _mm256_loadu_ps(base + r[0] + kVec * j));
    for (int a = 1; a < NT; ++a) {
      const __m256 wa = _mm256_broadcast_ss(wp + a);
      const float* row = base + r[a];
      for (int j = 0; j < NV; ++j) acc[j] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(row + kVec * j), acc[j]);
    }
    for (int j = 0; j < NV; ++j) _mm256_storeu_ps(V + p * ldv + kVec * j, acc[j]);
  }
}

// Any nvec / nt, and maps narrower than the window (the last vector is a masked load).
inline void fast_ystep_any(const float* __restrict__ base, const int32_t* __restrict__ rows,
                           const float* __restrict__ w, int ph, int nt, int nvec, int tail, float* __restrict__ V,
                           int ldv) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i tmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lane);
  for (int p = 0; p < ph; ++p) {
    for (int j = 0; j < nvec; ++j) {
      __m256 acc = _mm256_setzero_ps();
      const bool masked = j == nvec - 1 && tail < kVec;
      for (int a = 0; a < nt; ++a) {
        const float* src = base + rows[p * nt + a] + kVec * j;
        const __m256 v = masked ? _mm256_maskload_ps(src, tmask) : _mm256_loadu_ps(src);
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(w + p * nt + a), v, acc);
      }
      _mm256_storeu_ps(V + p * ldv + kVec * j, acc);
    }
  }
}

// y step of the split x step: for each output row, the window segments at columns xl and xr (nv2 vectors each)
// are lerped like fast_ystep, then stored as interleaved (left, right) pairs, 16 floats per vector pair.
template <int NV, int NT>
inline void fast_ystep2_fixed(const float* __restrict__ plane, const int32_t* __restrict__ rows,
                              const float* __restrict__ w, int ph, int xl, int xr, float* __restrict__ V, int ldv) {
  for (int p = 0; p < ph; ++p) {
    const int32_t* r = rows + p * NT;
    const float* wp = w + p * NT;
    __m256 al[NV], ar[NV];
    const __m256 w0 = _mm256_broadcast_ss(wp);
    for (int j = 0; j < NV; ++j) {
      al[j] = _mm256_mul_ps(w0, _mm256_loadu_ps(plane + r[0] + xl + kVec * j));
      ar[j] = _mm256_mul_ps(w0, _mm256_loadu_ps(plane + r[0] + xr + kVec * j));
    }
    for (int a = 1; a < NT; ++a) {
      const __m256 wa = _mm256_broadcast_ss(wp + a);
      const float* row = plane + r[a];
      for (int j = 0; j < NV; ++j) {
        al[j] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(row + xl + kVec * j), al[j]);
        ar[j] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(row + xr + kVec * j), ar[j]);
      }
    }
    for (int j = 0; j < NV; ++j) {
      _mm256_storeu_ps(V + p * ldv + 2 * kVec * j, _mm256_unpacklo_ps(al[j], ar[j]));
      _mm256_storeu_ps(V + p * ldv + 2 * kVec * j + kVec, _mm256_unpackhi_ps(al[j], ar[j]));
    }
  }
}

template <int NT>
inline void fast_ystep2(const float* __restrict__ plane, const int32_t* __restrict__ rows,
                        const float* __restrict__ w, int ph, int nv2, int xl, int xr, float* __restrict__ V,
                        int ldv) {
  if (nv2 == 1) return fast_ystep2_fixed<1, NT>(plane, rows, w, ph, xl, xr, V, ldv);
  if (nv2 == 2) return fast_ystep2_fixed<2, NT>(plane, rows, w, ph, xl, xr, V, ldv);
  for (int p = 0; p < ph; ++p) {
    const int32_t* r = rows + p * NT;
    const float* wp = w + p * NT;
    for (int j = 0; j < nv2; ++j) {
      const float* bl = plane + xl + kVec * j;
      const float* br = plane + xr + kVec * j;
      const __m256 w0 = _mm256_broadcast_ss(wp);
      __m256 al = _mm256_mul_ps(w0, _mm256_loadu_ps(bl + r[0]));
      __m256 ar = _mm256_mul_ps(w0, _mm256_loadu_ps(br + r[0]));
      for (int a = 1; a < NT; ++a) {
        const __m256 wa = _mm256_broadcast_ss(wp + a);
        al = _mm256_fmadd_ps(wa, _mm256_loadu_ps(bl + r[a]), al);
        ar = _mm256_fmadd_ps(wa, _mm256_loadu_ps(br + r[a]), ar);
      }
      _mm256_storeu_ps(V + p * ldv + 2 * kVec * j, _mm256_unpacklo_ps(al, ar));
      _mm256_storeu_ps(V + p * ldv + 2 * kVec * j + kVec, _mm256_unpackhi_ps(al, ar));
    }
  }
}

// x step for PB output rows and one block of up to 8 bins. A row's full 8-lane store may run past its last
// valid bin onto later rows of the same output plane, which are written afterwards: allowed while it stays
// within the `room` floats left from the chunk's first row (0 when there are several bin blocks per row).
// Returns acc * 0 summed over the rows (NaN if any result is not finite).
// kSplit: V holds (left, right) column pairs and X pair weights (pack_split); the lanes come out as bins
// 0 4 1 5 2 6 3 7 and are put back in order before the stores.
template <int PB, bool kSplit = false>
inline __m256 fast_xstep(const float* __restrict__ V, int ldv, const float* __restrict__ X, int ns,
                         float* __restrict__ out, int pw, int nvalid, int room) {
  __m256 acc[PB];
  for (int r = 0; r < PB; ++r) acc[r] = _mm256_setzero_ps();
  for (int s = 0; s < ns; ++s) {
    const __m256 x = _mm256_loadu_ps(X + s * kVec);
    for (int r = 0; r < PB; ++r) {
      const __m256 v = kSplit ? _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(V + r * ldv + 2 * s)))
                              : _mm256_broadcast_ss(V + r * ldv + s);
      acc[r] = _mm256_fmadd_ps(v, x, acc[r]);
    }
  }
  if constexpr (kSplit) {
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int r = 0; r < PB; ++r) acc[r] = _mm256_permutevar8x32_ps(acc[r], order);
  }
  const __m256 zero = _mm256_setzero_ps();
  __m256 chk = zero;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(nvalid), lane);
  for (int r = 0; r < PB; ++r) {
    chk = _mm256_add_ps(chk, _mm256_mul_ps(acc[r], zero));
    if (nvalid == kVec || r * pw + kVec <= room)
      _mm256_storeu_ps(out + r * pw, acc[r]);
    else
      _mm256_maskstore_ps(out + r * pw, m, acc[r]);
  }
  return chk;
}

// y step of the transposed x step (ph <= 8): per block of 8 window columns, the ph rows' lerps (the same
// operations as fast_ystep / fast_ystep_any) are transposed and stored as VT[column][8 rows] (rows >= ph are 0).
// NT = 0: nt taps at run time.
template <int NT>
inline void fast_ystepT(const float* __restrict__ base, const int32_t* __restrict__ rows,
                        const float* __restrict__ w, int ph, int nt_rt, int nvec, int tail, float* __restrict__ VT) {
  const int nt = NT > 0 ? NT : nt_rt;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i tmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lane);
  for (int j = 0; j < nvec; ++j) {
    const bool masked = j == nvec - 1 && tail < kVec;
    __m256 r[kVec];
#pragma GCC unroll 8
    for (int p = 0; p < kVec; ++p) {
      if (p >= ph) {
        r[p] = _mm256_setzero_ps();
        continue;
      }
      const int32_t* rp = rows + p * nt;
      const float* wp = w + p * nt;
      const float* src = base + kVec * j;
      __m256 acc = _mm256_mul_ps(_mm256_broadcast_ss(wp), masked ? _mm256_maskload_ps(src + rp[0], tmask)
                                                                 : _mm256_loadu_ps(src + rp[0]));
#pragma GCC unroll 4
      for (int a = 1; a < nt; ++a)
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(wp + a),
                              masked ? _mm256_maskload_ps(src + rp[a], tmask) : _mm256_loadu_ps(src + rp[a]), acc);
      r[p] = acc;
    }
    transpose8(r);
    for (int c = 0; c < kVec; ++c) _mm256_storeu_ps(VT + (kVec * j + c) * kVec, r[c]);
  }
}

// x step of the transposed layout: bin q's 8 rows = sum_i w[q][i] * VT[col[q][i]], then the bins are transposed
// back into output rows. Returns acc * 0 summed (NaN if any result is not finite).
// NTX = 0: ntx taps at run time.
template <int NTX>
inline __m256 fast_xT(const float* __restrict__ VT, const int32_t* __restrict__ col, const float* __restrict__ wt,
                      int ntx_rt, float* __restrict__ out, int ph, int pw) {
  const int ntx = NTX > 0 ? NTX : ntx_rt;
  __m256 acc[kVec];
  const __m256 zero = _mm256_setzero_ps();
  __m256 chk = zero;
#pragma GCC unroll 8
  for (int q = 0; q < kVec; ++q) {
    __m256 a = zero;
    if (q < pw)
#pragma GCC unroll 8
      for (int i = 0; i < ntx; ++i)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(VT + col[i * pw + q]), _mm256_broadcast_ss(wt + i * pw + q), a);
    chk = _mm256_add_ps(chk, _mm256_mul_ps(a, zero));
    acc[q] = a;
  }
  transpose8(acc);
  const int room = ph * pw;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(pw), lane);
  for (int p = 0; p < ph; ++p) {
    if (pw == kVec || p * pw + kVec <= room)
      _mm256_storeu_ps(out + p * pw, acc[p]);
    else
      _mm256_maskstore_ps(out + p * pw, m, acc[p]);
  }
  return chk;
}

// One RoI, one plane (unit column stride), contiguous [ph][pw] output. Returns false when a result is not
// finite (the caller then recomputes the plane exactly). V holds ph rows of ldv >= 8 * nvec floats.
inline bool fast_plane(const RoiTable<float>& t, const float* __restrict__ plane, float* __restrict__ out, int ph,
                       int pw, float* __restrict__ V, int ldv) {
  const int nt = t.nt, nvec = t.nvec;
  const size_t ytab = static_cast<size_t>(ph) * nt;
  const int32_t* rows = reinterpret_cast<const int32_t*>(t.pk.data());
  const float* w = t.pk.data() + ytab;
  const float* X = t.pk.data() + (2 * ytab + kVec - 1) / kVec * kVec;
  if (t.xt) {
    const float* base = plane + t.xs;
    switch (nt) {
      case 1: fast_ystepT<1>(base, rows, w, ph, nt, nvec, t.tail, V); break;
      case 2: fast_ystepT<2>(base, rows, w, ph, nt, nvec, t.tail, V); break;
      case 3: fast_ystepT<3>(base, rows, w, ph, nt, nvec, t.tail, V); break;
      case 4: fast_ystepT<4>(base, rows, w, ph, nt, nvec, t.tail, V); break;
      default: fast_ystepT<0>(base, rows, w, ph, nt, nvec, t.tail, V); break;
    }
    const int32_t* col = reinterpret_cast<const int32_t*>(t.pk.data() + t.xtoff);
    const float* wt = t.pk.data() + t.xtoff + static_cast<size_t>(pw) * t.ntx;
    __m256 chk;
    switch (t.ntx) {
      case 1: chk = fast_xT<1>(V, col, wt, t.ntx, out, ph, pw); break;
      case 2: chk = fast_xT<2>(V, col, wt, t.ntx, out, ph, pw); break;
      case 3: chk = fast_xT<3>(V, col, wt, t.ntx, out, ph, pw); break;
      case 4: chk = fast_xT<4>(V, col, wt, t.ntx, out, ph, pw); break;
      case 5: chk = fast_xT<5>(V, col, wt, t.ntx, out, ph, pw); break;
      case 6: chk = fast_xT<6>(V, col, wt, t.ntx, out, ph, pw); break;
      default: chk = fast_xT<0>(V, col, wt, t.ntx, out, ph, pw); break;
    }
    return _mm256_movemask_ps(_mm256_cmp_ps(chk, chk, _CMP_UNORD_Q)) == 0;
  }
  if (t.nv2 > 0) {
    switch (nt) {
      case 1: fast_ystep2<1>(plane, rows, w, ph, t.nv2, t.xl, t.xr, V, ldv); break;
      case 2: fast_ystep2<2>(plane, rows, w, ph, t.nv2, t.xl, t.xr, V, ldv); break;
      case 3: fast_ystep2<3>(plane, rows, w, ph, t.nv2, t.xl, t.xr, V, ldv); break;
      default: fast_ystep2<4>(plane, rows, w, ph, t.nv2, t.xl, t.xr, V, ldv); break;
    }
    const float* X2 = t.pk.data() + t.x2off;
    const float* Vs = V + 2 * t.ulo;
    __m256 chk = _mm256_setzero_ps();
    for (int p0 = 0; p0 < ph; p0 += 8) {
      const int pb = std::min(8, ph - p0);
      const int room = (ph - p0) * pw;
      float* o = out + p0 * pw;
      const float* Vp = Vs + p0 * ldv;
      switch (pb) {
#define FASTOPS_XSTEP2(PB) \
  case PB:                \
    chk = _mm256_add_ps(chk, fast_xstep<PB, true>(Vp, ldv, X2, t.nu, o, pw, pw, room)); \
    break;
        FASTOPS_XSTEP2(1) FASTOPS_XSTEP2(2) FASTOPS_XSTEP2(3) FASTOPS_XSTEP2(4)
        FASTOPS_XSTEP2(5) FASTOPS_XSTEP2(6) FASTOPS_XSTEP2(7) FASTOPS_XSTEP2(8)
#undef FASTOPS_XSTEP2
      }
    }
    return _mm256_movemask_ps(_mm256_cmp_ps(chk, chk, _CMP_UNORD_Q)) == 0;
  }
  const float* base = plane + t.xs;
  if (t.tail == kVec && nvec <= 4 && nt >= 1 && nt <= 4) {
    switch (nvec * 8 + nt) {
#define FASTOPS_YSTEP(NV, NT) \
  case NV * 8 + NT:           \
    fast_ystep<NV, NT>(base, rows, w, ph, V, ldv); \
    break;
      FASTOPS_YSTEP(1, 1) FASTOPS_YSTEP(1, 2) FASTOPS_YSTEP(1, 3) FASTOPS_YSTEP(1, 4)
      FASTOPS_YSTEP(2, 1) FASTOPS_YSTEP(2, 2) FASTOPS_YSTEP(2, 3) FASTOPS_YSTEP(2, 4)
      FASTOPS_YSTEP(3, 1) FASTOPS_YSTEP(3, 2) FASTOPS_YSTEP(3, 3) FASTOPS_YSTEP(3, 4)
      FASTOPS_YSTEP(4, 1) FASTOPS_YSTEP(4, 2) FASTOPS_YSTEP(4, 3) FASTOPS_YSTEP(4, 4)
#undef FASTOPS_YSTEP
    }
  } else {
    fast_ystep_any(base, rows, w, ph, nt, nvec, t.tail, V, ldv);
  }
  const float* Vs = V + t.slo;
  __m256 chk = _mm256_setzero_ps();
  const int nqb = (pw + kVec - 1) / kVec;
  for (int qb = 0; qb < nqb; ++qb) {
    const float* Xq = X + static_cast<size_t>(qb) * t.ns * kVec;
    const int nvalid = std::min(kVec, pw - qb * kVec);
    for (int p0 = 0; p0 < ph; p0 += 8) {
      const int pb = std::min(8, ph - p0);
      const int room = nqb == 1 ? (ph - p0) * pw : 0;
      float* o = out + p0 * pw + qb * kVec;
      const float* Vp = Vs + p0 * ldv;
      switch (pb) {
#define FASTOPS_XSTEP(PB) \
  case PB:                \
    chk = _mm256_add_ps(chk, fast_xstep<PB>(Vp, ldv, Xq, t.ns, o, pw, nvalid, room)); \
    break;
        FASTOPS_XSTEP(1) FASTOPS_XSTEP(2) FASTOPS_XSTEP(3) FASTOPS_XSTEP(4)
        FASTOPS_XSTEP(5) FASTOPS_XSTEP(6) FASTOPS_XSTEP(7) FASTOPS_XSTEP(8)
#undef FASTOPS_XSTEP
      }
    }
  }
  return _mm256_movemask_ps(_mm256_cmp_ps(chk, chk, _CMP_UNORD_Q)) == 0;
}

// Row band prefetch of a (level, image) group whose RoI windows cover the map at least once: rows [r0, r1) of
// one plane, whole rows in order. The RoIs come top to bottom, so these are the rows the next RoIs
// read. One sequential stream per plane lets the L2 streamer fetch ahead at the sequential rate (~12 GB/s on
// the 2-core VM) where the RoIs' own scattered 2-3-line row reads stop at ~7.7 GB/s (the core's fill buffers
// over L3/DRAM latency), and earlier prefetches of the next RoI's rows were bound by the same buffers (no gain
// measured). Issued plane by plane, just before that plane's RoI step, so that the fills overlap the arithmetic
// (all nc planes in one burst stalled on the fill buffers: 31 ms). Workload A forward, 1 thread: 38 -> 28 ms;
// 2 threads 20 -> 15 ms.
inline void prefetch_band(const float* plane, int64_t sH, int W, int r0, int r1) {
  for (int r = r0; r < r1; ++r) {
    const char* row = reinterpret_cast<const char*>(plane + static_cast<int64_t>(r) * sH);
    for (int x = 0; x < W * 4; x += 64) _mm_prefetch(row + x, _MM_HINT_T1);
    _mm_prefetch(row + W * 4 - 1, _MM_HINT_T1);
  }
}

// The AVX-512 step: one RoI on the nc planes of its block, for windows of <= 128 columns, <= 4 row taps per bin
// and <= 8 x 8 bins.
//   y step: for each output row p, V = sum_a w[p][a] * F[row[p][a], xs : xs + 16 NV] in NV 16-lane registers
//   (masked loads past the window: nothing outside the map is read);
//   x step: out[p][q] = sum_i wx[i][q] * V[col[q][i]], one vpermt2ps (any of the 32 columns per lane) and one
//   FMA per tap i for all the row's bins, stored straight as the output row.
// Per plane (7 x 7, 4 taps): ~28 x 2 FMAs + 28 permutes + 28 FMAs and 7 stores, against the AVX2 transposed
// step's ~96 FMAs, 96 shuffles and 31 stores on 24-column windows. The products are summed in the same order as
// the AVX2 steps' (a first product, then FMAs tap by tap), so the results are the same values. Zero-weight padding
// taps make a non-finite value outside a bin NaN: a plane whose results do not sum to a finite value is reported
// (bit c of the result) for the exact walk, as with the AVX2 steps (a sum of finite results that overflows only
// costs that walk). Planes go in pairs where the window has <= 4 vectors: a row's tap offsets and weights are
// loaded once for both (~5%). Workload A forward, 1 thread: 29.6-30.9 -> 23.2-24.5 ms;
// the pooler 36-38 -> 28-30 ms.
#if FASTOPS_ROI_FAST
#define FASTOPS_AVX512_FN __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
constexpr int kMaxTaps512 = 6;  // taps per bin the wide AVX-512 step takes (sampling_ratio 2: <= 4)

// The window's last vector as a 4-, 8- or 16-lane load (TW): the narrowest that holds its valid columns. The
// masked-off lanes of a 16-lane load still cost as a load across lines does. A C copy of the step (16 planes from
// L2, 20-column windows, so 4 valid lanes in the last vector): 56 -> 44 ns per plane at window offset 37, 56 -> 39
// at offset 44. In the kernel, alternating A/B in one process (15 pairs per run): pooler at 1 thread -0.9%, -0.6%,
// -2.2%; workload A -1.7%.
template <int TW>
FASTOPS_AVX512_FN inline __m512 load_last(__mmask16 m, const float* p) {
  if constexpr (TW == 4)
    return _mm512_zextps128_ps512(_mm_maskz_loadu_ps(static_cast<__mmask8>(m), p));
  else if constexpr (TW == 8)
    return _mm512_zextps256_ps512(_mm256_maskz_loadu_ps(static_cast<__mmask8>(m), p));
  else
    return _mm512_maskz_loadu_ps(m, p);
}

// NV: 16-column vectors per window row (1-8); NTX: taps per bin (0: ntx at run time). Windows of <= 32 columns
// take tap i of every bin with one vpermt2ps over the row's two vectors; wider ones with one merge-masked vpermps
// per vector that holds some bin's tap i. TW: lanes of the last vector's load (load_last).
template <int NT, int NV, int NTX, int TW>
FASTOPS_AVX512_FN __attribute__((noinline)) uint32_t roi512_planes(const RoiTable<float>& t, const float* plane0,
                                                                   int64_t sC, int nc, float* out0,
                                                                   int64_t plane_out, int ph, int pw, int64_t sH,
                                                                   int W, int band_from, int band_to) {
  constexpr bool kPair = NV <= 2;
  const int ntx = NTX > 0 ? NTX : t.ntx;
  const int valid = (t.nvec - 1) * kVec + t.tail;  // window columns from xs that lie on the map
  const __mmask16 mlast = static_cast<__mmask16>((1u << (valid - 16 * (NV - 1))) - 1);
  const int32_t* rows = reinterpret_cast<const int32_t*>(t.pk.data());
  const float* w = t.pk.data() + static_cast<size_t>(ph) * NT;
  const int32_t* col = reinterpret_cast<const int32_t*>(t.pk.data() + t.xtoff);
  const float* wt = t.pk.data() + t.xtoff + static_cast<size_t>(pw) * ntx;
  // Tap i of every bin as a permute index and a weight vector (lanes >= pw: column 0, weight 0), and (wide
  // windows) the lanes whose tap lies in each vector. (Built per call from the tap-major table: with scalar
  // loops over the bins this setup was ~5% of the pooler's time.)
  const __mmask16 qm = static_cast<__mmask16>((1u << pw) - 1);
  __m512i idx[kMaxTaps512];
  __m512 wx[kMaxTaps512];
  __mmask16 km[kMaxTaps512][NV] = {};
  for (int i = 0; i < ntx; ++i) {
    const __m512i c = _mm512_srli_epi32(_mm512_maskz_loadu_epi32(qm, col + i * pw), 3);  // window column
    idx[i] = kPair ? c : _mm512_and_si512(c, _mm512_set1_epi32(15));
    wx[i] = _mm512_maskz_loadu_ps(qm, wt + i * pw);
    if constexpr (!kPair)
      for (int b = 0; b < NV; ++b)
        km[i][b] = _mm512_mask_cmpeq_epi32_mask(qm, _mm512_srli_epi32(c, 4), _mm512_set1_epi32(b));
  }
  const __m512 zero = _mm512_setzero_ps();
  uint32_t bad = 0;
  // The block's output (nc planes of ph x pw, one contiguous run) is gathered in L1 and written with streaming
  // stores when it is whole 64-byte lines: stored row by row, each output line is first read for ownership from
  // L3/DRAM (the pooler's output is 50 MB, not in cache from the previous call), and those reads take the fill
  // buffers that the window loads need. Pooler at 1 thread, streaming against row stores in one process (20
  // alternating pairs per run, seven runs): -9.0% to +2.1%, median -4.1%; workload A -3.8%, +0.3%, +0.9%; 2
  // threads unchanged. (Streaming for the AVX2 steps too, from forward_fast: no clear gain, not kept.)
  // Otherwise (a partial last block, an unaligned output) the rows are stored straight.
  alignas(64) float blockbuf[kFastCB * 64];
  const bool stream = nc <= kFastCB && plane_out <= 64 && reinterpret_cast<uintptr_t>(out0) % 64 == 0 &&
                      (static_cast<int64_t>(nc) * plane_out) % 16 == 0;
  float* const obase = stream ? blockbuf : out0;
  // Two planes per pass: each row's tap offsets and weights are loaded once for both.
  auto planes = [&](int c, auto np_tag) {
    constexpr int NP = decltype(np_tag)::value;
    const float* base[NP];
    __m512 chk[NP];
    for (int j = 0; j < NP; ++j) {
      if (band_to > band_from) prefetch_band(plane0 + (c + j) * sC, sH, W, band_from, band_to);
      base[j] = plane0 + (c + j) * sC + t.xs;
      chk[j] = zero;
    }
    for (int p = 0; p < ph; ++p) {
      const int32_t* rp = rows + p * NT;
      const float* wp = w + p * NT;
      __m512 v[NP][NV];
      const __m512 w0 = _mm512_set1_ps(wp[0]);
#pragma GCC unroll 8
      for (int j = 0; j < NP; ++j)
#pragma GCC unroll 8
        for (int b = 0; b < NV; ++b)
          v[j][b] = _mm512_mul_ps(w0, b < NV - 1 ? _mm512_loadu_ps(base[j] + rp[0] + 16 * b)
                                                 : load_last<TW>(mlast, base[j] + rp[0] + 16 * b));
#pragma GCC unroll 8
      for (int a = 1; a < NT; ++a) {
        const __m512 wa = _mm512_set1_ps(wp[a]);
#pragma GCC unroll 8
        for (int j = 0; j < NP; ++j)
#pragma GCC unroll 8
          for (int b = 0; b < NV; ++b)
            v[j][b] = _mm512_fmadd_ps(wa, b < NV - 1 ? _mm512_loadu_ps(base[j] + rp[a] + 16 * b)
                                                     : load_last<TW>(mlast, base[j] + rp[a] + 16 * b),
                                      v[j][b]);
      }
#pragma GCC unroll 8
      for (int j = 0; j < NP; ++j) {
        __m512 o = zero;
#pragma GCC unroll 8
        for (int i = 0; i < ntx; ++i) {
          __m512 g;
          if constexpr (kPair) {
            g = _mm512_permutex2var_ps(v[j][0], idx[i], NV == 2 ? v[j][NV - 1] : zero);
          } else {
            g = zero;
#pragma GCC unroll 8
            for (int b = 0; b < NV; ++b)
              if (km[i][b]) g = _mm512_mask_permutexvar_ps(g, km[i][b], idx[i], v[j][b]);
          }
          o = i == 0 ? _mm512_mul_ps(g, wx[0]) : _mm512_fmadd_ps(g, wx[i], o);
        }
        chk[j] = _mm512_mask_add_ps(chk[j], qm, chk[j], o);
        _mm512_mask_storeu_ps(obase + (c + j) * plane_out + p * pw, qm, o);
      }
    }
    for (int j = 0; j < NP; ++j)
      if (_mm512_fpclass_ps_mask(chk[j], 0x99)) bad |= 1u << (c + j);  // NaN or +-inf
  };
  int c = 0;
  if constexpr (NV <= 4)
    for (; c + 2 <= nc; c += 2) planes(c, std::integral_constant<int, 2>());
  for (; c < nc; ++c) planes(c, std::integral_constant<int, 1>());
  if (stream) {
    for (int64_t e = 0, n = static_cast<int64_t>(nc) * plane_out; e < n; e += 16)
      _mm512_stream_ps(out0 + e, _mm512_load_ps(blockbuf + e));
    if (bad) _mm_sfence();  // the caller rewrites those planes with ordinary stores
  }
  return bad;
}

// fast_roi512 for the RoI's tap counts (templates unroll them); ~0u when the RoI is not one it takes (no taps
// table, a window over 128 columns, more than 4 row taps per bin, or more than 4 (windows <= 32 columns) / 6
// column taps per bin: the AVX2 steps do those).
FASTOPS_AVX512_FN uint32_t fast_roi512(const RoiTable<float>& t, const float* plane0, int64_t sC, int nc,
                                       float* out0, int64_t plane_out, int ph, int pw, int64_t sH, int W,
                                       int band_from, int band_to) {
  const int valid = (t.nvec - 1) * kVec + t.tail;  // window columns from xs that lie on the map
  const int n16 = (valid + 15) / 16;
  if (t.ntx <= 0 || t.nt > 4 || n16 > 8 || t.ntx > (n16 <= 2 ? 4 : kMaxTaps512)) return ~0u;
  // (windows of <= 32 columns: the tap count unrolled too)
  const int last = valid - 16 * (n16 - 1);  // valid lanes of the last vector
  const int tw = last <= 4 ? 0 : last <= 8 ? 1 : 2;
  switch (((t.nt * 9 + n16) * 5 + (n16 <= 2 ? t.ntx : 0)) * 3 + tw) {
#define FASTOPS_ROI512_TW(NT, NV, NTX, TWI, TW)                                                                  \
  case ((NT * 9 + NV) * 5 + NTX) * 3 + TWI:                                                                      \
    return roi512_planes<NT, NV, NTX, TW>(t, plane0, sC, nc, out0, plane_out, ph, pw, sH, W, band_from, band_to);
#define FASTOPS_ROI512(NT, NV, NTX) \
  FASTOPS_ROI512_TW(NT, NV, NTX, 0, 4) FASTOPS_ROI512_TW(NT, NV, NTX, 1, 8) FASTOPS_ROI512_TW(NT, NV, NTX, 2, 16)
#define FASTOPS_ROI512_NT(NT)                                                                            \
  FASTOPS_ROI512(NT, 1, 1) FASTOPS_ROI512(NT, 1, 2) FASTOPS_ROI512(NT, 1, 3) FASTOPS_ROI512(NT, 1, 4)    \
  FASTOPS_ROI512(NT, 2, 1) FASTOPS_ROI512(NT, 2, 2) FASTOPS_ROI512(NT, 2, 3) FASTOPS_ROI512(NT, 2, 4)    \
  FASTOPS_ROI512(NT, 3, 0) FASTOPS_ROI512(NT, 4, 0) FASTOPS_ROI512(NT, 5, 0) FASTOPS_ROI512(NT, 6, 0)    \
  FASTOPS_ROI512(NT, 7, 0) FASTOPS_ROI512(NT, 8, 0)
    FASTOPS_ROI512_NT(1) FASTOPS_ROI512_NT(2) FASTOPS_ROI512_NT(3) FASTOPS_ROI512_NT(4)
#undef FASTOPS_ROI512_NT
#undef FASTOPS_ROI512
#undef FASTOPS_ROI512_TW
  }
  return ~0u;
}
#undef FASTOPS_AVX512_FN
#endif

// Prefetches the rows a packed RoI reads from one plane (issued one RoI ahead, it hides the L3/DRAM latency
// of rows not yet in cache).
inline void prefetch_plane(const RoiTable<float>& t, const float* plane, int ph) {
  const int32_t* rows = reinterpret_cast<const int32_t*>(t.pk.data());
  const float* base = plane + t.xs;
  const int win = t.nvec * kVec, n = ph * t.nt;
  for (int i = 0; i < n; ++i) {
    const char* r = reinterpret_cast<const char*>(base + rows[i]);
    for (int x = 0; x < win * 4; x += 64) _mm_prefetch(r + x, _MM_HINT_T0);
    _mm_prefetch(r + win * 4 - 1, _MM_HINT_T0);
  }
}
#endif

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

// Zeros the outputs ([C, ph, pw] runs of `per_roi` elements, RoI k at o + k * per_roi) of the RoIs that `order`
// does not visit: those without a level or without any pixel to read.
template <typename scalar_t>
void zero_unvisited(scalar_t* o, int64_t K, int64_t per_roi, const std::vector<int64_t>& order) {
  std::vector<char> seen(K, 0);
  for (int64_t k : order) seen[k] = 1;
  at::parallel_for(0, K, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      if (!seen[k]) std::fill(o + k * per_roi, o + (k + 1) * per_roi, scalar_t(0));
  });
}

#if FASTOPS_ROI_FAST
// float32 forward, NCHW levels, contiguous output. Blocks of kFastCB channels run in parallel (each output
// element is written by one thread); within a block the RoIs are visited grouped by (level, image, row), and
// each RoI's packed table serves all the block's planes while it sits in L1. The output of a RoI's block is
// one contiguous run. Every output element is written here (the output is not zero-filled beforehand).

bool forward_fast(const std::vector<RoiTable<float>>& tables, const std::vector<int64_t>& order,
                  const std::vector<Level<float>>& levels, float* o, int64_t K, int64_t C, int ph, int pw,
                  int max_span) {
  const int64_t plane_out = static_cast<int64_t>(ph) * pw;
  int ldv = kVec;
  size_t vsize = 0;  // (the transposed x step keeps 8 rows of 8 nvec columns in V)
  for (int64_t k : order) {
    ldv = std::max({ldv, tables[k].nvec * kVec, 2 * kVec * tables[k].nv2});
    if (tables[k].xt) vsize = std::max(vsize, static_cast<size_t>(tables[k].nvec) * kVec * kVec);
  }
  vsize = std::max(vsize, static_cast<size_t>(ph) * ldv);
  // Groups of `order` on one (level, image) whose windows cover their map at least once (sum of window areas
  // >= H * W): their blocks take the row band prefetch (prefetch_band).
  std::vector<char> dense(order.size(), 0);
  for (size_t i0 = 0, i1; i0 < order.size(); i0 = i1) {
    const RoiTable<float>& t0 = tables[order[i0]];
    double area = 0;
    for (i1 = i0; i1 < order.size() && tables[order[i1]].level == t0.level && tables[order[i1]].batch == t0.batch;
         ++i1) {
      const RoiTable<float>& t = tables[order[i1]];
      area += static_cast<double>(t.y_last - t.y_first + 1) * t.span;
    }
    const Level<float>& L = levels[t0.level];
    std::fill(dense.begin() + i0, dense.begin() + i1, area >= static_cast<double>(L.H) * L.W);
  }
  const bool use512 = use_avx512_step();
  at::parallel_for(0, (C + kFastCB - 1) / kFastCB, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> V(vsize), Vx(static_cast<size_t>(max_span) + kLanes);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t c0 = blk * kFastCB;
      const int nc = static_cast<int>(std::min<int64_t>(kFastCB, C - c0));
      int band_row = 0;  // rows [.., band_row) of the current group's planes are prefetched
      for (size_t i = 0; i < order.size(); ++i) {
        const int64_t k = order[i];
        const RoiTable<float>& t = tables[k];
        const Level<float>& L = levels[t.level];
        int band_from = 0, band_to = 0;  // rows to prefetch in each plane of this RoI's block, plane by plane
        if (dense[i]) {
          const RoiTable<float>* tp = i > 0 ? &tables[order[i - 1]] : nullptr;
          if (!tp || tp->level != t.level || tp->batch != t.batch) band_row = t.y_first;
          const int to = std::min(L.H, t.y_first + band_rows(L.W * static_cast<int64_t>(sizeof(float)), nc, kFwdBandBytes));
          if (to > band_row) band_from = band_row, band_to = to;
          band_row = std::max(band_row, to);
        }
        const float* plane = L.data + t.batch * L.sN + c0 * L.sC;
        float* dst = o + (k * C + c0) * plane_out;
        const RoiTable<float>& tn = tables[order[std::min(i + 1, order.size() - 1)]];
        const Level<float>& Ln = levels[tn.level];
        const float* plane_n = Ln.data + tn.batch * Ln.sN + c0 * Ln.sC;
        const uint32_t bad = use512 && t.nvec > 0 ? fast_roi512(t, plane, L.sC, nc, dst, plane_out, ph, pw, L.sH,
                                                                 L.W, band_from, band_to)
                                                  : ~0u;
        if (bad != ~0u) {
          for (int j = 0; j < nc; ++j) {  // planes with a non-finite result: the exact sparse walk
            if (!((bad >> j) & 1)) continue;
            float* oj = dst + j * plane_out;
            std::fill(oj, oj + plane_out, 0.f);
            forward_plane<true>(t, plane + j * L.sC, L.sH, L.sW, oj, pw, 1, ph, pw, Vx.data());
          }
          continue;
        }
        for (int j = 0; j < nc; ++j) {
          if (band_to > band_from) prefetch_band(plane + j * L.sC, L.sH, L.W, band_from, band_to);
          if (!dense[i] && tn.nvec > 0) prefetch_plane(tn, plane_n + j * Ln.sC, ph);
          float* oj = dst + j * plane_out;
          if (t.nvec > 0 && fast_plane(t, plane + j * L.sC, oj, ph, pw, V.data(), ldv)) continue;
          // Unpacked table, or a non-finite value read: the exact sparse walk (it skips empty rows).
          std::fill(oj, oj + plane_out, 0.f);
          if (L.sW == 1)
            forward_plane<true>(t, plane + j * L.sC, L.sH, L.sW, oj, pw, 1, ph, pw, Vx.data());
          else
            forward_plane<false>(t, plane + j * L.sC, L.sH, L.sW, oj, pw, 1, ph, pw, Vx.data());
        }
      }
    }
    _mm_sfence();  // the AVX-512 step's streaming stores are visible before the task ends
  });
  zero_unvisited(o, K, C * plane_out, order);
  return true;
}
#endif

// Other dtypes (and builds without AVX2/FMA) take the generic kernels.
template <typename T, typename S>
bool forward_fast(const std::vector<RoiTable<T>>&, const std::vector<int64_t>&, const std::vector<Level<S>>&, S*,
                  int64_t, int64_t, int, int, int) {
  return false;
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
  // The vectorised float32 path (NCHW levels only) writes every output element itself: no zero fill first;
  // the other paths write only the bins that read pixels, into fresh zero pages (cpu_memory.h).
  bool fast = FASTOPS_ROI_FAST && f0.scalar_type() == at::kFloat;
  for (const auto& f : feats) fast = fast && !(f.stride(1) == 1 && C > 1);
  const auto format = is_channels_last(f0) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // channels_last maps only: each RoI's output ([C, ph, pw], one contiguous run) is zeroed by the thread that
  // then fills it, on the block cache too. On fresh zero pages, two threads faulting in huge pages at once made
  // workload A's forward no faster at 2 threads than at 1 (43-54 ms against 39-40, make bench 2026-12-03).
  bool all_cl = C > 1;
  for (const auto& f : feats) all_cl = all_cl && f.stride(1) == 1;
  bool zeroed = true;
  at::Tensor out;
  if (fast && K > 0 && C > 0) {
    // A large output on the block cache (cpu_memory.h): the 50 MB of workload A would otherwise be new pages at
    // every call, whose first touch cost 5-20 ms (docs/roi_align.md, floors).
    out = cpu_memory::empty_cached({K, C, ph, pw}, f0.scalar_type(), format);
  } else if (all_cl && K > 0) {
    out = cpu_memory::empty_cached({K, C, ph, pw}, f0.scalar_type(), format, &zeroed);
  } else {
    out = cpu_memory::zeros_fresh({K, C, ph, pw}, f0.scalar_type(), format);
  }
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
                    canonical_scale, canonical_level, k_min, k_max, /*dense_x=*/false, /*pack=*/fast);
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t oK = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
    if (fast && forward_fast(tables, order, levels, o, K, C, ph, pw, max_span)) return;
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
          if (!zeroed) std::fill(o + k * oK, o + k * oK + C * ph * pw, scalar_t(0));
          forward_cl(t, L.data + t.batch * L.sN, static_cast<int>(C), L.sH, L.sW, o + k * oK, oC, oH, oW, ph, pw,
                     V.data(), acc.data());
        }
      });
      if (!zeroed) zero_unvisited(o, K, oK, order);
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
  // Gradients on the block cache (cpu_memory.h): fresh zero pages at the first call; afterwards reused blocks,
  // zeroed by the task that then accumulates into them (NCHW: its channel planes of its (level, image), just
  // before its RoIs' taps) or, for channels_last levels and maps no RoI reaches, by a parallel fill first.
  std::vector<at::Tensor> grads;
  std::vector<char> zeroed(L);
  for (size_t l = 0; l < L; ++l) {
    bool z = false;
    grads.push_back(cpu_memory::empty_cached({N, C, sizes[2 * l], sizes[2 * l + 1]}, acc_dtype,
                                             channels_last[l] ? at::MemoryFormat::ChannelsLast
                                                              : at::MemoryFormat::Contiguous,
                                             &z));
    zeroed[l] = z;
  }
  if (K == 0 || C == 0) {
    for (size_t l = 0; l < L; ++l)
      if (!zeroed[l]) grads[l].zero_();
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
      // Tasks: (channel chunk, group of RoIs on one (level, image)) pairs. The groups' gradient maps are
      // disjoint, so a gradient element belongs to one task, which accumulates it over its RoIs in `order`:
      // the same order whatever the thread count or chunk size. NCHW maps take kCB-channel chunks (a RoI's
      // table serves the chunk's planes while in L1); channels_last maps take long chunks (contiguous runs
      // per pixel) and split by image first: two threads on the two halves of every pixel run no faster than
      // one (measured: 60 ms at 1 thread, 75 ms at 2, workload A), while image groups scale.
      std::vector<std::pair<size_t, size_t>> groups;  // [begin, end) ranges of `order`
      for (size_t i = 0; i < order.size(); ++i) {
        const RoiTable<T>& t = tables[order[i]];
        if (i == 0 || t.level != tables[order[i - 1]].level || t.batch != tables[order[i - 1]].batch)
          groups.push_back({i, i});
        groups.back().second = i + 1;
      }
      bool any_cl = false;
      for (const auto& lv : levels) any_cl |= lv.sC == 1 && C > 1;
      // What the tasks below will not zero themselves: channels_last levels, and NCHW maps of images no RoI of
      // that level reaches (one group per (level, image): `order` is sorted by level, then image).
      std::vector<char> task_zeroes(L * N, 0);
      for (const auto& gr : groups) {
        const RoiTable<T>& t = tables[order[gr.first]];
        if (!(levels[t.level].sC == 1 && C > 1)) task_zeroes[t.level * N + t.batch] = 1;
      }
      for (size_t l = 0; l < L; ++l) {
        if (zeroed[l]) continue;
        for (int64_t b = 0; b < N; ++b)
          if (!task_zeroes[l * N + b]) grads[l].select(0, b).zero_();
      }
      const int64_t threads = at::get_num_threads();
      const int64_t ng = static_cast<int64_t>(groups.size());
      const int64_t split = any_cl ? (threads + ng - 1) / std::max<int64_t>(ng, 1) : 1;
      const int64_t chunk = any_cl ? std::max<int64_t>(kCB, (C + split - 1) / split) : kCB;
      const int64_t ntasks = (C + chunk - 1) / chunk * ng;
      // Dynamic scheduling (a shared counter): another process on one core slows only the thread there.
      std::atomic<int64_t> next{0};
      at::parallel_for(0, std::min<int64_t>(threads, ntasks), 1, [&](int64_t w0, int64_t w1) {
        std::vector<T> U(static_cast<size_t>(max_span + kLanes) * chunk), gv(chunk);
        for (int64_t w = w0; w < w1; ++w)
        for (int64_t task = next.fetch_add(1); task < ntasks; task = next.fetch_add(1)) {
          const int64_t c0 = task / ng * chunk;
          const auto [i0, i1] = groups[task % ng];
          const int nc = static_cast<int>(std::min<int64_t>(chunk, C - c0));
          // A reused gradient map is zeroed here, row band by row band just below the RoIs being accumulated
          // (they come top to bottom), so the zeroed rows are still in L2 when the taps add into them. Zeroing
          // the task's 3.9 MB of planes (workload A) in one pass first left the top rows, needed first, in
          // L3 (fwd+bwd A at 1 thread: 132 -> 110 ms). A contiguous map (NCHW, or one channel): row r of
          // plane c is at c * H * W + r * W.
          const RoiTable<T>& t0 = tables[order[i0]];
          const Level<G>& lz = levels[t0.level];
          const bool zero_here = !zeroed[t0.level] && task_zeroes[t0.level * N + t0.batch];
          G* const zbase = lz.data + t0.batch * lz.sN + c0 * static_cast<int64_t>(lz.H) * lz.W;
          const int zband = band_rows(lz.W * static_cast<int64_t>(sizeof(G)), nc, kBwdBandBytes);
          int zrow = 0;  // rows [0, zrow) of the task's planes are zeroed
          auto zero_rows = [&](int r1) {
            for (int c = 0; zrow < r1 && c < nc; ++c) {
              G* plane = zbase + c * static_cast<int64_t>(lz.H) * lz.W;
              std::fill(plane + static_cast<int64_t>(zrow) * lz.W, plane + static_cast<int64_t>(r1) * lz.W, G(0));
            }
            zrow = std::max(zrow, r1);
          };
          for (size_t i = i0; i < i1; ++i) {
            const int64_t k = order[i];
            const RoiTable<T>& t = tables[k];
            const Level<G>& lv = levels[t.level];
            if (zero_here) zero_rows(std::min(lv.H, std::max(t.y_last + 1, t.y_first + zband)));
            if (lv.sC == 1 && C > 1) {
              backward_cl(t, lv.data + t.batch * lv.sN + c0, nc, lv.sH, lv.sW, gp + k * gK + c0 * gC, gC, gH, gW,
                          ph, pw, U.data(), gv.data());
              continue;
            }
            for (int c = 0; c < nc; ++c) {
              G* plane = lv.data + t.batch * lv.sN + (c0 + c) * lv.sC;
              const scalar_t* g = gp + k * gK + (c0 + c) * gC;
              if (lv.sW == 1)
                backward_plane<true>(t, plane, lv.sH, lv.sW, g, gH, gW, ph, pw, U.data());
              else
                backward_plane<false>(t, plane, lv.sH, lv.sW, g, gH, gW, ph, pw, U.data());
            }
          }
          if (zero_here) zero_rows(lz.H);
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

using Entry = EntryPoints<&forward_impl, &backward_impl>;

}  // namespace
}  // namespace roi_align
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) { fastops::roi_align::Entry::register_impls(m); }
