// Corner pooling: CPU kernels (forward scan and CornerNet's backward). One plane per task of at::parallel_for:
// results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "keypoints_vec.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif
#include "corner_pool/corner_pool.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

// top/bottom: the scan runs over the plane's rows with the W lanes contiguous, so every step is a vectorised row
// operation. left/right: the scan runs along the contiguous axis; kRows rows go together (independent chains).

// Software prefetch distance of the row scans, in rows.
constexpr int kAhead = 4;

// out[t] = scan_max(out[t-1], in[t]), t in scan order (rev: from row L-1 down).
template <typename T, typename A>
void scan_fwd_rows(const T* in, T* out, int L, int n, int64_t ld, bool rev) {
  const int first = rev ? L - 1 : 0, step = rev ? -1 : 1;
  std::copy(in + (int64_t)first * ld, in + (int64_t)first * ld + n, out + (int64_t)first * ld);
  for (int t = 1; t < L; ++t) {
    const int64_t y = first + step * t;
    const T* r = in + y * ld;
    const T* pr = out + (y - step) * ld;
    T* o = out + y * ld;
    int x = 0;
    // A few rows ahead in scan order: the hardware prefetchers follow a descending scan (top) poorly.
    const T* ahead = t + kAhead < L ? r + kAhead * step * ld : r;
    if constexpr (std::is_same<T, float>::value) {
      for (; x + kLanes <= n; x += kLanes) {
        __builtin_prefetch(ahead + x);
        const vfloat a = vload(r + x), b = vload(pr + x);
        const vfloat v = ((a > b) | ((a != a) & (b == b))) ? a : b;
        std::memcpy(o + x, &v, sizeof(v));
      }
    }
    for (; x < n; ++x) o[x] = (T)scan_max((A)pr[x], (A)r[x]);
  }
}

// CornerNet's backward along the same rows: walking against the scan, gradients accumulate until a "record" (first
// of the scan, or strictly above the running max before it, i.e. the previous output) takes them.
template <typename T, typename A>
void scan_bwd_rows(const T* g, const T* in, const T* out, T* gin, int L, int n, int64_t ld, bool rev, A* acc) {
  const int first = rev ? L - 1 : 0, step = rev ? -1 : 1;
  std::fill(acc, acc + n, A(0));
  for (int t = L - 1; t >= 0; --t) {
    const int64_t y = first + step * t;
    const T* ar = in + y * ld;
    const T* gr = g + y * ld;
    T* rr = gin + y * ld;
    if (t == 0) {
      for (int x = 0; x < n; ++x) rr[x] = (T)(acc[x] + (A)gr[x]);
    } else {
      const T* pr = out + (y - step) * ld;
      const int64_t ah = t >= kAhead ? -kAhead * step * ld : 0;  // rows ahead in the walk (against the scan)
      int x = 0;
      if constexpr (std::is_same<T, float>::value) {
        for (; x + kLanes <= n; x += kLanes) {
          __builtin_prefetch(gr + ah + x);
          __builtin_prefetch(ar + ah + x);
          __builtin_prefetch(pr + ah + x);
          const vfloat sv = vload(acc + x) + vload(gr + x);
          const vfloat a = vload(ar + x), p = vload(pr + x);
          const vint rec = (a > p) | ((a != a) & (p == p));
          const vfloat gv = rec ? sv : vfloat{};
          const vfloat av = rec ? vfloat{} : sv;
          std::memcpy(rr + x, &gv, sizeof(gv));
          std::memcpy(acc + x, &av, sizeof(av));
        }
      }
      for (; x < n; ++x) {
        const A s = acc[x] + (A)gr[x];
        const bool rec = is_record((A)ar[x], (A)pr[x]);
        rr[x] = (T)(rec ? s : A(0));
        acc[x] = rec ? A(0) : s;
      }
    }
  }
}


// left/right: kRows rows go together. Portable path: scalar, the rows' dependency chains independent so the core
// overlaps them.
constexpr int kRows = 8;

#if defined(__AVX__)
// left/right on float with AVX: 8 rows at a time, vectorised ACROSS the rows. An 8x8 tile (8 rows x 8 columns) is
// loaded row by row and transposed, so that register j holds column j of the 8 rows; the scan then walks the
// columns with one vector max per column (8 independent rows per instruction), and the tile is transposed back.
// Columns left over from the tiles (W % 8) come last in scan order and run scalar.
inline void transpose8(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

inline void load_tile(const float* p, int64_t ld, __m256* r) {
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(p + i * ld);
  transpose8(r);
}

inline void store_tile(float* p, int64_t ld, __m256* r) {
  transpose8(r);
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(p + i * ld, r[i]);
}

// The 8 rows of a group are one contiguous block of 8 * W floats, but a tile touches 8 short strided pieces of it
// (and the left scan walks them backwards), which the hardware prefetchers do not follow: tile t of a group
// prefetches lines [4t, 4t + 4) of the next group's block (8 * W floats = W / 2 lines, W / 8 tiles).
inline void prefetch_next_group(const float* group, int W, int t) {
  const char* nxt = reinterpret_cast<const char*>(group + 8 * (int64_t)W) + (int64_t)t * 256;
  __builtin_prefetch(nxt);
  __builtin_prefetch(nxt + 64);
  __builtin_prefetch(nxt + 128);
  __builtin_prefetch(nxt + 192);
}

// is_record / scan_max for 8 lanes: v > p, or v is NaN and p is not.
inline __m256 vrecord(__m256 v, __m256 p) {
  const __m256 gt = _mm256_cmp_ps(v, p, _CMP_GT_OQ);
  const __m256 first_nan = _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), _mm256_cmp_ps(p, p, _CMP_ORD_Q));
  return _mm256_or_ps(gt, first_nan);
}

