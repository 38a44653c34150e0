// NMS family: CUDA kernels (compiled here, never run on this machine: no GPU). Schemas and the host checks every
// entry point calls: nms.cpp; per-pair math: nms.h; launch helpers: cuda_utils.cuh.
//
// Sorting, gathers of small index tensors and the final compactions use ATen ops on the current stream (no host
// synchronisation). The only host syncs are the ones a data-dependent output size forces: one `.item()` (or
// nonzero) per call for nms / batched_nms / fast_nms / soft_nms / multiclass_nms(pad=False);
// multiclass_nms(pad=True) is completely sync-free (static output shape).
//
// nms / batched_nms: the IoU bitmask is built and reduced in row chunks (at most ~64 MB of mask live at a time,
// instead of torchvision's N x N/64 words: 1.25 GB at 100k boxes); the reduction keeps the removed bits of
// the whole problem and resolves the 64 boxes of a row block from their diagonal word in shared memory, so it
// needs two block barriers per 64 boxes instead of one per box. batched_nms groups boxes by class (stable sorts)
// and only computes / reduces the tiles whose columns reach into the classes of the tile's rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "cuda_utils.cuh"
#include "nms/nms.h"

namespace fastops {
namespace nms {
namespace {

constexpr int kTile = 64;
constexpr int kReduceThreads = 256;
constexpr int kBlock = cuda::kThreads;  // block size of the one-block kernels (soft_nms, per-class greedy)
constexpr int64_t kMaskChunkBytes = int64_t(64) << 20;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- gather: boxes (any dtype / strides) in a given order -> contiguous [n, 4] in the compute type ---------------
// Traffic: n * (4 * sizeof(T) read, indirect) + n * 16 B written (float): 20k boxes = 0.6 MB, ~0.2 us of H100
// bandwidth (launch-latency bound).
template <typename T, typename A>
__global__ void gather_boxes_kernel(const T* __restrict__ boxes, int64_t s0, int64_t s1,
                                    const int64_t* __restrict__ order, int64_t n, A* __restrict__ out) {
  FASTOPS_KERNEL_LOOP(i, n) {
    const T* p = boxes + order[i] * s0;
#pragma unroll
    for (int k = 0; k < 4; ++k) out[i * 4 + k] = static_cast<A>(p[k * s1]);
  }
}

// ---- IoU bitmask tile ---------------------------------------------------------------------------------------------
// One 64 x 64 tile per block, rows [row0, row0 + 64) of the chunk, bit k of word (i, cb) = box cb*64+k is later
// than i, (same class when `cls`), and IoU > thr. Tiles below the diagonal, and (batched) tiles whose columns start
// after the end of the class of the tile's last row, are skipped.
// Traffic: per computed tile 2 x 64 boxes (1 KB, L2-resident) in, 512 B of mask out; nms over 20k boxes writes
// N^2/128 B = 3.1 MB of mask (~1 us at H100 bandwidth); the 200 M IoUs (~2 GFLOP) take ~30 us on an H100's SMs:
// compute-bound, latency of the launch dominates below ~5k boxes.
template <typename A>
__global__ void iou_mask_kernel(const A* __restrict__ b, int64_t n, int64_t rb_begin, int64_t col_blocks, A thr,
                                const int64_t* __restrict__ cls, const int64_t* __restrict__ seg_end,
                                uint64_t* __restrict__ mask) {
  const int64_t rb = rb_begin + blockIdx.y;
  const int64_t cb = blockIdx.x;
  if (cb < rb) return;
  const int64_t row0 = rb * kTile, col0 = cb * kTile;
  if (row0 >= n) return;
  if (seg_end != nullptr) {
    const int64_t last = min_(row0 + int64_t(kTile) - 1, n - 1);
    if (col0 > seg_end[last]) return;  // never read by the reduction
  }
  __shared__ A sb[kTile * 4];
  __shared__ int64_t sc[kTile];
  const int t = threadIdx.x;
  const int cols = int(min_(int64_t(kTile), n - col0));
  if (t < cols) {
#pragma unroll
    for (int k = 0; k < 4; ++k) sb[t * 4 + k] = b[(col0 + t) * 4 + k];
    sc[t] = cls != nullptr ? cls[col0 + t] : 0;
  }
  __syncthreads();
  const int64_t i = row0 + t;
  if (i >= n) return;
  const A x1 = b[i * 4], y1 = b[i * 4 + 1], x2 = b[i * 4 + 2], y2 = b[i * 4 + 3];
  const A ai = box_area(x1, y1, x2, y2);
  const int64_t ci = cls != nullptr ? cls[i] : 0;
  uint64_t bits = 0;
  for (int k = (rb == cb) ? t + 1 : 0; k < cols; ++k) {
    if (sc[k] != ci) continue;
    const A bx1 = sb[k * 4], by1 = sb[k * 4 + 1], bx2 = sb[k * 4 + 2], by2 = sb[k * 4 + 3];
    const A o = iou(x1, y1, x2, y2, ai, bx1, by1, bx2, by2, box_area(bx1, by1, bx2, by2));
    if (o > thr) bits |= (uint64_t(1) << k);
  }
  mask[(i - rb_begin * kTile) * col_blocks + cb] = bits;
}

// ---- greedy reduction of a chunk of the bitmask (one block) ------------------------------------------------------
// `removed` (col_blocks words) and `count` persist in global memory across chunks. For each row block: load the
// 64 diagonal words into shared memory, resolve the 64 boxes serially from them (every thread, uniformly), write
// the kept ones, then OR the kept rows into the later words in parallel (only up to the class end for batched).
// Traffic: reads each mask word of the upper triangle at most once per kept row bit (nms 20k: <= 3.1 MB, L2);
// latency-bound by the N/64 serial steps (~313 at 20k, ~2 us each on an H100: ~0.6 ms).
__global__ void reduce_mask_kernel(const uint64_t* __restrict__ mask, int64_t n, int64_t col_blocks, int64_t rb_begin,
                                   int64_t rb_end, uint64_t* removed, const int64_t* __restrict__ seg_end,
                                   const int64_t* __restrict__ order, const int64_t* __restrict__ pos_map,
                                   int64_t* __restrict__ keep_out, uint8_t* __restrict__ keep_flag, int64_t* count) {
  __shared__ uint64_t diag[kTile];
  int64_t cnt = *count;
  const int tid = threadIdx.x;
  for (int64_t rb = rb_begin; rb < rb_end; ++rb) {
    const int64_t row0 = rb * kTile;
    const int rows = int(min_(int64_t(kTile), n - row0));
    const uint64_t* mrow = mask + (rb - rb_begin) * kTile * col_blocks;
    __syncthreads();
    if (tid < rows) diag[tid] = mrow[int64_t(tid) * col_blocks + rb];
    __syncthreads();
    uint64_t word = removed[rb];
    uint64_t kept = 0;
    for (int t = 0; t < rows; ++t) {
      if (!((word >> t) & 1)) {
        kept |= uint64_t(1) << t;
        word |= diag[t];
      }
    }
    if (tid < rows && ((kept >> tid) & 1)) {
      const int64_t r = row0 + tid;
      if (keep_out != nullptr) keep_out[cnt + __popcll(kept & ((uint64_t(1) << tid) - 1))] = order[r];
      if (keep_flag != nullptr) keep_flag[pos_map[r]] = 1;
    }
    cnt += __popcll(kept);
    const int64_t wend = seg_end != nullptr ? seg_end[row0 + rows - 1] / kTile + 1 : col_blocks;
    for (int64_t w = rb + 1 + tid; w < wend; w += blockDim.x) {
      uint64_t acc = removed[w];
      uint64_t bitsk = kept;
      while (bitsk) {
        const int t = __ffsll(static_cast<long long>(bitsk)) - 1;
        bitsk &= bitsk - 1;
        acc |= mrow[int64_t(t) * col_blocks + w];
      }
      removed[w] = acc;
    }
  }
  if (tid == 0) *count = cnt;
}

// Builds the mask chunk by chunk and reduces it. `b` sorted (grouped) boxes [n, 4] in A.
template <typename A>
void bitmask_nms(const at::Tensor& b, int64_t n, A thr, const int64_t* cls, const int64_t* seg_end,
                 const int64_t* order, const int64_t* pos_map, int64_t* keep_out, uint8_t* keep_flag,
                 int64_t* count, cudaStream_t stream) {
  const int64_t col_blocks = ceil_div(n, kTile);
  const int64_t chunk_rb =
      std::max<int64_t>(1, std::min<int64_t>(col_blocks, kMaskChunkBytes / (kTile * col_blocks * 8)));
  at::Tensor mask = at::empty({chunk_rb * kTile * col_blocks}, b.options().dtype(at::kLong));
  at::Tensor removed = at::zeros({col_blocks}, b.options().dtype(at::kLong));
  auto* mp = reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>());
  auto* rp = reinterpret_cast<uint64_t*>(removed.data_ptr<int64_t>());
  for (int64_t rb0 = 0; rb0 < col_blocks; rb0 += chunk_rb) {
    const int64_t rbn = std::min(chunk_rb, col_blocks - rb0);
    const dim3 grid{static_cast<unsigned>(col_blocks), static_cast<unsigned>(rbn), 1u};
    iou_mask_kernel<A><<<grid, kTile, 0, stream>>>(b.const_data_ptr<A>(), n, rb0, col_blocks, thr, cls, seg_end, mp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    reduce_mask_kernel<<<1, kReduceThreads, 0, stream>>>(mp, n, col_blocks, rb0, rb0 + rbn, rp, seg_end, order,
                                                         pos_map, keep_out, keep_flag, count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t>
at::Tensor gather_sorted(const at::Tensor& boxes, const at::Tensor& order, cudaStream_t stream) {
  using A = acc_t<scalar_t>;
  const int64_t n = order.numel();
  at::Tensor out = at::empty({n, 4}, boxes.options().dtype(c10::CppTypeToScalarType<A>::value));
  cuda::launch_1d(gather_boxes_kernel<scalar_t, A>, n, stream, boxes.const_data_ptr<scalar_t>(), boxes.stride(0),
                  boxes.stride(1), order.const_data_ptr<int64_t>(), n, out.data_ptr<A>());
  return out;
}

// ---- nms ----------------------------------------------------------------------------------------------------------

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes_scores(boxes, scores, "nms");
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, 0, /*descending=*/true));
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kLong));
  at::Tensor count = at::zeros({1}, boxes.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_nms_cuda", [&] {
    using A = acc_t<scalar_t>;
    const at::Tensor b = gather_sorted<scalar_t>(boxes, order, stream);
    bitmask_nms<A>(b, n, iou_thr_for<A>(iou_threshold), nullptr, nullptr, order.const_data_ptr<int64_t>(),
                   nullptr, keep.data_ptr<int64_t>(), nullptr, count.data_ptr<int64_t>(), stream);
  });
  return keep.slice(0, 0, count.item<int64_t>());  // the one sync: the output size
}

