// Keypoint R-CNN (roi_heatmaps_to_keypoints): the per-element math shared by the CPU and CUDA kernels, and the
// host checks both call (defined in keypoint_rcnn.cpp). docs/keypoint_rcnn.md.
//
// torchvision's heatmaps_to_keypoints upsamples each RoI's [K, H, W] maps to ceil(box) with ATen's bicubic
// kernel (A = -0.75, align_corners=False, clamped taps) and takes the first maximum. ATen computes every output
// pixel as sum_j wy_j * (sum_i wx_i * map[y_j, x_i]): the inner (horizontal) sums do not depend on the output row,
// so they are computed once per input row here and combined 4 rows at a time, with ATen's exact float evaluation
// order. That order is what the compiler made of ATen's source: in its FMA-capable (AVX2/AVX-512) CPU kernels
// some multiply-adds are fused (checked bit for bit against torch 2.14's CPU kernel in
// tests/test_keypoint_rcnn.py), in its baseline (DEFAULT) kernels none is. FASTOPS_KP_FUSED follows the same
// split: our AVX2 copy (compiled with __FMA__, chosen when torch runs its AVX2 kernels) fuses where ATen's does,
// the baseline copy fuses nothing (-ffp-contract=off everywhere), CUDA fuses like the AVX2 copy.
//
// Everything here is in an anonymous namespace: each per-ISA copy of the CPU kernel file keeps its own (a shared
// out-of-line copy would make the AVX2 kernels use the baseline arithmetic).
#pragma once

#include <stdint.h>

#include <cmath>

#include "common.h"

