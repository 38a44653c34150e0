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

#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

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


// a * b + c, fused where the ISA has FMA (the build disables contraction: -ffp-contract=off).
inline vfloat vfma(vfloat a, vfloat b, vfloat c) {
#if defined(__FMA__) && defined(__AVX512F__)
  return (vfloat)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__) && defined(__AVX__)
  return (vfloat)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

// a > b ? a : b and a < b ? a : b lane by lane (x86's maxps/minps rule: b when either is NaN).
#if defined(__AVX512F__)
inline vfloat vmax(vfloat a, vfloat b) { return (vfloat)_mm512_max_ps((__m512)a, (__m512)b); }
inline vfloat vmin(vfloat a, vfloat b) { return (vfloat)_mm512_min_ps((__m512)a, (__m512)b); }
#elif defined(__AVX__)
inline vfloat vmax(vfloat a, vfloat b) { return (vfloat)_mm256_max_ps((__m256)a, (__m256)b); }
inline vfloat vmin(vfloat a, vfloat b) { return (vfloat)_mm256_min_ps((__m256)a, (__m256)b); }
#else
inline vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }
inline vfloat vmin(vfloat a, vfloat b) { return a < b ? a : b; }
#endif

// Cephes' expf per lane (~1 ulp); 0 below -87, NaN lanes stay NaN. Round-to-nearest by the 1.5 * 2^23 trick;
// the clamp (x86 max/min return the constant for a NaN lane) keeps NaN away from the integer conversion. Fused
// multiply-adds where the ISA has them, and the polynomial in Estrin's form: the dependency chain (which bounds a
// loop of exponentials) is about half of Horner's.
// vexp_poly: the polynomial and the power of two, for lanes already clamped to [-87, 88].
inline vfloat vexp_poly(vfloat xc) {
  const vfloat magic = vsplat(12582912.0f);
  const vfloat n = vfma(xc, vsplat(1.44269504088896341f), magic) - magic;
  const vfloat r = vfma(n, vsplat(2.12194440e-4f), vfma(n, vsplat(-0.693359375f), xc));
  const vfloat r2 = r * r;
  const vfloat a0 = vfma(r, vsplat(1.6666665459e-1f), vsplat(5.0000001201e-1f));
  const vfloat a1 = vfma(r, vsplat(8.3334519073e-3f), vsplat(4.1665795894e-2f));
  const vfloat a2 = vfma(r, vsplat(1.9875691500e-4f), vsplat(1.3981999507e-3f));
  const vfloat p = vfma(vfma(vfma(r2, a2, a1), r2, a0), r2, r + 1.0f);
  const vint e = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

inline vfloat vexp(vfloat x) {
  const vfloat ps = vexp_poly(vmin(vmax(x, vsplat(-87.0f)), vsplat(88.0f)));
  const vint keep = x >= vsplat(-87.0f);  // false below -87 and for NaN
  const vint nan = x != x;
  vfloat alt;  // NaN lanes keep x, the others 0
  {
    const vint xb = (vint)x & nan;
    std::memcpy(&alt, &xb, sizeof(alt));
  }
  return keep ? ps : alt;
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

// numpy's argmax of p[0..n) (n > 0) in one pass: the first maximum, or the first NaN if there is one; its value
// in `best`. Blocks of 4 vectors: each lane keeps its running max and the first block where it was reached, so the
// first block holding the overall maximum is known at the end and only that block is searched again. NaN (and
// inf, which the lane sums also flag) send the map to the exact scalar path.
inline int64_t argmax_first(const float* p, int64_t n, float& best) {
  constexpr int64_t kB = 4 * kLanes;
  int64_t i = 0;
  if (n >= kB) {
    vfloat vb = vsplat(-INFINITY), s0 = vfloat{}, s1 = vfloat{}, s2 = vfloat{}, s3 = vfloat{};
    vint vi = vint{};
    for (; i + kB <= n; i += kB) {
      const vfloat a = vload(p + i), b = vload(p + i + kLanes), c = vload(p + i + 2 * kLanes),
                   d = vload(p + i + 3 * kLanes);
      s0 += a;
      s1 += b;
      s2 += c;
      s3 += d;
      const vfloat m = vmax(vmax(a, b), vmax(c, d));
      const vint gt = m > vb;
      vb = gt ? m : vb;
      vi = gt ? vint{} + (int32_t)(i / kB) : vi;
    }
    const vfloat s = (s0 + s1) + (s2 + s3);
    bool finite_sum = true;
    for (int j = 0; j < kLanes; ++j) finite_sum &= (s[j] - s[j] == 0.0f);
    if (finite_sum) {
      float m = vb[0];
      for (int j = 1; j < kLanes; ++j) m = vb[j] > m ? vb[j] : m;
      int32_t blk = INT32_MAX;
      for (int j = 0; j < kLanes; ++j) blk = (vb[j] == m && vi[j] < blk) ? vi[j] : blk;
      int64_t idx = (int64_t)blk * kB;
      while (p[idx] != m) ++idx;  // inside the block: some lane of it holds m
      for (int64_t k = i; k < n; ++k) {  // the tail after the last block
        if (p[k] > m) {
          m = p[k];
          idx = k;
        }
        if (p[k] != p[k]) return best = p[k], k;
      }
      best = m;
      return idx;
    }
    i = 0;  // a NaN or inf somewhere: the scalar path
  }
  int64_t idx = 0;
  float m = p[0];
  if (m != m) return best = m, 0;
  for (int64_t k = 1; k < n; ++k) {
    const float v = p[k];
    if (v != v) return best = v, k;
    if (v > m) {
      m = v;
      idx = k;
    }
  }
  best = m;
  return idx;
}

// Maximum of p[0..n) (n > 0), 4 independent vector accumulators. With a NaN in p the result may be NaN or the
// maximum of the other elements: callers handle NaN maps by other means.
inline float fast_max(const float* p, int64_t n) {
  int64_t i = 0;
  float r = p[0];
  if (n >= 4 * kLanes) {
    vfloat m0 = vload(p), m1 = m0, m2 = m0, m3 = m0;
    for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
      m0 = vmax(vload(p + i), m0);
      m1 = vmax(vload(p + i + kLanes), m1);
      m2 = vmax(vload(p + i + 2 * kLanes), m2);
      m3 = vmax(vload(p + i + 3 * kLanes), m3);
    }
    const vfloat m = vmax(vmax(m0, m1), vmax(m2, m3));
    r = m[0];
    for (int j = 1; j < kLanes; ++j) r = m[j] > r ? m[j] : r;
  }
  for (; i < n; ++i) r = p[i] > r ? p[i] : r;
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
