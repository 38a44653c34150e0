// NMS family: CPU kernels (schemas and host checks: nms.cpp; per-pair math: nms.h; semantics: docs/nms.md).
//
// CPU strategy: scores are sorted once (LSD radix sort of 32-bit order-preserving keys for float/half/bf16,
// std::sort of (key, index) for double); boxes are gathered in score order into a structure of arrays; the
// greedy pass takes the first remaining box (AVX2 float: up to the first four, while each survives the ones before
// it), computes its IoU with all remaining boxes 8 at a time (AVX2; 16 with AVX-512) and compacts the survivors in
// place (lane permutation; mask compress-store), so every later pass only touches boxes that are still alive. batched_nms / multiclass_nms / fast_nms run their classes in parallel (at::parallel_for over
// classes: each class is independent, so results do not depend on the thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__)
// gcc 12 warns about an uninitialised temporary inside its own compress-store intrinsics header.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#elif defined(__AVX2__)
#include <immintrin.h>
#endif

#include "nms/nms.h"

namespace fastops {
namespace nms {
namespace {

// An array of n trivially constructible elements left uninitialised (every user writes a slot before reading it;
// std::vector's zero fill was ~3 % of batched_nms).
template <typename T>
struct Buf {
  std::unique_ptr<T[]> p;
  explicit Buf(int64_t n) : p(new T[size_t(n)]) {}
  T* data() { return p.get(); }
  const T* data() const { return p.get(); }
  T& operator[](int64_t i) { return p[i]; }
  const T& operator[](int64_t i) const { return p[i]; }
};

// ---- sorting ---------------------------------------------------------------------------------------------------

// Packed words (desc_key(s[i]) << 32 | i) of the positions [0, n), in ascending order = descending score, ties by
// lower position, NaN first (torch.sort(stable, descending)). a, b: n words each; returns the one holding the result.
uint64_t* radix_sort_desc(const float* s, int64_t n, uint64_t* a, uint64_t* b) {
  for (int64_t i = 0; i < n; ++i) a[i] = (uint64_t(desc_key(s[i])) << 32) | uint64_t(uint32_t(i));
  // LSD radix sort on the 32 key bits (11 + 11 + 10), stable, so equal keys keep position order.
  const int shifts[3] = {32, 43, 54};
  const int bits[3] = {11, 11, 10};
  int64_t cnt[2048];
  for (int p = 0; p < 3; ++p) {
    const int sh = shifts[p];
    const uint64_t mask = (uint64_t(1) << bits[p]) - 1;
    std::fill(cnt, cnt + 2048, 0);
    for (int64_t i = 0; i < n; ++i) cnt[(a[i] >> sh) & mask]++;
    bool trivial = false;
    for (int64_t c = 0; c <= int64_t(mask); ++c) trivial |= (cnt[c] == n);
    if (trivial) continue;  // every key has the same digit: the pass would not move anything
    int64_t sum = 0;
    for (int64_t c = 0; c <= int64_t(mask); ++c) {
      const int64_t t = cnt[c];
      cnt[c] = sum;
      sum += t;
    }
    for (int64_t i = 0; i < n; ++i) b[cnt[(a[i] >> sh) & mask]++] = a[i];
    std::swap(a, b);
  }
  return a;
}

// argsort_desc into `ord`; for float also the sorted packed words (a, b: n words each), else nullptr.
const uint64_t* sort_positions(const float* s, int64_t n, int32_t* ord, uint64_t* a, uint64_t* b) {
  const uint64_t* r = radix_sort_desc(s, n, a, b);
  for (int64_t i = 0; i < n; ++i) ord[i] = int32_t(uint32_t(r[i]));
  return r;
}

// Positions [0, n) in descending score order, ties by lower position, NaN first (torch.sort(stable, descending)).
void argsort_desc(const float* s, int64_t n, int32_t* order) {
  Buf<uint64_t> a(n), b(n);
  sort_positions(s, n, order, a.data(), b.data());
}

void argsort_desc(const double* s, int64_t n, int32_t* order) {
  std::vector<std::pair<uint64_t, int32_t>> a(n);
  for (int64_t i = 0; i < n; ++i) a[i] = {desc_key(s[i]), int32_t(i)};
  std::sort(a.begin(), a.end());
  for (int64_t i = 0; i < n; ++i) order[i] = a[i].second;
}

const uint64_t* sort_positions(const double* s, int64_t n, int32_t* ord, uint64_t*, uint64_t*) {
  argsort_desc(s, n, ord);
  return nullptr;
}

// (key, position) pairs of a candidate list, in one 64-bit word for float keys.
inline uint64_t packed(float s, int32_t pos) { return (uint64_t(desc_key(s)) << 32) | uint64_t(uint32_t(pos)); }
inline int32_t packed_pos(uint64_t v) { return int32_t(uint32_t(v)); }

// Sort `cand` (positions) by descending score (stable, NaN first); keep the first `k` (k < 0: all).
// `s(i)` is the score of position i.
template <typename A, typename S>
void sort_topk(std::vector<int32_t>& cand, const S& s, int64_t k) {
  const int64_t n = int64_t(cand.size());
  const int64_t kk = (k < 0 || k > n) ? n : k;
  if constexpr (std::is_same_v<A, float>) {
    std::vector<uint64_t> v;
    if (kk < n / 4 && n > 1024) {
      // radix select: histogram of the top 12 key bits, then only the buckets that reach the k-th are sorted
      std::vector<uint32_t> key(n);
      int64_t hist[4096] = {0};
      for (int64_t i = 0; i < n; ++i) {
        key[i] = desc_key(A(s(cand[i])));
        hist[key[i] >> 20]++;
      }
      uint32_t last = 0;
      for (int64_t acc = 0; last < 4096; ++last) {
        acc += hist[last];
        if (acc >= kk) break;
      }
      v.reserve(kk + hist[std::min<uint32_t>(last, 4095)]);
      for (int64_t i = 0; i < n; ++i)
        if ((key[i] >> 20) <= last) v.push_back((uint64_t(key[i]) << 32) | uint64_t(uint32_t(cand[i])));
    } else {
      v.resize(n);
      for (int64_t i = 0; i < n; ++i) v[i] = packed(A(s(cand[i])), cand[i]);
    }
    const int64_t nv = int64_t(v.size());
    if (kk < nv) std::nth_element(v.begin(), v.begin() + kk, v.end());
    std::sort(v.begin(), v.begin() + kk);
    cand.resize(kk);
    for (int64_t i = 0; i < kk; ++i) cand[i] = packed_pos(v[i]);
  } else {
    std::vector<std::pair<uint64_t, int32_t>> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = {desc_key(A(s(cand[i]))), cand[i]};
    if (kk < n) std::nth_element(v.begin(), v.begin() + kk, v.end());
    std::sort(v.begin(), v.begin() + kk);
    cand.resize(kk);
    for (int64_t i = 0; i < kk; ++i) cand[i] = v[i].second;
  }
}

// ---- torchvision's tie order: libstdc++'s std::sort replayed ----------------------------------------------------
//
// std::sort (introsort) leaves tied keys in an order only its own run determines. Its last step, the insertion
// sort of the chunks (<= 16 elements, ordered among themselves) that the partitions leave, is stable: tied keys end
// in the order the partition phase leaves them. replay_sort_order runs that phase exactly (median-of-three pivot
// moved to the front, unguarded Hoare partition, recursion on the right part, heapsort at the depth limit), each
// partition's two scans read from bit masks of the range (key >= pivot / key <= pivot, built in one pass) instead
// of comparing element by element with a mispredicted branch at every stop. Position r[k] of element k after the
// phase then orders each run of tied keys.

inline uint32_t key_of(uint64_t v) { return uint32_t(v >> 32); }
inline bool key_less(uint64_t a, uint64_t b) { return key_of(a) < key_of(b); }

// libstdc++'s __move_median_to_first
inline void move_median_to_first(uint64_t* result, uint64_t* a, uint64_t* b, uint64_t* c) {
  if (key_less(*a, *b)) {
    if (key_less(*b, *c)) std::iter_swap(result, b);
    else if (key_less(*a, *c)) std::iter_swap(result, c);
    else std::iter_swap(result, a);
  } else if (key_less(*a, *c)) {
    std::iter_swap(result, a);
  } else if (key_less(*b, *c)) {
    std::iter_swap(result, c);
  } else {
    std::iter_swap(result, b);
  }
}

// libstdc++'s __unguarded_partition(f, f + len, pivot) for a pivot of key p. Its left scan stops at the first
// key >= p, its right scan at the last key <= p; after a swap at (L, R) only (L, R) still holds original elements,
// and position R (L) holds a key >= p (<= p), so the next stops are the next original mask bits, capped at R (L).
uint64_t* replay_partition(uint64_t* f, int64_t len, uint32_t p, std::vector<uint64_t>& ge,
                           std::vector<uint64_t>& le) {
  const int64_t nw = (len + 63) >> 6;
  ge.resize(size_t(nw));
  le.resize(size_t(nw));
  int64_t w0 = 0;
#if defined(__AVX2__)
  {
    // key < p and key > p on the packed words as unsigned 64-bit compares (sign bit flipped), 4 words a step
    const __m256i sign = _mm256_set1_epi64x(std::numeric_limits<int64_t>::min());
    const __m256i p0 = _mm256_set1_epi64x(int64_t((uint64_t(p) << 32) ^ (uint64_t(1) << 63)));
    const __m256i p1 = _mm256_set1_epi64x(int64_t(((uint64_t(p) << 32) | 0xFFFFFFFFu) ^ (uint64_t(1) << 63)));
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    for (; w0 < nw; ++w0) {
      const uint64_t* q = f + (w0 << 6);
      const int e = int(std::min<int64_t>(64, len - (w0 << 6)));
      uint64_t lt = 0, gt = 0;
      int k = 0;
      for (; 4 * k + 4 <= e; ++k) {
        const __m256i x = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 4 * k)), sign);
        lt |= uint64_t(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(p0, x)))) << (4 * k);
        gt |= uint64_t(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(x, p1)))) << (4 * k);
      }
      if (4 * k < e) {  // the last 1-3 words, masked (bits past len are never read: the scans stop inside)
        const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(e - 4 * k), lane);
        const __m256i x = _mm256_xor_si256(
            _mm256_maskload_epi64(reinterpret_cast<const long long*>(q + 4 * k), m), sign);
        lt |= uint64_t(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(p0, x)))) << (4 * k);
        gt |= uint64_t(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(x, p1)))) << (4 * k);
      }
      ge[w0] = ~lt;
      le[w0] = ~gt;
    }
  }
