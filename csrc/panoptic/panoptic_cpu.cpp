// panoptic_fuse: CPU kernel (schema and argument checks in panoptic.cpp).
//
// Parallel over output rows, in blocks of rows that share their two source rows. Per block the semantic logits
// are upsampled on the fly and reduced per pixel: the stuff channels to a running (max, first argmax), the thing
// channels to their max (void). With an integer horizontal scale of 2, 4 or 8 (UPSNet's 4x fcn_output) every
// channel is evaluated on vectors of LN consecutive source cells (fast_group: F phase weights fixed per cell, the
// horizontal lerp once per channel and block, then one lerp, compare and blend per pixel and channel; no selection,
// so its cost does not depend on the logits); other scales keep per cell only the candidate channels whose largest
// corner reaches the best smallest corner. Then each instance is visited only where its box covers the row; outside
// its box an instance is a 0 logit, and those zeros are merged in one pass per row (only the lowest instance not
// covering a pixel can win there). Nothing of size [S+N+1, H, W] is ever built. Compute-bound: at 800x1216 with
// 133 channels the 4x fast path evaluates 129 M upsampled logits (27 ms at 1 thread here); one read of the 32 MB
// input and one write of the 3.9 MB output are about 3 ms of that (estimated, not measured apart).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "panoptic/panoptic.h"

