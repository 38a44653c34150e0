// flow_warp CPU backward. The flow gradient is a per-pixel reduction over channels (parallel over rows); the
// input gradient is a scatter, made deterministic by giving each thread its own channels (each element of the
// gradient is accumulated in the same pixel order whatever the thread count), into a channels_last float
// workspace so that the scatter is a vector add per tap.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "avx2_transpose.h"
#include "cpu_memory.h"
#include "flow_warp/flow_warp_cpu.h"

namespace fastops {
namespace flow_warp {
namespace {

using at::Tensor;
using namespace cpu;

// d loss / d flow: per pixel, sum over channels of grad * d out / d position.
template <typename T>
void grad_flow_kernel(const Tensor& grad, const Tensor& input, const Tensor& flow, Tensor& gflow,
                      const Options& o) {
  using A = acc_t<T>;
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t sB = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
  const int64_t gB = grad.stride(0), gC = grad.stride(1), gH = grad.stride(2), gW = grad.stride(3);
  const int64_t fB = flow.stride(0), fC = flow.stride(1), fH = flow.stride(2), fW = flow.stride(3);
  const int64_t rB = gflow.stride(0), rC = gflow.stride(1), rH = gflow.stride(2), rW = gflow.stride(3);
  const T* in = input.const_data_ptr<T>();
  const T* gp = grad.const_data_ptr<T>();
  const T* fl = flow.const_data_ptr<T>();
  T* res = gflow.data_ptr<T>();
  const auto [axx, axy] = axes_of<A>(H, W, o);
  const bool cl = C > 1 && sC == 1;
  if (cl) {
    constexpr int L = 16;  // independent partial sums: a vectorisable, deterministic channel reduction
    at::parallel_for(0, B * H, row_grain(W, C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / H, y = r % H;
        const T* inb = in + b * sB;
        const T* flr = fl + b * fB + y * fH;
        const T* gr = gp + b * gB + y * gH;
        for (int64_t x = 0; x < W; ++x) {
          Sample<A> s;
          sample_pixel<A>(x, y, A(flr[x * fW]), A(flr[x * fW + fC]), axx, axy, H, W, o.border, s);
          A au[L], av[L];
          for (int j = 0; j < L; ++j) au[j] = av[j] = A(0);
          const T* __restrict__ p00 = inb + s.y0 * sH + s.x0 * sW;
          const T* __restrict__ p01 = inb + s.y0 * sH + s.x1 * sW;
          const T* __restrict__ p10 = inb + s.y1 * sH + s.x0 * sW;
          const T* __restrict__ p11 = inb + s.y1 * sH + s.x1 * sW;
          const T* __restrict__ g = gr + x * gW;
          if (s.any) {
            int64_t c = 0;
            if (gC == 1) {
              for (; c + L <= C; c += L) {
                for (int j = 0; j < L; ++j) {
                  const A i00 = A(p00[c + j]), i01 = A(p01[c + j]), i10 = A(p10[c + j]), i11 = A(p11[c + j]);
                  const A gv = A(g[c + j]);
                  au[j] += gv * (s.dx00 * i00 + s.dx01 * i01 + s.dx10 * i10 + s.dx11 * i11);
                  av[j] += gv * (s.dy00 * i00 + s.dy01 * i01 + s.dy10 * i10 + s.dy11 * i11);
                }
              }
            }
            for (int64_t j = 0; c < C; ++c, j = (j + 1) % L) {
              const A i00 = A(p00[c]), i01 = A(p01[c]), i10 = A(p10[c]), i11 = A(p11[c]);
              const A gv = A(g[c * gC]);
              au[j] += gv * (s.dx00 * i00 + s.dx01 * i01 + s.dx10 * i10 + s.dx11 * i11);
              av[j] += gv * (s.dy00 * i00 + s.dy01 * i01 + s.dy10 * i10 + s.dy11 * i11);
            }
          }
          A tu = A(0), tv = A(0);
          for (int j = 0; j < L; ++j) {
            tu += au[j];
            tv += av[j];
          }
          T* dst = res + b * rB + y * rH + x * rW;
          dst[0] = T(tu * s.gx);
          dst[rC] = T(tv * s.gy);
        }
      }
    });
    return;
  }
  const int64_t TR = tile_rows(W);
  const int64_t tiles = (H + TR - 1) / TR;
  at::parallel_for(0, B * tiles, 1, [&](int64_t t0, int64_t t1) {
    TapTable<A> tab(TR * W, true);
    std::vector<A> su(TR * W), sv(TR * W), gxs(TR * W), gys(TR * W);
    std::vector<uint8_t> any(TR * W);  // the sample has a tap inside the map (else its gradient is exactly 0)
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / tiles, ya = (t % tiles) * TR, yb = std::min<int64_t>(H, ya + TR);
            const T* inb = in + b * sB;
      for (int64_t y = ya; y < yb; ++y) {
        const T* flr = fl + b * fB + y * fH;
        for (int64_t x = 0; x < W; ++x) {
          Sample<A> s;
          sample_pixel<A>(x, y, A(flr[x * fW]), A(flr[x * fW + fC]), axx, axy, H, W, o.border, s);
          const int64_t p = (y - ya) * W + x;
          tab.set(p, s, sH, sW, true);
          gxs[p] = s.gx;
          gys[p] = s.gy;
          any[p] = s.any;
          su[p] = A(0);
          sv[p] = A(0);
        }
      }
      const int64_t N = tab.n;
      const int64_t* __restrict__ q00 = tab.off.data();
      const int64_t* __restrict__ q01 = q00 + N;
      const int64_t* __restrict__ q10 = q00 + 2 * N;
      const int64_t* __restrict__ q11 = q00 + 3 * N;
      const A* __restrict__ dx00 = tab.w.data();
      const A* __restrict__ dx01 = dx00 + N;
      const A* __restrict__ dx10 = dx00 + 2 * N;
      const A* __restrict__ dx11 = dx00 + 3 * N;
      const A* __restrict__ dy00 = tab.d.data();
      const A* __restrict__ dy01 = dy00 + N;
      const A* __restrict__ dy10 = dy00 + 2 * N;
      const A* __restrict__ dy11 = dy00 + 3 * N;
      A* __restrict__ pu = su.data();
      A* __restrict__ pv = sv.data();
      int64_t c = 0;
      for (; c < C; ++c) {
        const T* __restrict__ pc = inb + c * sC;
        for (int64_t y = ya; y < yb; ++y) {
          const T* __restrict__ g = gp + b * gB + c * gC + y * gH;
          const int64_t p0 = (y - ya) * W;
          for (int64_t x = 0; x < W; ++x) {
            const int64_t p = p0 + x;
            const A i00 = A(pc[q00[p]]), i01 = A(pc[q01[p]]), i10 = A(pc[q10[p]]), i11 = A(pc[q11[p]]);
            const A gv = A(g[x * gW]);
            pu[p] += gv * (dx00[p] * i00 + dx01[p] * i01 + dx10[p] * i10 + dx11[p] * i11);
            pv[p] += gv * (dy00[p] * i00 + dy01[p] * i01 + dy10[p] * i10 + dy11[p] * i11);
          }
        }
      }
      for (int64_t y = ya; y < yb; ++y) {
        T* dst = res + b * rB + y * rH;
        const int64_t p0 = (y - ya) * W;
        for (int64_t x = 0; x < W; ++x) {
          const bool a = any[p0 + x];
          dst[x * rW] = T(a ? pu[p0 + x] * gxs[p0 + x] : A(0));
          dst[x * rW + rC] = T(a ? pv[p0 + x] * gys[p0 + x] : A(0));
        }
      }
    }
  });
}

// d loss / d input: a scatter. Threads own disjoint (batch, channel) ranges, and every element is accumulated in
// the same pixel order whatever the thread count: deterministic. `ws` is an accumulator with strides
// (wB, wC, wH, wW): channels_last (a vector add per tap) or NCHW planes (a block of channels per pixel).
template <typename T>
void grad_input_kernel(const Tensor& grad, const Tensor& flow, acc_t<T>* ws, int64_t C, int64_t wB, int64_t wC,
                       int64_t wH, int64_t wW, const Options& o) {
  using A = acc_t<T>;
  const int64_t B = grad.size(0), H = grad.size(2), W = grad.size(3);
  const int64_t gB = grad.stride(0), gC = grad.stride(1), gH = grad.stride(2), gW = grad.stride(3);
  const int64_t fB = flow.stride(0), fC = flow.stride(1), fH = flow.stride(2), fW = flow.stride(3);
  const T* gp = grad.const_data_ptr<T>();
  const T* fl = flow.const_data_ptr<T>();
  const auto [axx, axy] = axes_of<A>(H, W, o);
  // channels_last accumulator: big channel ranges (vector adds); NCHW: blocks of 16 planes per pass.
  const int64_t block = wC == 1 ? C : 16;
  const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(C, 16));
  at::parallel_for(0, B * C, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t b = i / C, c0 = i % C;
      const int64_t n = std::min<int64_t>({C - c0, i1 - i, block});
      i += n;
      A* wsb = ws + b * wB + c0 * wC;
      for (int64_t y = 0; y < H; ++y) {
        const T* flr = fl + b * fB + y * fH;
        const T* gr = gp + b * gB + y * gH + c0 * gC;
        for (int64_t x = 0; x < W; ++x) {
          Sample<A> s;
          sample_pixel<A>(x, y, A(flr[x * fW]), A(flr[x * fW + fC]), axx, axy, H, W, o.border, s);
          if (!s.any) continue;
          A* t00 = wsb + s.y0 * wH + s.x0 * wW;
          A* t01 = wsb + s.y0 * wH + s.x1 * wW;
          A* t10 = wsb + s.y1 * wH + s.x0 * wW;
          A* t11 = wsb + s.y1 * wH + s.x1 * wW;
          const T* g = gr + x * gW;
          const A w00 = s.w00, w01 = s.w01, w10 = s.w10, w11 = s.w11;
          if (gC == 1 && wC == 1) {
            for (int64_t c = 0; c < n; ++c) {
              const A gv = A(g[c]);
              t00[c] += w00 * gv;
              t01[c] += w01 * gv;
              t10[c] += w10 * gv;
              t11[c] += w11 * gv;
            }
          } else {
            for (int64_t c = 0; c < n; ++c) {
              const A gv = A(g[c * gC]);
              t00[c * wC] += w00 * gv;
              t01[c * wC] += w01 * gv;
              t10[c * wC] += w10 * gv;
              t11[c * wC] += w11 * gv;
            }
          }
        }
      }
    }
  });
}

