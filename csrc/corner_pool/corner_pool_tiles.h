// Corner pooling, CPU only: the left/right scans of float planes with AVX, 8 rows at a time (included by
// corner_pool_cpu.cpp only; anonymous namespace: each ISA copy keeps its own, csrc/cpu_isa.h).
#pragma once

#include <stdint.h>

#include <cstring>

#include "avx2_transpose.h"
#include "corner_pool/corner_pool.h"
#include "corner_pool/corner_pool_bits.h"

namespace fastops {
namespace heatmaps {
namespace {

#if defined(__AVX__)
// left/right on float with AVX: 8 rows at a time, vectorised ACROSS the rows. An 8x8 tile (8 rows x 8 columns) is
// loaded row by row and transposed, so that register j holds column j of the 8 rows; the scan then walks the
// columns with one vector max per column (8 independent rows per instruction), and the tile is transposed back.
// Columns left over from the tiles (W % 8) come last in scan order and run scalar.
// transpose8 / load_tile / store_tile: csrc/avx2_transpose.h (shared with flow_warp's channel blocks).

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

// With `mk` (the group's W bytes of the record mask): byte x gets the record bits of column x (bit i: row i).
void scan8_fwd(const float* in, float* out, int W, bool rev, uint8_t* mk) {
  const int nt = W / 8, rem = W % 8;
  __m256 m = _mm256_setzero_ps(), r[8];
  for (int t = 0; t < nt; ++t) {
    const int c = tile_col(W, t, rev);
    prefetch_next_group(in, W, t);
    load_tile(in + c, W, r);
    uint8_t bits[8];
    for (int jj = 0; jj < 8; ++jj) {
      const int j = slot(jj, rev);
      if (t == 0 && jj == 0) {
        m = r[j];
        bits[j] = 0xff;
      } else {
        const __m256 rec = vrecord(r[j], m);
        m = _mm256_blendv_ps(m, r[j], rec);
        bits[j] = (uint8_t)_mm256_movemask_ps(rec);
      }
      r[j] = m;
    }
    store_tile(out + c, W, r);
    if (mk) std::memcpy(mk + c, bits, 8);
  }
  float mm[8];
  _mm256_storeu_ps(mm, m);
  for (int jj = 0; jj < rem; ++jj) {
    const int x = left_col(W, jj, rev);
    unsigned bits = 0;
    for (int i = 0; i < 8; ++i) {
      const float v = in[(int64_t)i * W + x];
      const bool rec = (nt == 0 && jj == 0) || is_record(v, mm[i]);
      mm[i] = rec ? v : mm[i];
      bits |= (unsigned)rec << i;
      out[(int64_t)i * W + x] = mm[i];
    }
    if (mk) mk[x] = (uint8_t)bits;
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

#if defined(__AVX2__)
// scan8_bwd from the forward's record bits (the group's W bytes at mk): two tile transposes instead of four.
void scan8_bwd_bits(const float* g, const uint8_t* mk, float* gin, int W, bool rev) {
  const int nt = W / 8, rem = W % 8;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int jj = rem - 1; jj >= 0; --jj) {
    const int x = left_col(W, jj, rev);
    for (int i = 0; i < 8; ++i) {
      const int64_t o = (int64_t)i * W;
      const float sum = acc[i] + g[o + x];
      const bool rec = (mk[x] >> i) & 1;
      gin[o + x] = rec ? sum : 0.0f;
      acc[i] = rec ? 0.0f : sum;
    }
  }
  __m256 va = _mm256_loadu_ps(acc), G[8];
  for (int t = nt - 1; t >= 0; --t) {
    const int c = tile_col(W, t, rev);
    prefetch_next_group(g, W, nt - 1 - t);
    load_tile(g + c, W, G);
    for (int jj = 7; jj >= 0; --jj) {
      const int j = slot(jj, rev);
      const __m256 sum = _mm256_add_ps(va, G[j]);
      const __m256 rec = byte_mask(mk[c + j]);
      G[j] = _mm256_and_ps(rec, sum);
      va = _mm256_andnot_ps(rec, sum);
    }
    store_tile(gin + c, W, G);
  }
}
#endif
#endif

}  // namespace
}  // namespace heatmaps
}  // namespace fastops