namespace fastops {
namespace panoptic {
namespace {

using at::Tensor;

// Native vector width for the pixel lanes of the upsampled semantic part (GCC vector extensions; the per-ISA copy
// of this file, csrc/cpu_isa.h, picks 32 bytes with AVX). Lane arithmetic is the scalar formula's, in the same order
// and without contraction, so results are the scalar kernel's bit for bit.
#if defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
template <typename A>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t I __attribute__((vector_size(kVecBytes)));
  typedef int32_t E;
};
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t I __attribute__((vector_size(kVecBytes)));
  typedef int64_t E;
};
// Rows of one semantic block (rows sharing a source row pair; bounded so the block buffers stay small).
constexpr int64_t kBlockRows = 8;

// Fast path of the upsampling (an integer horizontal scale F in {2, 4, 8}, PyTorch's align_corners=False taps): the
// interior source cells all have F output columns whose taps are the cell's two corners with the same F weight
// pairs (phase k), so LN consecutive cells form one vector per phase and row. For the cells jg..jg+LN-1 of one block
// of output rows (sharing the source rows p0, p1): each channel's four corner vectors are lerped horizontally once
// (F top and F bottom vectors), then vertically per row r with the row's weights, and the R x F pixel vectors are
// reduced over channels [c0, c1): ARG, a running (max, first argmax) (the stuff channels); !ARG, the max (the thing
// channels' void term). Same formula and operation order as the scalar kernel (panoptic.h's bilerp, split here: the
// x lerps hoisted out of the row loop; no contraction), so every pixel's value is the scalar kernel's bit for bit.
// SAFE: NaN rules (NaN beats numbers, the first NaN wins, the max propagates NaN); off for rows whose values are all
// finite and below max/4, where no interpolated value can be NaN or inf.
template <typename A, int F, bool SAFE, bool ARG>
void fast_group(const A* p0, const A* p1, int64_t cstr, int64_t jg, int64_t c0, int64_t c1, int64_t R,
                const A* rw0, const A* rw1, const A* pw0, const A* pw1, typename Lanes<A>::V* best,
                typename Lanes<A>::I* ag) {
  using V = typename Lanes<A>::V;
  using VI = typename Lanes<A>::I;
  using E = typename Lanes<A>::E;
  const V vninf = V{} - std::numeric_limits<A>::infinity();
  for (int64_t q = 0; q < R * F; ++q) {
    best[q] = vninf;
    if (ARG) ag[q] = VI{};
  }
  V x0[F], x1[F];
  for (int k = 0; k < F; ++k) {
    x0[k] = V{} + pw0[k];
    x1[k] = V{} + pw1[k];
  }
  for (int64_t c = c0; c < c1; ++c) {
    const A* q0 = p0 + c * cstr + jg;
    const A* q1 = p1 + c * cstr + jg;
    V a, b, d, e;
    std::memcpy(&a, q0, sizeof(V));
    std::memcpy(&b, q0 + 1, sizeof(V));
    std::memcpy(&d, q1, sizeof(V));
    std::memcpy(&e, q1 + 1, sizeof(V));
    V top[F], bot[F];
    for (int k = 0; k < F; ++k) {
      top[k] = x0[k] * a + x1[k] * b;
      bot[k] = x0[k] * d + x1[k] * e;
    }
    const VI cv = VI{} + (E)c;
    for (int64_t r = 0; r < R; ++r) {
      const V w0 = V{} + rw0[r], w1 = V{} + rw1[r];
      V* __restrict__ bp = best + r * F;
      VI* __restrict__ ap = ARG ? ag + r * F : nullptr;
      for (int k = 0; k < F; ++k) {
        const V v = w0 * top[k] + w1 * bot[k];
        if (ARG) {
          VI gt;
          if (SAFE) {
            gt = (v > bp[k]) | ((v != v) & (bp[k] == bp[k]));
          } else {
            gt = v > bp[k];
          }
          bp[k] = gt ? v : bp[k];
          ap[k] = gt ? cv : ap[k];
        } else if (SAFE) {
          bp[k] = ((v > bp[k]) | (v != v)) ? v : bp[k];
        } else {
          bp[k] = v > bp[k] ? v : bp[k];
        }
      }
    }
  }
}

template <typename T, bool UP>
void fuse_kernel(const Tensor& sem, const Tensor& masks, const std::vector<Inst>& insts, int64_t S, bool with_void,
                 int32_t* out, int64_t H, int64_t W) {
  using A = acc_t<T>;
  const int64_t C = sem.size(0), h = sem.size(1), w = sem.size(2);
  const int64_t cS = sem.stride(0), hS = sem.stride(1), wS = sem.stride(2);
  const int64_t N = (int64_t)insts.size();
  const int64_t MH = masks.size(1), MW = masks.size(2);
  const int64_t mN = masks.stride(0), mHs = masks.stride(1), mWs = masks.stride(2);
  const T* X = sem.const_data_ptr<T>();
  const T* M = masks.const_data_ptr<T>();
  // Horizontal taps of the semantic upsampling.
  std::vector<int64_t> xi0(UP ? W : 0), xi1(UP ? W : 0);
  std::vector<A> xl0(UP ? W : 0), xl1(UP ? W : 0);
  if (UP) {
    for (int64_t x = 0; x < W; ++x) {
      const Lerp<A> l = resize_lerp<A>(x, w, W);
      xi0[x] = l.i0;
      xi1[x] = l.i1;
      xl0[x] = l.l0;
      xl1[x] = l.l1;
    }
  }
  // Horizontal taps of every pasted mask, over its clipped columns.
  std::vector<int64_t> moff(N + 1, 0);
  for (int64_t i = 0; i < N; ++i) moff[i + 1] = moff[i] + std::max<int64_t>(0, insts[i].mx1 - insts[i].mx0);
  std::vector<int64_t> mi0(moff[N]), mi1(moff[N]);
  std::vector<A> ml0(moff[N]), ml1(moff[N]);
  for (int64_t i = 0; i < N; ++i) {
    const Inst& in = insts[i];
    for (int64_t x = in.mx0; x < in.mx1; ++x) {
      const Lerp<A> l = resize_lerp<A>(x - in.bx0, MW, in.mw);
      const int64_t k = moff[i] + x - in.mx0;
      mi0[k] = l.i0;
      mi1[k] = l.i1;
      ml0[k] = l.l0;
      ml1[k] = l.l1;
    }
  }
  // Output columns of each source cell: cell j (its left corner j) covers [xs[j], xs[j + 1]) (xi0 is monotone).
  std::vector<int64_t> xs(UP ? w + 1 : 0);
  if (UP) {
    int64_t x = 0;
    for (int64_t j = 0; j <= w; ++j) {
      while (x < W && xi0[x] < j) ++x;
      xs[j] = x;
    }
  }
  using V = typename Lanes<A>::V;
  using VI = typename Lanes<A>::I;
  using E = typename Lanes<A>::E;
  constexpr int64_t LN = kVecBytes / (int64_t)sizeof(A);
  const A neg_inf = -std::numeric_limits<A>::infinity();
  // Fast path (fast_group): the run [fja, fjb) of regular cells, F columns each with the phase weights pw0 / pw1 and
  // the taps (j, j + 1); F = 0 when there is no run of at least LN cells (the candidate path below then runs).
  int64_t F = 0, fja = 0, fjb = 0;
  A pw0[8], pw1[8];
  if (UP && w >= 2 && W % w == 0 && (W / w == 2 || W / w == 4 || W / w == 8)) {
    const int64_t f = W / w, jr = w / 2;
    if (xs[jr + 1] - xs[jr] == f) {
      for (int64_t k = 0; k < f; ++k) {
        pw0[k] = xl0[xs[jr] + k];
        pw1[k] = xl1[xs[jr] + k];
      }
      auto regular = [&](int64_t j) {
        if (j + 1 >= w || xs[j + 1] - xs[j] != f) return false;
        for (int64_t k = 0; k < f; ++k) {
          const int64_t x = xs[j] + k;
          if (xi0[x] != j || xi1[x] != j + 1 || !(xl0[x] == pw0[k]) || !(xl1[x] == pw1[k])) return false;
        }
        return true;
      };
      int64_t ja = 0;
      while (ja < w && !regular(ja)) ++ja;
      int64_t jb = ja;
      while (jb < w && regular(jb)) ++jb;
      if (jb - ja >= LN) {
        F = f;
        fja = ja;
        fjb = jb;
      }
    }
  }
  const bool direct = std::is_same<T, A>::value && wS == 1;  // fast path reads the rows in place
  // A row is clean when all its w values are finite and below max / 4 in magnitude: compared as the bits of |v|
  // (NaN and inf have the largest), one unsigned max per value.
  using U = typename std::conditional<sizeof(A) == 4, uint32_t, uint64_t>::type;
  const U clean_bits = [] {
    const A lim = std::numeric_limits<A>::max() / A(4);
    U u;
    std::memcpy(&u, &lim, sizeof(U));
    return u;
  }();
  auto clean_row = [&](const A* p) {
    const U abs_mask = ~(U(1) << (8 * sizeof(U) - 1));
    U mx = 0;
    for (int64_t j = 0; j < w; ++j) {
      U u;
      std::memcpy(&u, p + j, sizeof(U));
      u &= abs_mask;
      mx = u > mx ? u : mx;
    }
    return mx < clean_bits;
  };
  at::parallel_for(0, H, 1, [&](int64_t y0r, int64_t y1r) {
    std::vector<A> best(W), tmax(W), smax(W), mrow(MW), vals(W);
    std::vector<int32_t> arg(W);
    // Upsampling, vectorised: the pixels of a block of rows that share the source rows, source cell by source
    // cell (lanes = the cell's pixels, row-major, padded to whole vectors), evaluated for the cell's candidates;
    // results per block row and column in blk_*.
    std::vector<A> lw0, lw1, lx0, lx1, lbest, ltmax;
    std::vector<E> larg;
    std::vector<int64_t> loff(UP ? w + 1 : 0);
    std::vector<A> blk_best(UP ? kBlockRows * W : 0), blk_tmax(UP ? kBlockRows * W : 0);
    std::vector<int32_t> blk_arg(UP ? kBlockRows * W : 0);
    int64_t blk0 = 0, blk1 = 0;
    // Upsampling: candidate channels per source cell (i0, j0) of the current cell row (see below).
    // Per cell row: each channel's largest corner per cell (+inf when a corner is not finite), the best smallest
    // corner of the stuff / thing channels, and per cell the candidate channels as a bit set (64 channels a word,
    // word-major) plus the candidate with the largest corner (the first of equals; -1: none).
    const int64_t nw_s = (S + 63) / 64, nw_t = (C - S + 63) / 64;
    std::vector<A> r0(UP ? w + 1 : 0), r1(UP ? w + 1 : 0), chi(UP ? C * w : 0), lo_best(UP ? w : 0), top_hi(UP ? w : 0);
    std::vector<uint64_t> bits_s(UP ? nw_s * w : 0), bits_t(UP ? nw_t * w : 0);
    std::vector<int32_t> top_s(UP ? w : 0), top_t(UP ? w : 0);
    int64_t cell_row = -1;
    // Fast path: two source rows (all channels, as A; in place when direct) and whether all their values are
    // finite and below clean_lim.
    std::vector<A> sbuf[2];
    int64_t srow[2] = {-1, -1};
    bool sclean[2] = {false, false};
    auto fetch = [&](int64_t i, int64_t keep) -> int {
      for (int s = 0; s < 2; ++s)
        if (srow[s] == i) return s;
      const int s = srow[0] == keep ? 1 : 0;
      srow[s] = i;
      bool ok = true;
      if (direct) {
        for (int64_t c = 0; c < C; ++c) ok &= clean_row(reinterpret_cast<const A*>(X) + c * cS + i * hS);
      } else {
        sbuf[s].resize(C * w);
        for (int64_t c = 0; c < C; ++c) {
          const T* __restrict__ p = X + c * cS + i * hS;
          A* __restrict__ q = sbuf[s].data() + c * w;
          for (int64_t j = 0; j < w; ++j) q[j] = A(p[j * wS]);
          ok &= clean_row(q);
        }
      }
      sclean[s] = ok;
      return s;
    };
    auto fast_block = [&](int64_t R, const Lerp<A>& lyb) {
      const int s0 = fetch(lyb.i0, lyb.i1), s1 = fetch(lyb.i1, lyb.i0);
      const bool clean = sclean[s0] && sclean[s1];
      const A* p0 = direct ? reinterpret_cast<const A*>(X) + lyb.i0 * hS : sbuf[s0].data();
      const A* p1 = direct ? reinterpret_cast<const A*>(X) + lyb.i1 * hS : sbuf[s1].data();
      const int64_t cstr = direct ? cS : w;
      A rw0[kBlockRows], rw1[kBlockRows];
      for (int64_t r = 0; r < R; ++r) {
        const Lerp<A> lr = resize_lerp<A>(blk0 + r, h, H);
        rw0[r] = lr.l0;
        rw1[r] = lr.l1;
      }
      V gbest[kBlockRows * 8], gmax[kBlockRows * 8];
      VI garg[kBlockRows * 8];
      for (int64_t jg = fja;; jg += LN) {
        const bool last = jg + LN >= fjb;
        if (last) jg = fjb - LN;  // the last group overlaps the previous one (same values)
        auto run = [&](auto fc, auto sc) {
          constexpr int FF = decltype(fc)::value;
          constexpr bool SF = decltype(sc)::value;
          fast_group<A, FF, SF, true>(p0, p1, cstr, jg, 0, S, R, rw0, rw1, pw0, pw1, gbest, garg);
          if (with_void) fast_group<A, FF, SF, false>(p0, p1, cstr, jg, S, C, R, rw0, rw1, pw0, pw1, gmax, nullptr);
        };
        auto run_f = [&](auto sc) {
          if (F == 2) run(std::integral_constant<int, 2>{}, sc);
          else if (F == 4) run(std::integral_constant<int, 4>{}, sc);
          else run(std::integral_constant<int, 8>{}, sc);
        };
        if (clean) run_f(std::false_type{});
        else run_f(std::true_type{});
        const int64_t xb = xs[jg];
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t k = 0; k < F; ++k) {
            const V& bv = gbest[r * F + k];
            const VI& av = garg[r * F + k];
            A* __restrict__ ob = blk_best.data() + r * W + xb + k;
            int32_t* __restrict__ oa = blk_arg.data() + r * W + xb + k;
            for (int64_t l = 0; l < LN; ++l) {
              ob[l * F] = bv[l];
              oa[l * F] = (int32_t)av[l];
            }
            if (with_void) {
              const V& mv = gmax[r * F + k];
              A* __restrict__ om = blk_tmax.data() + r * W + xb + k;
              for (int64_t l = 0; l < LN; ++l) om[l * F] = mv[l];
            }
          }
        }
        if (last) break;
      }
      // The columns outside the run: every channel per pixel, the scalar formula.
      const T* b0 = X + lyb.i0 * hS;
      const T* b1 = X + lyb.i1 * hS;
      auto border = [&](int64_t xa, int64_t xe) {
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t x = xa; x < xe; ++x) {
            const int64_t j0 = xi0[x] * wS, j1 = xi1[x] * wS;
            auto val = [&](int64_t c) {
              const T* q0 = b0 + c * cS;
              const T* q1 = b1 + c * cS;
              return bilerp(rw0[r], rw1[r], xl0[x], xl1[x], A(q0[j0]), A(q0[j1]), A(q1[j0]), A(q1[j1]));
            };
            A bv = neg_inf;
            int32_t ba = 0;
            for (int64_t c = 0; c < S; ++c) {
              const A v = val(c);
              if (beats(v, bv)) bv = v, ba = (int32_t)c;
            }
            blk_best[r * W + x] = bv;
            blk_arg[r * W + x] = ba;
            if (with_void) {
              A mv = neg_inf;
              for (int64_t c = S; c < C; ++c) mv = nanmax(mv, val(c));
              blk_tmax[r * W + x] = mv;
            }
          }
        }
      };
      border(0, xs[fja]);
      border(xs[fjb], W);
    };
    for (int64_t y = y0r; y < y1r; ++y) {
      const T* rows0 = nullptr;
      Lerp<A> ly{0, 0, A(1), A(0)};
      if (UP) {
        ly = resize_lerp<A>(y, h, H);
        if (!F && ly.i0 != cell_row) {
          // Every output pixel in source cell (i0, j0) is a convex combination of the cell's four corners, so a
          // channel whose largest corner is below the best smallest corner of another channel can be neither
          // the argmax nor the max anywhere in the cell (with a small tolerance for rounding). The surviving
          // channels (a few, whatever S and T) are the only ones evaluated per pixel.
          cell_row = ly.i0;
          const int64_t i1 = std::min<int64_t>(ly.i0 + 1, h - 1);
          auto select = [&](int64_t c0, int64_t c1, uint64_t* bits, int32_t* top) {
            A* __restrict__ lb = lo_best.data();
            A* __restrict__ th = top_hi.data();
            A* __restrict__ a0 = r0.data();
            A* __restrict__ a1 = r1.data();
            for (int64_t j = 0; j < w; ++j) lb[j] = neg_inf;
            for (int64_t c = c0; c < c1; ++c) {
              // the two source rows, contiguous, with the last corner repeated (the right tap of the last cell)
              const T* p0 = X + c * cS + ly.i0 * hS;
              const T* p1 = X + c * cS + i1 * hS;
              for (int64_t j = 0; j < w; ++j) a0[j] = A(p0[j * wS]);
              for (int64_t j = 0; j < w; ++j) a1[j] = A(p1[j * wS]);
              a0[w] = a0[w - 1];
              a1[w] = a1[w - 1];
              A* __restrict__ hc = chi.data() + c * w;
              for (int64_t j = 0; j < w; ++j) {
                const A a = a0[j], b = a0[j + 1], d = a1[j], e = a1[j + 1];
                const A m1 = a < b ? a : b, m2 = d < e ? d : e;
                const A lo = m1 < m2 ? m1 : m2;
                lb[j] = lo > lb[j] ? lo : lb[j];
                const A n1 = a > b ? a : b, n2 = d > e ? d : e;
                const A hi = n1 > n2 ? n1 : n2;
                // A non-finite corner can make the interpolated value NaN (0 * inf): the channel is always kept.
                const bool fin = finite(a) & finite(b) & finite(d) & finite(e);
                hc[j] = fin ? hi : std::numeric_limits<A>::infinity();
              }
            }
            const int64_t nw = (c1 - c0 + 63) / 64;
            std::fill(bits, bits + nw * w, uint64_t(0));
            for (int64_t j = 0; j < w; ++j) th[j] = neg_inf, top[j] = -1;
            for (int64_t c = c0; c < c1; ++c) {
              const A* __restrict__ hc = chi.data() + c * w;
              uint64_t* __restrict__ bw = bits + ((c - c0) >> 6) * w;
              const uint64_t bit = uint64_t(1) << ((c - c0) & 63);
              for (int64_t j = 0; j < w; ++j) {
                const A hi = hc[j];
                const A tol = A(1e-5) * ((hi < A(0) ? -hi : hi) + (lb[j] < A(0) ? -lb[j] : lb[j]));
                const bool kept = !(hi < lb[j] - tol);
                bw[j] |= kept ? bit : uint64_t(0);
                const bool t = kept && hi > th[j];
                th[j] = t ? hi : th[j];
                top[j] = t ? (int32_t)c : top[j];
              }
            }
          };
          select(0, S, bits_s.data(), top_s.data());
          if (with_void) select(S, C, bits_t.data(), top_t.data());
        }
      } else {
        rows0 = X + y * hS;
      }
      if (UP && y >= blk1) {
        blk0 = y;
        blk1 = y + 1;
        while (blk1 < y1r && blk1 - blk0 < kBlockRows && resize_lerp<A>(blk1, h, H).i0 == ly.i0) ++blk1;
        const int64_t R = blk1 - blk0;
        const int64_t i1 = ly.i1;
        if (F) {
          fast_block(R, ly);
        } else {
          int64_t tot = 0;
          for (int64_t j = 0; j < w; ++j) {
            loff[j] = tot;
            tot += (R * (xs[j + 1] - xs[j]) + LN - 1) / LN * LN;
          }
          loff[w] = tot;
          lw0.assign(tot, A(0));
          lw1.assign(tot, A(0));
          lx0.assign(tot, A(0));
          lx1.assign(tot, A(0));
          lbest.resize(tot);
          ltmax.resize(tot);
          larg.resize(tot);
          for (int64_t r = 0; r < R; ++r) {
            const Lerp<A> lr = resize_lerp<A>(blk0 + r, h, H);
            for (int64_t j = 0; j < w; ++j) {
              const int64_t nx = xs[j + 1] - xs[j];
              for (int64_t k = loff[j] + r * nx, x = xs[j]; x < xs[j + 1]; ++k, ++x) {
                lw0[k] = lr.l0;
                lw1[k] = lr.l1;
                lx0[k] = xl0[x];
                lx1[k] = xl1[x];
              }
            }
          }
          const V vninf = V{} + neg_inf;
          // Smallest of the first nl lanes (the others pad the cell; a NaN lane: -inf, nothing is skipped) and the skip test of a candidate's largest corner.
          auto lane_floor = [&](const V& v, int64_t nl) {
            A m = std::numeric_limits<A>::infinity();
            for (int64_t l = 0; l < nl; ++l) m = v[l] < m ? v[l] : (v[l] != v[l] ? neg_inf : m);
            return m;
          };
          auto skip = [](A hi, A m) {
            const A tol = A(1e-5) * ((hi < A(0) ? -hi : hi) + (m < A(0) ? -m : m));
            return hi < m - tol;
          };
          for (int64_t j = 0; j < w; ++j) {
            if (loff[j + 1] == loff[j]) continue;
            const int64_t jj = xi1[xs[j]];  // right corner of the cell
            const int64_t o00 = ly.i0 * hS + j * wS, o01 = ly.i0 * hS + jj * wS;
            const int64_t o10 = i1 * hS + j * wS, o11 = i1 * hS + jj * wS;
            const int32_t ts = top_s[j], tt = with_void ? top_t[j] : -1;
            for (int64_t k = loff[j]; k < loff[j + 1]; k += LN) {
              V w0, w1, x0, x1;
              std::memcpy(&w0, lw0.data() + k, sizeof(V));
              std::memcpy(&w1, lw1.data() + k, sizeof(V));
              std::memcpy(&x0, lx0.data() + k, sizeof(V));
              std::memcpy(&x1, lx1.data() + k, sizeof(V));
              // The candidate with the largest corner first; then, in index order, only those whose largest corner
              // (+ the rounding tolerance) reaches the smallest lane of the running best: the others are below it in
              // every lane. Out of index order, ties and NaNs are decided by (value, index): the first index wins,
              // NaN beats numbers, the first NaN wins.
              const int64_t nl = std::min<int64_t>(LN, loff[j] + R * (xs[j + 1] - xs[j]) - k);
              auto eval = [&](int32_t c) {
                const T* pc = X + c * cS;
                return V(bilerp(w0, w1, x0, x1, A(pc[o00]), A(pc[o01]), A(pc[o10]), A(pc[o11])));
              };
              // Visits the candidates of a channel group in index order but `first`, skipping those whose largest
              // corner is below the lane floor m: f(c, value).
              auto visit = [&](const uint64_t* bits, int64_t nw, int64_t c0, int32_t first, A m, auto f) {
                for (int64_t wd = 0; wd < nw; ++wd) {
                  for (uint64_t mb = bits[wd * w + j]; mb != 0; mb &= mb - 1) {
                    const int32_t c = (int32_t)(c0 + wd * 64 + __builtin_ctzll(mb));
                    if (c == first || skip(chi[c * w + j], m)) continue;
                    f(c, eval(c));
                  }
                }
              };
              V bv = vninf;
              VI ba = VI{};
              if (ts >= 0) {
                bv = eval(ts);
                ba = VI{} + (E)ts;
                visit(bits_s.data(), nw_s, 0, ts, lane_floor(bv, nl), [&](int32_t c, const V& v) {
                  const VI cq = VI{} + (E)c;
                  const VI gt = (v > bv) | ((v == bv) & (cq < ba)) | ((v != v) & ((bv == bv) | (cq < ba)));
                  bv = gt ? v : bv;
                  ba = gt ? cq : ba;
                });
              }
              std::memcpy(lbest.data() + k, &bv, sizeof(V));
              std::memcpy(larg.data() + k, &ba, sizeof(VI));
              V mv = vninf;
              if (tt >= 0) {
                mv = eval(tt);
                visit(bits_t.data(), nw_t, S, tt, lane_floor(mv, nl), [&](int32_t, const V& v) {
                  mv = ((v > mv) | (v != v)) ? v : mv;
                });
              }
              std::memcpy(ltmax.data() + k, &mv, sizeof(V));
            }
            const int64_t nx = xs[j + 1] - xs[j];
            for (int64_t r = 0; r < R; ++r) {
              for (int64_t k = loff[j] + r * nx, x = xs[j]; x < xs[j + 1]; ++k, ++x) {
                blk_best[r * W + x] = lbest[k];
                blk_arg[r * W + x] = (int32_t)larg[k];
                blk_tmax[r * W + x] = ltmax[k];
              }
            }
          }
        }
      }
      const int64_t yi1 = ly.i1;
      // The logit of channel c at output pixel x.
      auto value = [&](int64_t c, int64_t x) -> A {
        if (UP) {
          const T* p0 = X + c * cS + ly.i0 * hS;
          const T* p1 = X + c * cS + yi1 * hS;
          const int64_t j0 = xi0[x] * wS, j1 = xi1[x] * wS;
          return bilerp(ly.l0, ly.l1, xl0[x], xl1[x], A(p0[j0]), A(p0[j1]), A(p1[j0]), A(p1[j1]));
        }
        return A(rows0[c * cS + x * wS]);
      };
      A* __restrict__ pb = best.data();
      int32_t* __restrict__ pa = arg.data();
      A* __restrict__ pt = tmax.data();
      A* __restrict__ ps = smax.data();
      if (UP) {
        const int64_t o = (y - blk0) * W;
        std::copy(blk_best.begin() + o, blk_best.begin() + o + W, pb);
        std::copy(blk_arg.begin() + o, blk_arg.begin() + o + W, pa);
        if (with_void) {
          std::copy(blk_tmax.begin() + o, blk_tmax.begin() + o + W, pt);
          std::fill(ps, ps + W, N == 0 ? A(-10) : neg_inf);
        }
      } else {
        for (int64_t x = 0; x < W; ++x) {
          pb[x] = neg_inf;
          pa[x] = 0;
        }
        for (int64_t c = 0; c < S; ++c) {
          const T* __restrict__ r = rows0 + c * cS;
          for (int64_t x = 0; x < W; ++x) {
            const A v = A(r[x * wS]);
            const bool gt = beats(v, pb[x]);
            pb[x] = gt ? v : pb[x];
            pa[x] = gt ? (int32_t)c : pa[x];
          }
        }
        if (with_void) {
          for (int64_t x = 0; x < W; ++x) {
            pt[x] = neg_inf;
            ps[x] = N == 0 ? A(-10) : neg_inf;
          }
          for (int64_t c = S; c < C; ++c) {
            const T* __restrict__ r = rows0 + c * cS;
            for (int64_t x = 0; x < W; ++x) {
              const A v = A(r[x * wS]);
              pt[x] = nanmax(pt[x], v);
            }
          }
        }
      }
      // Instance i's logit is seg (inside the seg region) + mask (inside the mask region), 0 elsewhere; both
      // regions start at the truncated box corner, so on row y their union is one interval [xa, xb) (empty: W, W).
      auto span = [&](const Inst& in, int64_t& xa, int64_t& xb, int64_t& sxb, bool& mask_row) {
        const bool seg_row = y >= in.sy0 && y < in.sy1 && in.sx1 > in.sx0;
        mask_row = y >= in.my0 && y < in.my1 && in.mx1 > in.mx0;
        sxb = seg_row ? in.sx1 : in.sx0;
        const int64_t mxb = mask_row ? in.mx1 : in.mx0;
        xa = (seg_row || mask_row) ? in.sx0 : W;
        xb = (seg_row || mask_row) ? std::max(sxb, mxb) : W;
      };
      for (int64_t i = 0; i < N; ++i) {
        const Inst& in = insts[i];
        const int32_t id = (int32_t)(S + i);
        int64_t xa, xb, sxb;
        bool mask_row;
        span(in, xa, xb, sxb, mask_row);
        if (xb <= xa) continue;
        A* __restrict__ pv = vals.data();
        for (int64_t x = xa; x < sxb; ++x) pv[x] = value(in.ch, x);
        for (int64_t x = sxb; x < xb; ++x) pv[x] = A(0);
        if (with_void) {
          for (int64_t x = xa; x < xb; ++x) ps[x] = nanmax(ps[x], pv[x]);
        }
        // The pasted mask logits on this row.
        if (mask_row) {
          const Lerp<A> ly = resize_lerp<A>(y - in.by0, MH, in.mh);
          const T* m0 = M + i * mN + ly.i0 * mHs;
          const T* m1 = M + i * mN + ly.i1 * mHs;
          for (int64_t j = 0; j < MW; ++j) mrow[j] = ly.l0 * A(m0[j * mWs]) + ly.l1 * A(m1[j * mWs]);
          const int64_t k0 = moff[i] - in.mx0;
          for (int64_t x = in.mx0; x < in.mx1; ++x) {
            const int64_t k = k0 + x;
            pv[x] += ml0[k] * mrow[mi0[k]] + ml1[k] * mrow[mi1[k]];
          }
        }
        for (int64_t x = xa; x < xb; ++x) {
          const bool gt = beats(pv[x], pb[x]);
          pb[x] = gt ? pv[x] : pb[x];
          pa[x] = gt ? id : pa[x];
        }
      }
      // The 0 logits outside the instances' intervals, merged in one pass: at pixel x only the smallest index i0(x)
      // of an instance not covering x can win among them (same value, first index on ties), so it is compared with
      // the running best of all the other channels by (value, index): it wins on 0 > best, or on 0 == best with a
      // lower id (a covering instance after i0 at exactly +-0); a NaN best stays. The pixels not yet assigned an
      // i0 after instances 0..i-1 are those covered by all of them: one interval [L, R), shrinking.
      auto merge_zero = [&](int64_t a, int64_t b, int32_t id) {
        for (int64_t x = a; x < b; ++x) {
          const bool gt = A(0) > pb[x] || (A(0) == pb[x] && id < pa[x]);
          pb[x] = gt ? A(0) : pb[x];
          pa[x] = gt ? id : pa[x];
        }
        if (with_void) {
          for (int64_t x = a; x < b; ++x) ps[x] = A(0) > ps[x] ? A(0) : ps[x];
        }
      };
      for (int64_t i = 0, L = 0, R = W; i < N && L < R; ++i) {
        int64_t xa, xb, sxb;
        bool mask_row;
        span(insts[i], xa, xb, sxb, mask_row);
        const int64_t nL = std::max(L, xa), nR = std::min(R, xb);
        const int32_t id = (int32_t)(S + i);
        if (nL >= nR) {
          merge_zero(L, R, id);
          break;
        }
        merge_zero(L, nL, id);
        merge_zero(nR, R, id);
        L = nL;
        R = nR;
      }
      int32_t* dst = out + y * W;
      if (with_void && S == 0 && N == 0) {
        for (int64_t x = 0; x < W; ++x) dst[x] = kVoidId;  // the void logit is the only channel
      } else if (with_void) {
        for (int64_t x = 0; x < W; ++x) {
          const A v = pt[x] - ps[x];
          dst[x] = beats(v, pb[x]) ? kVoidId : pa[x];
        }
      } else {
        for (int64_t x = 0; x < W; ++x) dst[x] = pa[x];
      }
    }
  });
}