// dst(b, c, p) = src(b, c, p) for [B, C, P] views with any strides, in 16 x 16 (channel x pixel) tiles so that
// both a channel-major and a pixel-major side are read/written in contiguous runs (NCHW <-> channels_last).
// PyTorch's own layout conversions are several times slower than a copy on this kind of machine.
template <typename S, typename D>
void transpose_copy(const S* src, int64_t sB, int64_t sC, int64_t sP, D* dst, int64_t dB, int64_t dC, int64_t dP,
                    int64_t B, int64_t C, int64_t P) {
  constexpr int64_t TP = 64, TC = 16;  // 64 pixels x 16 channels: 256 B runs along pixels, 64 B along channels
  const int64_t pblocks = (P + TP - 1) / TP;
  const bool read_p = sP <= sC, write_c = dC <= dP;
#if defined(__AVX__)
  // float -> float between NCHW and channels_last (one side's pixels and the other's channels contiguous): 8 x 8
  // register transposes, so both sides move in 32-byte vectors; measured 3x faster than the scalar tiles below,
  // which were a third of the NCHW backward's time.
  constexpr bool f32 = std::is_same_v<S, float> && std::is_same_v<D, float>;
  const bool to_cl = sP == 1 && dC == 1, to_nchw = sC == 1 && dP == 1;
  if (f32 && C >= 8 && (to_cl || to_nchw)) {
    // As [rows][cols] -> [cols][rows] with contiguous cols: rows are channels (to_cl) or pixels (to_nchw).
    at::parallel_for(0, B * pblocks, 16, [&](int64_t i0, int64_t i1) {
      __m256 r[8];
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / pblocks, p0 = (i % pblocks) * TP;
        const int64_t np = std::min<int64_t>(TP, P - p0);
        const float* sb = reinterpret_cast<const float*>(src) + b * sB;
        float* db = reinterpret_cast<float*>(dst) + b * dB;
        const int64_t c8 = C / 8 * 8, p8 = p0 + np / 8 * 8;
        for (int64_t c0 = 0; c0 < c8; c0 += 8) {
          for (int64_t p = p0; p < p8; p += 8) {
            if (to_cl) {
              load_tile(sb + c0 * sC + p, sC, r);  // 8 channels x 8 pixels -> 8 pixels x 8 channels
              for (int k = 0; k < 8; ++k) _mm256_storeu_ps(db + (p + k) * dP + c0, r[k]);
            } else {
              load_tile(sb + p * sP + c0, sP, r);  // 8 pixels x 8 channels -> 8 channels x 8 pixels
              for (int k = 0; k < 8; ++k) _mm256_storeu_ps(db + (c0 + k) * dC + p, r[k]);
            }
          }
          for (int64_t p = p8; p < p0 + np; ++p)
            for (int64_t c = c0; c < c0 + 8; ++c) db[c * dC + p * dP] = sb[c * sC + p * sP];
        }
        for (int64_t c = c8; c < C; ++c)
          for (int64_t p = p0; p < p0 + np; ++p) db[c * dC + p * dP] = sb[c * sC + p * sP];
      }
    });
    return;
  }
