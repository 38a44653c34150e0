// CPU-only vector helpers of the keypoint families (render, decode, peaks, corner_pool).
//
// Reductions run in kLanes independent accumulators combined in a fixed order at the end, so results do not
// depend on the thread count. float uses GCC vector extensions (one native register: 16 lanes with AVX-512,
// 8 with AVX2): gcc does not vectorise float reductions or exp on its own without
// -ffast-math.
#pragma once

#include <stdint.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace fastops {
namespace heatmaps {
// Anonymous: each per-ISA copy of a kernel file (csrc/cpu_isa.h) keeps its own helpers, compiled for its ISA
// (an inline function with external linkage would be merged by the linker into the baseline copy).
namespace {

// The lane count must match the widest native register: gcc expands a generic vector wider than the target's
// registers piecewise, one scalar per lane, for masks and selects (`c ? a : b`), which made these kernels 10-20x
// slower than scalar code on AVX2 machines. 16 lanes with AVX-512, 8 with AVX/AVX2, 4 otherwise (SSE2).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float vfloat __attribute__((vector_size(4 * kLanes)));
typedef int32_t vint __attribute__((vector_size(4 * kLanes)));

inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }
inline vfloat vsplat(float x) { return vfloat{} + x; }
inline vfloat viota(float x0) {
  vfloat v;
  for (int j = 0; j < kLanes; ++j) v[j] = x0 + static_cast<float>(j);
  return v;
}
inline float vsum(vfloat v) {
  float r = 0;
  for (int j = 0; j < kLanes; ++j) r += v[j];
  return r;
}

// Cephes' expf (~1 ulp) on a clamped, non-NaN argument xc with n = round(xc / ln 2): 2^n * p(r), r = xc - n ln 2
// (two-constant Cody-Waite reduction, degree-6 polynomial). V is float or vfloat: the same arithmetic lane by lane.
inline float splat_as(float, float c) { return c; }
inline vfloat splat_as(vfloat, float c) { return vsplat(c); }
inline int32_t to_int32(float n) { return static_cast<int32_t>(n); }
inline vint to_int32(vfloat n) { return __builtin_convertvector(n, vint); }
template <typename V>
inline V cephes_expf(V xc, V n) {
  const V r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  V p = splat_as(r, 1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const auto e = (to_int32(n) + 127) << 23;  // |n| <= 127: the exponent field of 2^n
  V scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

// exp for float that gcc vectorises; 0 below -87 (no denormal results), NaN stays NaN (never cast to int: the
// exponent is built from the clamped argument).
inline float fast_expf(float x) {
  const bool nan = x != x;
  float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  xc = nan ? 0.0f : xc;
  const float v = cephes_expf(xc, std::floor(xc * 1.44269504088896341f + 0.5f));
  const float out = x < -87.0f ? 0.0f : v;
  return nan ? x : out;
}
inline double fast_exp(double x) { return std::exp(x); }
inline float fast_exp(float x) { return fast_expf(x); }

// fast_expf per lane. Round-to-nearest by the 1.5 * 2^23 trick; NaN lanes stay NaN.
inline vfloat vexp(vfloat x) {
  const vint under = x < vsplat(-87.0f);
  const vint nan = x != x;
  vfloat xc = under ? vsplat(-87.0f) : x;
  xc = xc > vsplat(88.0f) ? vsplat(88.0f) : xc;
  xc = nan ? vsplat(0.0f) : xc;
  const vfloat magic = vsplat(12582912.0f);
  vfloat out = cephes_expf(xc, (xc * 1.44269504088896341f + magic) - magic);
  out = under ? vsplat(0.0f) : out;
  return nan ? x : out;
}

// Max that propagates NaN (as max_pool2d), lane by lane.
inline vfloat vnanmax(vfloat a, vfloat b) {
  const vint c = (a > b) | (a != a);
  return c ? a : b;
}

// Maximum of p[0..n) (n > 0) and whether any element is NaN.
template <typename T>
T lanes_max(const T* p, int64_t n, bool& has_nan) {
  T r = p[0];
  int f = 0;
  int64_t i = 0;
  if constexpr (std::is_same<T, float>::value) {
    if (n >= kLanes) {
      vfloat m = vload(p);
      vint nf = vint{};
      for (; i + kLanes <= n; i += kLanes) {
        const vfloat v = vload(p + i);
        m = v > m ? v : m;
        nf |= (v != v);
      }
      r = m[0];
      for (int j = 0; j < kLanes; ++j) {
        r = m[j] > r ? m[j] : r;
        f |= nf[j];
      }
    }
  }
  for (; i < n; ++i) {
    const T v = p[i];
    r = v > r ? v : r;
    f |= (int)(v != v);
  }
  has_nan = f != 0;
  return r;
}

// Index of the first element equal to v (searching kLanes at a time), -1 if none.
template <typename T>
int64_t first_equal(const T* p, int64_t n, T v) {
  int64_t i = 0;
  if constexpr (std::is_same<T, float>::value) {
    const vfloat vv = vsplat(v);
    for (; i + kLanes <= n; i += kLanes) {
      const vint eq = vload(p + i) == vv;
      int any = 0;
      for (int j = 0; j < kLanes; ++j) any |= eq[j];
      if (any) break;
    }
  }
  for (; i < n; ++i)
    if (p[i] == v) return i;
  return -1;
}

template <typename T>
int64_t first_nan(const T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (p[i] != p[i]) return i;
  return 0;
}

// p[0..n) in the accumulation type: the input itself when T is A, else converted into buf.
template <typename T, typename A>
const A* as_acc(const T* p, int64_t n, std::vector<A>& buf) {
  if constexpr (std::is_same<T, A>::value) {
    return p;
  } else {
    buf.resize((size_t)n);
    for (int64_t i = 0; i < n; ++i) buf[i] = (A)p[i];
    return buf.data();
  }
}

}  // namespace
}  // namespace heatmaps
}  // namespace fastops
