// Corner pooling, CPU only: the record mask of the autograd path (`_corner_pool_masked`), as bits.
//
// One bit per element, packed along the axis ACROSS the scan: top/bottom [B, C, H, ceil(W / 8)] (bit k of byte j of
// row y: element (y, 8j + k)), left/right [B, C, ceil(H / 8), W] (bit k of byte (j, x): element (8j + k, x)); little
// bit order (numpy's packbits(..., bitorder="little")), padding bits 0. A bit is set where the element is a record
// (corner_pool.h is_record, or the first of its scan): the backward then reads the gradient and these bits (1/32 of
// a float map) instead of the gradient, the input and the output.
//
// Included by corner_pool_cpu.cpp only (anonymous namespace: each ISA copy keeps its own, csrc/cpu_isa.h).
#pragma once

#include <stdint.h>

#include "keypoints_vec.h"

#if defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif

namespace fastops {
namespace heatmaps {
namespace {

inline bool get_bit(const uint8_t* row, int64_t x) { return (row[x >> 3] >> (x & 7)) & 1; }
inline void set_bit(uint8_t* row, int64_t x, bool b) { row[x >> 3] |= (uint8_t)((unsigned)b << (x & 7)); }

// The bits of a lane mask (lane j -> bit j): one movemask.
inline uint32_t lane_bits(vint m) {
#if defined(__AVX512F__)
  return (uint32_t)_mm512_cmpneq_epi32_mask((__m512i)m, _mm512_setzero_si512());
#elif defined(__AVX__)
  return (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps((__m256i)m));
#elif defined(__SSE2__)
  return (uint32_t)_mm_movemask_ps(_mm_castsi128_ps((__m128i)m));
#else
  uint32_t b = 0;
  for (int j = 0; j < kLanes; ++j) b |= (uint32_t)(m[j] != 0) << j;
  return b;
#endif
}

// Lane j of the result: all ones when bit j of b is set.
inline vint expand_bits(uint32_t b) {
  vint bit;
  for (int j = 0; j < kLanes; ++j) bit[j] = 1 << j;
  return ((vint{} + (int32_t)b) & bit) == bit;
}

// kLanes bits starting at x (a multiple of kLanes) of a zero-initialised row.
inline void put_lane_bits(uint8_t* row, int x, uint32_t b) {
  if constexpr (kLanes >= 8) {
    for (int k = 0; k < kLanes / 8; ++k) row[x / 8 + k] = (uint8_t)(b >> (8 * k));
  } else {
    row[x / 8] |= (uint8_t)(b << (x % 8));
  }
}

inline uint32_t get_lane_bits(const uint8_t* row, int x) {
  if constexpr (kLanes >= 8) {
    uint32_t b = 0;
    for (int k = 0; k < kLanes / 8; ++k) b |= (uint32_t)row[x / 8 + k] << (8 * k);
    return b;
  } else {
    return (row[x / 8] >> (x % 8)) & ((1u << kLanes) - 1);
  }
}

// First row of a top/bottom scan: every element is a record.
inline void set_first_bits(uint8_t* row, int n) {
  for (int x = 0; x < n; ++x) set_bit(row, x, true);
}

#if defined(__AVX2__)
// Byte b (bit i = row i of an 8-row group) as an 8-lane float mask.
inline __m256 byte_mask(uint8_t b) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(b), bit), bit));
}
#endif

}  // namespace
}  // namespace heatmaps
}  // namespace fastops
