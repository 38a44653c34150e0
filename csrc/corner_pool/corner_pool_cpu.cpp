// Corner pooling: CPU kernels (forward scan and CornerNet's backward). One plane per task of at::parallel_for:
// results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu_memory.h"
#include "corner_pool/corner_pool.h"
#include "corner_pool/corner_pool_bits.h"
#include "corner_pool/corner_pool_tiles.h"
#include "keypoints_vec.h"

namespace fastops {
namespace heatmaps {
namespace {

using at::Tensor;

// top/bottom: the scan runs over the plane's rows with the W lanes contiguous, so every step is a vectorised row
// operation. left/right: the scan runs along the contiguous axis; kRows rows go together (independent chains).

// Software prefetch distance of the row scans, in rows.
constexpr int kAhead = 4;

// out[t] = scan_max(out[t-1], in[t]), t in scan order (rev: from row L-1 down). With `mk` (zeroed, row y at
// mk + y * mw): the record bits (corner_pool_bits.h).
template <typename T, typename A>
void scan_fwd_rows(const T* in, T* out, int L, int n, int64_t ld, bool rev, uint8_t* mk, int64_t mw) {
  const int first = rev ? L - 1 : 0, step = rev ? -1 : 1;
  std::copy(in + (int64_t)first * ld, in + (int64_t)first * ld + n, out + (int64_t)first * ld);
  if (mk) set_first_bits(mk + first * mw, n);
  for (int t = 1; t < L; ++t) {
    const int64_t y = first + step * t;
    const T* r = in + y * ld;
    const T* pr = out + (y - step) * ld;
    T* o = out + y * ld;
    uint8_t* mr = mk ? mk + y * mw : nullptr;
    int x = 0;
    // A few rows ahead in scan order: the hardware prefetchers follow a descending scan (top) poorly.
    const T* ahead = t + kAhead < L ? r + kAhead * step * ld : r;
    if constexpr (std::is_same<T, float>::value) {
      for (; x + kLanes <= n; x += kLanes) {
        __builtin_prefetch(ahead + x);
        const vfloat a = vload(r + x), b = vload(pr + x);
        const vint rec = (a > b) | ((a != a) & (b == b));
        const vfloat v = rec ? a : b;
        std::memcpy(o + x, &v, sizeof(v));
        if (mr) put_lane_bits(mr, x, lane_bits(rec));
      }
    }
    for (; x < n; ++x) {
      const bool rec = is_record((A)r[x], (A)pr[x]);
      o[x] = rec ? r[x] : pr[x];
      if (mr) set_bit(mr, x, rec);
    }
  }
}

// One step of a backward walk: a record takes the sum s of the gradients accumulated since the last record (and the
// sum restarts), any other element gets 0 (and the sum carries on).
template <typename T, typename A>
inline void take_or_carry(A s, bool rec, T& out, A& acc) {
  out = (T)(rec ? s : A(0));
  acc = rec ? A(0) : s;
}

inline void take_or_carry(vfloat s, vint rec, float* out, float* acc) {
  const vfloat o = rec ? s : vfloat{};
  const vfloat a = rec ? vfloat{} : s;
  std::memcpy(out, &o, sizeof(o));
  std::memcpy(acc, &a, sizeof(a));
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
          take_or_carry(sv, rec, rr + x, acc + x);
        }
      }
      for (; x < n; ++x) {
        const A s = acc[x] + (A)gr[x];
        const bool rec = is_record((A)ar[x], (A)pr[x]);
        take_or_carry(s, rec, rr[x], acc[x]);
      }
    }
  }
}