// ---- batched_nms --------------------------------------------------------------------------------------------------

// seg_end[i] = last position of the class run containing i (classes grouped). One thread per position.
// Traffic: 2 x 8 B read + 8 B written per box, a few lookups per run.
__global__ void segment_end_kernel(const int64_t* __restrict__ cls, int64_t n, int64_t* __restrict__ seg_end) {
  FASTOPS_KERNEL_LOOP(i, n) {
    // binary search for the first position > i with a different class (classes are sorted ascending)
    const int64_t c = cls[i];
    int64_t lo = i, hi = n - 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (cls[mid] == c) lo = mid; else hi = mid - 1;
    }
    seg_end[i] = lo;
  }
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_batched(boxes, scores, idxs);
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, 0, /*descending=*/true));
  const at::Tensor cls_sorted = idxs.to(at::kLong).index_select(0, order);
  const auto grouped_sort = cls_sorted.sort(/*stable=*/true, 0, /*descending=*/false);
  const at::Tensor cls_grouped = std::get<0>(grouped_sort);
  const at::Tensor perm = std::get<1>(grouped_sort);  // grouped position -> score-order position
  const at::Tensor grouped = order.index_select(0, perm);
  at::Tensor seg_end = at::empty({n}, order.options());
  cuda::launch_1d(segment_end_kernel, n, stream, cls_grouped.const_data_ptr<int64_t>(), n, seg_end.data_ptr<int64_t>());
  at::Tensor flag = at::zeros({n}, boxes.options().dtype(at::kByte));
  at::Tensor count = at::zeros({1}, boxes.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_batched_nms_cuda", [&] {
    using A = acc_t<scalar_t>;
    const at::Tensor b = gather_sorted<scalar_t>(boxes, grouped, stream);
    bitmask_nms<A>(b, n, iou_thr_for<A>(iou_threshold), cls_grouped.const_data_ptr<int64_t>(),
                   seg_end.const_data_ptr<int64_t>(), grouped.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>(),
                   nullptr, flag.data_ptr<uint8_t>(), count.data_ptr<int64_t>(), stream);
  });
  // kept positions in score order -> indices (nonzero is the one sync)
  const at::Tensor kept = order.index_select(0, flag.nonzero().view(-1));
  if (n * 4 > kTorchvisionVanillaNumelCuda) {
    // torchvision's per-class path (boxes.numel() > 100000 on CUDA) orders the survivors with an unstable
    // `scores[keep].sort(descending=True)` over ascending indices: same sort, same values, same tie order.
    const at::Tensor asc = std::get<0>(kept.sort(/*dim=*/-1, /*descending=*/false));
    at::Tensor ks = scores.index_select(0, asc);
    if (ks.scalar_type() != at::kDouble) ks = ks.to(at::kFloat);  // half/bf16: as torchvision on float32 input
    const at::Tensor perm = std::get<1>(ks.sort(/*dim=*/-1, /*descending=*/true));
    return asc.index_select(0, perm);
  }
  return kept;
}

