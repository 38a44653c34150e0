// Instance mask assembly (YOLACT postprocess, YOLACT lincomb mask loss, torchvision paste_masks_in_image):
// CPU kernels (schemas and argument checks: masks.cpp). See docs/masks.md and fastops/ops/masks.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <vector>

#include "cpu_memory.h"
#include "cpu_parallel.h"
#include "masks/masks.h"

namespace fastops {
namespace masks {
namespace {

using at::Tensor;

// Outputs are fresh zero pages (cpu_memory.h, from 1 MB, no huge pages): the pages a kernel never writes are never
// touched (no memset, no RSS), so kernels write only the pixels inside their boxes.
Tensor zeroed_cpu(at::IntArrayRef sizes, at::ScalarType dtype) {
  // sizes were checked by the op's host checks (checked_output_numel): the product cannot overflow
  return cpu_memory::zeros_fresh(sizes, dtype, at::MemoryFormat::Contiguous, size_t(1) << 20, /*huge_pages=*/false);
}

// The output before any box is drawn: 0, or for a thresholded output `0 > threshold` (True everywhere for a
// negative threshold, where the mmap zero pages would be wrong).
Tensor background_cpu(at::IntArrayRef sizes, at::ScalarType dtype, std::optional<double> threshold) {
  if (threshold.has_value() && 0.0 > *threshold) {
    return at::ones(sizes, at::TensorOptions().dtype(at::kBool).device(at::kCPU));
  }
  return zeroed_cpu(sizes, threshold.has_value() ? at::kBool : dtype);
}

// Prefaults the pages of bytes [begin, end) of a zeroed_cpu() block in one madvise(MADV_POPULATE_WRITE) call
// instead of one page fault per page (faults are costly, in VMs especially); errors (old kernels) are ignored.
inline void prefault(void* base, int64_t begin, int64_t end) {
#ifdef MADV_POPULATE_WRITE
  if (end <= begin) return;
  const uintptr_t page = 4096;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(base) + static_cast<uintptr_t>(begin)) & ~(page - 1);
  const uintptr_t b = reinterpret_cast<uintptr_t>(base) + static_cast<uintptr_t>(end);
  (void)madvise(reinterpret_cast<void*>(a), b - a, MADV_POPULATE_WRITE);
#else
  (void)base, (void)begin, (void)end;
#endif
}

std::vector<int64_t> order_by_cost_desc(const std::vector<int64_t>& cost);

// Runs f(item, scratch_owner_thread_state) over the items 0..cost.size()-1, costliest first (ties: lower index),
// with dynamic scheduling (csrc/cpu_parallel.h). Each item writes only its own outputs, so results do not depend
// on the thread count.
template <typename MakeState, typename F>
void dynamic_for(const std::vector<int64_t>& cost, MakeState make_state, F f) {
  const std::vector<int64_t> order = order_by_cost_desc(cost);
  fastops::dynamic_for(static_cast<int64_t>(order.size()), make_state,
                       [&](int64_t k, auto& state) { f(order[k], state); });
}

std::vector<int64_t> order_by_cost_desc(const std::vector<int64_t>& cost) {
  std::vector<int64_t> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  return order;
}

// Crop rectangles [cx0,cx1) x [cy0,cy1) in proto pixels, computed in the boxes' dtype (YOLACT's rule).
std::vector<int64_t> yolact_crops(const Tensor& boxes, int64_t Hp, int64_t Wp, bool crop) {
  const int64_t N = boxes.size(0);
  std::vector<int64_t> r(4 * N);
  if (!crop) {
    for (int64_t n = 0; n < N; ++n) {
      r[4 * n] = 0, r[4 * n + 1] = Wp, r[4 * n + 2] = 0, r[4 * n + 3] = Hp;
    }
    return r;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "yolact_crops", [&] {
    const scalar_t* b = boxes.data_ptr<scalar_t>();
    const int64_t s0 = boxes.stride(0), s1 = boxes.stride(1);
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t* bn = b + n * s0;
      yolact_crop_range<scalar_t>(bn[0], bn[2 * s1], Wp, r[4 * n], r[4 * n + 1]);
      yolact_crop_range<scalar_t>(bn[s1], bn[3 * s1], Hp, r[4 * n + 2], r[4 * n + 3]);
    }
  });
  return r;
}

// Logits of n consecutive proto pixels of one row: out[x] = sum_p protos[y, x0 + x, p] * c[p].
template <typename T, typename A>
inline void row_logits(const T* base, int64_t sX, int64_t sP, const A* c, int64_t P, int64_t n, A* out) {
  if (sP == 1) {
    constexpr int L = 16;
    for (int64_t x = 0; x < n; ++x) {
      const T* px = base + x * sX;
      A part[L] = {};
      int64_t p = 0;
      for (; p + L <= P; p += L) {
        for (int l = 0; l < L; ++l) part[l] += static_cast<A>(px[p + l]) * c[p + l];
      }
      A s = 0;
      for (; p < P; ++p) s += static_cast<A>(px[p]) * c[p];
      for (int l = 0; l < L; ++l) s += part[l];
      out[x] = s;
    }
  } else {
    for (int64_t x = 0; x < n; ++x) out[x] = A(0);
    for (int64_t p = 0; p < P; ++p) {
      const T* q = base + p * sP;
      const A cp = c[p];
      for (int64_t x = 0; x < n; ++x) out[x] += static_cast<A>(q[x * sX]) * cp;
    }
  }
}

// sum of n values at stride s, with 16 independent partial sums when contiguous (vectorisable, fixed order)
template <typename T, typename A>
inline A strided_sum(const T* g, int64_t n, int64_t s) {
  if (s != 1) {
    A r = 0;
    for (int64_t x = 0; x < n; ++x) r += static_cast<A>(g[x * s]);
    return r;
  }
  constexpr int L = 16;
  A part[L] = {};
  int64_t x = 0;
  for (; x + L <= n; x += L) {
    for (int l = 0; l < L; ++l) part[l] += static_cast<A>(g[x + l]);
  }
  A r = 0;
  for (; x < n; ++x) r += static_cast<A>(g[x]);
  for (int l = 0; l < L; ++l) r += part[l];
  return r;
}

template <typename A>
std::vector<Taps<A>> taps_table(int64_t in_size, int64_t out_size) {
  std::vector<Taps<A>> t(out_size);
  const A scale = area_scale<A>(in_size, out_size);
  for (int64_t j = 0; j < out_size; ++j) t[j] = linear_taps<A>(j, scale, in_size);
  return t;
}

// Output range [j0, j1) whose taps touch [c0, c1) (taps are non-decreasing in j).
template <typename A>
void touched_range(const std::vector<Taps<A>>& t, int64_t c0, int64_t c1, int64_t& j0, int64_t& j1) {
  const int64_t n = static_cast<int64_t>(t.size());
  j0 = std::partition_point(t.begin(), t.end(), [&](const Taps<A>& a) { return a.i1 < c0; }) - t.begin();
  j1 = std::partition_point(t.begin(), t.end(), [&](const Taps<A>& a) { return a.i0 < c1; }) - t.begin();
  j0 = std::min(j0, n);
  if (j1 < j0) j1 = j0;
}

// ---------------------------------------------------------------------------------------------------------------
// yolact_masks
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
void yolact_masks_impl(const Tensor& protos, const Tensor& coeffs, const std::vector<int64_t>& crops,
                       Tensor& out, int64_t out_h, int64_t out_w, bool thresholded, double threshold) {
  using A = acc_t<T>;
  const int64_t Hp = protos.size(0), Wp = protos.size(1), P = protos.size(2), N = coeffs.size(0);
  const int64_t sY = protos.stride(0), sX = protos.stride(1), sP = protos.stride(2);
  const T* pr = protos.data_ptr<T>();
  const T* cf = coeffs.data_ptr<T>();
  const int64_t cs0 = coeffs.stride(0), cs1 = coeffs.stride(1);
  const auto tx = taps_table<A>(Wp, out_w);
  const auto ty = taps_table<A>(Hp, out_h);
  // structure-of-arrays copy of the horizontal taps: the per-pixel loop becomes gathers the compiler vectorises
  std::vector<int32_t> xi0(out_w), xi1(out_w);
  std::vector<A> xw0(out_w), xw1(out_w);
  for (int64_t j = 0; j < out_w; ++j) {
    xi0[j] = static_cast<int32_t>(tx[j].i0);
    xi1[j] = static_cast<int32_t>(tx[j].i1);
    xw0[j] = tx[j].w0;
    xw1[j] = tx[j].w1;
  }
  const A thr = static_cast<A>(threshold);
  uint8_t* out_b = thresholded ? reinterpret_cast<uint8_t*>(out.data_ptr<bool>()) : nullptr;
  T* out_f = thresholded ? nullptr : out.data_ptr<T>();
  const int64_t plane = out_h * out_w;
  const bool mapped = cpu_memory::is_fresh_mapping(out);
  void* out_base = out.data_ptr();

  struct Det {
    int64_t cx0, cx1, cy0, cy1, jx0, jx1, jy0, jy1;
  };
  std::vector<Det> dets(N);
  std::vector<int64_t> cost(N);
  for (int64_t n = 0; n < N; ++n) {
    Det d{crops[4 * n], crops[4 * n + 1], crops[4 * n + 2], crops[4 * n + 3], 0, 0, 0, 0};
    if (d.cx1 > d.cx0 && d.cy1 > d.cy0) {
      touched_range(tx, d.cx0, d.cx1, d.jx0, d.jx1);
      touched_range(ty, d.cy0, d.cy1, d.jy0, d.jy1);
    }
    dets[n] = d;
    cost[n] = (d.jx1 - d.jx0) * (d.jy1 - d.jy0) + (d.cx1 - d.cx0) * (d.cy1 - d.cy0) * P;
  }

  struct Scratch {
    std::vector<A> sig, tmp, c;
  };
  dynamic_for(
      cost,
      [&] { return Scratch{{}, std::vector<A>(Wp, A(0)), std::vector<A>(P)}; },
      [&](int64_t n, Scratch& s) {
        const Det& d = dets[n];
        if (d.jx1 <= d.jx0 || d.jy1 <= d.jy0) return;
        const int64_t cw = d.cx1 - d.cx0, ch = d.cy1 - d.cy0;
        for (int64_t p = 0; p < P; ++p) s.c[p] = static_cast<A>(cf[n * cs0 + p * cs1]);
        // 1. cropped sigmoid(protos @ c) on the crop rectangle only
        s.sig.resize(cw * ch);
        for (int64_t y = 0; y < ch; ++y) {
          A* row = s.sig.data() + y * cw;
          row_logits<T, A>(pr + (d.cy0 + y) * sY + d.cx0 * sX, sX, sP, s.c.data(), P, cw, row);
          for (int64_t x = 0; x < cw; ++x) row[x] = sigmoid_<A>(row[x]);
        }
        // 2. bilinear resize of the (zero-padded) crop, only for output pixels whose taps touch it
        if (mapped) {
          const int64_t es = thresholded ? 1 : static_cast<int64_t>(sizeof(T));
          prefault(out_base, (n * plane + d.jy0 * out_w + d.jx0) * es, (n * plane + (d.jy1 - 1) * out_w + d.jx1) * es);
        }
        A* tmp = s.tmp.data();  // full proto row; columns outside the crop stay 0
        for (int64_t i = d.jy0; i < d.jy1; ++i) {
          const Taps<A>& v = ty[i];
          const bool in0 = v.i0 >= d.cy0 && v.i0 < d.cy1, in1 = v.i1 >= d.cy0 && v.i1 < d.cy1;
          const A* r0 = s.sig.data() + (v.i0 - d.cy0) * cw;
          const A* r1 = s.sig.data() + (v.i1 - d.cy0) * cw;
          A* t = tmp + d.cx0;
          if (in0 && in1) {
            for (int64_t x = 0; x < cw; ++x) t[x] = r0[x] * v.w0 + r1[x] * v.w1;
          } else if (in0) {
            for (int64_t x = 0; x < cw; ++x) t[x] = r0[x] * v.w0;
          } else {
            for (int64_t x = 0; x < cw; ++x) t[x] = r1[x] * v.w1;
          }
          const int64_t o = n * plane + i * out_w;
          const int32_t* i0 = xi0.data();
          const int32_t* i1 = xi1.data();
          const A* w0 = xw0.data();
          const A* w1 = xw1.data();
          if (out_b) {
            uint8_t* ob = out_b + o;
            for (int64_t j = d.jx0; j < d.jx1; ++j) ob[j] = (tmp[i0[j]] * w0[j] + tmp[i1[j]] * w1[j]) > thr;
          } else {
            T* of = out_f + o;
            for (int64_t j = d.jx0; j < d.jx1; ++j) of[j] = static_cast<T>(tmp[i0[j]] * w0[j] + tmp[i1[j]] * w1[j]);
          }
        }
        for (int64_t x = d.cx0; x < d.cx1; ++x) tmp[x] = A(0);
      });
}

Tensor yolact_masks_cpu(const Tensor& protos, const Tensor& coeffs, const Tensor& boxes, int64_t out_h,
                        int64_t out_w, bool crop, std::optional<double> threshold) {
  check_yolact_masks_args(protos, coeffs, boxes, out_h, out_w, threshold.has_value());
  const int64_t N = coeffs.size(0);
  const bool thresholded = threshold.has_value();
  Tensor out = background_cpu({N, out_h, out_w}, protos.scalar_type(), threshold);
  if (N == 0) return out;
  const auto crops = yolact_crops(boxes, protos.size(0), protos.size(1), crop);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(), "yolact_masks_cpu", [&] {
    yolact_masks_impl<scalar_t>(protos, coeffs, crops, out, out_h, out_w, thresholded, threshold.value_or(0.0));
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// yolact_mask_loss (forward and backward)
// ---------------------------------------------------------------------------------------------------------------

// sum(bce) normaliser per detection: / (box_w * Wp) / (box_h * Hp) * (Wp * Hp), box sizes in the boxes' dtype.
std::vector<double> loss_box_dims(const Tensor& boxes, int64_t Hp, int64_t Wp) {
  const int64_t N = boxes.size(0);
  std::vector<double> r(2 * N);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "loss_box_dims", [&] {
    using B = acc_t<scalar_t>;
    const scalar_t* b = boxes.data_ptr<scalar_t>();
    const int64_t s0 = boxes.stride(0), s1 = boxes.stride(1);
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t* bn = b + n * s0;
      const scalar_t w = static_cast<scalar_t>(static_cast<B>(bn[2 * s1]) - static_cast<B>(bn[0]));
      const scalar_t h = static_cast<scalar_t>(static_cast<B>(bn[3 * s1]) - static_cast<B>(bn[s1]));
      r[2 * n] = static_cast<double>(static_cast<scalar_t>(static_cast<B>(w) * static_cast<B>(Wp)));
      r[2 * n + 1] = static_cast<double>(static_cast<scalar_t>(static_cast<B>(h) * static_cast<B>(Hp)));
    }
  });
  return r;
}

template <typename T>
void mask_loss_fwd_impl(const Tensor& protos, const Tensor& coeffs, const Tensor& gt,
                        const std::vector<int64_t>& crops, const std::vector<double>& dims, Tensor& loss) {
  using A = acc_t<T>;
  const int64_t Hp = protos.size(0), Wp = protos.size(1), P = protos.size(2), N = coeffs.size(0);
  const int64_t sY = protos.stride(0), sX = protos.stride(1), sP = protos.stride(2);
  const int64_t g0 = gt.stride(0), g1 = gt.stride(1), g2 = gt.stride(2);
  const T* pr = protos.data_ptr<T>();
  const T* cf = coeffs.data_ptr<T>();
  const T* gp = gt.data_ptr<T>();
  T* lo = loss.data_ptr<T>();
  const int64_t cs0 = coeffs.stride(0), cs1 = coeffs.stride(1);
  std::vector<int64_t> cost(N);
  for (int64_t n = 0; n < N; ++n) cost[n] = (crops[4 * n + 1] - crops[4 * n]) * (crops[4 * n + 3] - crops[4 * n + 2]);
  struct Scratch {
    std::vector<A> c, x;
  };
  dynamic_for(
      cost,
      [&] { return Scratch{std::vector<A>(P), std::vector<A>(Wp)}; },
      [&](int64_t n, Scratch& s) {
        const int64_t cx0 = crops[4 * n], cx1 = crops[4 * n + 1], cy0 = crops[4 * n + 2], cy1 = crops[4 * n + 3];
        const bool any = cx1 > cx0 && cy1 > cy0;
        for (int64_t p = 0; p < P; ++p) s.c[p] = static_cast<A>(cf[n * cs0 + p * cs1]);
        A inside = 0, outside = 0;
        for (int64_t y = 0; y < Hp; ++y) {
          const T* g = gp + n * g0 + y * g1;
          const bool row_in = any && y >= cy0 && y < cy1;
          if (!row_in) {
            outside += strided_sum<T, A>(g, Wp, g2);
            continue;
          }
          outside += strided_sum<T, A>(g, cx0, g2) + strided_sum<T, A>(g + cx1 * g2, Wp - cx1, g2);
          const int64_t cw = cx1 - cx0;
          A* xs = s.x.data();
          row_logits<T, A>(pr + y * sY + cx0 * sX, sX, sP, s.c.data(), P, cw, xs);
          for (int64_t x = 0; x < cw; ++x) xs[x] = sigmoid_<A>(xs[x]);
          for (int64_t x = 0; x < cw; ++x) inside += bce_<A>(xs[x], static_cast<A>(g[(cx0 + x) * g2]));
        }
        // outside the crop YOLACT's prediction is 0: BCE(0, t) = 100 t (PyTorch clamps log(0) at -100)
        const A total = inside + A(100) * outside;
        lo[n] = static_cast<T>(total / static_cast<A>(dims[2 * n]) / static_cast<A>(dims[2 * n + 1]) *
                               static_cast<A>(Hp * Wp));
      });
}

Tensor yolact_mask_loss_cpu(const Tensor& protos, const Tensor& coeffs, const Tensor& boxes, const Tensor& gt) {
  check_loss_args(protos, coeffs, boxes, gt);
  const int64_t N = coeffs.size(0), Hp = protos.size(0), Wp = protos.size(1);
  Tensor loss = at::empty({N}, protos.options());
  if (N == 0) return loss;
  const auto crops = yolact_crops(boxes, Hp, Wp, true);
  const auto dims = loss_box_dims(boxes, Hp, Wp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(), "yolact_mask_loss_cpu", [&] {
    mask_loss_fwd_impl<scalar_t>(protos, coeffs, gt, crops, dims, loss);
  });
  return loss;
}

template <typename T>
void mask_loss_bwd_impl(const Tensor& grad, const Tensor& protos, const Tensor& coeffs, const Tensor& gt,
                        const std::vector<int64_t>& crops, const std::vector<double>& dims, Tensor& gprotos,
                        Tensor& gcoeffs) {
  using A = acc_t<T>;
  const int64_t Hp = protos.size(0), Wp = protos.size(1), P = protos.size(2), N = coeffs.size(0);
  const int64_t sY = protos.stride(0), sX = protos.stride(1), sP = protos.stride(2);
  const int64_t g0 = gt.stride(0), g1 = gt.stride(1), g2 = gt.stride(2);
  const T* pr = protos.data_ptr<T>();
  const T* cf = coeffs.data_ptr<T>();
  const T* gp = gt.data_ptr<T>();
  const int64_t cs0 = coeffs.stride(0), cs1 = coeffs.stride(1);
  // per detection: d loss[n] / d sum(bce) times the incoming gradient, and its coefficients in A
  std::vector<A> G(N), C(N * P);
  {
    const T* gr = grad.data_ptr<T>();
    const int64_t gs = grad.stride(0);
    for (int64_t n = 0; n < N; ++n) {
      G[n] = static_cast<A>(gr[n * gs]) / static_cast<A>(dims[2 * n]) / static_cast<A>(dims[2 * n + 1]) *
             static_cast<A>(Hp * Wp);
      for (int64_t p = 0; p < P; ++p) C[n * P + p] = static_cast<A>(cf[n * cs0 + p * cs1]);
    }
  }
  // d loss / d logit inside every crop, computed once (pass A) and reused by pass B: a transient buffer of the
  // crop areas only (nothing of size [Hp, Wp, N] is kept between forward and backward)
  std::vector<int64_t> cost(N), off(N + 1, 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t cw = crops[4 * n + 1] - crops[4 * n], ch = crops[4 * n + 3] - crops[4 * n + 2];
    cost[n] = (cw > 0 && ch > 0) ? cw * ch : 0;
    off[n + 1] = off[n] + cost[n];
  }
  std::vector<A> D(off[N]);

  // pass A, one detection per task: D and grad_coeffs[n] = sum over the crop of D * protos[pixel]
  T* gc = gcoeffs.data_ptr<T>();
  struct Scratch {
    std::vector<A> acc;
  };
  dynamic_for(
      cost,
      [&] { return Scratch{std::vector<A>(P)}; },
      [&](int64_t n, Scratch& s) {
        const int64_t cx0 = crops[4 * n], cx1 = crops[4 * n + 1], cy0 = crops[4 * n + 2], cy1 = crops[4 * n + 3];
        std::fill(s.acc.begin(), s.acc.end(), A(0));
        if (cost[n] > 0) {
          const int64_t cw = cx1 - cx0;
          const A Gn = G[n];
          A* acc = s.acc.data();
          for (int64_t y = cy0; y < cy1; ++y) {
            A* d = D.data() + off[n] + (y - cy0) * cw;
            row_logits<T, A>(pr + y * sY + cx0 * sX, sX, sP, C.data() + n * P, P, cw, d);
            for (int64_t x = 0; x < cw; ++x) d[x] = sigmoid_<A>(d[x]);
            const T* g = gp + n * g0 + y * g1 + cx0 * g2;
            for (int64_t x = 0; x < cw; ++x) d[x] = Gn * bce_sigmoid_grad_<A>(d[x], static_cast<A>(g[x * g2]));
            for (int64_t x = 0; x < cw; ++x) {
              const A dx = d[x];
              const T* px = pr + y * sY + (cx0 + x) * sX;
              if (sP == 1) {
                for (int64_t p = 0; p < P; ++p) acc[p] += dx * static_cast<A>(px[p]);
              } else {
                for (int64_t p = 0; p < P; ++p) acc[p] += dx * static_cast<A>(px[p * sP]);
              }
            }
          }
        }
        for (int64_t p = 0; p < P; ++p) gc[n * P + p] = static_cast<T>(s.acc[p]);
      });

  // pass B, one proto row per task: grad_protos[y, x] = sum over detections (in order) of D * coeffs[n]
  T* gpr = gprotos.data_ptr<T>();
  at::parallel_for(0, Hp, 1, [&](int64_t yb, int64_t ye) {
    std::vector<A> acc(Wp * P);
    for (int64_t y = yb; y < ye; ++y) {
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t n = 0; n < N; ++n) {
        const int64_t cx0 = crops[4 * n], cx1 = crops[4 * n + 1], cy0 = crops[4 * n + 2], cy1 = crops[4 * n + 3];
        if (!(cost[n] > 0 && y >= cy0 && y < cy1)) continue;
        const int64_t cw = cx1 - cx0;
        const A* c = C.data() + n * P;
        const A* d = D.data() + off[n] + (y - cy0) * cw;
        for (int64_t x = 0; x < cw; ++x) {
          const A dx = d[x];
          A* a = acc.data() + (cx0 + x) * P;
          for (int64_t p = 0; p < P; ++p) a[p] += dx * c[p];
        }
      }
      T* o = gpr + y * Wp * P;
      for (int64_t k = 0; k < Wp * P; ++k) o[k] = static_cast<T>(acc[k]);
    }
  });
}