#endif
  for (int64_t w = w0; w < nw; ++w) {
    const uint64_t* q = f + (w << 6);
    const int e = int(std::min<int64_t>(64, len - (w << 6)));
    uint64_t g = 0, l = 0;
    for (int i = 0; i < e; ++i) {
      const uint32_t k = key_of(q[i]);
      g |= uint64_t(k >= p) << i;
      l |= uint64_t(k <= p) << i;
    }
    ge[w] = g;
    le[w] = l;
  }
  int64_t pl = -1, pr = len, i = 0, j = len - 1;
  for (;;) {
    int64_t L = pr;
    for (int64_t w = i >> 6; (w << 6) < pr; ++w) {
      uint64_t bits = ge[w];
      if (w == (i >> 6)) bits &= ~uint64_t(0) << (i & 63);
      if (bits) {
        L = std::min<int64_t>((w << 6) + __builtin_ctzll(bits), pr);
        break;
      }
    }
    int64_t R = pl;
    for (int64_t w = j >> 6; w >= 0 && (w << 6) + 63 > pl; --w) {
      uint64_t bits = le[w];
      if (w == (j >> 6)) bits &= ~uint64_t(0) >> (63 - (j & 63));
      if (bits) {
        R = std::max<int64_t>((w << 6) + 63 - __builtin_clzll(bits), pl);
        break;
      }
    }
    if (!(L < R)) return f + L;
    std::swap(f[L], f[R]);
    pl = L;
    pr = R;
    i = L + 1;
    j = R - 1;
  }
}

// Tied keys (ascending): does [klo, khi] hold one? A range whose keys all lie in [klo, khi] and that holds no tied
// key needs no replay: only the order of equal keys is read afterwards, and the elements of a range stay inside it
// (any positions there order them correctly against the elements of other ranges).
struct TiedKeys {
  const uint32_t* k;
  int64_t n;
  bool any_in(uint32_t klo, uint32_t khi) const {
    const uint32_t* it = std::lower_bound(k, k + n, klo);
    return it != k + n && *it <= khi;
  }
};

// libstdc++'s __introsort_loop (threshold 16), on a range whose keys lie in [klo, khi]; ranges without a tied key
// are skipped (see TiedKeys).
void replay_introsort_loop(uint64_t* first, uint64_t* last, int64_t depth, uint32_t klo, uint32_t khi,
                           const TiedKeys& tk, std::vector<uint64_t>& ge, std::vector<uint64_t>& le) {
  while (last - first > 16) {
    if (!tk.any_in(klo, khi)) return;
    if (depth == 0) {  // libstdc++'s __partial_sort(first, last, last): heap sort
      std::partial_sort(first, last, last, key_less);
      return;
    }
    --depth;
    uint64_t* mid = first + (last - first) / 2;
    move_median_to_first(first, first + 1, mid, last - 1);
    const uint32_t p = key_of(*first);
    uint64_t* cut = replay_partition(first + 1, last - (first + 1), p, ge, le);
    // [cut, last) holds keys >= p, [first, cut) keys <= p (the pivot included)
    replay_introsort_loop(cut, last, depth, p, khi, tk, ge, le);
    last = cut;
    khi = p;
  }
}