// ---- per-segment greedy NMS (multiclass_nms): one block per class ------------------------------------------------
// Candidates of class c: order[c, 0:count[c]] (box indices, by descending score). Boxes are gathered into
// `scratch` [C, L, 4] by the block, then the block walks them in order; each kept box marks the later ones with
// IoU > thr in `sup` (block-parallel) and one barrier follows. Traffic per class: L boxes gathered (16 B each),
// then per kept box (L - i) * 16 B from L2: 80 classes x 1000 candidates ~ 1.3 MB gathered, L2-bound, ~us.
template <typename T, typename A>
__global__ void class_greedy_kernel(const T* __restrict__ boxes, int64_t bs0, int64_t bs1, int64_t bsl,
                                    const int64_t* __restrict__ order, int64_t order_stride,
                                    const int64_t* __restrict__ count, int64_t top_k, A thr, A* __restrict__ scratch,
                                    uint8_t* sup, int64_t L) {
  const int64_t c = blockIdx.x;
  int64_t m = count[c];
  if (top_k > 0 && m > top_k) m = top_k;
  if (m > L) m = L;
  const int64_t* oc = order + c * order_stride;
  A* sb = scratch + c * L * 4;
  uint8_t* sp = sup + c * L;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    const T* p = boxes + oc[j] * bs0 + c * bs1;
#pragma unroll
    for (int k = 0; k < 4; ++k) sb[j * 4 + k] = static_cast<A>(p[k * bsl]);
    sp[j] = 0;
  }
  for (int64_t j = m + threadIdx.x; j < L; j += blockDim.x) sp[j] = 1;  // not a candidate
  __syncthreads();
  for (int64_t i = 0; i < m; ++i) {
    if (sp[i]) continue;  // uniform: written before the last barrier
    const A x1 = sb[i * 4], y1 = sb[i * 4 + 1], x2 = sb[i * 4 + 2], y2 = sb[i * 4 + 3];
    const A ai = box_area(x1, y1, x2, y2);
    for (int64_t j = i + 1 + threadIdx.x; j < m; j += blockDim.x) {
      const A bx1 = sb[j * 4], by1 = sb[j * 4 + 1], bx2 = sb[j * 4 + 2], by2 = sb[j * 4 + 3];
      if (iou(x1, y1, x2, y2, ai, bx1, by1, bx2, by2, box_area(bx1, by1, bx2, by2)) > thr) sp[j] = 1;
    }
    __syncthreads();
  }
}

