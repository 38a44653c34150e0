// Prior-box family: CUDA kernels (thin launchers around priors.h, shared with the CPU kernels).
//
// Traffic figures are for the docs/priors.md workloads in float32 (one 640 x 640 image: 16,800 priors; matching:
// 32 images x 16,800 priors x <= 50 gt); H100 means ~3.35 TB/s of HBM bandwidth. Every kernel here moves a few MB
// at most: launch-bound (~3-5 us per launch) long before bandwidth-bound.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "cuda_utils.cuh"
#include "priors/priors.h"

namespace fastops {
namespace priors {
namespace {

using at::Tensor;
using fastops::cuda::kThreads;
constexpr int kRowThreads = 256;  // threads per (image, gt) row for the best-prior reduction

// One thread per (image, prior): decoded pixel box and landmarks. Traffic per prior: 16 B loc + 8L B landmarks +
// 16 B prior read, as much written (16,800 priors, L = 5: 2.4 MB in all, < 1 us of H100 bandwidth).
template <typename T>
__global__ void decode_kernel(const T* __restrict__ loc, const T* __restrict__ lm, const T* __restrict__ pri,
                              int64_t B, int64_t P, int64_t NL, T v0, T v1, T sx, T sy, T* __restrict__ boxes,
                              T* __restrict__ lms) {
  FASTOPS_KERNEL_LOOP(i, B * P) {
    const int64_t p = i % P;
    const T* pr = pri + p * 4;
    const T* l = loc + i * 4;
    decode_box<T>(l[0], l[1], l[2], l[3], pr[0], pr[1], pr[2], pr[3], v0, v1, sx, sy, boxes + i * 4);
    for (int64_t q = 0; q < NL; q += 2) {
      lms[i * NL + q] = decode_landm<T>(lm[i * NL + q], pr[0], pr[2], v0, sx);
      lms[i * NL + q + 1] = decode_landm<T>(lm[i * NL + q + 1], pr[1], pr[3], v0, sy);
    }
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> prior_nms_cuda(const Tensor& loc_, const Tensor& scores_,
                                                          const Tensor& landms_, const Tensor& priors_, double var0,
                                                          double var1, double scale_x, double scale_y,
                                                          double score_threshold, double iou_threshold,
                                                          int64_t top_k, int64_t max_det, bool pad, bool plus_one) {
  check_prior_nms(loc_, scores_, landms_, priors_, max_det, pad);
  c10::cuda::CUDAGuard guard(loc_.device());
  const Tensor loc = loc_.contiguous(), scores = scores_.contiguous(), landms = landms_.contiguous(),
               pri = priors_.contiguous();
  const int64_t B = loc.size(0), P = loc.size(1), NL = landms.size(2);
  Tensor boxes = at::empty({B, P, 4}, loc.options()), lms = at::empty({B, P, NL}, loc.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(loc.scalar_type(), "prior_nms_cuda", [&] {
    cuda::launch_1d(decode_kernel<scalar_t>, B * P, stream, loc.const_data_ptr<scalar_t>(),
                    landms.const_data_ptr<scalar_t>(), pri.const_data_ptr<scalar_t>(), B, P, NL, (scalar_t)var0,
                    (scalar_t)var1, (scalar_t)scale_x, (scalar_t)scale_y, boxes.data_ptr<scalar_t>(),
                    lms.data_ptr<scalar_t>());
  });
  // Selection per image with ATen ops (the same rules as the CPU kernel): score > threshold in the scores' dtype,
  // stable descending sort (ties: lower prior index), top-k, finite boxes only, then the NMS family's op.
  const at::Scalar thr = loc.scalar_type() == at::kFloat ? at::Scalar((double)(float)score_threshold)
                                                         : at::Scalar(score_threshold);
  std::vector<Tensor> ob, os, ol;
  std::vector<int64_t> counts((size_t)B);
  for (int64_t b = 0; b < B; ++b) {
    Tensor s = scores[b];
    Tensor cand = at::nonzero(s.gt(thr)).view({-1});
    Tensor cs = s.index_select(0, cand);
    auto sorted = at::sort(cs, /*stable=*/true, /*dim=*/0, /*descending=*/true);
    Tensor order = std::get<1>(sorted);
    if (top_k > 0 && order.size(0) > top_k) order = order.narrow(0, 0, top_k);
    Tensor sel = cand.index_select(0, order);
    Tensor bx = boxes[b].index_select(0, sel);
    sel = sel.index_select(0, at::nonzero(at::isfinite(bx).all(1)).view({-1}));
    bx = boxes[b].index_select(0, sel);
    Tensor sc = s.index_select(0, sel);
    Tensor shifted = plus_one ? at::cat({bx.narrow(1, 0, 2), bx.narrow(1, 2, 2) + 1}, 1) : bx;
    Tensor keep = call_nms(shifted, sc, iou_threshold);
    if (max_det > 0 && keep.size(0) > max_det) keep = keep.narrow(0, 0, max_det);
    ob.push_back(bx.index_select(0, keep));
    os.push_back(sc.index_select(0, keep));
    ol.push_back(lms[b].index_select(0, sel).index_select(0, keep));
    counts[(size_t)b] = keep.size(0);
  }
  Tensor cnt = at::tensor(counts, loc.options().dtype(at::kLong).device(at::kCPU)).to(loc.device());
  if (!pad) {
    if (B == 0) return {at::empty({0, 4}, loc.options()), at::empty({0}, loc.options()),
                        at::empty({0, NL}, loc.options()), cnt};
    return {at::cat(ob), at::cat(os), at::cat(ol), cnt};
  }
  Tensor pb = at::zeros({B, max_det, 4}, loc.options()), ps = at::zeros({B, max_det}, loc.options()),
         pl = at::zeros({B, max_det, NL}, loc.options());
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = counts[(size_t)b];
    pb[b].narrow(0, 0, n).copy_(ob[(size_t)b]);
    ps[b].narrow(0, 0, n).copy_(os[(size_t)b]);
    pl[b].narrow(0, 0, n).copy_(ol[(size_t)b]);
  }
  return {pb, ps, pl, cnt};
}

// ---- match_priors ---------------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T iou_gt_prior(const T* g, const T* pr) {
  T f[4];
  point_form<T>(pr[0], pr[1], pr[2], pr[3], f);
  return nms::iou<T>(g[0], g[1], g[2], g[3], nms::box_area(g[0], g[1], g[2], g[3]), f[0], f[1], f[2], f[3],
                     nms::box_area(f[0], f[1], f[2], f[3]));
}

// One thread per (image, prior): its best gt (torch.max over gts: strict wins in gt order, NaN rule).
// Traffic: the image's gt rows (<= 50 x 16 B, cached) + 16 B prior read, 12 B written per prior (32 x 16,800:
// 6.5 MB in all, ~2 us); 27 M IoUs: compute-bound at ~20 us on an H100.
template <typename T>
__global__ void best_gt_kernel(const T* __restrict__ gt, const int64_t* __restrict__ counts,
                               const T* __restrict__ pri, int64_t B, int64_t G, int64_t P, T* __restrict__ bt,
                               int32_t* __restrict__ bi) {
  FASTOPS_KERNEL_LOOP(i, B * P) {
    const int64_t b = i / P, p = i % P;
    const int64_t n = counts[b];
    T best = T(0);
    int32_t arg = 0;
    for (int64_t j = 0; j < n; ++j) {
      const T v = iou_gt_prior<T>(gt + (b * G + j) * 4, pri + p * 4);
      if (j == 0 || max_wins(v, best)) {
        best = v;
        arg = (int32_t)j;
      }
    }
    bt[i] = best;
    bi[i] = arg;
  }
}

// One block per (image, gt row < count): the row's first maximum over the priors (its best prior), a fixed-order
// shared-memory reduction (deterministic). Traffic: every prior (16 B) per row, from L2 after the first row of an
// image: 1,600 rows x 269 KB = 430 MB of L2 reads (~40 us at H100 L2 bandwidth), 12 B written per row.
template <typename T>
__global__ void best_prior_kernel(const T* __restrict__ gt, const int64_t* __restrict__ counts,
                                  const T* __restrict__ pri, int64_t G, int64_t P, T* __restrict__ rmax,
                                  int32_t* __restrict__ ridx) {
  __shared__ T sv[kRowThreads];
  __shared__ int64_t si[kRowThreads];
  const int64_t row = blockIdx.x, b = row / G, j = row % G;
  if (j >= counts[b]) return;  // the whole block leaves together
  const T* g = gt + row * 4;
  T bv = iou_gt_prior<T>(g, pri);
  int64_t bidx = 0;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    const T v = iou_gt_prior<T>(g, pri + p * 4);
    if (fastops::cuda::first_max_better(v, p, bv, bidx)) {
      bv = v;
      bidx = p;
    }
  }
  fastops::cuda::block_arg_reduce(sv, si, bv, bidx, blockDim.x, fastops::cuda::FirstMax{});
  if (threadIdx.x == 0) {
    rmax[row] = sv[0];
    ridx[row] = (int32_t)si[0];
  }
}

// One thread per image: the forcing loop, in the original's order (it is sequential by definition). SSD: G steps;
// YOLACT: G steps, each rescanning only the rows whose best prior was just consumed (a row rescan reads all the
// priors: 269 KB from L2). valid[b] = 0 marks an image whose targets stay zero. Traffic: negligible except the
// YOLACT rescans.
template <typename T>
__global__ void force_kernel(const T* __restrict__ gt, const int64_t* __restrict__ counts,
                             const T* __restrict__ pri, int64_t B, int64_t G, int64_t P, int64_t mode, bool has_hard,
                             T hard, T* __restrict__ rmax, int32_t* __restrict__ ridx, uint8_t* __restrict__ removed,
                             uint8_t* __restrict__ removed_rows, T* __restrict__ bt, int32_t* __restrict__ bi, uint8_t* __restrict__ valid) {
  FASTOPS_KERNEL_LOOP(b, B) {
    const int64_t n = counts[b];
    T* rm = rmax + b * G;
    int32_t* ri = ridx + b * G;
    T* t = bt + b * P;
    int32_t* ti = bi + b * P;
    valid[b] = 0;
    if (n == 0 || P == 0) continue;
    if (mode == kModeSsd) {
      bool any = false;
      for (int64_t j = 0; j < n; ++j) {
        if (!has_hard || rm[j] >= hard) {
          t[ri[j]] = T(2);
          any = true;
        }
      }
      if (!any) continue;
      for (int64_t j = 0; j < n; ++j) ti[ri[j]] = (int32_t)j;
    } else {
      uint8_t* gone_col = removed + b * P;
      uint8_t* gone_row = removed_rows + b * G;
      for (int64_t it = 0; it < n; ++it) {
        int64_t j = 0;
        for (int64_t r = 1; r < n; ++r) {
          if (max_wins(rm[r], rm[j])) j = r;
        }
        const int32_t i = ri[j];
        gone_col[i] = 1;
        rm[j] = T(-1);
        ri[j] = 0;
        gone_row[j] = 1;
        for (int64_t r = 0; r < n; ++r) {
          if (gone_row[r] || ri[r] != i) continue;  // only live rows whose best prior was just consumed change
          T best = T(0);
          int32_t arg = 0;
          for (int64_t p = 0; p < P; ++p) {
            const T v = gone_col[p] ? T(-1) : iou_gt_prior<T>(gt + (b * G + r) * 4, pri + p * 4);
            if (p == 0 || max_wins(v, best)) {
              best = v;
              arg = (int32_t)p;
            }
          }
          rm[r] = best;
          ri[r] = arg;
        }
        t[i] = T(2);
        ti[i] = (int32_t)j;
      }
    }
    valid[b] = 1;
  }
}

// One thread per (image, prior): encode the matched gt. Traffic per prior: 12 B state + 16 B prior + (16 + 8L) B
// of the matched gt read (cached), 16 + 8L + 24 B written (32 x 16,800, L = 5: 55 MB, ~17 us of H100 bandwidth).
template <typename T>
__global__ void encode_kernel(const T* __restrict__ gt, const int64_t* __restrict__ labels, const T* __restrict__ lm,
                              const T* __restrict__ pri, int64_t B, int64_t G, int64_t P, int64_t NL,
                              const T* __restrict__ bt, const int32_t* __restrict__ bi,
                              const uint8_t* __restrict__ valid, T v0, T v1, T pos, T neg, T* __restrict__ loc,
                              int64_t* __restrict__ conf, T* __restrict__ landm, T* __restrict__ ov,
                              int64_t* __restrict__ idx) {
  FASTOPS_KERNEL_LOOP(i, B * P) {
    const int64_t b = i / P, p = i % P;
    if (!valid[b]) {
      for (int d = 0; d < 4; ++d) loc[i * 4 + d] = T(0);
      for (int64_t q = 0; q < NL; ++q) landm[i * NL + q] = T(0);
      conf[i] = 0;
      ov[i] = T(0);
      idx[i] = -1;
      continue;
    }
    const int64_t j = bi[i];
    const T* g = gt + (b * G + j) * 4;
    const T* pr = pri + p * 4;
    encode_box<T>(g[0], g[1], g[2], g[3], pr[0], pr[1], pr[2], pr[3], v0, v1, loc + i * 4);
    const T* l = lm + (b * G + j) * NL;
    for (int64_t q = 0; q < NL; q += 2) {
      landm[i * NL + q] = encode_landm<T>(l[q], pr[0], pr[2], v0);
      landm[i * NL + q + 1] = encode_landm<T>(l[q + 1], pr[1], pr[3], v0);
    }
    conf[i] = conf_of<T>(labels[b * G + j], bt[i], pos, neg);
    ov[i] = bt[i];
    idx[i] = j;
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> match_priors_cuda(
    const Tensor& gt_boxes, const Tensor& gt_labels, const Tensor& gt_landms, const Tensor& counts_,
    const Tensor& priors, double pos_threshold, double neg_threshold, double var0, double var1,
    c10::string_view mode, c10::optional<double> hard_threshold) {
  const int64_t code = check_match(gt_boxes, gt_labels, gt_landms, counts_, priors, mode);
  c10::cuda::CUDAGuard guard(gt_boxes.device());
  const Tensor gt = gt_boxes.contiguous(), labels = gt_labels.contiguous(), lm = gt_landms.contiguous(),
               counts = counts_.contiguous(), pri = priors.contiguous();
  const int64_t B = gt.size(0), G = gt.size(1), NL = lm.size(2), P = pri.size(0);
  const auto opts = gt.options();
  Tensor loc = at::empty({B, P, 4}, opts), landm = at::empty({B, P, NL}, opts), ov = at::empty({B, P}, opts);
  Tensor conf = at::empty({B, P}, opts.dtype(at::kLong)), idx = at::empty({B, P}, opts.dtype(at::kLong));
  Tensor bt = at::empty({B, P}, opts), rmax = at::empty({B, G}, opts);
  Tensor bi = at::empty({B, P}, opts.dtype(at::kInt)), ridx = at::empty({B, G}, opts.dtype(at::kInt));
  Tensor removed = at::zeros({code == kModeYolact ? B : 0, P}, opts.dtype(at::kByte));
  Tensor removed_rows = at::zeros({code == kModeYolact ? B : 0, G}, opts.dtype(at::kByte));
  Tensor valid = at::empty({B}, opts.dtype(at::kByte));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(gt.scalar_type(), "match_priors_cuda", [&] {
    using T = scalar_t;
    const T* g = gt.const_data_ptr<T>();
    const int64_t* c = counts.const_data_ptr<int64_t>();
    const T* pp = pri.const_data_ptr<T>();
    cuda::launch_1d(best_gt_kernel<T>, B * P, stream, g, c, pp, B, G, P, bt.data_ptr<T>(), bi.data_ptr<int32_t>());
    if (B * G > 0 && P > 0) {
      best_prior_kernel<T><<<(unsigned)(B * G), kRowThreads, 0, stream>>>(g, c, pp, G, P, rmax.data_ptr<T>(),
                                                                          ridx.data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    cuda::launch_1d(force_kernel<T>, B, stream, g, c, pp, B, G, P, code, hard_threshold.has_value(),
                    (T)hard_threshold.value_or(0.0), rmax.data_ptr<T>(), ridx.data_ptr<int32_t>(),
                    removed.data_ptr<uint8_t>(), removed_rows.data_ptr<uint8_t>(), bt.data_ptr<T>(), bi.data_ptr<int32_t>(),
                    valid.data_ptr<uint8_t>());
    cuda::launch_1d(encode_kernel<T>, B * P, stream, g, labels.const_data_ptr<int64_t>(), lm.const_data_ptr<T>(),
                    pp, B, G, P, NL, bt.const_data_ptr<T>(), bi.const_data_ptr<int32_t>(),
                    valid.const_data_ptr<uint8_t>(), (T)var0, (T)var1, (T)pos_threshold, (T)neg_threshold,
                    loc.data_ptr<T>(), conf.data_ptr<int64_t>(), landm.data_ptr<T>(), ov.data_ptr<T>(),
                    idx.data_ptr<int64_t>());
  });
  return {loc, conf, landm, ov, idx};
}

}  // namespace
}  // namespace priors
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("prior_nms", &fastops::priors::prior_nms_cuda);
  m.impl("match_priors", &fastops::priors::match_priors_cuda);
}