// The same walk from the forward's record bits (row y at mk + y * mw): reads the gradient and the bits only.
template <typename T, typename A>
void scan_bwd_rows_bits(const T* g, const uint8_t* mk, int64_t mw, T* gin, int L, int n, int64_t ld, bool rev,
                        A* acc) {
  const int first = rev ? L - 1 : 0, step = rev ? -1 : 1;
  std::fill(acc, acc + n, A(0));
  for (int t = L - 1; t >= 0; --t) {
    const int64_t y = first + step * t;
    const T* gr = g + y * ld;
    const uint8_t* mr = mk + y * mw;
    T* rr = gin + y * ld;
    const int64_t ah = t >= kAhead ? -kAhead * step * ld : 0;
    int x = 0;
    if constexpr (std::is_same<T, float>::value) {
      for (; x + kLanes <= n; x += kLanes) {
        __builtin_prefetch(gr + ah + x);
        const vfloat sv = vload(acc + x) + vload(gr + x);
        const vint rec = expand_bits(get_lane_bits(mr, x));
        take_or_carry(sv, rec, rr + x, acc + x);
      }
    }
    for (; x < n; ++x) {
      const A s = acc[x] + (A)gr[x];
      const bool rec = get_bit(mr, x);
      take_or_carry(s, rec, rr[x], acc[x]);
    }
  }
}


// left/right: kRows rows go together. Portable path: scalar, the rows' dependency chains independent so the core
// overlaps them.
constexpr int kRows = 8;

// left/right on float with AVX: corner_pool_tiles.h (scan8_fwd, scan8_bwd, scan8_bwd_bits).

// With `mk` (the group's W bytes of the record mask, zeroed): byte x gets the record bits of column x.
template <typename T, typename A>
void scan_fwd_interleaved(const T* in, T* out, int W, int nr, bool rev, uint8_t* mk) {
  A m[kRows];
  const int first = rev ? W - 1 : 0, d = rev ? -1 : 1;
  for (int r = 0; r < kRows; ++r) {
    const int rr = r < nr ? r : 0;
    m[r] = (A)in[(int64_t)rr * W + first];
  }
  for (int r = 0; r < nr; ++r) out[(int64_t)r * W + first] = in[(int64_t)r * W + first];
  if (mk) mk[first] = (uint8_t)((1u << nr) - 1);
  int x = first;
  for (int t = 1; t < W; ++t) {
    x += d;
    unsigned bits = 0;
    if (nr == kRows) {
      for (int r = 0; r < kRows; ++r) {
        const A v = (A)in[(int64_t)r * W + x];
        const bool rec = is_record(v, m[r]);
        m[r] = rec ? v : m[r];
        bits |= (unsigned)rec << r;
        out[(int64_t)r * W + x] = (T)m[r];
      }
    } else {
      for (int r = 0; r < nr; ++r) {
        const A v = (A)in[(int64_t)r * W + x];
        const bool rec = is_record(v, m[r]);
        m[r] = rec ? v : m[r];
        bits |= (unsigned)rec << r;
        out[(int64_t)r * W + x] = (T)m[r];
      }
    }
    if (mk) mk[x] = (uint8_t)bits;
  }
}

// Backward of nr <= kRows rows from the forward's record bits (the group's W bytes at mk).
template <typename T, typename A>
void scan_bwd_interleaved_bits(const T* g, const uint8_t* mk, T* gin, int W, int nr, bool rev) {
  A acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = A(0);
  for (int j = 0; j < W; ++j) {
    const int x = rev ? j : W - 1 - j;  // walk against the scan
    for (int r = 0; r < nr; ++r) {
      const int64_t o = (int64_t)r * W;
      const A s = acc[r] + (A)g[o + x];
      const bool rec = (mk[x] >> r) & 1;
      take_or_carry(s, rec, gin[o + x], acc[r]);
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
      take_or_carry(s, rec, gin[o + x], acc[r]);
    }
  }
}