// v[0, n): packed (key, id) words. Leaves v as std::sort's partition phase does (see above), except inside ranges
// that hold no key of `tied` (ascending; see TiedKeys).
// The first partition splits v into two parts that the loop then sorts independently (right, then left, same
// depth): at::parallel_for runs them on two threads when there are two, with the same result.
void replay_sort_partitions(uint64_t* v, int64_t n, const std::vector<uint32_t>& tied) {
  if (n <= 16 || tied.empty()) return;
  const TiedKeys tk{tied.data(), int64_t(tied.size())};
  const int64_t depth = 2 * int64_t(63 - __builtin_clzll(uint64_t(n)));  // std::__lg(n) * 2
  std::vector<uint64_t> ge, le;
  move_median_to_first(v, v + 1, v + n / 2, v + n - 1);
  const uint32_t p = key_of(*v);
  uint64_t* cut = replay_partition(v + 1, n - 1, p, ge, le);
  const bool right = tk.any_in(p, ~uint32_t(0)), left = tk.any_in(0, p);
  if (!(right && left && cut - v > 16 && v + n - cut > 16)) {  // one part (or none) to replay: no thread
    if (right) replay_introsort_loop(cut, v + n, depth - 1, p, ~uint32_t(0), tk, ge, le);
    if (left) replay_introsort_loop(v, cut, depth - 1, 0, p, tk, ge, le);
    return;
  }
  at::parallel_for(0, 2, 1, [&](int64_t b, int64_t e) {
    std::vector<uint64_t> g2, l2;
    for (int64_t t = b; t < e; ++t) {
      if (t == 0) replay_introsort_loop(cut, v + n, depth - 1, p, ~uint32_t(0), tk, g2, l2);
      else replay_introsort_loop(v, cut, depth - 1, 0, p, tk, g2, l2);
    }
  });
}

// ---- structure of arrays ----------------------------------------------------------------------------------------

template <typename A>
struct Soa {
  Buf<A> x1, y1, x2, y2, ar;
  Buf<int32_t> id;
  explicit Soa(int64_t n) : x1(n), y1(n), x2(n), y2(n), ar(n), id(n) {}
  // Gather box `b` (coordinates at p[0], p[s], p[2s], p[3s]) into slot i, tagged with `tag`; its area too when
  // Area (the AVX2 greedy pass recomputes the areas and never reads `ar`).
  template <bool Area = true, typename T>
  void put(int64_t i, const T* p, int64_t s, int32_t tag) {
    const A a = A(p[0]), b = A(p[s]), c = A(p[2 * s]), d = A(p[3 * s]);
    x1[i] = a;
    y1[i] = b;
    x2[i] = c;
    y2[i] = d;
    if constexpr (Area) ar[i] = box_area(a, b, c, d);
    id[i] = tag;
  }
};

// Does greedy_nms<A> read the `ar` array? (Its AVX2 float path recomputes the areas.)
template <typename A>
constexpr bool kGreedyReadsArea =
#if !defined(__AVX512F__) && defined(__AVX2__)
    !std::is_same_v<A, float>;
#else
    true;
#endif

// ---- greedy NMS over a score-sorted segment --------------------------------------------------------------------

#if !defined(__AVX512F__) && defined(__AVX2__)
// Left-pack permutations for 8 lanes: kPack[m] lists, as bytes, the lanes whose bit is set in m, in order.
struct PackTable {
  uint64_t lanes[256];
  PackTable() {
    for (int m = 0; m < 256; ++m) {
      uint64_t v = 0;
      int k = 0;
      for (int l = 0; l < 8; ++l)
        if (m >> l & 1) v |= uint64_t(l) << (8 * k++);
      lanes[m] = v;
    }
  }
};
static const PackTable kPack;
#endif

#if !defined(__AVX512F__) && defined(__AVX2__)
// One head box broadcast to 8 lanes.
struct Head8 {
  __m256 x1, y1, x2, y2, a;
  Head8(float bx1, float by1, float bx2, float by2, float ba)
      : x1(_mm256_set1_ps(bx1)), y1(_mm256_set1_ps(by1)), x2(_mm256_set1_ps(bx2)), y2(_mm256_set1_ps(by2)),
        a(_mm256_set1_ps(ba)) {}
};

// Bit l set: candidate lane l is not suppressed by head h (!(iou > thr); a NaN IoU keeps). Same operations and
// operand order as nms.h's iou (min_(a, b) = a < b ? a : b is _mm256_min_ps(a, b); VMAXPS returns its second
// operand for NaN, so max(0, NaN) stays NaN), so the IoU is bit-identical to the scalar one.
inline unsigned keep_mask8(const Head8& h, __m256 cx1, __m256 cy1, __m256 cx2, __m256 cy2, __m256 ca, __m256 vt) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 ww = _mm256_max_ps(zero, _mm256_sub_ps(_mm256_min_ps(h.x2, cx2), _mm256_max_ps(h.x1, cx1)));
  const __m256 hh = _mm256_max_ps(zero, _mm256_sub_ps(_mm256_min_ps(h.y2, cy2), _mm256_max_ps(h.y1, cy1)));
  const __m256 inter = _mm256_mul_ps(ww, hh);
  const __m256 o = _mm256_div_ps(inter, _mm256_sub_ps(_mm256_add_ps(h.a, ca), inter));
  return unsigned(_mm256_movemask_ps(_mm256_cmp_ps(o, vt, _CMP_NGT_UQ)));
}

