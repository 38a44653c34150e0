// DensePose: CPU kernels. Chart decoding never materialises the resized maps: per box it keeps the horizontally
// interpolated source rows it needs (all coarse + fine channels, two rows at a time) and reduces the argmaxes over
// channels while forming each output row; U/V are then interpolated at the winning part only. Results do not depend
// on the thread count (work items are independent; the point-sampling backward sums each RoI's points in order).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "cpu_memory.h"
#include "cpu_parallel.h"
#include "densepose/densepose.h"

namespace fastops {
namespace densepose {
namespace {

using at::Tensor;

#if (defined(FASTOPS_CPU_ISA) && FASTOPS_CPU_ISA >= 1) || defined(__FMA__)
constexpr bool kFma = true;  // as ATen's AVX2 / AVX-512 kernels (see madd in densepose.h)
#else
constexpr bool kFma = false;
#endif

// One detection's chart maps, sampled onto its int box row by row (columns [xa, xb) of the box).
template <typename T>
struct BoxSampler {
  using A = acc_t<T>;
  const T *coarse, *fine, *u, *v;
  int Kc, K, Sh, Sw, h, xa, n;
  std::vector<Tap<A>> xt;
  std::vector<A> rows[2], best;
  std::vector<int> arg;
  int key[2] = {-1, -1};

  BoxSampler(const T* coarse_, const T* fine_, const T* u_, const T* v_, int Kc_, int K_, int Sh_, int Sw_, int w,
             int h_, int xa_, int xb)
      : coarse(coarse_), fine(fine_), u(u_), v(v_), Kc(Kc_), K(K_), Sh(Sh_), Sw(Sw_), h(h_), xa(xa_), n(xb - xa_) {
    xt.resize((size_t)n);
    for (int j = 0; j < n; ++j) xt[(size_t)j] = resize_tap<kFma, A>(xa + j, Sw, w);
    for (auto& r : rows) r.resize((size_t)(Kc + K) * n);
    best.resize((size_t)n);
    arg.resize((size_t)n);
  }

  // Horizontally interpolated source row y of every coarse then fine channel (cached, two rows).
  const A* row(int y, int keep) {
    for (int s = 0; s < 2; ++s)
      if (key[s] == y) return rows[s].data();
    const int s = key[0] == keep ? 1 : 0;
    key[s] = y;
    A* out = rows[s].data();
    for (int c = 0; c < Kc + K; ++c) {
      const T* src = (c < Kc ? coarse + (int64_t)c * Sh * Sw : fine + (int64_t)(c - Kc) * Sh * Sw) + (int64_t)y * Sw;
      A* o = out + (int64_t)c * n;
      for (int j = 0; j < n; ++j) {
        const Tap<A>& t = xt[(size_t)j];
        o[j] = madd<kFma, A>((A)src[t.i0], t.l0, (A)src[t.i1] * t.l1);
      }
    }
    return out;
  }

  // argmax over channels [c0, c1) of the vertical combination of rows ra / rb (torch.argmax's rule).
  void argmax(const A* ra, const A* rb, int c0, int c1, A ly0, A ly1) {
    A* bp = best.data();
    int* ap = arg.data();
    for (int j = 0; j < n; ++j) {
      bp[j] = (A)(T)madd<kFma, A>(ra[(int64_t)c0 * n + j], ly0, rb[(int64_t)c0 * n + j] * ly1);
      ap[j] = 0;
    }
    for (int c = c0 + 1; c < c1; ++c) {
      const A* pa = ra + (int64_t)c * n;
      const A* pb = rb + (int64_t)c * n;
      const int k = c - c0;
      for (int j = 0; j < n; ++j) {
        const A val = (A)(T)madd<kFma, A>(pa[j], ly0, pb[j] * ly1);
        const bool take = argmax_takes(val, bp[j]);
        bp[j] = take ? val : bp[j];
        ap[j] = take ? k : ap[j];
      }
    }
  }