// The forward of every plane into `out` (contiguous, like `in`), and the record bits into `mask` when defined
// (zeroed, pool_mask_shape).
void pool_forward(const Tensor& in, Tensor& out, const Tensor& mask, int mode) {
  const int64_t BC = in.size(0) * in.size(1);
  const int H = (int)in.size(2), W = (int)in.size(3);
  const bool cols = mode == kTop || mode == kBottom;
  uint8_t* mp = mask.defined() ? mask.data_ptr<uint8_t>() : nullptr;
  const int64_t mplane = mask.defined() ? mask.size(2) * mask.size(3) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "corner_pool", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* ip = in.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, BC, 1, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const scalar_t* a = ip + m * plane;
        scalar_t* o = op + m * plane;
        uint8_t* mk = mp ? mp + m * mplane : nullptr;
        if (cols) {
          scan_fwd_rows<scalar_t, A>(a, o, H, W, W, mode == kTop, mk, (W + 7) / 8);
          continue;
        }
        for (int r0 = 0; r0 < H; r0 += kRows) {
          const int nr = std::min(kRows, H - r0);
          const int64_t off = (int64_t)r0 * W;
          uint8_t* mg = mk ? mk + (int64_t)(r0 / kRows) * W : nullptr;
#if defined(__AVX__)
          if (std::is_same<scalar_t, float>::value && nr == 8) {  // (the casts are no-ops for float)
            scan8_fwd(reinterpret_cast<const float*>(a + off), reinterpret_cast<float*>(o + off), W, mode == kLeft,
                      mg);
            continue;
          }
#endif
          scan_fwd_interleaved<scalar_t, A>(a + off, o + off, W, nr, mode == kLeft, mg);
        }
      }
    });
  });
}

// Outputs and gradients (every element written) on the block cache (cpu_memory.h): a training step's 8 MB maps
// are not page-faulted in again at every call.
Tensor corner_pool_cpu(const Tensor& input, c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_args(input);
  const Tensor in = input.contiguous();
  Tensor out = cpu_memory::empty_cached_like(in);
  if (out.numel() > 0) pool_forward(in, out, Tensor(), mode);
  return out;
}

std::tuple<Tensor, Tensor> corner_pool_masked_cpu(const Tensor& input, c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_args(input);
  const Tensor in = input.contiguous();
  Tensor out = cpu_memory::empty_cached_like(in);
  Tensor mask = at::zeros(pool_mask_shape(in.sizes(), mode), in.options().dtype(at::kByte));
  if (out.numel() > 0) pool_forward(in, out, mask, mode);
  return {out, mask};
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
  Tensor gin = cpu_memory::empty_cached_like(in);
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

// The backward of `_corner_pool_masked`: the gradient and the record bits only.
Tensor corner_pool_masked_backward_cpu(const Tensor& grad, const Tensor& mask, c10::string_view mode_s) {
  const int mode = parse_pool_mode(mode_s);
  check_pool_masked_backward_args(grad, mask, mode);
  const Tensor g = grad.contiguous();
  const Tensor mk = mask.contiguous();
  const int64_t BC = g.size(0) * g.size(1);
  const int H = (int)g.size(2), W = (int)g.size(3);
  Tensor gin = cpu_memory::empty_cached_like(g);
  if (gin.numel() == 0) return gin;
  const bool cols = mode == kTop || mode == kBottom;
  const int64_t mplane = mk.size(2) * mk.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "corner_pool_masked_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const uint8_t* mp = mk.data_ptr<uint8_t>();
    scalar_t* rp = gin.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)H * W;
    at::parallel_for(0, BC, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(cols ? (size_t)W : 0);
      for (int64_t m = begin; m < end; ++m) {
        const scalar_t* gg = gp + m * plane;
        const uint8_t* mb = mp + m * mplane;
        scalar_t* r = rp + m * plane;
        if (cols) {
          scan_bwd_rows_bits<scalar_t, A>(gg, mb, (W + 7) / 8, r, H, W, W, mode == kTop, acc.data());
          continue;
        }
        for (int r0 = 0; r0 < H; r0 += kRows) {
          const int nr = std::min(kRows, H - r0);
          const int64_t off = (int64_t)r0 * W;
          const uint8_t* mg = mb + (int64_t)(r0 / kRows) * W;
#if defined(__AVX2__)
          if (std::is_same<scalar_t, float>::value && nr == 8) {  // (the casts are no-ops for float)
            scan8_bwd_bits(reinterpret_cast<const float*>(gg + off), mg, reinterpret_cast<float*>(r + off), W,
                           mode == kLeft);
            continue;
          }
#endif
          scan_bwd_interleaved_bits<scalar_t, A>(gg + off, mg, r + off, W, nr, mode == kLeft);
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
  m.impl("_corner_pool_masked", &corner_pool_masked_cpu);
  m.impl("_corner_pool_masked_backward", &corner_pool_masked_backward_cpu);
}