namespace fastops {
namespace kprcnn {
namespace {

// Largest RoI side ceil(x2 - x1), ceil(y2 - y1) accepted (torchvision would allocate a [K, h, w] map per RoI).
constexpr int64_t kMaxRoiSide = int64_t(1) << 16;

// a * b, a + b (float or double) and a * b + c, each rounded as ATen's CPU kernel rounds it (see the top of this
// file). On the host, -ffp-contract=off keeps a * b + c two roundings; nvcc would contract it, hence the _rn
// intrinsics.
#if defined(__CUDA_ARCH__)
template <typename A>
FASTOPS_HD A mul_(A a, A b) { if constexpr (sizeof(A) == 4) return __fmul_rn(a, b); else return __dmul_rn(a, b); }
template <typename A>
FASTOPS_HD A add_(A a, A b) { if constexpr (sizeof(A) == 4) return __fadd_rn(a, b); else return __dadd_rn(a, b); }
#else
template <typename A>
FASTOPS_HD A mul_(A a, A b) { return a * b; }
template <typename A>
FASTOPS_HD A add_(A a, A b) { return a + b; }
#endif
// a * b + c where ATen's FMA-capable kernels fuse it, two roundings where they cannot.
template <typename A>
FASTOPS_HD A madd_(A a, A b, A c) {
#if defined(__CUDA_ARCH__)
  return fma(a, b, c);
#elif defined(__FMA__)
  return std::fma(a, b, c);  // one vfmadd (std::fma(float...) is fmaf: a float fma, not a double one)
#else
  return add_(mul_(a, b), c);
#endif
}

// Keys' cubic convolution, A = -0.75, as ATen writes it: ((A + 2) x - (A + 3)) x x + 1 for |x| <= 1 and
// ((A x - 5A) x + 8A) x - 4A for 1 < |x| < 2 (the compiler fused the inner multiply-adds, not the last one).
template <typename A>
FASTOPS_HD A cubic1(A x) {
  const A a = A(-0.75);
  const A t = madd_(a + A(2), x, -(a + A(3)));
  return add_(mul_(mul_(t, x), x), A(1));
}

template <typename A>
FASTOPS_HD A cubic2(A x) {
  const A a = A(-0.75);
  A t = madd_(a, x, -(A(5) * a));
  t = madd_(t, x, A(8) * a);
  return add_(mul_(t, x), -(A(4) * a));
}

// The 4 taps (clamped source indices) and weights of output index `o` when resizing `in` samples to `out`
// (align_corners=False): ATen's area_pixel_compute_source_index + guard_index_and_lambda +
// get_cubic_upsample_coefficients. `x + 1.0` and `1.0 - t` are double expressions in ATen's source.
template <typename A>
FASTOPS_HD void cubic_taps(int64_t in, int64_t out, int64_t o, int32_t* idx, A* w) {
  const A scale = (A)in / (A)out;
  const A real = madd_(scale, add_((A)o, A(0.5)), A(-0.5));
  int64_t i0 = (int64_t)floor(real);
  if (i0 > in - 1) i0 = in - 1;
  A t = real - (A)i0;
  t = t < A(0) ? A(0) : t;
  t = t > A(1) ? A(1) : t;
  const A t2 = (A)(1.0 - (double)t);
  w[0] = cubic2((A)((double)t + 1.0));
  w[1] = cubic1(t);
  w[2] = cubic1(t2);
  w[3] = cubic2((A)((double)t2 + 1.0));
  for (int j = 0; j < 4; ++j) {
    int64_t s = i0 - 1 + j;
    s = s < 0 ? 0 : (s > in - 1 ? in - 1 : s);
    idx[j] = (int32_t)s;
  }
}

// sum_j v_j w_j in ATen's order: fma(v0, w0, v1 w1), then + v2 w2, then + v3 w3 (each fused where ATen's is).
template <typename A>
FASTOPS_HD A taps4(A v0, A v1, A v2, A v3, A w0, A w1, A w2, A w3) {
  A t = madd_(v0, w0, mul_(v1, w1));
  t = madd_(v2, w2, t);
  return madd_(v3, w3, t);
}

// First-maximum order of torch.argmax over a flattened map: a NaN beats every number and the first NaN wins;
// otherwise the larger value, and on a tie the lower flat index. `bi < 0`: no candidate yet.
template <typename A>
FASTOPS_HD bool better(A v, int64_t i, A bv, int64_t bi) {
  if (bi < 0) return true;
  const bool vn = v != v, bn = bv != bv;
  if (bn) return vn && i < bi;
  if (vn) return true;
  return v > bv || (v == bv && i < bi);
}

// Per-RoI geometry in the RoI dtype G, as torchvision: w = max(x2 - x1, 1), map width ceil(w), correction
// w / ceil(w); the correction and the offset then enter float32 arithmetic (torchvision's 0-dim tensors).
struct RoiGeom {
  int64_t rw, rh;  // upsampled map size (ceil)
  float cw, ch;    // width / height corrections
  float ox, oy;    // box corner
};

template <typename G>
FASTOPS_HD RoiGeom roi_geometry(const G* box) {
  RoiGeom g;
  G w = box[2] - box[0], h = box[3] - box[1];
  w = w < G(1) ? G(1) : w;
  h = h < G(1) ? G(1) : h;
  g.rw = (int64_t)ceil(w);
  g.rh = (int64_t)ceil(h);
  g.cw = (float)(w / (G)g.rw);
  g.ch = (float)(h / (G)g.rh);
  g.ox = (float)box[0];
  g.oy = (float)box[1];
  return g;
}

// (d + 0.5) * correction + offset, float32, unfused (torchvision's three tensor ops).
FASTOPS_HD float keypoint_coord(int64_t d, float corr, float off) {
  return add_(mul_(add_((float)d, 0.5f), corr), off);
}

}  // namespace
}  // namespace kprcnn
}  // namespace fastops

// host side (parsed by nvcc in both passes; used only by host code)
#include <ATen/core/Tensor.h>

namespace fastops {
namespace kprcnn {

// Shapes, dtypes, devices; finite RoIs whose ceil'd sides are <= kMaxRoiSide (reads rois: call before launching).
void check_heatmaps_to_keypoints(const at::Tensor& maps, const at::Tensor& rois);

}  // namespace kprcnn
}  // namespace fastops
