// Prior-box family: CPU kernels. One image per task of at::parallel_for (results do not depend on the thread
// count); the IoU scans over priors are branch-free loops over structure-of-arrays priors, which the compiler
// vectorises. prior_nms calls the NMS family's op (fastops::nms) through the dispatcher for the suppression itself.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "keypoints_vec.h"
#include "priors/priors.h"

namespace fastops {
namespace priors {
namespace {

using at::Tensor;

// ---- prior_nms ------------------------------------------------------------------------------------------------

template <typename T>
struct Cand {
  std::vector<T> box, landm, score;  // decoded, top-k, in descending score order
};

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor> prior_nms_impl(const Tensor& loc_, const Tensor& scores_,
                                                          const Tensor& landms_, const Tensor& priors_, double var0,
                                                          double var1, double scale_x, double scale_y,
                                                          double score_threshold, double iou_threshold,
                                                          int64_t top_k, int64_t max_det, bool pad, bool plus_one) {
  const Tensor loc = loc_.contiguous(), scores = scores_.contiguous(), landms = landms_.contiguous(),
               pri = priors_.contiguous();
  const int64_t B = loc.size(0), P = loc.size(1), NL = landms.size(2);
  const T* lp = loc.data_ptr<T>();
  const T* sp = scores.data_ptr<T>();
  const T* mp = landms.data_ptr<T>();
  const T* pp = pri.data_ptr<T>();
  const T v0 = (T)var0, v1 = (T)var1, sx = (T)scale_x, sy = (T)scale_y, thr = (T)score_threshold;
  std::vector<Cand<T>> cands((size_t)B);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<int32_t> idx;
    for (int64_t b = b0; b < b1; ++b) {
      const T* s = sp + b * P;
      idx.clear();
      for (int64_t p = 0; p < P; ++p) {
        if (s[p] > thr) idx.push_back((int32_t)p);  // NaN > thr is false: NaN scores never enter
      }
      const auto better = [s](int32_t a, int32_t c) { return s[a] > s[c] || (s[a] == s[c] && a < c); };
      const int64_t k = (top_k > 0 && top_k < (int64_t)idx.size()) ? top_k : (int64_t)idx.size();
      // the top k (a strict total order: score, then index): selection in O(P), then a sort of the k only
      if (k < (int64_t)idx.size()) std::nth_element(idx.begin(), idx.begin() + k, idx.end(), better);
      std::sort(idx.begin(), idx.begin() + k, better);
      Cand<T>& c = cands[(size_t)b];
      c.box.resize((size_t)k * 4);
      c.landm.resize((size_t)(k * NL));
      c.score.resize((size_t)k);
      for (int64_t r = 0; r < k; ++r) {
        const int64_t p = idx[(size_t)r];
        const T* pr = pp + p * 4;
        const T* l = lp + (b * P + p) * 4;
        decode_box<T>(l[0], l[1], l[2], l[3], pr[0], pr[1], pr[2], pr[3], v0, v1, sx, sy, &c.box[(size_t)r * 4]);
        const T* m = mp + (b * P + p) * NL;
        for (int64_t q = 0; q < NL; q += 2) {
          c.landm[(size_t)(r * NL + q)] = decode_landm<T>(m[q], pr[0], pr[2], v0, sx);
          c.landm[(size_t)(r * NL + q + 1)] = decode_landm<T>(m[q + 1], pr[1], pr[3], v0, sy);
        }
        c.score[(size_t)r] = s[p];
      }
      // a candidate whose box is not finite is dropped before NMS (in place, order kept)
      int64_t kept = 0;
      for (int64_t r = 0; r < k; ++r) {
        const T* bx = &c.box[(size_t)r * 4];
        if (!(std::isfinite(bx[0]) && std::isfinite(bx[1]) && std::isfinite(bx[2]) && std::isfinite(bx[3]))) continue;
        if (kept != r) {
          std::copy(bx, bx + 4, &c.box[(size_t)kept * 4]);
          std::copy(&c.landm[(size_t)(r * NL)], &c.landm[(size_t)(r * NL)] + NL, &c.landm[(size_t)(kept * NL)]);
          c.score[(size_t)kept] = c.score[(size_t)r];
        }
        ++kept;
      }
      c.box.resize((size_t)kept * 4);
      c.landm.resize((size_t)(kept * NL));
      c.score.resize((size_t)kept);
    }
  });
  // NMS per image through the NMS family's op (py_cpu_nms's "+ 1" pixel convention: x2 + 1, y2 + 1), then cut.
  const auto opts = loc.options();
  std::vector<Tensor> keeps((size_t)B);
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) {
    Cand<T>& c = cands[(size_t)b];
    const int64_t k = (int64_t)c.score.size();
    Tensor nb = at::empty({k, 4}, opts);
    T* q = nb.data_ptr<T>();
    const T one = plus_one ? T(1) : T(0);
    for (int64_t r = 0; r < k; ++r) {
      q[r * 4 + 0] = c.box[(size_t)r * 4 + 0];
      q[r * 4 + 1] = c.box[(size_t)r * 4 + 1];
      q[r * 4 + 2] = c.box[(size_t)r * 4 + 2] + one;
      q[r * 4 + 3] = c.box[(size_t)r * 4 + 3] + one;
    }
    Tensor ns = at::from_blob(c.score.data(), {k}, opts).clone();
    Tensor keep = call_nms(nb, ns, iou_threshold);
    if (max_det > 0 && keep.size(0) > max_det) keep = keep.narrow(0, 0, max_det);
    keeps[(size_t)b] = keep.contiguous();
    total += keep.size(0);
  }
  Tensor counts = at::empty({B}, opts.dtype(at::kLong));
  Tensor ob = pad ? at::zeros({B, max_det, 4}, opts) : at::empty({total, 4}, opts);
  Tensor os = pad ? at::zeros({B, max_det}, opts) : at::empty({total}, opts);
  Tensor ol = pad ? at::zeros({B, max_det, NL}, opts) : at::empty({total, NL}, opts);
  T* obp = ob.data_ptr<T>();
  T* osp = os.data_ptr<T>();
  T* olp = ol.data_ptr<T>();
  int64_t* cp = counts.data_ptr<int64_t>();
  int64_t row = 0;
  for (int64_t b = 0; b < B; ++b) {
    const Cand<T>& c = cands[(size_t)b];
    const int64_t n = keeps[(size_t)b].size(0);
    const int64_t* kp = keeps[(size_t)b].data_ptr<int64_t>();
    if (pad) row = b * max_det;
    for (int64_t r = 0; r < n; ++r, ++row) {
      const int64_t i = kp[r];
      for (int d = 0; d < 4; ++d) obp[row * 4 + d] = c.box[(size_t)(i * 4 + d)];
      osp[row] = c.score[(size_t)i];
      for (int64_t q = 0; q < NL; ++q) olp[row * NL + q] = c.landm[(size_t)(i * NL + q)];
    }
    cp[b] = n;
  }
  return {ob, os, ol, counts};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> prior_nms_cpu(const Tensor& loc, const Tensor& scores,
                                                         const Tensor& landms, const Tensor& priors, double var0,
                                                         double var1, double scale_x, double scale_y,
                                                         double score_threshold, double iou_threshold,
                                                         int64_t pre_nms_top_k, int64_t max_det, bool pad,
                                                         bool plus_one) {
  check_prior_nms(loc, scores, landms, priors, max_det, pad);
  return AT_DISPATCH_FLOATING_TYPES(loc.scalar_type(), "prior_nms", [&] {
    return prior_nms_impl<scalar_t>(loc, scores, landms, priors, var0, var1, scale_x, scale_y, score_threshold,
                                    iou_threshold, pre_nms_top_k, max_det, pad, plus_one);
  });
}

// ---- match_priors ---------------------------------------------------------------------------------------------

// First maximum of row[0..n) with torch.max's rule (NaN wins, the first NaN); n > 0. Vectorised lane-wise scans
// (keypoints_vec.h): the maximum, then the first lane block holding it.
template <typename A>
int32_t first_max(const A* row, int64_t n, A& best) {
  bool nan = false;
  const A m = heatmaps::lanes_max(row, n, nan);
  if (nan) {
    const int64_t i = heatmaps::first_nan(row, n);
    best = row[i];
    return (int32_t)i;
  }
  best = m;
  return (int32_t)heatmaps::first_equal(row, n, m);
}

template <typename A>
struct PriorSoa {
  std::vector<A> x1, y1, x2, y2, area;
};

// IoU of gt box g with every prior into row[]; removed[p] (YOLACT's consumed columns) reads -1.
template <typename A>
void iou_row(const PriorSoa<A>& s, int64_t P, const A* g, A* row, const uint8_t* removed) {
  const A gx1 = g[0], gy1 = g[1], gx2 = g[2], gy2 = g[3];
  const A ga = nms::box_area(gx1, gy1, gx2, gy2);
  const A* x1 = s.x1.data();
  const A* y1 = s.y1.data();
  const A* x2 = s.x2.data();
  const A* y2 = s.y2.data();
  const A* ar = s.area.data();
  for (int64_t p = 0; p < P; ++p) row[p] = nms::iou(gx1, gy1, gx2, gy2, ga, x1[p], y1[p], x2[p], y2[p], ar[p]);
  if (removed != nullptr) {
    for (int64_t p = 0; p < P; ++p) row[p] = removed[p] ? A(-1) : row[p];
  }
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> match_impl(const Tensor& gt_, const Tensor& labels_,
                                                              const Tensor& landms_, const Tensor& counts_,
                                                              const Tensor& priors_, double pos_threshold,
                                                              double neg_threshold, double var0, double var1,
                                                              int64_t mode, c10::optional<double> hard) {
  const Tensor gt = gt_.contiguous(), labels = labels_.contiguous(), landms = landms_.contiguous(),
               counts = counts_.contiguous(), pri = priors_.contiguous();
  const int64_t B = gt.size(0), G = gt.size(1), NL = landms.size(2), P = pri.size(0);
  const auto opts = gt.options();
  Tensor loc_t = at::zeros({B, P, 4}, opts), landm_t = at::zeros({B, P, NL}, opts), ov_t = at::zeros({B, P}, opts);
  Tensor conf_t = at::zeros({B, P}, opts.dtype(at::kLong)), idx_t = at::full({B, P}, -1, opts.dtype(at::kLong));
  const T* gp = gt.data_ptr<T>();
  const int64_t* lbp = labels.data_ptr<int64_t>();
  const T* lmp = landms.data_ptr<T>();
  const int64_t* cp = counts.data_ptr<int64_t>();
  const T* pp = pri.data_ptr<T>();
  T* locp = loc_t.data_ptr<T>();
  T* landp = landm_t.data_ptr<T>();
  T* ovp = ov_t.data_ptr<T>();
  int64_t* confp = conf_t.data_ptr<int64_t>();
  int64_t* idxp = idx_t.data_ptr<int64_t>();
  PriorSoa<T> soa;
  for (auto* v : {&soa.x1, &soa.y1, &soa.x2, &soa.y2, &soa.area}) v->resize((size_t)P);
  for (int64_t p = 0; p < P; ++p) {
    T f[4];
    point_form<T>(pp[p * 4], pp[p * 4 + 1], pp[p * 4 + 2], pp[p * 4 + 3], f);
    soa.x1[p] = f[0];
    soa.y1[p] = f[1];
    soa.x2[p] = f[2];
    soa.y2[p] = f[3];
    soa.area[p] = nms::box_area(f[0], f[1], f[2], f[3]);
  }
  const T v0 = (T)var0, v1 = (T)var1, pos = (T)pos_threshold, neg = (T)neg_threshold;
  const T hard_thr = hard.has_value() ? (T)*hard : T(0);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> bt((size_t)P), row((size_t)P);
    std::vector<int32_t> bi((size_t)P);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = cp[b];
      if (n == 0 || P == 0) continue;
      const T* g = gp + b * G * 4;
      std::vector<T> rmax((size_t)n);
      std::vector<int32_t> ridx((size_t)n);
      for (int64_t j = 0; j < n; ++j) {
        iou_row<T>(soa, P, g + j * 4, row.data(), nullptr);
        if (j == 0) {
          std::copy(row.begin(), row.end(), bt.begin());
          std::fill(bi.begin(), bi.end(), 0);
        } else {
          T* btp = bt.data();
          int32_t* bip = bi.data();
          const T* rp = row.data();
          const int32_t jj = (int32_t)j;
          for (int64_t p = 0; p < P; ++p) {
            const bool w = max_wins(rp[p], btp[p]);
            btp[p] = w ? rp[p] : btp[p];
            bip[p] = w ? jj : bip[p];
          }
        }
        ridx[(size_t)j] = first_max(row.data(), P, rmax[(size_t)j]);
      }
      if (mode == kModeSsd) {
        bool any = false;
        for (int64_t j = 0; j < n; ++j) {
          const bool valid = !hard.has_value() || rmax[(size_t)j] >= hard_thr;
          if (valid) {
            bt[(size_t)ridx[(size_t)j]] = T(2);
            any = true;
          }
        }
        if (!any) continue;  // no (valid) gt: the original zeroes loc_t and conf_t
        for (int64_t j = 0; j < n; ++j) bi[(size_t)ridx[(size_t)j]] = (int32_t)j;
      } else {
        // YOLACT: repeatedly take the best (gt, prior) pair left (first maximum of the row maxima), force it,
        // and remove its row and column (set to -1). Only rows whose maximum sat in the removed column change.
        std::vector<uint8_t> removed((size_t)P, 0), gone((size_t)n, 0);
        for (int64_t it = 0; it < n; ++it) {
          T m;
          const int32_t j = first_max(rmax.data(), n, m);
          const int32_t i = ridx[(size_t)j];
          removed[(size_t)i] = 1;
          gone[(size_t)j] = 1;
          rmax[(size_t)j] = T(-1);
          ridx[(size_t)j] = 0;
          for (int64_t r = 0; r < n; ++r) {
            if (!gone[(size_t)r] && ridx[(size_t)r] == i) {
              iou_row<T>(soa, P, g + r * 4, row.data(), removed.data());
              ridx[(size_t)r] = first_max(row.data(), P, rmax[(size_t)r]);
            }
          }
          bt[(size_t)i] = T(2);
          bi[(size_t)i] = j;
        }
      }
      const int64_t* lab = lbp + b * G;
      const T* lm = lmp + b * G * NL;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t j = bi[(size_t)p];
        const T* gj = g + j * 4;
        const T* pr = pp + p * 4;
        const int64_t o = b * P + p;
        encode_box<T>(gj[0], gj[1], gj[2], gj[3], pr[0], pr[1], pr[2], pr[3], v0, v1, locp + o * 4);
        for (int64_t q = 0; q < NL; q += 2) {
          landp[o * NL + q] = encode_landm<T>(lm[j * NL + q], pr[0], pr[2], v0);
          landp[o * NL + q + 1] = encode_landm<T>(lm[j * NL + q + 1], pr[1], pr[3], v0);
        }
        confp[o] = conf_of<T>(lab[j], bt[(size_t)p], pos, neg);
        ovp[o] = bt[(size_t)p];
        idxp[o] = j;
      }
    }
  });
  return {loc_t, conf_t, landm_t, ov_t, idx_t};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> match_priors_cpu(
    const Tensor& gt_boxes, const Tensor& gt_labels, const Tensor& gt_landms, const Tensor& counts,
    const Tensor& priors, double pos_threshold, double neg_threshold, double var0, double var1,
    c10::string_view mode, c10::optional<double> hard_threshold) {
  const int64_t code = check_match(gt_boxes, gt_labels, gt_landms, counts, priors, mode);
  return AT_DISPATCH_FLOATING_TYPES(gt_boxes.scalar_type(), "match_priors", [&] {
    return match_impl<scalar_t>(gt_boxes, gt_labels, gt_landms, counts, priors, pos_threshold, neg_threshold, var0,
                                var1, code, hard_threshold);
  });
}

}  // namespace
}  // namespace priors
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("prior_nms", &fastops::priors::prior_nms_cpu);
  m.impl("match_priors", &fastops::priors::match_priors_cpu);
}