// One pass over the candidates [j, n): drops those suppressed by head h0 (and by h1 when Dual), left-packs the
// survivors from position 0 (a lane permutation per 8 boxes; stores of 8 lanes at w <= j only overwrite lanes
// already loaded). The candidates' areas are recomputed from the coordinates (box_area: 2 subtractions and a
// multiply, bit-identical to the stored area under -ffp-contract=off) instead of loaded, permuted and stored, so
// `ar` is neither read nor compacted. Returns the number of survivors.
template <int K>
inline int64_t greedy_pass_avx2(const Head8* h, __m256 vt, float* x1, float* y1, float* x2, float* y2, int32_t* id,
                                int64_t j, int64_t n) {
  int64_t w = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 cx1 = _mm256_loadu_ps(x1 + j), cy1 = _mm256_loadu_ps(y1 + j), cx2 = _mm256_loadu_ps(x2 + j),
                 cy2 = _mm256_loadu_ps(y2 + j);
    const __m256 ca = _mm256_mul_ps(_mm256_sub_ps(cx2, cx1), _mm256_sub_ps(cy2, cy1));  // box_area
    const __m256i cid = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(id + j));
    unsigned keep = keep_mask8(h[0], cx1, cy1, cx2, cy2, ca, vt);
    for (int k = 1; k < K; ++k) keep &= keep_mask8(h[k], cx1, cy1, cx2, cy2, ca, vt);
    if (keep == 0xFF && w == j) {  // nothing suppressed and nothing to move
      w += 8;
      continue;
    }
    const __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&kPack.lanes[keep])));
    _mm256_storeu_ps(x1 + w, _mm256_permutevar8x32_ps(cx1, perm));
    _mm256_storeu_ps(y1 + w, _mm256_permutevar8x32_ps(cy1, perm));
    _mm256_storeu_ps(x2 + w, _mm256_permutevar8x32_ps(cx2, perm));
    _mm256_storeu_ps(y2 + w, _mm256_permutevar8x32_ps(cy2, perm));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(id + w), _mm256_permutevar8x32_epi32(cid, perm));
    w += __builtin_popcount(keep);
  }
  if (j < n) {
    // the last 1-7 boxes as one block of masked loads and stores (nothing read or written outside [0, n))
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int rem = int(n - j);
    const __m256i lm = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), lane);
    const __m256 cx1 = _mm256_maskload_ps(x1 + j, lm), cy1 = _mm256_maskload_ps(y1 + j, lm),
                 cx2 = _mm256_maskload_ps(x2 + j, lm), cy2 = _mm256_maskload_ps(y2 + j, lm);
    const __m256 ca = _mm256_mul_ps(_mm256_sub_ps(cx2, cx1), _mm256_sub_ps(cy2, cy1));  // box_area
    const __m256i cid = _mm256_maskload_epi32(id + j, lm);
    unsigned keep = keep_mask8(h[0], cx1, cy1, cx2, cy2, ca, vt) & ((1u << rem) - 1u);
    for (int k = 1; k < K; ++k) keep &= keep_mask8(h[k], cx1, cy1, cx2, cy2, ca, vt);
    const int cnt = __builtin_popcount(keep);
    if (!(keep == (1u << rem) - 1u && w == j)) {
      const __m256i perm =
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&kPack.lanes[keep])));
      const __m256i sm = _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), lane);
      _mm256_maskstore_ps(x1 + w, sm, _mm256_permutevar8x32_ps(cx1, perm));
      _mm256_maskstore_ps(y1 + w, sm, _mm256_permutevar8x32_ps(cy1, perm));
      _mm256_maskstore_ps(x2 + w, sm, _mm256_permutevar8x32_ps(cx2, perm));
      _mm256_maskstore_ps(y2 + w, sm, _mm256_permutevar8x32_ps(cy2, perm));
      _mm256_maskstore_epi32(id + w, sm, _mm256_permutevar8x32_epi32(cid, perm));
    }
    w += cnt;
  }
  return w;
}

// greedy_nms for float with AVX2. A pass takes up to four heads: boxes 0, 1, 2, 3 while each is not suppressed by
// the heads before it (the usual case: consecutive boxes of a class rarely overlap; in the batched_nms bench box 1
// survives box 0 in 98 % of the passes). Those are exactly the next boxes the sequential passes would keep, and a
// candidate survives their passes exactly when no head suppresses it, so one pass with all the heads gives the same
// survivors in the same order, with fewer passes (each ends in a mispredicted loop exit) and one load, permutation
// and store of each survivor per pass instead of per head. (1 thread, quiet, batched_nms bench: one head 0.88 ms,
// two 0.71-0.77, three ~0.65-0.67, four ~0.60-0.64; four heads take 4 divisions per 8 candidates.)
int64_t greedy_nms_avx2(float* x1, float* y1, float* x2, float* y2, int32_t* id, int64_t n, float thr,
                        int32_t* out) {
  const __m256 vt = _mm256_set1_ps(thr);
  int64_t nk = 0;
  while (n > 0) {
    float hx1[4] = {}, hy1[4] = {}, hx2[4] = {}, hy2[4] = {}, ha[4] = {};
    int k = 0;  // heads taken: a prefix of the boxes, each kept by the heads before it
    for (; k < 4 && k < n; ++k) {
      const float qx1 = x1[k], qy1 = y1[k], qx2 = x2[k], qy2 = y2[k];
      const float qa = box_area(qx1, qy1, qx2, qy2);  // = the stored area (`ar` is not kept compacted here)
      bool kept = true;
      for (int i = 0; i < k; ++i) kept &= !(iou(hx1[i], hy1[i], hx2[i], hy2[i], ha[i], qx1, qy1, qx2, qy2, qa) > thr);
      if (!kept) break;
      hx1[k] = qx1, hy1[k] = qy1, hx2[k] = qx2, hy2[k] = qy2, ha[k] = qa;
      out[nk++] = id[k];
    }
    const Head8 h[4] = {Head8(hx1[0], hy1[0], hx2[0], hy2[0], ha[0]),
                        Head8(hx1[1], hy1[1], hx2[1], hy2[1], ha[1]),
                        Head8(hx1[2], hy1[2], hx2[2], hy2[2], ha[2]),
                        Head8(hx1[3], hy1[3], hx2[3], hy2[3], ha[3])};
    if (k == 4) n = greedy_pass_avx2<4>(h, vt, x1, y1, x2, y2, id, 4, n);
    else if (k == 3) n = greedy_pass_avx2<3>(h, vt, x1, y1, x2, y2, id, 3, n);
    else if (k == 2) n = greedy_pass_avx2<2>(h, vt, x1, y1, x2, y2, id, 2, n);
    else n = greedy_pass_avx2<1>(h, vt, x1, y1, x2, y2, id, 1, n);
  }
  return nk;
}
#endif