// Column of scan position "tile t, slot jj" (jj in scan order) and the number of tiles; rev: the scan runs from
// column W - 1 down, so tiles are laid from the right and the leftover columns [0, W % 8) come last.
inline int tile_col(int W, int t, bool rev) { return rev ? W - 8 * (t + 1) : 8 * t; }
inline int slot(int jj, bool rev) { return rev ? 7 - jj : jj; }
inline int left_col(int W, int jj, bool rev) { return rev ? W % 8 - 1 - jj : W - W % 8 + jj; }

void scan8_fwd(const float* in, float* out, int W, bool rev) {
  const int nt = W / 8, rem = W % 8;
  __m256 m = _mm256_setzero_ps(), r[8];
  for (int t = 0; t < nt; ++t) {
    const int c = tile_col(W, t, rev);
    prefetch_next_group(in, W, t);
    load_tile(in + c, W, r);
    for (int jj = 0; jj < 8; ++jj) {
      const int j = slot(jj, rev);
      m = (t == 0 && jj == 0) ? r[j] : _mm256_blendv_ps(m, r[j], vrecord(r[j], m));
      r[j] = m;
    }
    store_tile(out + c, W, r);
  }
  float mm[8];
  _mm256_storeu_ps(mm, m);
  for (int jj = 0; jj < rem; ++jj) {
    const int x = left_col(W, jj, rev);
    for (int i = 0; i < 8; ++i) {
      const float v = in[(int64_t)i * W + x];
      mm[i] = (nt == 0 && jj == 0) ? v : scan_max(mm[i], v);
      out[(int64_t)i * W + x] = mm[i];
    }
  }
}

// Backward, walking against the scan: the leftover columns first, then the tiles from the last in scan order.
void scan8_bwd(const float* g, const float* in, const float* out, float* gin, int W, bool rev) {
  const int nt = W / 8, rem = W % 8, d = rev ? -1 : 1;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int jj = rem - 1; jj >= 0; --jj) {
    const int x = left_col(W, jj, rev);
    const bool first = nt == 0 && jj == 0;
    for (int i = 0; i < 8; ++i) {
      const int64_t o = (int64_t)i * W;
      const float sum = acc[i] + g[o + x];
      const bool rec = first || is_record(in[o + x], out[o + x - d]);
      gin[o + x] = rec ? sum : 0.0f;
      acc[i] = rec ? 0.0f : sum;
    }
  }
  __m256 va = _mm256_loadu_ps(acc), G[8], I[8], O[8];
  for (int t = nt - 1; t >= 0; --t) {
    const int c = tile_col(W, t, rev);
    prefetch_next_group(g, W, nt - 1 - t);
    prefetch_next_group(in, W, nt - 1 - t);
    prefetch_next_group(out, W, nt - 1 - t);
    load_tile(g + c, W, G);
    load_tile(in + c, W, I);
    load_tile(out + c, W, O);
    __m256 prev = _mm256_setzero_ps();  // the output just before the tile in scan order (t > 0)
    if (t > 0) {
      const int xp = c + slot(0, rev) - d;
      const int64_t w = W;  // row i of the tile at i * w: int64 (7 * W passes 2^31 for W >= 306,783,379)
      prev = _mm256_setr_ps(out[xp], out[w + xp], out[2 * w + xp], out[3 * w + xp], out[4 * w + xp],
                            out[5 * w + xp], out[6 * w + xp], out[7 * w + xp]);
    }
    for (int jj = 7; jj >= 0; --jj) {
      const int j = slot(jj, rev);
      const __m256 sum = _mm256_add_ps(va, G[j]);
      __m256 rec;
      if (jj > 0)
        rec = vrecord(I[j], O[slot(jj - 1, rev)]);
      else
        rec = t > 0 ? vrecord(I[j], prev) : _mm256_castsi256_ps(_mm256_set1_epi32(-1));
      G[j] = _mm256_and_ps(rec, sum);
      va = _mm256_andnot_ps(rec, sum);
    }
    store_tile(gin + c, W, G);
  }
}
#endif