std::tuple<Tensor, Tensor> yolact_mask_loss_backward_cpu(const Tensor& grad, const Tensor& protos,
                                                         const Tensor& coeffs, const Tensor& boxes,
                                                         const Tensor& gt) {
  check_loss_backward_args(grad, protos, coeffs, boxes, gt);
  const int64_t N = coeffs.size(0), Hp = protos.size(0), Wp = protos.size(1), P = protos.size(2);
  Tensor gprotos = at::empty({Hp, Wp, P}, protos.options());
  Tensor gcoeffs = at::empty({N, P}, protos.options());
  if (N == 0 || Hp * Wp * P == 0) {
    gprotos.zero_();
    gcoeffs.zero_();
    return {gprotos, gcoeffs};
  }
  const Tensor g = grad.scalar_type() == protos.scalar_type() ? grad : grad.to(protos.scalar_type());
  const auto crops = yolact_crops(boxes, Hp, Wp, true);
  const auto dims = loss_box_dims(boxes, Hp, Wp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(), "yolact_mask_loss_bwd_cpu", [&] {
    mask_loss_bwd_impl<scalar_t>(g, protos, coeffs, gt, crops, dims, gprotos, gcoeffs);
  });
  return {gprotos, gcoeffs};
}

// ---------------------------------------------------------------------------------------------------------------
// paste_masks
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
void paste_impl(const Tensor& masks, const std::vector<PasteGeom>& geoms, int64_t padding, Tensor& out,
                int64_t H, int64_t W, bool thresholded, double threshold) {
  using A = acc_t<T>;
  const int64_t N = masks.size(0), Mh = masks.size(1), Mw = masks.size(2);
  const int64_t m0 = masks.stride(0), m1 = masks.stride(1), m2 = masks.stride(2);
  const int64_t Ph = Mh + 2 * padding, Pw = Mw + 2 * padding;  // padded mask
  const T* mp = masks.data_ptr<T>();
  const A thr = static_cast<A>(threshold);
  uint8_t* out_b = thresholded ? reinterpret_cast<uint8_t*>(out.data_ptr<bool>()) : nullptr;
  T* out_f = thresholded ? nullptr : out.data_ptr<T>();
  const bool mapped = cpu_memory::is_fresh_mapping(out);
  void* out_base = out.data_ptr();
  std::vector<int64_t> cost(N);
  for (int64_t n = 0; n < N; ++n) cost[n] = (geoms[n].xb - geoms[n].xa) * (geoms[n].yb - geoms[n].ya);
  struct Scratch {
    std::vector<A> row, w0, w1;
    std::vector<int32_t> i0, i1;
  };
  dynamic_for(
      cost,
      [&] { return Scratch{std::vector<A>(Pw), {}, {}, {}, {}}; },
      [&](int64_t n, Scratch& s) {
        const PasteGeom& g = geoms[n];
        if (g.xb <= g.xa || g.yb <= g.ya) return;
        if (mapped) {
          const int64_t es = thresholded ? 1 : static_cast<int64_t>(sizeof(T));
          prefault(out_base, (n * H * W + g.ya * W + g.xa) * es, (n * H * W + (g.yb - 1) * W + g.xb) * es);
        }
        const int64_t nx = g.xb - g.xa;
        const A sx = area_scale<A>(Pw, g.bw), sy = area_scale<A>(Ph, g.bh);
        // horizontal taps of the visible columns, as offsets into the padded row
        s.i0.resize(nx);
        s.i1.resize(nx);
        s.w0.resize(nx);
        s.w1.resize(nx);
        for (int64_t k = 0; k < nx; ++k) {
          const Taps<A> t = linear_taps<A>(g.xa - g.x0 + k, sx, Pw);
          s.i0[k] = static_cast<int32_t>(t.i0);
          s.i1[k] = static_cast<int32_t>(t.i1);
          s.w0[k] = t.w0;
          s.w1[k] = t.w1;
        }
        A* row = s.row.data();
        const T* mn = mp + n * m0;
        for (int64_t y = g.ya; y < g.yb; ++y) {
          const Taps<A> v = linear_taps<A>(y - g.y0, sy, Ph);
          // vertical blend of padded rows v.i0, v.i1 (rows inside the padding are 0)
          const int64_t r0 = v.i0 - padding, r1 = v.i1 - padding;
          const bool in0 = r0 >= 0 && r0 < Mh, in1 = r1 >= 0 && r1 < Mh;
          for (int64_t x = 0; x < padding; ++x) row[x] = A(0), row[Pw - 1 - x] = A(0);
          A* rm = row + padding;
          if (in0 && in1) {
            const T* a = mn + r0 * m1;
            const T* b = mn + r1 * m1;
            for (int64_t x = 0; x < Mw; ++x) rm[x] = static_cast<A>(a[x * m2]) * v.w0 + static_cast<A>(b[x * m2]) * v.w1;
          } else if (in0) {
            const T* a = mn + r0 * m1;
            for (int64_t x = 0; x < Mw; ++x) rm[x] = static_cast<A>(a[x * m2]) * v.w0;
          } else if (in1) {
            const T* b = mn + r1 * m1;
            for (int64_t x = 0; x < Mw; ++x) rm[x] = static_cast<A>(b[x * m2]) * v.w1;
          } else {
            for (int64_t x = 0; x < Mw; ++x) rm[x] = A(0);
          }
          const int32_t* i0 = s.i0.data();
          const int32_t* i1 = s.i1.data();
          const A* w0 = s.w0.data();
          const A* w1 = s.w1.data();
          const int64_t o = n * H * W + y * W + g.xa;
          if (out_b) {
            uint8_t* ob = out_b + o;
            for (int64_t k = 0; k < nx; ++k) ob[k] = (row[i0[k]] * w0[k] + row[i1[k]] * w1[k]) > thr;
          } else {
            T* of = out_f + o;
            for (int64_t k = 0; k < nx; ++k) of[k] = static_cast<T>(row[i0[k]] * w0[k] + row[i1[k]] * w1[k]);
          }
        }
      });
}