// Greedy NMS of the boxes [0, n) of the arrays (already in descending score order): repeatedly keeps the first
// remaining box and drops every remaining box whose IoU with it is > thr (thr already floored to A: see
// floor_to_float). Survivors are compacted in place. Writes the kept ids to out, returns their number.
template <typename A>
int64_t greedy_nms(A* x1, A* y1, A* x2, A* y2, A* ar, int32_t* id, int64_t n, A thr, int32_t* out) {
#if !defined(__AVX512F__) && defined(__AVX2__)
  if constexpr (std::is_same_v<A, float>) return greedy_nms_avx2(x1, y1, x2, y2, id, n, thr, out);
#endif
  int64_t nk = 0;
  while (n > 0) {
    const A bx1 = x1[0], by1 = y1[0], bx2 = x2[0], by2 = y2[0];
    const A ba = box_area(bx1, by1, bx2, by2);  // = ar[0]
    out[nk++] = id[0];
    int64_t w = 0, j = 1;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<A, float>) {
      const __m512 vx1 = _mm512_set1_ps(bx1), vy1 = _mm512_set1_ps(by1), vx2 = _mm512_set1_ps(bx2),
                   vy2 = _mm512_set1_ps(by2), va = _mm512_set1_ps(ba), vt = _mm512_set1_ps(thr),
                   zero = _mm512_setzero_ps();
      for (; j + 16 <= n; j += 16) {
        const __m512 cx1 = _mm512_loadu_ps(x1 + j), cy1 = _mm512_loadu_ps(y1 + j), cx2 = _mm512_loadu_ps(x2 + j),
                     cy2 = _mm512_loadu_ps(y2 + j), ca = _mm512_loadu_ps(ar + j);
        const __m512i cid = _mm512_loadu_si512(id + j);
        // max(0, d) as nms.h's max_ and the AVX2 block: VMAXPS returns its second operand for NaN, so a NaN
        // overlap stays NaN (and the box is kept) instead of becoming 0.
        const __m512 ww = _mm512_max_ps(zero, _mm512_sub_ps(_mm512_min_ps(vx2, cx2), _mm512_max_ps(vx1, cx1)));
        const __m512 hh = _mm512_max_ps(zero, _mm512_sub_ps(_mm512_min_ps(vy2, cy2), _mm512_max_ps(vy1, cy1)));
        const __m512 inter = _mm512_mul_ps(ww, hh);
        const __m512 o = _mm512_div_ps(inter, _mm512_sub_ps(_mm512_add_ps(va, ca), inter));
        const __mmask16 keep = _mm512_cmp_ps_mask(o, vt, _CMP_NGT_UQ);  // !(iou > thr), NaN keeps
        _mm512_mask_compressstoreu_ps(x1 + w, keep, cx1);
        _mm512_mask_compressstoreu_ps(y1 + w, keep, cy1);
        _mm512_mask_compressstoreu_ps(x2 + w, keep, cx2);
        _mm512_mask_compressstoreu_ps(y2 + w, keep, cy2);
        _mm512_mask_compressstoreu_ps(ar + w, keep, ca);
        _mm512_mask_compressstoreu_epi32(id + w, keep, cid);
        w += __builtin_popcount(unsigned(keep));
      }
    }
#endif
    for (; j < n; ++j) {
      const A o = iou(bx1, by1, bx2, by2, ba, x1[j], y1[j], x2[j], y2[j], ar[j]);
      const A cx1 = x1[j], cy1 = y1[j], cx2 = x2[j], cy2 = y2[j], ca = ar[j];
      const int32_t cid = id[j];
      x1[w] = cx1;
      y1[w] = cy1;
      x2[w] = cx2;
      y2[w] = cy2;
      ar[w] = ca;
      id[w] = cid;
      w += !(o > thr);
    }
    n = w;
  }
  return nk;
}

template <typename A, typename T>
std::vector<A> to_acc(const at::Tensor& t) {
  // 1-D tensor (any stride) -> contiguous vector in the accumulation type
  const int64_t n = t.numel(), st = n > 0 ? t.stride(0) : 1;
  const T* p = t.const_data_ptr<T>();
  std::vector<A> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = A(p[i * st]);
  return v;
}

// The 1-D tensor t in the accumulation type: its own data when it already is (contiguous float / double), else a
// contiguous copy in `store`.
template <typename A, typename T>
const A* acc_view(const at::Tensor& t, std::vector<A>& store) {
  if constexpr (std::is_same_v<A, T>) {
    if (t.numel() <= 1 || t.stride(0) == 1) return t.const_data_ptr<T>();
  }
  store = to_acc<A, T>(t);
  return store.data();
}

// ---- nms ------------------------------------------------------------------------------------------------------

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes_scores(boxes, scores, "nms");
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  std::vector<int32_t> kept(n);
  int64_t nk = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_nms", [&] {
    using A = acc_t<scalar_t>;
    const std::vector<A> s = to_acc<A, scalar_t>(scores);
    std::vector<int32_t> order(n);
    argsort_desc(s.data(), n, order.data());
    Soa<A> soa(n);
    const scalar_t* bp = boxes.const_data_ptr<scalar_t>();
    const int64_t s0 = boxes.stride(0), s1 = boxes.stride(1);
    for (int64_t i = 0; i < n; ++i) soa.put<kGreedyReadsArea<A>>(i, bp + order[i] * s0, s1, order[i]);
    nk = greedy_nms<A>(soa.x1.data(), soa.y1.data(), soa.x2.data(), soa.y2.data(), soa.ar.data(), soa.id.data(), n,
                       iou_thr_for<A>(iou_threshold), kept.data());
  });
  at::Tensor out = at::empty({nk}, boxes.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < nk; ++i) o[i] = kept[i];
  return out;
}