// Sort each row of `score` [R, L] by descending score among `cand` (stable, ties by column), candidates first.
std::tuple<at::Tensor, at::Tensor> sort_candidates(const at::Tensor& score, const at::Tensor& cand) {
  const auto s1 = score.sort(/*stable=*/true, 1, /*descending=*/true);
  const at::Tensor vals = std::get<0>(s1), p1 = std::get<1>(s1);
  const at::Tensor nc = cand.gather(1, p1).logical_not().to(at::kByte);
  const at::Tensor p2 = std::get<1>(nc.sort(/*stable=*/true, 1, /*descending=*/false));
  return {p1.gather(1, p2), vals.gather(1, p2)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cuda(
    const at::Tensor& boxes, const at::Tensor& scores, double score_threshold, double iou_threshold,
    int64_t pre_nms_top_k, int64_t max_det, bool pad) {
  check_multiclass(boxes, scores, max_det, pad);
  const int64_t n = scores.size(0), nc = scores.size(1);
  const bool per_class = boxes.dim() == 3;
  c10::cuda::CUDAGuard guard(boxes.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto lopt = scores.options().dtype(at::kLong);
  const int64_t L = (pre_nms_top_k > 0) ? std::min(pre_nms_top_k, n) : n;
  // candidates per class, by descending score (threshold compared in the scores' dtype)
  const at::Tensor st = scores.t();                                  // [C, N] view
  const at::Tensor cand = st.gt(at::Scalar(score_threshold));         // Scalar cast to the dtype, like PyTorch
  const at::Tensor count = cand.sum(1);                                // [C] int64
  const auto sorted = sort_candidates(st, cand);
  const at::Tensor order = std::get<0>(sorted), vals = std::get<1>(sorted);
  at::Tensor order_l = order.slice(1, 0, L).contiguous();
  at::Tensor vals_l = vals.slice(1, 0, L);
  at::Tensor sup = at::empty({nc, L}, scores.options().dtype(at::kByte));
  if (nc > 0 && L > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_multiclass_nms_cuda",
                                    [&] {
      using A = acc_t<scalar_t>;
      at::Tensor scratch = at::empty({nc, L, 4}, scores.options().dtype(c10::CppTypeToScalarType<A>::value));
      class_greedy_kernel<scalar_t, A><<<unsigned(nc), kBlock, 0, stream>>>(
          boxes.const_data_ptr<scalar_t>(), boxes.stride(0), per_class ? boxes.stride(1) : 0,
          boxes.stride(boxes.dim() - 1), order_l.const_data_ptr<int64_t>(), L, count.const_data_ptr<int64_t>(),
          pre_nms_top_k, iou_thr_for<A>(iou_threshold), scratch.data_ptr<A>(), sup.data_ptr<uint8_t>(), L);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    sup.fill_(1);
  }
  // survivors of all classes by descending score, ties by (box, class) row-major
  const at::Tensor kept = sup.logical_not().view(-1);                 // [C * L]
  const at::Tensor cls_col = at::arange(nc, lopt).view({nc, 1}).expand({nc, L}).reshape(-1);
  const at::Tensor box_col = order_l.view(-1);
  const at::Tensor flat = box_col * nc + cls_col;
  const at::Tensor p0 = std::get<1>(at::where(kept, flat, at::full({}, INT64_MAX, lopt)).sort(true, 0, false));
  const at::Tensor fo = std::get<0>(
      sort_candidates(vals_l.reshape({1, -1}).index_select(1, p0), kept.index_select(0, p0).view({1, -1})));
  const at::Tensor sel_all = p0.index_select(0, fo.view(-1));          // flat positions, kept first, by score
  const at::Tensor total = kept.sum();
  const int64_t rows_avail = sel_all.numel();
  int64_t m;
  at::Tensor num_valid;
  if (pad) {
    m = max_det;
    num_valid = at::minimum(total, at::full({}, max_det, lopt));
  } else {
    const int64_t t = total.item<int64_t>();  // the one sync: the output size
    m = max_det > 0 ? std::min(t, max_det) : t;
    num_valid = at::full({}, m, lopt);
  }
  const int64_t take = std::min(m, rows_avail);
  const at::Tensor sel = sel_all.slice(0, 0, take);
  const at::Tensor bi = box_col.index_select(0, sel), ci = cls_col.index_select(0, sel);
  const at::Tensor bsel = per_class ? boxes.reshape({n * nc, 4}).index_select(0, bi * nc + ci)
                                    : boxes.index_select(0, bi);
  const at::Tensor ssel = vals_l.reshape(-1).index_select(0, sel);
  at::Tensor bo = at::zeros({m, 4}, boxes.options()), so = at::zeros({m}, scores.options());
  at::Tensor lo = at::full({m}, -1, lopt), io = at::full({m}, -1, lopt);
  if (take > 0) {
    const at::Tensor valid = at::arange(take, lopt).lt(num_valid);
    bo.slice(0, 0, take).copy_(at::where(valid.view({-1, 1}), bsel, at::zeros_like(bsel)));
    so.slice(0, 0, take).copy_(at::where(valid, ssel, at::zeros_like(ssel)));
    lo.slice(0, 0, take).copy_(at::where(valid, ci, at::full_like(ci, -1)));
    io.slice(0, 0, take).copy_(at::where(valid, bi, at::full_like(bi, -1)));
  }
  return std::make_tuple(bo, so, lo, io, num_valid);
}

// ---- fast_nms -----------------------------------------------------------------------------------------------------

// Max class score and first argmax per detection (NaN propagates, like torch.max), pass = max > threshold.
// Traffic: reads C x N scores once (80 x 19248 x 4 B = 6 MB: ~2 us on an H100), writes 13 B per detection.
template <typename T, typename A>
__global__ void class_max_kernel(const T* __restrict__ s, int64_t ss0, int64_t ss1, int64_t nc, int64_t n, A sthr,
                                 A* __restrict__ mx, int64_t* __restrict__ amax, bool* __restrict__ pass) {
  FASTOPS_KERNEL_LOOP(i, n) {
    A m = -INFINITY;
    int64_t a = 0;
    for (int64_t c = 0; c < nc; ++c) {
      const A v = static_cast<A>(s[c * ss0 + i * ss1]);
      if ((v > m || v != v) && m == m) {
        m = v;
        a = c;
      }
    }
    mx[i] = m;
    amax[i] = a;
    pass[i] = m > sthr;
  }
}

// One block per class row: keep[r, j] = (j < k) and IoU(i, j) <= thr for every i < j (NaN: not kept).
// The k <= top_k boxes of the row are staged in shared memory when they fit (top_k 200: 3.2 KB), else read from
// the gathered global copy. Traffic: C x top_k x 16 B gathered (80 x 200: 256 KB), C x top_k^2 / 2 IoUs
// (1.6 M for YOLACT: ~1 us of an H100's FP32 throughput), C x top_k bytes of flags written.
template <typename T, typename A>
__global__ void fast_nms_kernel(const T* __restrict__ boxes, int64_t bs0, int64_t bs1,
                                const int64_t* __restrict__ order, int64_t L, const int64_t* __restrict__ npass,
                                A thr, A* __restrict__ gbuf, uint8_t* __restrict__ keep) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t r = blockIdx.x;
  const int64_t k = min_(*npass, L);
  A* sb = (gbuf != nullptr) ? gbuf + r * L * 4 : reinterpret_cast<A*>(smem_raw);
  const int64_t* o = order + r * L;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    const T* p = boxes + o[j] * bs0;
#pragma unroll
    for (int q = 0; q < 4; ++q) sb[j * 4 + q] = static_cast<A>(p[q * bs1]);
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    uint8_t kp = j < k;
    if (kp) {
      const A x1 = sb[j * 4], y1 = sb[j * 4 + 1], x2 = sb[j * 4 + 2], y2 = sb[j * 4 + 3];
      const A aj = box_area(x1, y1, x2, y2);
      for (int64_t i = 0; i < j; ++i) {
        const A bx1 = sb[i * 4], by1 = sb[i * 4 + 1], bx2 = sb[i * 4 + 2], by2 = sb[i * 4 + 3];
        const A o2 = iou(bx1, by1, bx2, by2, box_area(bx1, by1, bx2, by2), x1, y1, x2, y2, aj);
        if (!(o2 <= thr)) {
          kp = 0;
          break;
        }
      }
    }
    keep[r * L + j] = kp;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fast_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                            double iou_threshold, int64_t top_k, int64_t max_det,
                                                            double score_threshold, bool cross_class) {
  check_fast_nms(boxes, scores);
  c10::cuda::CUDAGuard guard(boxes.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = boxes.size(0), nc = scores.size(0);
  const auto lopt = boxes.options().dtype(at::kLong);
  const int64_t L = (top_k > 0) ? std::min(top_k, n) : n;
  at::Tensor idx_out, lab_out, sc_out;
  if (n == 0 || nc == 0 || L == 0) {
    return std::make_tuple(at::empty({0}, lopt), at::empty({0}, lopt), at::empty({0}, scores.options()));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_fast_nms_cuda", [&] {
    using A = acc_t<scalar_t>;
    const auto aopt = boxes.options().dtype(c10::CppTypeToScalarType<A>::value);
    at::Tensor mx = at::empty({n}, aopt), amax = at::empty({n}, lopt);
    at::Tensor pass = at::empty({n}, boxes.options().dtype(at::kBool));
    cuda::launch_1d(class_max_kernel<scalar_t, A>, n, stream, scores.const_data_ptr<scalar_t>(), scores.stride(0),
                    scores.stride(1), nc, n, static_cast<A>(static_cast<scalar_t>(score_threshold)), mx.data_ptr<A>(),
                    amax.data_ptr<int64_t>(), pass.data_ptr<bool>());
    const at::Tensor npass = pass.sum().view({1});
    // rows to suppress within: per class [C, N] (non-passing last), or one row by the max score
    const at::Tensor rs = cross_class ? mx.view({1, n}) : scores;
    const at::Tensor rc = cross_class ? pass.view({1, n}) : pass.view({1, n}).expand({nc, n});
    const int64_t rows = rs.size(0);
    const at::Tensor order = std::get<0>(sort_candidates(rs, rc)).slice(1, 0, L).contiguous();
    at::Tensor keep = at::empty({rows, L}, boxes.options().dtype(at::kByte));
    const int64_t smem = L * 4 * int64_t(sizeof(A));
    const bool use_smem = smem <= 32 * 1024;
    at::Tensor gbuf = use_smem ? at::Tensor() : at::empty({rows, L, 4}, aopt);
    fast_nms_kernel<scalar_t, A><<<unsigned(rows), kBlock, use_smem ? smem : 0, stream>>>(
        boxes.const_data_ptr<scalar_t>(), boxes.stride(0), boxes.stride(1), order.const_data_ptr<int64_t>(), L,
        npass.const_data_ptr<int64_t>(), static_cast<A>(iou_threshold), use_smem ? nullptr : gbuf.data_ptr<A>(),
        keep.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // all kept (row, rank) pairs by descending score, ties by flat (class-major, rank) position
    const at::Tensor det = order.view(-1);
    const at::Tensor lab = cross_class ? amax.index_select(0, det)
                                       : at::arange(rows, lopt).view({rows, 1}).expand({rows, L}).reshape(-1);
    const at::Tensor kflat = keep.view(-1).to(at::kBool);
    const at::Tensor sc = scores.reshape(-1).index_select(0, lab * n + det);
    const at::Tensor fo = std::get<0>(sort_candidates(sc.view({1, -1}), kflat.view({1, -1}))).view(-1);
    const int64_t total = kflat.sum().item<int64_t>();  // the one sync: the output size
    const int64_t m = max_det > 0 ? std::min(total, max_det) : total;
    const at::Tensor sel = fo.slice(0, 0, m);
    idx_out = det.index_select(0, sel);
    lab_out = lab.index_select(0, sel);
    sc_out = sc.index_select(0, sel);
  });
  return std::make_tuple(idx_out, lab_out, sc_out);
}

// ---- soft_nms -----------------------------------------------------------------------------------------------------

// One block: per selection step a block argmax (score desc, index asc) over the alive boxes, then every thread
// decays its boxes and drops the ones below min_score. O(N) per step, N steps at most: the algorithm is
// sequential; this runs it on the GPU without host round trips (vision#8849). Traffic per step: 21 B per box
// (L1/L2-resident up to a few 10k boxes); ~3 barriers per selected box.
template <typename T, typename A>
__global__ void soft_nms_kernel(const T* __restrict__ boxes, int64_t bs0, int64_t bs1, const T* __restrict__ scores,
                                int64_t ss0, int64_t n, A thr, A sigma, A min_score, int method, A* __restrict__ sc,
                                uint8_t* __restrict__ alive, T* __restrict__ dets, int64_t* __restrict__ keep,
                                int64_t* __restrict__ count) {
  __shared__ A red_s[kBlock];
  __shared__ int64_t red_i[kBlock];
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const A v = static_cast<A>(scores[j * ss0]);
    sc[j] = v;
    alive[j] = v == v;
  }
  __syncthreads();
  int64_t m = 0;
  for (;;) {
    // block argmax over alive boxes
    A best = 0;
    int64_t bi = -1;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      if (!alive[j]) continue;
      if (bi < 0 || sc[j] > best) {  // j increases: ties keep the lower index
        best = sc[j];
        bi = j;
      }
    }
    red_s[threadIdx.x] = best;
    red_i[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        const A os = red_s[threadIdx.x + s];
        const int64_t oi = red_i[threadIdx.x + s];
        const int64_t mi = red_i[threadIdx.x];
        if (oi >= 0 && (mi < 0 || os > red_s[threadIdx.x] || (os == red_s[threadIdx.x] && oi < mi))) {
          red_s[threadIdx.x] = os;
          red_i[threadIdx.x] = oi;
        }
      }
      __syncthreads();
    }
    const int64_t sel = red_i[0];
    const A ssel = red_s[0];
    __syncthreads();
    if (sel < 0) break;
    const T* p = boxes + sel * bs0;
    const A x1 = static_cast<A>(p[0]), y1 = static_cast<A>(p[bs1]), x2 = static_cast<A>(p[2 * bs1]),
            y2 = static_cast<A>(p[3 * bs1]);
    const A as = box_area(x1, y1, x2, y2);
    if (threadIdx.x == 0) {
      for (int q = 0; q < 4; ++q) dets[m * 5 + q] = p[q * bs1];
      dets[m * 5 + 4] = static_cast<T>(ssel);
      keep[m] = sel;
      alive[sel] = 0;
    }
    ++m;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      if (!alive[j]) continue;
      const T* q = boxes + j * bs0;
      const A bx1 = static_cast<A>(q[0]), by1 = static_cast<A>(q[bs1]), bx2 = static_cast<A>(q[2 * bs1]),
              by2 = static_cast<A>(q[3 * bs1]);
      A o = iou(x1, y1, x2, y2, as, bx1, by1, bx2, by2, box_area(bx1, by1, bx2, by2));
      if (o != o) o = A(0);
      A w = A(1);
      if (method == kSoftNaive) {
        if (o >= thr) w = A(0);
      } else if (method == kSoftLinear) {
        if (o >= thr) w = A(1) - o;
      } else {
        w = exp(-(o * o) / sigma);
      }
      const A ns = sc[j] * w;
      sc[j] = ns;
      if (!(ns >= min_score)) alive[j] = 0;  // below min_score, or NaN (inf * 0)
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) *count = m;
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                 double iou_threshold, double sigma, double min_score,
                                                 c10::string_view method) {
  const int meth = int(check_soft_nms(boxes, scores, sigma, method));
  c10::cuda::CUDAGuard guard(boxes.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = boxes.size(0);
  at::Tensor dets = at::empty({n, 5}, boxes.options());
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kLong));
  if (n == 0) return std::make_tuple(dets, keep);
  at::Tensor count = at::zeros({1}, keep.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastops_soft_nms_cuda", [&] {
    using A = acc_t<scalar_t>;
    at::Tensor sc = at::empty({n}, boxes.options().dtype(c10::CppTypeToScalarType<A>::value));
    at::Tensor alive = at::empty({n}, boxes.options().dtype(at::kByte));
    soft_nms_kernel<scalar_t, A><<<1, kBlock, 0, stream>>>(
        boxes.const_data_ptr<scalar_t>(), boxes.stride(0), boxes.stride(1), scores.const_data_ptr<scalar_t>(),
        scores.stride(0), n, static_cast<A>(iou_threshold), static_cast<A>(sigma), static_cast<A>(min_score), meth,
        sc.data_ptr<A>(), alive.data_ptr<uint8_t>(), dets.data_ptr<scalar_t>(), keep.data_ptr<int64_t>(),
        count.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int64_t m = count.item<int64_t>();  // the one sync: the output size
  return std::make_tuple(dets.slice(0, 0, m), keep.slice(0, 0, m));
}

}  // namespace
}  // namespace nms
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("nms", &fastops::nms::nms_cuda);
  m.impl("batched_nms", &fastops::nms::batched_nms_cuda);
  m.impl("multiclass_nms", &fastops::nms::multiclass_nms_cuda);
  m.impl("fast_nms", &fastops::nms::fast_nms_cuda);
  m.impl("soft_nms", &fastops::nms::soft_nms_cuda);
}