  // Output row py: labels (uint8) and U, V (float; 0 on background), n values each.
  void sample_row(int py, uint8_t* lab, float* uo, float* vo) {
    const Tap<A> ty = resize_tap<kFma, A>(py, Sh, h);
    const A* ra = row(ty.i0, ty.i1);
    const A* rb = row(ty.i1, ty.i0);
    const A ly0 = (A)ty.l0, ly1 = (A)ty.l1;
    argmax(ra, rb, 0, Kc, ly0, ly1);
    for (int j = 0; j < n; ++j) lab[j] = arg[(size_t)j] > 0;
    argmax(ra, rb, Kc, Kc + K, ly0, ly1);
    const int64_t plane = (int64_t)Sh * Sw;
    const int64_t r0 = (int64_t)ty.i0 * Sw, r1 = (int64_t)ty.i1 * Sw;
    for (int j = 0; j < n; ++j) {
      const int l = lab[j] ? arg[(size_t)j] : 0;
      lab[j] = (uint8_t)l;
      if (l == 0) {
        uo[j] = vo[j] = 0.f;
        continue;
      }
      const Tap<A>& t = xt[(size_t)j];
      const T* pu = u + l * plane;
      const T* pv = v + l * plane;
      uo[j] = (float)(T)bilerp<kFma, A>(pu[r0 + t.i0], pu[r0 + t.i1], pu[r1 + t.i0], pu[r1 + t.i1], t.l0, t.l1, ly0,
                                        ly1);
      vo[j] = (float)(T)bilerp<kFma, A>(pv[r0 + t.i0], pv[r0 + t.i1], pv[r1 + t.i0], pv[r1 + t.i1], t.l0, t.l1, ly0,
                                        ly1);
    }
  }
};

constexpr int kRowsPerItem = 32;

std::tuple<Tensor, Tensor, Tensor, Tensor> chart_to_iuv_cpu(const Tensor& coarse_, const Tensor& fine_,
                                                            const Tensor& u_, const Tensor& v_, const Tensor& boxes) {
  const Tensor ib = check_chart_args(coarse_, fine_, u_, v_, boxes, "densepose_chart_to_iuv");
  const Tensor coarse = coarse_.contiguous(), fine = fine_.contiguous(), u = u_.contiguous(), v = v_.contiguous();
  const int64_t R = fine.size(0);
  const int K = (int)fine.size(1), Kc = (int)coarse.size(1), Sh = (int)fine.size(2), Sw = (int)fine.size(3);
  auto a = ib.accessor<int64_t, 2>();
  Tensor offsets = at::empty({R + 1}, ib.options());
  int64_t* op = offsets.data_ptr<int64_t>();
  op[0] = 0;
  std::vector<std::pair<int64_t, int>> items;  // (box, first row)
  for (int64_t r = 0; r < R; ++r) {
    op[r + 1] = op[r] + a[r][2] * a[r][3];
    for (int y = 0; y < a[r][3]; y += kRowsPerItem) items.emplace_back(r, y);
  }
  const int64_t N = op[R];
  Tensor labels = at::empty({N}, ib.options().dtype(at::kByte));
  Tensor uv = at::empty({2 * N}, ib.options().dtype(at::kFloat));
  // 9 B per box pixel (~42 MB for 100 boxes of 32-400 px), every byte written once by the parallel region: 2 MB
  // pages where the block is fresh, so first touches cost ~20 faults instead of ~10^4 (which also contend across
  // threads on these VMs).
  cpu_memory::advise_huge_pages(labels);
  cpu_memory::advise_huge_pages(uv);
  uint8_t* lp = labels.data_ptr<uint8_t>();
  float* up = uv.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fine.scalar_type(), "densepose_chart_to_iuv", [&] {
    const scalar_t *cp = coarse.data_ptr<scalar_t>(), *fp = fine.data_ptr<scalar_t>();
    const scalar_t *upp = u.data_ptr<scalar_t>(), *vpp = v.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)Sh * Sw;
    // items differ in width (boxes of 32-400 px): taken dynamically (cpu_parallel.h)
    dynamic_for((int64_t)items.size(), [] { return 0; }, [&](int64_t it, int&) {
      const int64_t r = items[(size_t)it].first;
      const int y0 = items[(size_t)it].second;
      const int w = (int)a[r][2], h = (int)a[r][3];
      BoxSampler<scalar_t> bs(cp + r * Kc * plane, fp + r * K * plane, upp + r * K * plane, vpp + r * K * plane, Kc,
                              K, Sh, Sw, w, h, 0, w);
      const int y1 = std::min(h, y0 + kRowsPerItem);
      for (int y = y0; y < y1; ++y) {
        const int64_t o = op[r] + (int64_t)y * w;
        float* ub = up + 2 * op[r] + (int64_t)y * w;
        bs.sample_row(y, lp + o, ub, ub + (int64_t)w * h);
      }
    });
  });
  return {labels, uv, offsets.to(boxes.device()), ib.to(boxes.device())};
}

Tensor paste_iuv_cpu(const Tensor& coarse_, const Tensor& fine_, const Tensor& u_, const Tensor& v_,
                     const Tensor& boxes, const Tensor& scores_, int64_t height, int64_t width) {
  const Tensor ib = check_chart_args(coarse_, fine_, u_, v_, boxes, "densepose_paste_iuv");
  const int64_t R = fine_.size(0);
  TORCH_CHECK(scores_.dim() == 1 && scores_.size(0) == R, "densepose_paste_iuv: scores must be [R], got ",
              scores_.sizes());
  TORCH_CHECK(height >= 0 && width >= 0 && height <= kMaxBoxSide * 4 && width <= kMaxBoxSide * 4,
              "densepose_paste_iuv: height and width must be in [0, 2^18], got ", height, ", ", width);
  const Tensor scores = scores_.to(at::kCPU).to(at::kDouble).contiguous();
  TORCH_CHECK(!at::isnan(scores).any().item<bool>(), "densepose_paste_iuv: scores must not be NaN");
  const Tensor coarse = coarse_.contiguous(), fine = fine_.contiguous(), u = u_.contiguous(), v = v_.contiguous();
  const int K = (int)fine.size(1), Kc = (int)coarse.size(1), Sh = (int)fine.size(2), Sw = (int)fine.size(3);
  const int H = (int)height, W = (int)width;
  Tensor out = at::zeros({3, height, width}, ib.options().dtype(at::kByte));
  if (R == 0 || H == 0 || W == 0) return out.to(boxes.device());
  auto a = ib.accessor<int64_t, 2>();
  const double* sp = scores.data_ptr<double>();
  uint8_t* o = out.data_ptr<uint8_t>();
  const int64_t HW = (int64_t)H * W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fine.scalar_type(), "densepose_paste_iuv", [&] {
    const scalar_t *cp = coarse.data_ptr<scalar_t>(), *fp = fine.data_ptr<scalar_t>();
    const scalar_t *upp = u.data_ptr<scalar_t>(), *vpp = v.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)Sh * Sw;
    const int64_t chunks = (H + kRowsPerItem - 1) / kRowsPerItem;
    struct Scratch {
      std::vector<double> best;
      std::vector<uint8_t> lab;
      std::vector<float> uu, vv;
    };
    // row blocks taken dynamically: the boxes cover the image rows unevenly (cpu_parallel.h)
    dynamic_for(chunks, [] { return Scratch(); }, [&](int64_t ch, Scratch& sc) {
      std::vector<double>& best = sc.best;
      std::vector<uint8_t>& lab = sc.lab;
      std::vector<float>& uu = sc.uu;
      std::vector<float>& vv = sc.vv;
      const int ya = (int)ch * kRowsPerItem, yb = std::min(H, ya + kRowsPerItem);
      best.assign((size_t)(yb - ya) * W, -std::numeric_limits<double>::infinity());
      std::vector<uint8_t> taken((size_t)(yb - ya) * W, 0);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t bx = a[r][0], by = a[r][1], w = a[r][2], h = a[r][3];
        const int64_t x0 = std::max<int64_t>(bx, 0), x1 = std::min<int64_t>(bx + w, W);
        const int64_t y0 = std::max<int64_t>(by, ya), y1 = std::min<int64_t>(by + h, yb);
        if (x0 >= x1 || y0 >= y1) continue;
        BoxSampler<scalar_t> bs(cp + r * Kc * plane, fp + r * K * plane, upp + r * K * plane, vpp + r * K * plane,
                                Kc, K, Sh, Sw, (int)w, (int)h, (int)(x0 - bx), (int)(x1 - bx));
        const int n = (int)(x1 - x0);
        lab.resize((size_t)n);
        uu.resize((size_t)n);
        vv.resize((size_t)n);
        const double s = sp[r];
        for (int64_t y = y0; y < y1; ++y) {
          bs.sample_row((int)(y - by), lab.data(), uu.data(), vv.data());
          const int64_t row = (y - ya) * W;
          for (int j = 0; j < n; ++j) {
            const int64_t q = row + x0 + j;
            if (lab[(size_t)j] == 0 || (taken[(size_t)q] && !(s > best[(size_t)q]))) continue;
            taken[(size_t)q] = 1;
            best[(size_t)q] = s;
            const int64_t pix = y * W + x0 + j;
            o[pix] = lab[(size_t)j];
            o[HW + pix] = quantize_uv(uu[(size_t)j]);
            o[2 * HW + pix] = quantize_uv(vv[(size_t)j]);
          }
        }
      }
    });
  });
  return out.to(boxes.device());
}