// ---- batched_nms ----------------------------------------------------------------------------------------------

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_batched(boxes, scores, idxs);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor cls_t = idxs.to(at::kLong).contiguous();
  const int64_t* cls = cls_t.const_data_ptr<int64_t>();

  // Every Buf slot below is written before it is read.
  Buf<int32_t> order(n), grouped(n), kept(n);
  std::vector<int64_t> seg;  // segment starts (+ n at the end)
  std::vector<uint8_t> keep(n, 0);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_batched_nms", [&] {
    using A = acc_t<scalar_t>;
    // scores in the accumulation type: read in place when they already are (contiguous float / double)
    std::vector<A> s_acc;
    const A* s = acc_view<A, scalar_t>(scores, s_acc);
    int32_t* ord = order.data();
    // float: the sorted packed (key, position) words are kept; their keys give the survivors' tie test below
    Buf<uint64_t> wa(std::is_same_v<A, float> ? n : 0), wb(std::is_same_v<A, float> ? n : 0);
    const uint64_t* sorted = sort_positions(s, n, ord, wa.data(), wb.data());
    // Group by class, stable (score order inside each class).
    int64_t lo = cls[0], hi = cls[0];  // (a plain loop the compiler vectorises; std::minmax_element is not)
    for (int64_t i = 1; i < n; ++i) {
      lo = cls[i] < lo ? cls[i] : lo;
      hi = cls[i] > hi ? cls[i] : hi;
    }
    int32_t* grp = grouped.data();
    const int64_t nn = n;  // (a local copy: the counters' stores would otherwise reload it at every step)
    const bool small_range = (hi >= lo) && uint64_t(hi) - uint64_t(lo) < uint64_t(std::max<int64_t>(4 * nn, 4096));
    if (small_range) {
      const int64_t r = hi - lo + 1;
      std::vector<int64_t> cntv(r + 1, 0);
      int64_t* cnt = cntv.data();
      for (int64_t i = 0; i < nn; ++i) cnt[cls[i] - lo + 1]++;
      for (int64_t c = 0; c < r; ++c) {
        if (cnt[c + 1] > 0) seg.push_back(cnt[c]);
        cnt[c + 1] += cnt[c];
      }
      for (int64_t i = 0; i < nn; ++i) {
        const int32_t p = ord[i];
        grp[cnt[cls[p] - lo]++] = p;
      }
    } else {
      std::copy(ord, ord + nn, grp);
      std::stable_sort(grp, grp + nn, [&](int32_t a, int32_t b) { return cls[a] < cls[b]; });
      for (int64_t i = 0; i < nn; ++i)
        if (i == 0 || cls[grp[i]] != cls[grp[i - 1]]) seg.push_back(i);
    }
    seg.push_back(n);
    Soa<A> soa(n);
    const scalar_t* bp = boxes.const_data_ptr<scalar_t>();
    const int64_t s0 = boxes.stride(0), s1 = boxes.stride(1);
    // (a gather from random rows, in parallel: 20k boxes, 80 classes, 2 threads 0.541 -> 0.497-0.527 ms)
    at::parallel_for(0, nn, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) soa.put<kGreedyReadsArea<A>>(i, bp + grp[i] * s0, s1, grp[i]);
    });
    const A thr = iou_thr_for<A>(iou_threshold);
    const int64_t nseg = int64_t(seg.size()) - 1;
    const int64_t* sg = seg.data();
    uint8_t* kp = keep.data();
    int32_t* kt = kept.data();
    at::parallel_for(0, nseg, 1, [&](int64_t b, int64_t e) {
      for (int64_t g = b; g < e; ++g) {
        const int64_t st = sg[g], len = sg[g + 1] - st;
        int32_t* const ks = kt + st;
        const int64_t nk = greedy_nms<A>(soa.x1.data() + st, soa.y1.data() + st, soa.x2.data() + st,
                                         soa.y2.data() + st, soa.ar.data() + st, soa.id.data() + st, len, thr, ks);
        for (int64_t k = 0; k < nk; ++k) kp[ks[k]] = 1;
      }
    });
    int64_t nk = 0;
    for (int64_t i = 0; i < nn; ++i) nk += kp[i];
    // Survivors in stable descending score order, written straight into the result (w < nk at every write; the
    // loop ends at the last survivor). float: their keys too (skey), for the tie test.
    out = at::empty({nk}, boxes.options().dtype(at::kLong));
    int64_t* o = out.data_ptr<int64_t>();
    Buf<uint32_t> skey(std::is_same_v<A, float> ? nk : 0);
    uint32_t* sk = skey.data();
    if constexpr (std::is_same_v<A, float>) {
      for (int64_t i = 0, w = 0; w < nk; ++i) {
        const uint64_t v = sorted[i];
        const int32_t p = packed_pos(v);
        o[w] = p;
        sk[w] = key_of(v);
        w += kp[p];
      }
    } else {
      for (int64_t i = 0, w = 0; w < nk; ++i) {
        const int32_t p = ord[i];
        o[w] = p;
        w += kp[p];
      }
    }
    if (n * 4 > kTorchvisionVanillaNumelCpu) {
      // torchvision's per-class path (boxes.numel() > 4000 on CPU) orders the survivors with an unstable
      // `scores[keep].sort(descending=True)` over ascending indices. Without tied scores that is the stable order
      // above; with ties, run the sort ATen's CPU kernel runs (std::sort of (value, position) pairs with
      // `(isnan(a) && !isnan(b)) || a > b`) on the same values in the same initial order, so tied scores come out
      // in torchvision's order. The comparator is desc_key(a) < desc_key(b) on packed (key, position) words: the
      // same outcome for every pair (NaN first, -0.0 == +0.0), hence the same sequence of moves.
      // (half/bf16: as torchvision on float32 input.)
      bool ties = false;
      if constexpr (std::is_same_v<A, float>) {
        unsigned eq = 0;  // (no early exit: a loop the compiler vectorises)
        for (int64_t k = 1; k < nk; ++k) eq |= unsigned(sk[k] == sk[k - 1]);
        ties = eq != 0;
      } else {
        for (int64_t k = 1; k < nk && !ties; ++k) ties = desc_key(s[o[k]]) == desc_key(s[o[k - 1]]);
      }
      if (ties) {
        if constexpr (std::is_same_v<A, float>) {
          // std::sort's partition phase replayed; its final stable insertion sort = the stable order with each
          // run of tied keys ordered by position after that phase (rank, indexed by box; `kept` is free again)
          std::vector<uint64_t> v(n);
          int64_t m = 0;
          for (int64_t i = 0; i < nn; ++i) {
            v[m] = packed(s[i], int32_t(i));
            m += kp[i];
          }
          std::vector<uint32_t> tied;  // the keys of tied runs, ascending (the survivors are in ascending key order)
          for (int64_t k = 1; k < nk; ++k) {
            const uint32_t kk = sk[k];
            if (kk == sk[k - 1] && (tied.empty() || tied.back() != kk)) tied.push_back(kk);
          }
          replay_sort_partitions(v.data(), nk, tied);
          int32_t* rank = kt;
          for (int64_t k = 0; k < nk; ++k) rank[packed_pos(v[k])] = int32_t(k);
          for (int64_t a = 0; a < nk;) {
            const uint32_t ka = sk[a];
            int64_t b = a + 1;
            while (b < nk && sk[b] == ka) ++b;
            if (b - a > 1) std::sort(o + a, o + b, [&](int64_t x, int64_t y) { return rank[x] < rank[y]; });
            a = b;
          }
        } else {
          std::vector<std::pair<uint64_t, int32_t>> v;
          v.reserve(nk);
          for (int64_t i = 0; i < nn; ++i)
            if (kp[i]) v.push_back({desc_key(s[i]), int32_t(i)});
          std::sort(v.begin(), v.end(), [](const std::pair<uint64_t, int32_t>& a,
                                           const std::pair<uint64_t, int32_t>& b) { return a.first < b.first; });
          for (int64_t k = 0; k < nk; ++k) o[k] = v[k].second;
        }
      }
    }
  });
  return out;
}

