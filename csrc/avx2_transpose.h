// 8 x 8 float transposes in AVX registers, for CPU kernels that turn 8 rows of a plane (or 8 channel planes) into
// 8-lane vectors across them and back (corner_pool's left/right scans, flow_warp's NCHW channel blocks).
// Anonymous namespace: each per-ISA copy of a kernel file keeps its own AVX copy (csrc/cpu_isa.h).
#pragma once

#if defined(__AVX__)
#include <immintrin.h>

#include <cstdint>

namespace fastops {
namespace {

// r[i] = row i of an 8 x 8 tile -> r[j] = column j.
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

// Loads 8 rows of 8 floats (row i at p + i * ld) and transposes them; store_tile is the inverse.
inline void load_tile(const float* p, int64_t ld, __m256* r) {
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(p + i * ld);
  transpose8(r);
}

inline void store_tile(float* p, int64_t ld, __m256* r) {
  transpose8(r);
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(p + i * ld, r[i]);
}

}  // namespace
}  // namespace fastops
#endif