// ---- roi_point_sample -----------------------------------------------------------------------------------------

Tensor roi_point_sample_cpu(const Tensor& maps_, const Tensor& roi_index_, const Tensor& points_) {
  check_point_args(maps_, roi_index_, points_, true);
  const Tensor maps = maps_.contiguous(), ri = roi_index_.contiguous();
  const Tensor points = points_.to(maps.scalar_type()).contiguous();
  const int64_t P = ri.size(0), C = maps.size(1);
  const int Sh = (int)maps.size(2), Sw = (int)maps.size(3);
  Tensor out = at::empty({P, C}, maps.options());
  if (P * C == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps.scalar_type(), "roi_point_sample", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* mp = maps.data_ptr<scalar_t>();
    const scalar_t* pp = points.data_ptr<scalar_t>();
    const int64_t* rp = ri.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t plane = (int64_t)Sh * Sw;
    at::parallel_for(0, P, 64, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const PointTaps<scalar_t> t = point_taps<scalar_t>((A)pp[2 * p], (A)pp[2 * p + 1], Sh, Sw);
        const scalar_t* m = mp + rp[p] * C * plane;
        for (int64_t c = 0; c < C; ++c, m += plane) op[p * C + c] = sample_point(m, t);
      }
    });
  });
  return out;
}