// ---- multiclass_nms -------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double score_threshold,
                                           double iou_threshold, int64_t pre_nms_top_k, int64_t max_det, bool pad) {
  check_multiclass(boxes, scores, max_det, pad);
  const int64_t n = scores.size(0), nc = scores.size(1);
  const bool per_class = boxes.dim() == 3;

  std::vector<std::vector<int32_t>> kept(nc);
  std::vector<std::pair<uint64_t, int64_t>> all;  // (score key, flat n * C + c)
  at::Tensor boxes_out, scores_out, labels_out, index_out, num_valid;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_multiclass_nms", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* sp = scores.const_data_ptr<scalar_t>();
    const int64_t ss0 = scores.stride(0), ss1 = scores.stride(1);
    const scalar_t* bp = boxes.const_data_ptr<scalar_t>();
    const int64_t bs0 = boxes.stride(0), bs1 = per_class ? boxes.stride(1) : 0, bsl = boxes.stride(boxes.dim() - 1);
    // `scores > score_threshold` as PyTorch evaluates it: the threshold is cast to the scores' dtype.
    const A sthr = A(static_cast<scalar_t>(score_threshold));
    const A thr = iou_thr_for<A>(iou_threshold);
    // Candidates (score > threshold) per class, in box order. Row-major scores ([N, C] contiguous) are scanned
    // once in fixed blocks of rows (parallel, merged in block order: thread-count independent); column-major
    // ones class by class.
    const bool rows_major = ss1 <= ss0;
    constexpr int64_t kRows = 2048;
    const int64_t nb = rows_major ? (n + kRows - 1) / kRows : 0;
    std::vector<std::vector<int32_t>> part(nb * nc);
    if (rows_major) {
      at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t e = std::min(n, (blk + 1) * kRows);
          for (int64_t i = blk * kRows; i < e; ++i) {
            const scalar_t* row = sp + i * ss0;
            for (int64_t c = 0; c < nc; ++c)
              if (A(row[c * ss1]) > sthr) part[blk * nc + c].push_back(int32_t(i));
          }
        }
      });
    }
    at::parallel_for(0, nc, 1, [&](int64_t cb, int64_t ce) {
      std::vector<int32_t> cand, out;
      for (int64_t c = cb; c < ce; ++c) {
        cand.clear();
        if (rows_major) {
          for (int64_t blk = 0; blk < nb; ++blk) {
            const auto& pv = part[blk * nc + c];
            cand.insert(cand.end(), pv.begin(), pv.end());
          }
        } else {
          for (int64_t i = 0; i < n; ++i)
            if (A(sp[i * ss0 + c * ss1]) > sthr) cand.push_back(int32_t(i));
        }
        const scalar_t* col = sp + c * ss1;
        sort_topk<A>(cand, [&](int32_t i) { return A(col[i * ss0]); }, pre_nms_top_k > 0 ? pre_nms_top_k : -1);
        const int64_t m = int64_t(cand.size());
        Soa<A> soa(m);
        for (int64_t i = 0; i < m; ++i)
          soa.put<kGreedyReadsArea<A>>(i, bp + cand[i] * bs0 + c * bs1, bsl, cand[i]);
        out.resize(m);
        const int64_t nk = greedy_nms<A>(soa.x1.data(), soa.y1.data(), soa.x2.data(), soa.y2.data(), soa.ar.data(),
                                         soa.id.data(), m, thr, out.data());
        kept[c].assign(out.begin(), out.begin() + nk);
      }
    });
    for (int64_t c = 0; c < nc; ++c)
      for (int32_t i : kept[c]) all.push_back({desc_key(A(sp[i * ss0 + c * ss1])), int64_t(i) * nc + c});
    const int64_t total = int64_t(all.size());
    const int64_t m = max_det > 0 ? std::min(total, max_det) : total;
    if (m < total) std::nth_element(all.begin(), all.begin() + m, all.end());
    std::sort(all.begin(), all.begin() + m);
    const int64_t rows = pad ? max_det : m;
    boxes_out = at::zeros({rows, 4}, boxes.options());
    scores_out = at::zeros({rows}, scores.options());
    labels_out = at::full({rows}, -1, scores.options().dtype(at::kLong));
    index_out = at::full({rows}, -1, scores.options().dtype(at::kLong));
    num_valid = at::full({}, m, scores.options().dtype(at::kLong));
    scalar_t* bo = boxes_out.data_ptr<scalar_t>();
    scalar_t* so = scores_out.data_ptr<scalar_t>();
    int64_t* lo = labels_out.data_ptr<int64_t>();
    int64_t* io = index_out.data_ptr<int64_t>();
    for (int64_t r = 0; r < m; ++r) {
      const int64_t i = all[r].second / nc, c = all[r].second % nc;
      const scalar_t* b = bp + i * bs0 + c * bs1;
      for (int k = 0; k < 4; ++k) bo[r * 4 + k] = b[k * bsl];
      so[r] = sp[i * ss0 + c * ss1];
      lo[r] = c;
      io[r] = i;
    }
  });
  return std::make_tuple(boxes_out, scores_out, labels_out, index_out, num_valid);
}

// ---- fast_nms (YOLACT) ----------------------------------------------------------------------------------------

// keep[j] = 1 when no earlier box i < j (in the given order) has IoU(i, j) > thr, NaN counting as "greater"
// (YOLACT: column max of the upper-triangular IoU matrix, `iou_max <= thr`; suppressed boxes still suppress).
template <typename A>
void fast_nms_keep(const Soa<A>& b, int64_t k, A thr, uint8_t* keep) {
  std::fill(keep, keep + k, uint8_t(1));
  const A* x1 = b.x1.data();
  const A* y1 = b.y1.data();
  const A* x2 = b.x2.data();
  const A* y2 = b.y2.data();
  const A* ar = b.ar.data();
  for (int64_t i = 0; i + 1 < k; ++i) {
    const A bx1 = x1[i], by1 = y1[i], bx2 = x2[i], by2 = y2[i], ba = ar[i];
#pragma omp simd
    for (int64_t j = i + 1; j < k; ++j) {
      const A o = iou(bx1, by1, bx2, by2, ba, x1[j], y1[j], x2[j], y2[j], ar[j]);
      keep[j] &= uint8_t(o <= thr);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fast_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                     int64_t top_k, int64_t max_det, double score_threshold, bool cross_class) {
  check_fast_nms(boxes, scores);
  const int64_t n = boxes.size(0), nc = scores.size(0);
  at::Tensor idx_out, lab_out, sc_out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_fast_nms", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* sp = scores.const_data_ptr<scalar_t>();
    const int64_t ss0 = scores.stride(0), ss1 = scores.stride(1);
    const scalar_t* bp = boxes.const_data_ptr<scalar_t>();
    const int64_t bs0 = boxes.stride(0), bs1 = boxes.stride(1);
    const A sthr = A(static_cast<scalar_t>(score_threshold));
    const A thr = A(iou_threshold);  // `iou_max <= iou_threshold`: the threshold in the IoU's dtype
    // 1. maximum class score per detection (NaN propagates, like torch.max) > score_threshold
    std::vector<A> mx(n, -std::numeric_limits<A>::infinity());
    std::vector<int32_t> amax(n, 0);
    at::parallel_for(0, n, 2048, [&](int64_t b, int64_t e) {
      A* __restrict__ m = mx.data();
      int32_t* __restrict__ am = amax.data();
      for (int64_t c = 0; c < nc; ++c) {
        const scalar_t* row = sp + c * ss0;
        if (ss1 == 1) {  // contiguous rows: a loop the compiler vectorises
          for (int64_t i = b; i < e; ++i) {
            const A v = A(row[i]);
            const bool take = ((v > m[i]) | (v != v)) & (m[i] == m[i]);
            m[i] = take ? v : m[i];
            am[i] = take ? int32_t(c) : am[i];
          }
        } else {
          for (int64_t i = b; i < e; ++i) {
            const A v = A(row[i * ss1]);
            const bool take = ((v > m[i]) | (v != v)) & (m[i] == m[i]);
            m[i] = take ? v : m[i];
            am[i] = take ? int32_t(c) : am[i];
          }
        }
      }
    });
    std::vector<int32_t> pass;
    for (int64_t i = 0; i < n; ++i)
      if (mx[i] > sthr) pass.push_back(int32_t(i));
    const int64_t np = int64_t(pass.size());
    const int64_t k = (top_k > 0) ? std::min(top_k, np) : np;
    // (score key, flat position, detection, class) of every kept pair
    std::vector<std::pair<uint64_t, int64_t>> all;
    std::vector<int32_t> det_of, cls_of;
    if (!cross_class) {
      std::vector<std::vector<int32_t>> kept(nc);
      at::parallel_for(0, nc, 1, [&](int64_t cb, int64_t ce) {
        std::vector<int32_t> cand(np);
        std::vector<uint8_t> keep;
        for (int64_t c = cb; c < ce; ++c) {
          const scalar_t* row = sp + c * ss0;
          cand.resize(np);
          std::iota(cand.begin(), cand.end(), 0);
          // positions into pass, ties by lower index
          sort_topk<A>(cand, [&](int32_t p) { return A(row[int64_t(pass[p]) * ss1]); }, k);
          Soa<A> soa(k);
          for (int64_t r = 0; r < k; ++r) soa.put(r, bp + pass[cand[r]] * bs0, bs1, cand[r]);
          keep.resize(k);
          fast_nms_keep<A>(soa, k, thr, keep.data());
          kept[c].clear();  // positions into `pass` of the kept ranks, in rank order
          for (int64_t r = 0; r < k; ++r)
            if (keep[r]) kept[c].push_back(cand[r]);
        }
      });
      for (int64_t c = 0; c < nc; ++c) {
        for (const int32_t p : kept[c]) {  // push order = flat [C, top_k] order (class-major, then rank)
          const int32_t det = pass[p];
          all.push_back({desc_key(A(sp[c * ss0 + det * ss1])), int64_t(all.size())});
          det_of.push_back(det);
          cls_of.push_back(int32_t(c));
        }
      }
    } else {
      // cc_fast_nms: one class per detection (first argmax), one IoU matrix over the top_k by max score
      std::vector<A> s(np);
      std::vector<int32_t> cand(np);
      for (int64_t p = 0; p < np; ++p) s[p] = mx[pass[p]];
      std::iota(cand.begin(), cand.end(), 0);
      sort_topk<A>(cand, [&](int32_t p) { return s[p]; }, k);
      Soa<A> soa(k);
      for (int64_t r = 0; r < k; ++r) soa.put(r, bp + pass[cand[r]] * bs0, bs1, cand[r]);
      std::vector<uint8_t> keep(k);
      fast_nms_keep<A>(soa, k, thr, keep.data());
      for (int64_t r = 0; r < k; ++r) {
        if (!keep[r]) continue;
        const int32_t det = pass[cand[r]];
        all.push_back({desc_key(mx[det]), int64_t(all.size())});
        det_of.push_back(det);
        cls_of.push_back(amax[det]);
      }
    }
    const int64_t total = int64_t(all.size());
    const int64_t m = max_det > 0 ? std::min(total, max_det) : total;
    if (m < total) std::nth_element(all.begin(), all.begin() + m, all.end());
    std::sort(all.begin(), all.begin() + m);
    idx_out = at::empty({m}, boxes.options().dtype(at::kLong));
    lab_out = at::empty({m}, boxes.options().dtype(at::kLong));
    sc_out = at::empty({m}, scores.options());
    int64_t* io = idx_out.data_ptr<int64_t>();
    int64_t* lo = lab_out.data_ptr<int64_t>();
    scalar_t* so = sc_out.data_ptr<scalar_t>();
    for (int64_t r = 0; r < m; ++r) {
      const int64_t q = all[r].second;
      io[r] = det_of[q];
      lo[r] = cls_of[q];
      so[r] = sp[int64_t(cls_of[q]) * ss0 + int64_t(det_of[q]) * ss1];
    }
  });
  return std::make_tuple(idx_out, lab_out, sc_out);
}