Tensor paste_masks_cpu(const Tensor& masks, const Tensor& boxes, int64_t H, int64_t W, int64_t padding,
                       std::optional<double> threshold) {
  check_paste_args(masks, boxes, H, W, padding, threshold.has_value());
  const int64_t N = masks.size(0);
  const bool thresholded = threshold.has_value();
  Tensor out = background_cpu({N, 1, H, W}, masks.scalar_type(), threshold);
  if (N == 0 || H == 0 || W == 0) return out;
  std::vector<PasteGeom> geoms(N);
  const double scale = static_cast<double>(masks.size(2) + 2 * padding) / static_cast<double>(masks.size(2));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "paste_boxes", [&] {
    const scalar_t* b = boxes.data_ptr<scalar_t>();
    const int64_t s0 = boxes.stride(0), s1 = boxes.stride(1);
    for (int64_t n = 0; n < N; ++n) {
      scalar_t bb[4];
      for (int k = 0; k < 4; ++k) bb[k] = b[n * s0 + k * s1];
      int64_t e[4];
      bool valid;
      paste_expand_box<scalar_t>(bb, static_cast<acc_t<scalar_t>>(scale), e, valid);
      geoms[n] = paste_geometry(e, valid, H, W);
    }
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_cpu", [&] {
    paste_impl<scalar_t>(masks, geoms, padding, out, H, W, thresholded, threshold.value_or(0.0));
  });
  return out;
}

}  // namespace
}  // namespace masks
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("yolact_masks", &fastops::masks::yolact_masks_cpu);
  m.impl("yolact_mask_loss", &fastops::masks::yolact_mask_loss_cpu);
  m.impl("_yolact_mask_loss_backward", &fastops::masks::yolact_mask_loss_backward_cpu);
  m.impl("paste_masks", &fastops::masks::paste_masks_cpu);
}