// Gradient of the maps: each RoI's points (a stable counting sort by roi_index) summed in point order by the
// thread that owns the RoI: no atomics, the same bits for any thread count.
Tensor roi_point_sample_backward_cpu(const Tensor& grad_, const Tensor& maps, const Tensor& roi_index_,
                                     const Tensor& points_) {
  check_point_args(maps, roi_index_, points_, true);
  const int64_t P = roi_index_.size(0), C = maps.size(1), R = maps.size(0);
  TORCH_CHECK(grad_.dim() == 2 && grad_.size(0) == P && grad_.size(1) == C,
              "_roi_point_sample_backward: grad must be [P, C], got ", grad_.sizes());
  const Tensor grad = grad_.to(maps.scalar_type()).contiguous(), ri = roi_index_.contiguous();
  const Tensor points = points_.to(maps.scalar_type()).contiguous();
  const int Sh = (int)maps.size(2), Sw = (int)maps.size(3);
  const at::ScalarType acc = maps.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // A cached block (cpu_memory.h): fresh zero pages on the first call, afterwards a block this process already
  // maps, which each thread zeroes one RoI at a time just before adding that RoI's taps (in cache): one write pass,
  // no page faults, no separate zero pass.
  bool zeroed = false;
  Tensor gacc = cpu_memory::empty_cached(maps.sizes(), acc, at::MemoryFormat::Contiguous, &zeroed);
  if (P * C == 0) {
    if (!zeroed) gacc.zero_();
    return gacc.to(maps.scalar_type());
  }
  const int64_t* rp = ri.data_ptr<int64_t>();
  std::vector<int64_t> start((size_t)R + 1, 0), order((size_t)P);
  for (int64_t p = 0; p < P; ++p) ++start[(size_t)rp[p] + 1];
  for (int64_t r = 0; r < R; ++r) start[(size_t)r + 1] += start[(size_t)r];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t p = 0; p < P; ++p) order[(size_t)fill[(size_t)rp[p]]++] = p;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps.scalar_type(), "roi_point_sample_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* pp = points.data_ptr<scalar_t>();
    A* out = gacc.data_ptr<A>();
    const int64_t plane = (int64_t)Sh * Sw;
    at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        A* g = out + r * C * plane;
        if (!zeroed) std::fill(g, g + C * plane, A(0));
        for (int64_t k = start[(size_t)r]; k < start[(size_t)r + 1]; ++k) {
          const int64_t p = order[(size_t)k];
          const PointTaps<scalar_t> t = point_taps<scalar_t>((A)pp[2 * p], (A)pp[2 * p + 1], Sh, Sw);
          const scalar_t* gr = gp + p * C;
          for (int64_t c = 0; c < C; ++c) add_point_grad(g + c * plane, t, (A)gr[c]);
        }
      }
    });
  });
  return gacc.to(maps.scalar_type());
}

}  // namespace
}  // namespace densepose
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  using namespace fastops::densepose;
  m.impl("densepose_chart_to_iuv", &chart_to_iuv_cpu);
  m.impl("densepose_paste_iuv", &paste_iuv_cpu);
  m.impl("roi_point_sample", &roi_point_sample_cpu);
  m.impl("_roi_point_sample_backward", &roi_point_sample_backward_cpu);
}