// ---- soft_nms (mmcv) ------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                     double sigma, double min_score, c10::string_view method) {
  const int64_t meth = check_soft_nms(boxes, scores, sigma, method);
  const int64_t n = boxes.size(0);
  at::Tensor dets_out, keep_out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_soft_nms", [&] {
    using A = acc_t<scalar_t>;
    // mmcv passes the thresholds as C++ floats: round them to the accumulation type
    const A thr = A(iou_threshold), sig = A(sigma), mins = A(min_score);
    const std::vector<A> s0 = to_acc<A, scalar_t>(scores);
    const scalar_t* bp = boxes.const_data_ptr<scalar_t>();
    const int64_t bs0 = boxes.stride(0), bs1 = boxes.stride(1);
    Soa<A> b(n);
    std::vector<A> sc(n);
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (s0[i] != s0[i]) continue;  // NaN scores are dropped up front
      b.put(m, bp + i * bs0, bs1, int32_t(i));
      sc[m] = s0[i];
      ++m;
    }
    std::vector<A> dsc;
    std::vector<int32_t> sel;
    while (m > 0) {
      // highest remaining score, ties by lower original index
      int64_t best = 0;
      for (int64_t j = 1; j < m; ++j) {
        const bool better = sc[j] > sc[best] || (sc[j] == sc[best] && b.id[j] < b.id[best]);
        best = better ? j : best;
      }
      const A bx1 = b.x1[best], by1 = b.y1[best], bx2 = b.x2[best], by2 = b.y2[best], ba = b.ar[best];
      sel.push_back(b.id[best]);
      dsc.push_back(sc[best]);
      int64_t w = 0;
      for (int64_t j = 0; j < m; ++j) {
        if (j == best) continue;
        A o = iou(bx1, by1, bx2, by2, ba, b.x1[j], b.y1[j], b.x2[j], b.y2[j], b.ar[j]);
        if (o != o) o = A(0);  // NaN IoU (NaN coordinates): no interaction
        A wt = A(1);
        if (meth == kSoftNaive) {
          if (o >= thr) wt = A(0);
        } else if (meth == kSoftLinear) {
          if (o >= thr) wt = A(1) - o;
        } else {
          wt = std::exp(-(o * o) / sig);
        }
        const A ns = sc[j] * wt;
        b.x1[w] = b.x1[j];
        b.y1[w] = b.y1[j];
        b.x2[w] = b.x2[j];
        b.y2[w] = b.y2[j];
        b.ar[w] = b.ar[j];
        b.id[w] = b.id[j];
        sc[w] = ns;
        w += (ns >= mins);  // discards ns < min_score, and a NaN decayed score (inf * 0)
      }
      m = w;
    }
    const int64_t k = int64_t(sel.size());
    dets_out = at::empty({k, 5}, boxes.options());
    keep_out = at::empty({k}, boxes.options().dtype(at::kLong));
    scalar_t* d = dets_out.data_ptr<scalar_t>();
    int64_t* o = keep_out.data_ptr<int64_t>();
    for (int64_t r = 0; r < k; ++r) {
      const scalar_t* p = bp + int64_t(sel[r]) * bs0;
      for (int q = 0; q < 4; ++q) d[r * 5 + q] = p[q * bs1];
      d[r * 5 + 4] = static_cast<scalar_t>(dsc[r]);
      o[r] = sel[r];
    }
  });
  return std::make_tuple(dets_out, keep_out);
}

}  // namespace
}  // namespace nms
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("nms", &fastops::nms::nms_cpu);
  m.impl("batched_nms", &fastops::nms::batched_nms_cpu);
  m.impl("multiclass_nms", &fastops::nms::multiclass_nms_cpu);
  m.impl("fast_nms", &fastops::nms::fast_nms_cpu);
  m.impl("soft_nms", &fastops::nms::soft_nms_cpu);
}