template <typename T, typename A>
void scan_fwd_interleaved(const T* in, T* out, int W, int nr, bool rev) {
  A m[kRows];
  const int first = rev ? W - 1 : 0, d = rev ? -1 : 1;
  for (int r = 0; r < kRows; ++r) {
    const int rr = r < nr ? r : 0;
    m[r] = (A)in[(int64_t)rr * W + first];
  }
  for (int r = 0; r < nr; ++r) out[(int64_t)r * W + first] = in[(int64_t)r * W + first];
  int x = first;
  for (int t = 1; t < W; ++t) {
    x += d;
    if (nr == kRows) {
      for (int r = 0; r < kRows; ++r) {
        const A v = (A)in[(int64_t)r * W + x];
        m[r] = scan_max(m[r], v);
        out[(int64_t)r * W + x] = (T)m[r];
      }
    } else {
      for (int r = 0; r < nr; ++r) {
        const A v = (A)in[(int64_t)r * W + x];
        m[r] = scan_max(m[r], v);
        out[(int64_t)r * W + x] = (T)m[r];
      }
    }
  }
}

template <typename T, typename A>
void scan_bwd_interleaved(const T* g, const T* in, const T* out, T* gin, int W, int nr, bool rev) {
  A acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = A(0);
  for (int j = 0; j < W; ++j) {
    const int x = rev ? j : W - 1 - j;  // walk against the scan
    const bool first_of_scan = rev ? x == W - 1 : x == 0;
    const int xp = rev ? x + 1 : x - 1;
    for (int r = 0; r < nr; ++r) {
      const int64_t o = (int64_t)r * W;
      const A s = acc[r] + (A)g[o + x];
      const bool rec = first_of_scan || is_record((A)in[o + x], (A)out[o + xp]);
      gin[o + x] = (T)(rec ? s : A(0));
      acc[r] = rec ? A(0) : s;
    }
  }
}

Tensor corner_pool_cpu(const Tensor& input, c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_args(input);
  const Tensor in = input.contiguous();
  const int64_t BC = in.size(0) * in.size(1);
  const int H = (int)in.size(2), W = (int)in.size(3);
  Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* ip = in.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, BC, 1, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const scalar_t* a = ip + m * plane;
        scalar_t* o = op + m * plane;
        if (mode == kTop || mode == kBottom) {
          scan_fwd_rows<scalar_t, A>(a, o, H, W, W, mode == kTop);
          continue;
        }
        for (int r0 = 0; r0 < H; r0 += kRows) {
          const int nr = std::min(kRows, H - r0);
#if defined(__AVX__)
          if (std::is_same<scalar_t, float>::value && nr == 8) {  // (the casts are no-ops for float)
            const int64_t off = (int64_t)r0 * W;
            scan8_fwd(reinterpret_cast<const float*>(a + off), reinterpret_cast<float*>(o + off), W, mode == kLeft);
            continue;
          }
#endif
          scan_fwd_interleaved<scalar_t, A>(a + (int64_t)r0 * W, o + (int64_t)r0 * W, W, nr, mode == kLeft);
        }
      }
    });
  });
  return out;
}

Tensor corner_pool_backward_cpu(const Tensor& grad, const Tensor& input, const Tensor& output,
                                c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_backward_args(grad, input, output);
  const Tensor in = input.contiguous();
  const Tensor ou = output.contiguous();
  const Tensor g = grad.to(in.scalar_type()).contiguous();
  const int64_t BC = in.size(0) * in.size(1);
  const int H = (int)in.size(2), W = (int)in.size(3);
  Tensor gin = at::empty_like(in, at::MemoryFormat::Contiguous);
  if (gin.numel() == 0) return gin;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* ip = in.data_ptr<scalar_t>();
    const scalar_t* opp = ou.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* rp = gin.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, BC, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> acc((size_t)W);
      for (int64_t m = begin; m < end; ++m) {
        const scalar_t* a = ip + m * plane;
        const scalar_t* o = opp + m * plane;
        const scalar_t* gg = gp + m * plane;
        scalar_t* r = rp + m * plane;
        if (mode == kTop || mode == kBottom) {
          scan_bwd_rows<scalar_t, A>(gg, a, o, r, H, W, W, mode == kTop, acc.data());
          continue;
        }
        for (int r0 = 0; r0 < H; r0 += kRows) {
          const int nr = std::min(kRows, H - r0);
          const int64_t off = (int64_t)r0 * W;
#if defined(__AVX__)
          if (std::is_same<scalar_t, float>::value && nr == 8) {  // (the casts are no-ops for float)
            scan8_bwd(reinterpret_cast<const float*>(gg + off), reinterpret_cast<const float*>(a + off),
                      reinterpret_cast<const float*>(o + off), reinterpret_cast<float*>(r + off), W, mode == kLeft);
            continue;
          }
#endif
          scan_bwd_interleaved<scalar_t, A>(gg + off, a + off, o + off, r + off, W, nr, mode == kLeft);
        }
      }
    });
  });
  return gin;
}

}  // namespace
}  // namespace heatmaps
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  using namespace fastops::heatmaps;
  m.impl("corner_pool", &corner_pool_cpu);
  m.impl("_corner_pool_backward", &corner_pool_backward_cpu);
}
