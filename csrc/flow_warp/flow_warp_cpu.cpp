// flow_warp CPU forward (the backward is flow_warp_backward_cpu.cpp; schemas and checks flow_warp.cpp).
//
// Parallel over (batch, row) pairs (B = 1 video frames still use every thread). channels_last input is read
// contiguously (one vector of C channels per tap); NCHW input is read plane by plane with a tile of rows' taps
// precomputed once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "avx2_transpose.h"
#include "cpu_memory.h"
#include "flow_warp/flow_warp_cpu.h"

namespace fastops {
namespace flow_warp {
namespace {

using at::Tensor;
using namespace cpu;

#if defined(__AVX2__) && defined(__FMA__)
// NCHW float32 with contiguous rows, blocks of 8 channels: the source rows that the tile's taps reach are copied
// channel-interleaved into `rows` ([row][x][8 channels], 8 x 8 transposes), so a tap is one 8-channel vector load
// and a pixel costs 4 FMAs per 8 channels instead of 8 scalar gathers per channel; 8 pixels' results are transposed
// back to the 8 output planes. The operations per element and their order are the scalar loop's, so results are
// bit for bit the same. Pixels with a tap outside the map (`so` = 0 for them) are recomputed by fix_edges(c0, c1)
// after each block, while the block's output is in cache. Returns the number of channels done (a multiple of 8).
template <typename EdgeFix>
int64_t forward_tile_channels8(const float* inb, int64_t sC, float* outt, int64_t oC, int64_t C, int64_t W,
                               int64_t ymin, int64_t ymax, int64_t n, const TapTable<float>& tab,
                               const int32_t* so, std::vector<float>& rows, const EdgeFix& fix_edges) {
  const int64_t R = ymax - ymin + 1;
  rows.resize(R * W * 8);
  float* __restrict__ rw = rows.data();
  const int32_t *s00 = so, *s01 = so + n, *s10 = so + 2 * n, *s11 = so + 3 * n;
  const int64_t tn = tab.n;  // the table's stride between taps (n: this tile's pixels, at most tn)
  const float *v00 = tab.w.data(), *v01 = v00 + tn, *v10 = v00 + 2 * tn, *v11 = v00 + 3 * tn;
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    const float* src = inb + c * sC + ymin * W;  // rows ymin..ymax are contiguous in each plane
    __m256 v[8];
    const int64_t RW = R * W;
    int64_t q = 0;
    for (; q + 8 <= RW; q += 8) {
      load_tile(src + q, sC, v);  // v[j]: the 8 channels at source position q + j
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(rw + (q + j) * 8, v[j]);
    }
    for (; q < RW; ++q) {
      for (int k = 0; k < 8; ++k) rw[q * 8 + k] = src[k * sC + q];
    }
    int64_t p = 0;
    for (; p + 8 <= n; p += 8) {
      for (int j = 0; j < 8; ++j) {
        const int64_t i = p + j;
        __m256 a = _mm256_mul_ps(_mm256_broadcast_ss(v00 + i), _mm256_loadu_ps(rw + s00[i]));
        a = _mm256_fmadd_ps(_mm256_broadcast_ss(v01 + i), _mm256_loadu_ps(rw + s01[i]), a);
        a = _mm256_fmadd_ps(_mm256_broadcast_ss(v10 + i), _mm256_loadu_ps(rw + s10[i]), a);
        v[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(v11 + i), _mm256_loadu_ps(rw + s11[i]), a);
      }
      store_tile(outt + c * oC + p, oC, v);  // v[j] = pixel j's 8 channels -> 8 pixels per channel plane
    }
    for (; p < n; ++p) {
      __m256 a = _mm256_mul_ps(_mm256_broadcast_ss(v00 + p), _mm256_loadu_ps(rw + s00[p]));
      a = _mm256_fmadd_ps(_mm256_broadcast_ss(v01 + p), _mm256_loadu_ps(rw + s01[p]), a);
      a = _mm256_fmadd_ps(_mm256_broadcast_ss(v10 + p), _mm256_loadu_ps(rw + s10[p]), a);
      a = _mm256_fmadd_ps(_mm256_broadcast_ss(v11 + p), _mm256_loadu_ps(rw + s11[p]), a);
      float lanes[8];
      _mm256_storeu_ps(lanes, a);
      for (int k = 0; k < 8; ++k) outt[(c + k) * oC + p] = lanes[k];
    }
    fix_edges(c, c + 8);
  }
  return c;
}
#endif

template <typename T>
void forward_kernel(const Tensor& input, const Tensor& flow, Tensor& out, T* mask, const Options& o) {
  using A = acc_t<T>;
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t sB = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
  const int64_t oB = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
  const int64_t fB = flow.stride(0), fC = flow.stride(1), fH = flow.stride(2), fW = flow.stride(3);
  const T* in = input.const_data_ptr<T>();
  const T* fl = flow.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  const auto [axx, axy] = axes_of<A>(H, W, o);
  const bool cl = C > 1 && sC == 1 && oC == 1;
  if (cl) {
    // channels_last: one contiguous vector of C channels per tap.
    at::parallel_for(0, B * H, row_grain(W, C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / H, y = r % H;
        const T* inb = in + b * sB;
        const T* flr = fl + b * fB + y * fH;
        for (int64_t x = 0; x < W; ++x) {
          Sample<A> s;
          sample_pixel<A>(x, y, A(flr[x * fW]), A(flr[x * fW + fC]), axx, axy, H, W, o.border, s);
          if (mask) mask[(b * H + y) * W + x] = T(s.valid ? 1 : 0);
          T* __restrict__ dst = op + b * oB + y * oH + x * oW;
          if (!s.all) {  // a tap outside the map: read only the in-map taps (NaN/inf rule, flow_warp.h)
            for (int64_t c = 0; c < C; ++c) dst[c] = T(edge_value<A>(s, inb + c * sC, sH, sW));
            continue;
          }
          const T* __restrict__ p00 = inb + s.y0 * sH + s.x0 * sW;
          const T* __restrict__ p01 = inb + s.y0 * sH + s.x1 * sW;
          const T* __restrict__ p10 = inb + s.y1 * sH + s.x0 * sW;
          const T* __restrict__ p11 = inb + s.y1 * sH + s.x1 * sW;
          const A w00 = s.w00, w01 = s.w01, w10 = s.w10, w11 = s.w11;
          for (int64_t c = 0; c < C; ++c) {
            dst[c] = T(std::fma(w11, A(p11[c]), std::fma(w10, A(p10[c]), std::fma(w01, A(p01[c]), w00 * A(p00[c])))));
          }
        }
      }
    });
    return;
  }
  // NCHW (or any other strides): a tile of rows gets its taps computed once, then every channel plane is
  // gathered through them while the plane's rows under the tile stay in cache.
#if defined(__AVX2__) && defined(__FMA__)
  // The channel-block path (forward_tile_channels8) takes larger tiles: the rows it copies beyond the tile's own
  // (the flow's reach) are then a smaller share. Enough tiles remain for every thread.
  constexpr bool kVec8 = std::is_same<T, float>::value;
  const bool vec8 = kVec8 && C >= 8 && sW == 1 && sH == W && oW == 1 && oH == W;
  const int64_t TR = vec8 ? std::max(tile_rows(W), std::min<int64_t>(std::max<int64_t>(1, 16384 / W),
                                                                        (B * H + 4 * at::get_num_threads() - 1) /
                                                                            (4 * at::get_num_threads())))
                          : tile_rows(W);
#else
  const bool vec8 = false;
  const int64_t TR = tile_rows(W);
#endif
  const int64_t tiles = (H + TR - 1) / TR;
  at::parallel_for(0, B * tiles, 1, [&](int64_t t0, int64_t t1) {
    TapTable<A> tab(TR * W);
    // Pixels of the tile with a tap outside the map (near the borders): recomputed reading in-map taps only.
    std::vector<std::pair<int64_t, Sample<A>>> edge;
    std::vector<int32_t> so(vec8 ? 4 * TR * W : 0);  // forward_tile_channels8: tap offsets into its row copy
    std::vector<float> rows;
    for (int64_t t = t0; t < t1; ++t) {
      edge.clear();
      const int64_t b = t / tiles, ya = (t % tiles) * TR, yb = std::min<int64_t>(H, ya + TR);
      const int64_t n = (yb - ya) * W;
      const T* inb = in + b * sB;
      int64_t ymin = H, ymax = -1;  // source rows reached by the taps of pixels with all taps in the map
      for (int64_t y = ya; y < yb; ++y) {
        const T* flr = fl + b * fB + y * fH;
        for (int64_t x = 0; x < W; ++x) {
          Sample<A> s;
          sample_pixel<A>(x, y, A(flr[x * fW]), A(flr[x * fW + fC]), axx, axy, H, W, o.border, s);
          if (mask) mask[(b * H + y) * W + x] = T(s.valid ? 1 : 0);
          tab.set(((y - ya) * W + x), s, sH, sW, false);
          if (!s.all) {
            edge.emplace_back(y * oH + x * oW, s);
          } else if (vec8) {
            ymin = std::min(ymin, s.y0);
            ymax = std::max(ymax, s.y1);
          }
        }
      }
      const int64_t* __restrict__ q00 = tab.off.data();
      const int64_t* __restrict__ q01 = q00 + tab.n;
      const int64_t* __restrict__ q10 = q00 + 2 * tab.n;
      const int64_t* __restrict__ q11 = q00 + 3 * tab.n;
      const A* __restrict__ v00 = tab.w.data();
      const A* __restrict__ v01 = v00 + tab.n;
      const A* __restrict__ v10 = v00 + 2 * tab.n;
      const A* __restrict__ v11 = v00 + 3 * tab.n;
      // Pixels with a tap outside the map: the loops below read a clamped in-map tap at weight 0 for their out-of-map
      // taps (0 * inf = NaN there): recomputed reading in-map taps only, per channel block, while it is in cache.
      auto fix_edges = [&](int64_t c0, int64_t c1) {
        for (int64_t c2 = c0; c2 < c1; ++c2) {
          for (const auto& e : edge) op[b * oB + c2 * oC + e.first] = T(edge_value<A>(e.second, inb + c2 * sC, sH, sW));
        }
      };
      int64_t c = 0;
#if defined(__AVX2__) && defined(__FMA__)
      // The row copy must stay small enough to be cache resident (a wild flow reaches the whole map: scalar path).
      if constexpr (kVec8) {
        if (vec8 && ymax >= ymin && (ymax - ymin + 1) * W * 8 <= (int64_t(1) << 18)) {
          const int64_t base = ymin * W;
          for (int k = 0; k < 4; ++k) {
            const int64_t* off = tab.off.data() + k * tab.n;
            int32_t* dst = so.data() + k * n;
            for (int64_t p = 0; p < n; ++p) dst[p] = (int32_t)((off[p] - base) * 8);
            // Border pixels' taps may lie outside the copied rows: read row 0 instead (fix_edges redoes them).
            for (const auto& e : edge) dst[e.first - ya * W] = 0;
          }
          c = forward_tile_channels8(inb, sC, op + b * oB + ya * oH, oC, C, W, ymin, ymax, n, tab, so.data(), rows,
                                     fix_edges);
        }
      }
#endif
      // Blocks of CB channels per pixel: the pixel's taps are loaded once for CB planes.
      if (oW == 1 && oH == W) {
        constexpr int CB = 8;
        for (; c + CB <= C; c += CB) {
          const T* pc[CB];
          T* dst[CB];
          for (int k = 0; k < CB; ++k) {
            pc[k] = inb + (c + k) * sC;
            dst[k] = op + b * oB + (c + k) * oC + ya * oH;
          }
          for (int64_t p = 0; p < n; ++p) {
            const int64_t a00 = q00[p], a01 = q01[p], a10 = q10[p], a11 = q11[p];
            const A w00 = v00[p], w01 = v01[p], w10 = v10[p], w11 = v11[p];
            for (int k = 0; k < CB; ++k) {
              const T* __restrict__ q = pc[k];
              // Fused multiply-adds (the build disables contraction): 4 instead of 7 operations per element.
              dst[k][p] = T(std::fma(w11, A(q[a11]), std::fma(w10, A(q[a10]), std::fma(w01, A(q[a01]),
                                                                                   w00 * A(q[a00])))));
            }
          }
          fix_edges(c, c + CB);
        }
      }
      for (; c < C; ++c) {
        const T* __restrict__ pc = inb + c * sC;
        for (int64_t y = ya; y < yb; ++y) {
          T* dst = op + b * oB + c * oC + y * oH;
          const int64_t p0 = (y - ya) * W;
          for (int64_t x = 0; x < W; ++x) {
            const int64_t p = p0 + x;
            dst[x * oW] = T(v00[p] * A(pc[q00[p]]) + v01[p] * A(pc[q01[p]]) + v10[p] * A(pc[q10[p]]) +
                            v11[p] * A(pc[q11[p]]));
          }
        }
        fix_edges(c, c + 1);
      }
    }
  });
}

std::tuple<Tensor, Tensor> flow_warp_cpu(const Tensor& input, const Tensor& flow, c10::string_view padding_mode,
                                         bool align_corners, c10::string_view units, bool return_mask) {
  auto [o, out, mask] = prepare_forward(input, flow, padding_mode, align_corners, units, return_mask);
  if (input.size(0) * input.size(2) * input.size(3) == 0) return {out, mask};
  // A large output (every element is written) on a cached block (cpu_memory::empty_cached): first-touch faults of
  // 4 kB pages cost ~30 ms per 58 MB here, as much as the kernel's own work, and whether the heap reuses a block
  // below glibc's 32 MB mmap threshold depended on the process's allocation history (one bench row 10.7 ms in
  // one run, 34.7 ms in the next).
  out = cpu_memory::empty_cached_like(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_cpu", [&] {
    forward_kernel<scalar_t>(input, flow, out, return_mask ? mask.data_ptr<scalar_t>() : nullptr, o);
  });
  return {out, mask};
}

}  // namespace
}  // namespace flow_warp
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("flow_warp", &fastops::flow_warp::flow_warp_cpu); }