#endif
  at::parallel_for(0, B * pblocks, 16, [&](int64_t i0, int64_t i1) {
    D tile[TP][TC];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / pblocks, p0 = (i % pblocks) * TP;
      const int64_t np = std::min<int64_t>(TP, P - p0);
      for (int64_t c0 = 0; c0 < C; c0 += TC) {
        const int64_t nc = std::min<int64_t>(TC, C - c0);
        // Read along the source's contiguous dim, write along the destination's.
        if (read_p) {
          for (int64_t c = 0; c < nc; ++c) {
            const S* s = src + b * sB + (c0 + c) * sC + p0 * sP;
            for (int64_t p = 0; p < np; ++p) tile[p][c] = D(s[p * sP]);
          }
        } else {
          for (int64_t p = 0; p < np; ++p) {
            const S* s = src + b * sB + c0 * sC + (p0 + p) * sP;
            for (int64_t c = 0; c < nc; ++c) tile[p][c] = D(s[c * sC]);
          }
        }
        if (write_c) {
          for (int64_t p = 0; p < np; ++p) {
            D* d = dst + b * dB + (p0 + p) * dP + c0 * dC;
            for (int64_t c = 0; c < nc; ++c) d[c * dC] = tile[p][c];
          }
        } else {
          for (int64_t c = 0; c < nc; ++c) {
            D* d = dst + b * dB + (c0 + c) * dC + p0 * dP;
            for (int64_t p = 0; p < np; ++p) d[p * dP] = tile[p][c];
          }
        }
      }
    }
  });
}