Tensor panoptic_fuse_cpu(const Tensor& sem, const Tensor& masks, const Tensor& boxes, const Tensor& labels,
                         int64_t num_stuff, at::OptionalIntArrayRef output_size, bool with_void) {
  const auto hw = check_args(sem, masks, boxes, labels, num_stuff, output_size, with_void);
  const int64_t H = hw.first, W = hw.second;
  const int64_t C = sem.size(0);
  Tensor out = at::empty({H, W}, sem.options().dtype(at::kInt));
  const int64_t N = boxes.size(0);
  // Data-dependent checks before the parallel region.
  Tensor b64 = boxes.to(at::kDouble).contiguous();
  Tensor l64 = labels.to(at::kLong).contiguous();
  const double* bp = b64.const_data_ptr<double>();
  const int64_t* lp = l64.const_data_ptr<int64_t>();
  std::vector<Inst> insts(N);
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK(lp[i] >= 1 && lp[i] <= C - num_stuff, "panoptic_fuse: labels must be thing classes in [1, ",
                C - num_stuff, "], got ", lp[i], " at index ", i);
    for (int j = 0; j < 4; ++j) {
      TORCH_CHECK(std::isfinite(bp[4 * i + j]), "panoptic_fuse: boxes must be finite, got a non-finite value at ",
                  "index ", i);
    }
    insts[i] = make_inst(bp[4 * i], bp[4 * i + 1], bp[4 * i + 2], bp[4 * i + 3], lp[i], num_stuff, H, W);
  }
  if (H * W == 0) return out;
  const bool up = sem.size(1) != H || sem.size(2) != W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sem.scalar_type(), "panoptic_fuse_cpu", [&] {
    if (up) {
      fuse_kernel<scalar_t, true>(sem, masks, insts, num_stuff, with_void, out.data_ptr<int32_t>(), H, W);
    } else {
      fuse_kernel<scalar_t, false>(sem, masks, insts, num_stuff, with_void, out.data_ptr<int32_t>(), H, W);
    }
  });
  return out;
}

}  // namespace
}  // namespace panoptic
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("panoptic_fuse", &fastops::panoptic::panoptic_fuse_cpu); }