// A channels_last copy (as a logical [B, C, H, W] tensor) of an NCHW-flattenable tensor, in dtype `dt`.
Tensor to_channels_last(const Tensor& t, at::ScalarType dt) {
  const int64_t B = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
  Tensor out = cpu_memory::empty_cached({B, H, W, C}, dt, at::MemoryFormat::Contiguous).permute({0, 3, 1, 2});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "flow_warp_to_cl", [&] {
    using S = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "flow_warp_to_cl2", [&] {
      transpose_copy<S, scalar_t>(t.const_data_ptr<S>(), t.stride(0), t.stride(1), t.stride(3),
                                  out.data_ptr<scalar_t>(), out.stride(0), out.stride(1), out.stride(3), B, C, H * W);
    });
  });
  return out;
}

// Whether the H and W dims of t flatten into one pixel dim (stride of H = W * stride of W).
bool pixels_flat(const Tensor& t) { return t.size(2) <= 1 || t.stride(2) == t.size(3) * t.stride(3); }

std::tuple<Tensor, Tensor> flow_warp_backward_cpu(const Tensor& grad_output, const Tensor& input,
                                                  const Tensor& flow, c10::string_view padding_mode,
                                                  bool align_corners, c10::string_view units, bool need_input,
                                                  bool need_flow) {
  auto [o, gin, gflow] =
      prepare_backward(grad_output, input, flow, padding_mode, align_corners, units, need_input, need_flow);
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  // The large input gradient on a cached block too (as the forward's output, flow_warp_cpu.cpp); both layouts
  // are filled completely below.
  if (need_input) gin = cpu_memory::empty_cached_like(gin);
  if (B * H * W == 0 || C == 0) {
    if (need_flow) gflow.zero_();
    return {gin, gflow};
  }
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool in_cl = C > 1 && input.stride(1) == 1;
  // Channel-planar (NCHW) inputs are processed in channels_last: the flow gradient's channel reduction and the
  // input gradient's scatter then work on contiguous vectors of channels instead of scalar gathers/RMWs into
  // C separate planes. The layout changes are tiled copies (a few ms); the scatter accumulates straight into
  // a channels_last float workspace, copied into the NCHW gradient at the end.
  const bool via_cl = !in_cl && C > 1 && pixels_flat(input) && pixels_flat(grad_output);
  Tensor g = grad_output;
  if (via_cl && (grad_output.stride(1) != 1 || C == 1)) g = to_channels_last(grad_output, grad_output.scalar_type());
  if (need_flow) {
    const Tensor x = via_cl ? to_channels_last(input, input.scalar_type()) : input;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_grad_flow", [&] {
      grad_flow_kernel<scalar_t>(via_cl ? g : grad_output, x, flow, gflow, o);
    });
  }
  if (need_input) {
    const bool cl = in_cl || via_cl;
    Tensor ws;
    if (gin.scalar_type() == acc && in_cl && gin.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      ws = gin;
      ws.zero_();
    } else if (gin.scalar_type() == acc && !cl && gin.is_contiguous()) {
      ws = gin;
      ws.zero_();
    } else {
      ws = cl ? cpu_memory::empty_cached({B, H, W, C}, acc, at::MemoryFormat::Contiguous).permute({0, 3, 1, 2})
              : cpu_memory::empty_cached({B, C, H, W}, acc, at::MemoryFormat::Contiguous);
      ws.zero_();
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_grad_input", [&] {
      grad_input_kernel<scalar_t>(via_cl ? g : grad_output, flow, ws.data_ptr<acc_t<scalar_t>>(), C, ws.stride(0),
                                  ws.stride(1), ws.stride(2), ws.stride(3), o);
    });
    if (!ws.is_same(gin)) {
      if (via_cl && pixels_flat(gin) && gin.stride(3) == 1) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "flow_warp_from_cl", [&] {
          using S = acc_t<scalar_t>;
          transpose_copy<S, scalar_t>(ws.const_data_ptr<S>(), ws.stride(0), ws.stride(1), ws.stride(3),
                                      gin.data_ptr<scalar_t>(), gin.stride(0), gin.stride(1), gin.stride(3), B, C,
                                      H * W);
        });
      } else {
        gin.copy_(ws);
      }
    }
  }
  return {gin, gflow};
}

}  // namespace
}  // namespace flow_warp
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("_flow_warp_backward", &fastops::flow_warp::flow_warp_backward_cpu); }
